"""The data counters a user reads in the log: every skipped sample has a named reason
(`skipped/truncated_image`, `skipped/empty_caption`, ...), an unexpected error is `skipped/other` with its
class in one warning, and the counts add up in every log line: kept <= decoded, decoded + skipped = drawn."""

from __future__ import annotations

import io
import itertools
import json
import logging

import open_clip
import pytest
from PIL import Image
from test_data_faults import GOOD, _bomb_png, _jpeg, _write, deadline

from bmca_clip.config import DataConfig
from bmca_clip.data.decode import PilTransform
from bmca_clip.data.filters import FilterConfig
from bmca_clip.data.loader import build_train_loader


def _noisy_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


TRUNCATED = _noisy_jpeg()[:700]  # header and part of the scan: Pillow says "image file is truncated"
# (a sample, the counter it must land in)
BAD = {
    "truncated_image": {"jpg": TRUNCATED, "txt": "cut off"},
    "corrupt_image": {"jpg": b"this is not an image", "txt": "garbage"},
    "empty_caption": {"jpg": _jpeg(), "txt": "   "},
    "missing_image": {"txt": "a caption without its image"},
    "missing_caption": {"jpg": _jpeg()},
    "caption_not_utf8": {"jpg": _jpeg(), "txt": b"caf\xe9 latin-1"},
    "decompression_bomb": {"jpg": _bomb_png(), "txt": "huge"},
}


def _loader(shards: str, workers: int = 0, image_fn=None, batch_size: int = 4, **cfg):
    defaults = {"shuffle_buffer": 10, "shuffle_initial": 5, "resampled": False} | cfg
    return build_train_loader(
        DataConfig(train_shards=shards, num_workers=workers, **defaults),
        image_fn or PilTransform(open_clip.image_transform(32, is_train=True)),
        open_clip.get_tokenizer("bmca-tiny"),
        batch_size=batch_size,
        seed=0,
    )


def _skipped(counters: dict) -> dict[str, int]:
    return {k[8:]: v for k, v in counters.items() if k.startswith("skipped/")}


def test_every_skipped_sample_is_counted_under_a_reason_a_user_understands(tmp_path):
    samples = [GOOD] * 10 + list(BAD.values()) + [GOOD] * 10
    loader = _loader(_write(tmp_path / "000000.tar", samples))
    with deadline(60):
        for _ in itertools.islice(loader, 10):  # 40 good samples: the shard read twice over
            pass
    skipped = _skipped(loader.counters())
    assert set(skipped) == set(BAD), skipped
    assert all(n >= 1 for n in skipped.values())


def test_an_unexpected_error_is_skipped_as_other_with_its_class_in_one_warning(tmp_path, caplog):
    transform = PilTransform(open_clip.image_transform(32, is_train=True))
    odd = _jpeg(shade=17)

    def image_fn(data: bytes):
        if data == odd:
            raise KeyError("a bug that only this image triggers")
        return transform(data)

    shards = _write(tmp_path / "000000.tar", [GOOD] * 5 + [{"jpg": odd, "txt": "odd"}] * 3 + [GOOD] * 5)
    loader = _loader(shards, image_fn=image_fn)
    with caplog.at_level(logging.DEBUG, logger="bmca_clip"), deadline(60):
        for _ in itertools.islice(loader, 8):  # 32 good samples: three passes, 9 odd ones
            pass
    assert _skipped(loader.counters()) == {"other": 9}
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "KeyError" in warned[0] and "skipped/other" in warned[0], warned


def _labelled(label: str, caption: str = "a figure", jpg: bytes | None = None) -> dict:
    sample = {"txt": caption, "json": json.dumps({"image_primary_label": [label]}).encode()}
    return sample | ({"jpg": jpg} if jpg is not None else {"jpg": _jpeg()})


@pytest.mark.parametrize("workers", [0, 2])
def test_kept_never_exceeds_decoded_and_the_counts_add_up_in_every_log_line(tmp_path, workers):
    good, charts = _labelled("Microscopy"), _labelled("Plots and Charts")  # charts are filtered out
    corrupt = _labelled("Microscopy", jpg=b"not an image")
    empty = _labelled("Microscopy", caption="  ")
    shards = [
        _write(tmp_path / f"{i:06d}.tar", [good, charts, corrupt, good, empty, charts, good] * 6)
        for i in range(2)
    ]
    # A large shuffle buffer: many samples pass the filter long before they are decoded.
    loader = _loader(
        "::".join(shards),
        workers,
        shuffle_buffer=40,
        shuffle_initial=30,
        filter=FilterConfig(include_primary=["Microscopy"]),
    )
    handed_out = 0
    with deadline(120):
        for batch in itertools.islice(loader, 20):
            handed_out += len(batch["keys"])
            counters = loader.counters()
            drawn = sum(n for k, n in counters.items() if k.startswith("drawn/"))
            skipped = _skipped(counters)
            assert counters["kept"] <= counters["decoded"], counters
            assert counters["decoded"] + sum(skipped.values()) == drawn, counters
            assert counters["kept"] == handed_out, counters
    assert set(skipped) == {"corrupt_image", "empty_caption"} and counters["filtered/primary_label"] > 0
