"""data.shards_in_flight (data/pool.py): a stream reads several shards of a source at once, round robin
sample by sample, and still resumes exactly, reads every sample once per pass, yields with one shard in
flight exactly what it did before the pool, and resumes a position saved before the pool with more."""

from __future__ import annotations

import hashlib

import pytest
import webdataset as wds
from omegaconf import OmegaConf

from bmca_clip.config import DataConfig, PretrainConfig, SourceConfig, to_object
from bmca_clip.data.filters import FilterConfig
from bmca_clip.errors import ConfigError, DataError
from bmca_clip.train.resume import plan_resume
from tests.helpers.config import compose_config
from tests.helpers.loaders import first_batch_keys, tiny_loader
from tests.helpers.shards import deadline, jpeg

SIZES = (13, 7, 20, 4, 11, 9, 16)  # uneven: slots end their shards at different times


def _shards(folder, name: str, sizes=SIZES, every_third_fails: bool = False) -> str:
    """Shards of `sizes` samples keyed name_shard_index; captions of every third sample fail a 5-char
    filter when asked (so the __seen__ counts behind natural mixing are exercised)."""
    folder.mkdir(parents=True)
    jpg = jpeg()
    for s, size in enumerate(sizes):
        with wds.TarWriter(str(folder / f"{s:06d}.tar")) as sink:
            for i in range(size):
                txt = "x" if every_third_fails and i % 3 == 0 else f"figure {s} panel {i}"
                sink.write({"__key__": f"{name}_{s}_{i:02d}", "jpg": jpg, "txt": txt})
    return str(folder)


def _cfg(tmp_path, **kw) -> DataConfig:
    values = dict(train_shards=_shards(tmp_path / "a", "a"), shuffle_buffer=8, shuffle_initial=4)
    values.update(num_workers=0, resampled=False, shards_in_flight=3)
    return DataConfig(**{**values, **kw})


def _two_sources(tmp_path, **kw) -> DataConfig:
    """Two filtered sources mixed naturally: positions carry slots and the mixer's (seen, kept) counts."""
    sources = {
        "a": SourceConfig(shards=_shards(tmp_path / "a", "a", every_third_fails=True), weight=90),
        "b": SourceConfig(shards=_shards(tmp_path / "b", "b", (10, 30, 5, 12)), weight=57),
    }
    values = dict(sources=sources, filter=FilterConfig(min_caption_chars=5), mixing="natural")
    values.update(shuffle_buffer=7, shuffle_initial=3, num_workers=0, resampled=False)
    return DataConfig(**{**values, **kw})


def _keys(cfg: DataConfig, n_batches: int, batch_size: int = 5, state=None):
    loader = tiny_loader(cfg, batch_size=batch_size, state=state)
    with deadline(60):
        batches = first_batch_keys(loader, n_batches)
    return batches, loader.state_dict()


@pytest.mark.parametrize("resampled", [False, True])
def test_a_pool_resumes_exactly_at_any_cut(tmp_path, resampled):
    """Cuts inside shards, at slot changes and past a pass end (80 samples of 80 per pass): the resumed
    loader yields what the uninterrupted one did, and ends at the same position."""
    cfg = _two_sources(tmp_path, shards_in_flight=3, resampled=resampled)
    full, full_state = _keys(cfg, 24)
    positions = full_state["positions"]["0"]["sources"]
    assert all(isinstance(p, dict) and len(p["slots"]) == 3 for p in positions), positions
    for cut in (1, 6, 11, 17):
        first, state = _keys(cfg, cut)
        rest, rest_state = _keys(cfg, 24 - cut, state=state)
        assert first + rest == full, cut
        assert rest_state["positions"] == full_state["positions"], cut


def test_a_pool_resumes_exactly_across_dataloader_workers(tmp_path):
    """Two workers (two streams), 2 shards in flight each: 7 batches, a checkpoint, 9 more == 16 in one go
    (7 is odd: the first batch after the resume is due from the second worker)."""
    cfg = _two_sources(tmp_path, shards_in_flight=2, num_workers=2, resampled=True)
    full, full_state = _keys(cfg, 16)
    first, state = _keys(cfg, 7)
    rest, rest_state = _keys(cfg, 9, state=state)
    assert first + rest == full and rest_state["positions"] == full_state["positions"]


def test_every_sample_once_per_pass_with_several_shards_in_flight(tmp_path):
    """Epochs: 80 samples in 7 uneven shards, 3 in flight; the first 80 samples are each sample once, the
    next 80 too (a slot that would start pass two waits for the others), and they come mixed: the first
    15 samples hold samples of 3 shards, not one."""
    cfg = _cfg(tmp_path)
    batches, _ = _keys(cfg, 32)
    keys = [k for b in batches for k in b]
    every = sorted(f"a_{s}_{i:02d}" for s, size in enumerate(SIZES) for i in range(size))
    assert sorted(keys[:80]) == every and sorted(keys[80:]) == every
    assert len({k.split("_")[1] for k in keys[:15]}) == 3
    one, _ = _keys(_cfg(tmp_path / "one", shards_in_flight=1), 3)
    assert len({k.split("_")[1] for b in one for k in b}) <= 2  # one shard at a time (and its successor)


def _fingerprint(batches, state) -> str:
    text = repr([batches, state["positions"], state["next_stream"]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("resampled", "expected"),
    # Written by the code before the pool (commit 394b21f) on this very corpus: keys, positions, turn.
    [(False, "18e81ab24df0691a"), (True, "b7304b7640c10081")],
)
def test_one_shard_in_flight_yields_what_the_stream_did_before_the_pool(tmp_path, resampled, expected):
    batches, state = _keys(_two_sources(tmp_path, shards_in_flight=1, resampled=resampled), 20, batch_size=6)
    assert all(len(p) == 2 and not isinstance(p, dict) for p in state["positions"]["0"]["sources"])
    assert _fingerprint(batches, state) == expected


def test_a_position_from_before_the_pool_resumes_a_wider_pool_without_loss_or_repeat(tmp_path):
    """A checkpoint written with one shard at a time ((shard, taken) per source) resumed with 3 in flight:
    the pass goes on with its shard in the first slot and the next shards in the others."""
    old = _cfg(tmp_path, shards_in_flight=1)
    first, state = _keys(old, 3)  # 15 samples: inside the first shard of 13 or past it
    assert not isinstance(state["positions"]["0"]["sources"][0], dict)  # (shard, taken), as before the pool
    rest, _ = _keys(_cfg(tmp_path / "new", train_shards=old.train_shards), 13, state=state)
    keys = [k for b in first + rest for k in b]
    every = sorted(f"a_{s}_{i:02d}" for s, size in enumerate(SIZES) for i in range(size))
    assert sorted(keys) == every  # 80 samples: the whole first pass, each once


def test_the_pool_is_no_wider_than_a_pass_and_the_key_is_checked(tmp_path):
    """Two shards and 8 in flight: two slots, each with half the buffer; a slot count that does not match
    the checkpoint's, and shards_in_flight=0, are one line each."""
    cfg = _cfg(tmp_path, train_shards=_shards(tmp_path / "two", "t", (6, 6)), shards_in_flight=8)
    batches, state = _keys(cfg, 4, batch_size=6)
    assert len(state["positions"]["0"]["sources"][0]["slots"]) == 2
    assert sorted(k for b in batches[:2] for k in b) == sorted(
        f"t_{s}_{i:02d}" for s in (0, 1) for i in range(6)
    )
    bad = {
        **state["positions"]["0"],
        "sources": [{"next": 3, "slots": [(0, 1)] * 3, "turn": 0, "carry": [0] * 3}],
    }
    with pytest.raises(DataError, match="holds 3 shards in flight, this run reads 2"):
        _keys(cfg, 1, state={**state, "positions": {"0": bad}})
    with pytest.raises(ConfigError, match="data.shards_in_flight"):
        DataConfig(shards_in_flight=0)


def _resolved(**overrides) -> dict:
    values = {"model": "bmca-tiny", "data": "local", "data.train_shards": "/data/shards", **overrides}
    cfg = to_object(compose_config("pretrain", [f"{k}={v}" for k, v in values.items()]), PretrainConfig)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def test_resume_takes_the_key_as_a_stream_setting_and_a_checkpoint_without_it_as_the_default(tmp_path):
    """train/resume.py: a checkpoint from before the key resumes at the default (its (shard, taken)
    positions go on in the pool, above); changing the key changes which samples come next: refused."""
    old = _resolved()
    del old["data"]["shards_in_flight"]
    assert plan_resume(old, _resolved(), step=3, old_world=1, world=1).changed == {}
    three, two = _resolved(**{"data.shards_in_flight": 3}), _resolved(**{"data.shards_in_flight": 2})
    with pytest.raises(ConfigError, match="data.shards_in_flight 3 -> 2 would change which samples"):
        plan_resume(three, two, step=3, old_world=1, world=1)
