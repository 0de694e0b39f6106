"""Mixing sources after the filters: `data.mixing=weights` draws the kept samples in the weights' shares,
`data.mixing=natural` in the natural proportions of what survives the filter (raw pair count x kept
fraction, the fraction estimated per stream as it reads), and a resumed stream draws exactly what the
uninterrupted one would, estimates included."""

from __future__ import annotations

import io
import math

import torch
import webdataset as wds
from PIL import Image

import bmca_clip.train.run as train_mod
from bmca_clip.checkpoint import list_checkpoints, load_checkpoint
from bmca_clip.config import DataConfig, PretrainConfig, SourceConfig, to_object
from bmca_clip.data.filters import FilterConfig
from tests.helpers.config import compose_config, tiny_train_overrides
from tests.helpers.loaders import first_batch_keys, tiny_loader

PASS, FAIL = "a caption long enough", "x"  # data.filter.min_caption_chars=5 keeps the first only


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (30, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def _source(folder, name: str, passes_per_5: int, shards: int = 2, per_shard: int = 100) -> str:
    """Shards of one source whose samples pass the caption filter at rate passes_per_5 / 5."""
    folder.mkdir(parents=True)
    jpg = _jpeg()
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{s:06d}.tar")) as sink:
            for i in range(per_shard):
                txt = PASS if i % 5 < passes_per_5 else FAIL
                sink.write({"__key__": f"{name}_{s}_{i:03d}", "jpg": jpg, "txt": txt})
    return str(folder)


def _two_sources(tmp_path, **kw) -> DataConfig:
    """Sources a and b of equal size (weight = pair count), a keeps 80% of its pairs and b 20%."""
    sources = {
        "a": SourceConfig(shards=_source(tmp_path / "a", "a", 4), weight=200),
        "b": SourceConfig(shards=_source(tmp_path / "b", "b", 1), weight=200),
    }
    values = dict(
        filter=FilterConfig(min_caption_chars=5),
        num_workers=0,
        shuffle_buffer=20,
        shuffle_initial=5,
        mixing_prior_samples=10,
    )
    return DataConfig(sources=sources, **(values | kw))


def _keys(cfg: DataConfig, batches: int, batch_size: int = 50, state=None):
    loader = tiny_loader(cfg, batch_size=batch_size, state=state)
    out = first_batch_keys(loader, batches)
    return out, loader.state_dict() | {"counters": loader.counters()}


def _share_of_a(batches) -> tuple[float, int]:
    keys = [k for batch in batches for k in batch]
    return sum(k.startswith("a_") for k in keys) / len(keys), len(keys)


def _within_sampling_error(observed: float, expected: float, n: int) -> bool:
    """|observed - expected| below 4 binomial standard errors (a false alarm about once in 16,000 runs)."""
    return abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_natural_mixing_draws_the_filtered_data_in_its_natural_proportions(tmp_path):
    """80 kept pairs of a for every 20 of b: natural mixing draws a 80% of the time, not 50%."""
    batches, state = _keys(_two_sources(tmp_path, mixing="natural"), 40)
    share, n = _share_of_a(batches)
    assert _within_sampling_error(share, 0.8, n), (share, n)
    counters = state["counters"]  # logged as data/drawn/<source> and data/read/<source>
    assert counters["drawn/a"] + counters["drawn/b"] == n
    for source, passes in (("a", 0.8), ("b", 0.2)):  # exact but for the part-read shard (100 pairs)
        assert abs(counters[f"drawn/{source}"] - passes * counters[f"read/{source}"]) <= 100, counters


def test_weights_mixing_draws_kept_samples_in_the_weights_shares(tmp_path):
    """data.mixing=weights: a weight is the source's share of the samples drawn, whatever its filter keeps."""
    share, n = _share_of_a(_keys(_two_sources(tmp_path, mixing="weights"), 40)[0])
    assert _within_sampling_error(share, 0.5, n), (share, n)


def test_natural_mixing_resumes_exactly_with_its_estimates(tmp_path):
    """13 batches, a checkpoint, 17 more == 30 uninterrupted, with the estimates of both workers' streams
    restored from the state; dropping them (back to the prior) would change what is drawn."""
    cfg = _two_sources(tmp_path, mixing="natural", num_workers=2)
    full, full_state = _keys(cfg, 30, batch_size=8)
    first, state = _keys(cfg, 13, batch_size=8)  # odd: the next batch is due from the second worker
    rest, rest_state = _keys(cfg, 17, batch_size=8, state=state)
    assert first + rest == full
    assert rest_state["positions"] == full_state["positions"]
    seen_kept = [pair for p in state["positions"].values() for pair in p["mixing"]]
    assert all(kept > 0 and seen > kept for seen, kept in seen_kept)  # both sources drop some, per stream

    forgetful = {
        **state,
        "positions": {k: {**p, "mixing": [(0, 0), (0, 0)]} for k, p in state["positions"].items()},
    }
    assert _keys(cfg, 17, batch_size=8, state=forgetful)[0] != rest


def test_train_py_with_natural_mixing_resumes_to_the_same_weights(corpus, tmp_path):
    """Through train.run and its checkpoints (weights_only): 6 steps == 3, a crash, resume=latest, 3 more,
    with the synthetic corpus's three subsets mixed naturally under a concept filter."""
    subsets = {name: corpus / "train" / name for name in ("commercial", "noncommercial", "other")}
    extra = {"data.train_shards": "null", "data.mixing": "natural", "data.mixing_prior_samples": 10}
    extra["data.filter.include_primary"] = "[Clinical Imaging,Microscopy]"
    extra["+data.sources"] = (
        "{" + ",".join(f"{n}:{{shards:'{f}',weight:100}}" for n, f in subsets.items()) + "}"
    )

    def run(**more):
        overrides = tiny_train_overrides(corpus, tmp_path, **extra, **more)
        train_mod.run(to_object(compose_config("pretrain", overrides), PretrainConfig))

    run()
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    uninterrupted = load_checkpoint(ckpts[-1])
    ckpts[-1].unlink()
    run(resume="latest")
    resumed = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])
    assert resumed["data"] == uninterrupted["data"]
    assert len(resumed["data"]["ranks"][0]["positions"]["0"]["mixing"]) == 3
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
