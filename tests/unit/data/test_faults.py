"""Data that cannot feed training stops it with one line naming the cause; a single bad sample (a
decompression bomb, any exception) is skipped and counted; 16-bit images keep their contrast.

Every test that could spin forever on a regression runs under a deadline (SIGALRM in-process, or
subprocess.run's timeout), so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import io
import itertools
import logging
import subprocess
import sys

import numpy as np
import open_clip
import pytest
from PIL import Image
from torchvision.transforms import PILToTensor

from bmca_clip.config import ConfigError, DataConfig, PretrainConfig, to_object
from bmca_clip.data.decode import PilTransform
from bmca_clip.data.loader import build_train_loader
from bmca_clip.data.transforms import FastEvalTransform, FastTrainTransform
from bmca_clip.errors import DataError
from bmca_clip.eval.items import to_rgb
from tests.helpers.config import REPO, compose_config, tiny_train_overrides
from tests.helpers.shards import GOOD, bomb_png, deadline, jpeg, write_shard


def _loader(shards: str, workers: int, image_fn=None, batch_size: int = 4, **cfg):
    data = DataConfig(train_shards=shards, num_workers=workers, shuffle_buffer=10, shuffle_initial=5, **cfg)
    return build_train_loader(
        data,
        image_fn or PilTransform(open_clip.image_transform(32, is_train=True)),
        open_clip.get_tokenizer("bmca-tiny"),
        batch_size=batch_size,
        seed=0,
    )


def _first_error(loader, batches: int = 1000) -> str:
    with deadline(60), pytest.raises(DataError) as caught:
        for n, _ in enumerate(loader):
            assert n < batches, "no DataError: the stream kept yielding batches"
    return str(caught.value)


CAUSES = {
    # (samples in the shard, config, what the one-line message must say)
    "wrong image_key": (
        [GOOD] * 50,
        {"image_key": "png"},
        ["had no `png` member", "the shards hold `jpg`", "set data.image_key=jpg"],
    ),
    "wrong caption_key": (
        [GOOD] * 50,
        {"caption_key": "caption"},
        ["had no `caption` member", "set data.caption_key=txt"],
    ),
    "no image at all": (
        [{"txt": "a caption", "json": b"{}"}] * 50,
        {},
        ["had no `jpg` member", "the shards hold `json`, `txt`", "no image member"],
    ),
    "empty captions": ([{"jpg": jpeg(), "txt": "  "}] * 50, {}, ["every caption was empty"]),
    "corrupt images": (
        [{"jpg": jpeg()[:200], "txt": "truncated"}] * 50,
        {},
        ["every image failed to decode (first error: OSError", "sample s000"],
    ),
}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cause", list(CAUSES))
def test_data_that_never_decodes_stops_with_one_line_naming_the_cause(tmp_path, cause, workers):
    samples, cfg, expected = CAUSES[cause]
    loader = _loader(write_shard(tmp_path / "000000.tar", samples), workers, **cfg)
    message = _first_error(loader)
    assert "\n" not in message and "Traceback" not in message and "DataLoader worker" not in message
    assert "500 of the first 500 samples" in message, message
    for part in expected:
        assert part in message, message


def test_a_mostly_bad_stream_stops_but_a_tolerable_share_trains(tmp_path):
    bad = {"jpg": jpeg()[:200], "txt": "truncated"}
    mostly_bad = write_shard(tmp_path / "a.tar", [bad] * 7 + [GOOD] * 3)
    message = _first_error(_loader(mostly_bad, 0, max_bad_after=100))
    assert "could not be used" in message and "data.max_bad_fraction=0.5" in message, message
    tolerable = write_shard(tmp_path / "b.tar", [bad] * 3 + [GOOD] * 7)
    loader = _loader(tolerable, 0, max_bad_after=100)
    with deadline(60):
        for n, _ in enumerate(loader):
            if n == 150:  # 600 samples kept: 4.6x max_bad_after, 30% of them bad
                break
    assert loader.counters()["skipped/truncated_image"] > 100


def test_force_image_size_zero_is_refused_at_compose_time(tmp_path):
    cfg = compose_config("pretrain", ["model.force_image_size=0"])
    with pytest.raises(ConfigError, match=r"model.force_image_size=0 is invalid: expected .*>= 1"):
        to_object(cfg, PretrainConfig)


def test_max_bad_after_must_be_positive():
    with pytest.raises(ConfigError, match="data.max_bad_after"):
        DataConfig(max_bad_after=0)


def test_train_py_with_a_wrong_image_key_exits_2_with_one_line(tmp_path):
    shards = write_shard(tmp_path / "000000.tar", [GOOD] * 50)
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "model=bmca-tiny",
            "data=local",
            f"data.train_shards={shards}",
            "data.num_workers=2",
            "data.image_key=png",
            "train.device=cpu",
            "logger.progress_bar=false",
            f"output_dir={tmp_path}/run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,  # the start alone (imports) takes most of this on a busy machine
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "had no `png` member" in errors[0] and "set data.image_key=jpg" in errors[0]


# --- one bad sample never stops a run -----------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_a_decompression_bomb_is_skipped_and_counted(tmp_path, workers):
    limit = Image.MAX_IMAGE_PIXELS
    samples = [GOOD] * 10 + [{"jpg": bomb_png(), "txt": "huge"}] * 2 + [GOOD] * 10
    loader = _loader(write_shard(tmp_path / "000000.tar", samples), workers, resampled=False)
    keys = []
    with deadline(60):
        for batch in itertools.islice(loader, 12):  # 48 samples: every one read at least twice
            keys += batch["keys"]
    assert loader.counters()["skipped/decompression_bomb"] >= 2
    assert len(keys) == 48 and not {"s00010", "s00011"} & set(keys)
    assert Image.MAX_IMAGE_PIXELS == limit  # production code never lowers or lifts the global limit


def test_any_exception_in_one_sample_is_skipped_counted_and_logged_with_its_key(tmp_path, caplog):
    """Also the counters' "other" case (merged from test_data_counters.py's
    test_an_unexpected_error_is_skipped_as_other_with_its_class_in_one_warning, which built the same stream
    with three odd samples; every assertion of both kept): counted as exactly `skipped/other`, one warning
    per exception class and stream."""
    transform = PilTransform(open_clip.image_transform(32, is_train=True))
    odd = jpeg(shade=17)

    def image_fn(data: bytes):
        if data == odd:
            raise KeyError("a bug that only this image triggers")
        return transform(data)

    shards = write_shard(tmp_path / "000000.tar", [GOOD] * 5 + [{"jpg": odd, "txt": "odd"}] * 3 + [GOOD] * 5)
    loader = _loader(shards, 0, image_fn=image_fn, resampled=False)
    odd_keys = {"s00005", "s00006", "s00007"}
    with caplog.at_level(logging.DEBUG, logger="bmca_clip"), deadline(60):
        # 12 good samples: the first pass over the shard, with the odd ones, is complete
        batches = iter(loader)
        keys = [k for batch in itertools.islice(batches, 3) for k in batch["keys"]]
        assert not odd_keys & set(keys) and loader.counters()["skipped/other"] >= 1
        for _ in itertools.islice(batches, 5):  # 32 good samples in all: three passes, 9 odd ones
            pass
    assert {k[8:]: v for k, v in loader.counters().items() if k.startswith("skipped/")} == {"other": 9}
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    lines = [m for m in warned if any(key in m for key in odd_keys)]  # the first odd one the shuffle met
    assert len(lines) == 1 and shards in lines[0] and "KeyError" in lines[0], lines
    assert len(warned) == 1 and "KeyError" in warned[0] and "skipped/other" in warned[0], warned


def test_training_runs_over_decompression_bombs(tmp_path):
    from bmca_clip.train import run as train_mod

    good = [{"jpg": jpeg(shade), "txt": f"shade {shade}"} for shade in range(0, 250, 5)]
    bombs = [{"jpg": bomb_png(), "txt": "huge"} for _ in range(10)]
    shards = write_shard(tmp_path / "000000.tar", good + bombs + good)
    overrides = tiny_train_overrides(
        tmp_path, tmp_path / "run", **{"data.train_shards": shards, "train.steps": 4, "train.batch_size": 8}
    )
    with deadline(240):
        last = train_mod.run(to_object(compose_config("pretrain", overrides), PretrainConfig))
    assert last["data/skipped/decompression_bomb"] >= 1 and np.isfinite(last["loss"])


# --- 16-bit images ----------------------------------------------------------------------------------------


def _gradient_16bit(fmt: str, mode: str) -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 96).round(), (96, 1))
    img = Image.fromarray(ramp.astype(np.uint16 if mode == "I;16" else np.int32))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _assert_gradient(chw) -> None:
    """A left-to-right ramp from black to white: not white, not clipped, increasing across the columns."""
    columns = np.asarray(chw, dtype=np.float64).mean(axis=(0, 1))
    assert columns[0] < 0.1 * 255 and columns[-1] > 0.9 * 255, columns
    assert np.all(np.diff(columns) >= -0.02 * 255), columns  # bicubic rings at most a little at the ends


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I")])
def test_16_bit_grayscale_decodes_to_a_gradient_on_every_path(fmt, mode):
    data = _gradient_16bit(fmt, mode)
    assert Image.open(io.BytesIO(data)).mode == mode
    _assert_gradient(FastEvalTransform(48, resize_mode="squash")(data))
    _assert_gradient(FastTrainTransform(48, scale=(1.0, 1.0), ratio=(1.0, 1.0))(data))
    _assert_gradient(PilTransform(PILToTensor())(data))
    _assert_gradient(np.asarray(to_rgb(Image.open(io.BytesIO(data)))).transpose(2, 0, 1))
