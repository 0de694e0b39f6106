"""The data counters a user reads in the log, and DataCounters, the typed object that holds them.

Every skipped sample has a named reason (`skipped/truncated_image`, `skipped/empty_caption`, ...; an
unexpected error's `skipped/other` is in tests/unit/data/test_faults.py), the counts add up in every log line
(kept <= decoded, decoded + skipped = drawn), the arithmetic across workers, the log line's metric names (the
same as when counters were prefixed strings, so metrics.jsonl, TensorBoard and wandb keys stay), the health
check that reads them, and a loader's data state, which holds no counters and resumes as before."""

from __future__ import annotations

import io
import itertools
import json
import pickle

import open_clip
import pytest
from PIL import Image

from bmca_clip.config import DataConfig
from bmca_clip.data.counters import DataCounters
from bmca_clip.data.decode import PilTransform
from bmca_clip.data.filters import FilterConfig
from bmca_clip.data.loader import build_train_loader
from bmca_clip.data.sources import DataError
from bmca_clip.train.log_line import checked_data_counters
from tests.helpers.shards import GOOD, bomb_png, deadline, jpeg, write_shard


def _noisy_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


TRUNCATED = _noisy_jpeg()[:700]  # header and part of the scan: Pillow says "image file is truncated"
# (a sample, the counter it must land in)
BAD = {
    "truncated_image": {"jpg": TRUNCATED, "txt": "cut off"},
    "corrupt_image": {"jpg": b"this is not an image", "txt": "garbage"},
    "empty_caption": {"jpg": jpeg(), "txt": "   "},
    "missing_image": {"txt": "a caption without its image"},
    "missing_caption": {"jpg": jpeg()},
    "caption_not_utf8": {"jpg": jpeg(), "txt": b"caf\xe9 latin-1"},
    "decompression_bomb": {"jpg": bomb_png(), "txt": "huge"},
}


def _loader(shards: str, workers: int = 0, image_fn=None, batch_size: int = 4, **cfg):
    # one shard at a time: the exact counts below follow its order
    defaults = {"shuffle_buffer": 10, "shuffle_initial": 5, "resampled": False, "shards_in_flight": 1} | cfg
    return build_train_loader(
        DataConfig(train_shards=shards, num_workers=workers, **defaults),
        image_fn or PilTransform(open_clip.image_transform(32, is_train=True)),
        open_clip.get_tokenizer("bmca-tiny"),
        batch_size=batch_size,
        seed=0,
    )


def _skipped(counters: dict) -> dict[str, int]:
    return {k[8:]: v for k, v in counters.items() if k.startswith("skipped/")}


def _labelled(label: str, caption: str = "a figure", jpg: bytes | None = None) -> dict:
    sample = {"txt": caption, "json": json.dumps({"image_primary_label": [label]}).encode()}
    return sample | ({"jpg": jpg} if jpg is not None else {"jpg": jpeg()})


def test_every_skipped_sample_is_counted_under_a_reason_a_user_understands(tmp_path):
    samples = [GOOD] * 10 + list(BAD.values()) + [GOOD] * 10
    loader = _loader(write_shard(tmp_path / "000000.tar", samples))
    with deadline(60):
        for _ in itertools.islice(loader, 10):  # 40 good samples: the shard read twice over
            pass
    skipped = _skipped(loader.counters())
    assert set(skipped) == set(BAD), skipped
    assert all(n >= 1 for n in skipped.values())


# What the base (02a3987, counters as "skipped/..." strings in dicts) logged for the stream of
# _filtered_corrupt_empty_stream after 20 batches: names and counts, taken from a run of the base.
BASE_METRICS = {
    "data/decoded": 80.0,
    "data/drawn/shards": 135.0,
    "data/filtered/primary_label": 60.0,
    "data/kept": 80.0,
    "data/read/shards": 188.0,
    "data/skipped/corrupt_image": 27.0,
    "data/skipped/empty_caption": 28.0,
}
# The keys of a loader's data state (what a checkpoint stores per rank) on the base: no counters.
BASE_DATA_STATE_KEYS = {"positions", "next_stream", "num_streams", "sources", "commits"}


def _filtered_corrupt_empty_stream(tmp_path, workers: int = 0, state: dict | None = None):
    good, charts = _labelled("Microscopy"), _labelled("Plots and Charts")  # charts are filtered out
    corrupt = _labelled("Microscopy", jpg=b"not an image")
    empty = _labelled("Microscopy", caption="  ")
    shards = [
        write_shard(tmp_path / f"{i:06d}.tar", [good, charts, corrupt, good, empty, charts, good] * 6)
        for i in range(2)
    ]
    cfg = {
        "shuffle_buffer": 40,
        "shuffle_initial": 30,
        "filter": FilterConfig(include_primary=["Microscopy"]),
        "shards_in_flight": 1,
    }
    loader = _loader("::".join(shards), workers, **cfg)
    if state is not None:
        from bmca_clip.config import DataConfig
        from bmca_clip.data.loader import build_train_loader

        loader = build_train_loader(
            DataConfig(train_shards="::".join(shards), num_workers=workers, resampled=False, **cfg),
            loader.dataset.decoder.image_fn,
            loader.dataset.tokenizer,
            batch_size=4,
            seed=0,
            state=state,
        )
    return loader


def test_counters_add_across_workers_and_ranks_group_by_group():
    a = DataCounters(decoded=5, kept=4, drawn={"x": 6}, read={"x": 9}, skipped={"empty_caption": 1})
    a.count("filtered", "balance", 3)
    a.transport["retries"] = 2
    b = DataCounters(decoded=2, drawn={"x": 1, "y": 2}, read={"y": 2}, skipped={"empty_caption": 1})
    b.count("skipped", "corrupt_image")
    b.count("shards_failed", "http_404")
    total = a + b
    assert (total.decoded, total.kept) == (7, 4)
    assert total.drawn == {"x": 7, "y": 2} and total.read == {"x": 9, "y": 2}
    assert total.skipped == {"empty_caption": 2, "corrupt_image": 1}
    assert total.filtered == {"balance": 3} and total.shards_failed == {"http_404": 1}
    assert total.transport == {"retries": 2}
    assert (total.bad, total.seen) == (3, 10)
    assert a.skipped == {"empty_caption": 1} and a.decoded == 5  # `+` leaves its operands alone
    assert DataCounters.total([a, b, DataCounters()]) == total
    snap = a.copy()
    a.count("drawn", "x")
    assert snap.drawn == {"x": 6}  # a batch's snapshot does not move with its stream


def test_flat_names_round_trip_and_zero_counts_are_not_listed():
    c = DataCounters(decoded=3, drawn={"s": 4}, read={"s": 5}, skipped={"corrupt_image": 1})
    c.transport.update(retries=2, shards_from_cache=1)
    c.count("shards_failed", "not_a_tar")
    flat = c.as_flat()
    assert flat == {
        "decoded": 3,
        "drawn/s": 4,
        "read/s": 5,
        "retries": 2,
        "shards_failed/not_a_tar": 1,
        "shards_from_cache": 1,
        "skipped/corrupt_image": 1,
    }
    assert "kept" not in c and c.get("kept", 0) == 0 and c["skipped/corrupt_image"] == 1
    assert dict(c) == flat and DataCounters.from_flat(flat) == c
    assert pickle.loads(pickle.dumps(c)) == c  # how a dataloader worker hands it over


@pytest.mark.parametrize("workers", [0, 2])
def test_kept_never_exceeds_decoded_and_the_counts_add_up_in_every_log_line(tmp_path, workers):
    """Also: the metric names and counts equal the base's for this stream (this test and
    test_metric_names_and_counts_equal_the_base_for_filtered_corrupt_and_empty_samples read the same
    stream; merged, every assertion of both kept)."""
    loader = _filtered_corrupt_empty_stream(tmp_path, workers)
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
    counters = loader.counters()
    assert isinstance(counters, DataCounters)
    metrics = checked_data_counters(loader, max_bad_fraction=0.9)
    if workers == 0:  # one stream, seeded: the very counts the base logged
        assert metrics == BASE_METRICS
    else:  # two streams read different shards: the same names, counts that add up
        assert set(metrics) == set(BASE_METRICS)
        assert counters.seen == counters.drawn["shards"] and counters.kept == 80


def test_the_bad_fraction_check_reads_skipped_reasons_from_the_object(tmp_path):
    loader = _filtered_corrupt_empty_stream(tmp_path)
    with deadline(120):
        for _ in itertools.islice(loader, 20):
            pass
    # 55 of 135 judged samples failed: fine at 0.5, a DataError naming the reasons at 0.3
    checked_data_counters(loader, max_bad_fraction=0.5)
    with pytest.raises(DataError, match=r"55 of the last 135 .*skipped/corrupt_image.*max_bad_fraction=0.3"):
        checked_data_counters(loader, max_bad_fraction=0.3)


def test_the_data_state_holds_no_counters_and_a_resumed_loader_counts_from_zero(tmp_path):
    whole = _filtered_corrupt_empty_stream(tmp_path)
    with deadline(120):
        expected = [b["keys"] for b in itertools.islice(whole, 15)][10:]
    loader = _filtered_corrupt_empty_stream(tmp_path)
    with deadline(120):
        for _ in itertools.islice(loader, 10):
            pass
    state = pickle.loads(pickle.dumps(loader.state_dict()))
    assert set(state) == BASE_DATA_STATE_KEYS  # the shape a base checkpoint's data state has
    resumed = _filtered_corrupt_empty_stream(tmp_path, state=state)
    with deadline(120):
        assert [b["keys"] for b in itertools.islice(resumed, 5)] == expected
    c = resumed.counters()
    assert c.kept == 20 and c.decoded >= 20 and c.decoded + c.bad == c.drawn["shards"]
    assert set(c.skipped) <= {"corrupt_image", "empty_caption"}
