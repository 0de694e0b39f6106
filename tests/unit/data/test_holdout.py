"""Held-out shards (data.sources.<name>.holdout, data.holdout): they leave the training listing and never
reach a training batch; the validation pairs read from them are the same every time, in proportion to the
sources, and filtered as training is; a glob that matches nothing, or one that holds out every shard, is one
line naming the key."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bmca_clip.config import DataConfig, PretrainConfig, SourceConfig, to_object
from bmca_clip.data.filters import FilterConfig
from bmca_clip.data.heldout import read_heldout
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.sources import resolve_sources, split_holdout
from bmca_clip.data.transforms import FastEvalTransform
from bmca_clip.errors import ConfigError, DataError
from bmca_clip.train.resume import plan_resume
from tests.helpers.config import compose_config, tiny_train_overrides
from tests.helpers.loaders import first_batch_keys, tiny_loader

IMAGE_FN = FastEvalTransform(32)  # uint8, as the validator's from_open_clip(model, is_train=False)
URLS = [f"/data/train/{sub}/{i:06d}.tar" for sub in ("commercial", "other") for i in range(3)]


def test_a_shard_is_held_out_by_file_name_or_path_tail_with_braces_and_joins():
    train, held = split_holdout("data.holdout", URLS, "000001.tar")
    assert held == ["/data/train/commercial/000001.tar", "/data/train/other/000001.tar"]
    assert train == [u for u in URLS if u not in held]
    _, held = split_holdout("data.holdout", URLS, "commercial/{000000,000002}.tar::other/*2.tar")
    assert held == [URLS[0], URLS[2], URLS[5]]
    assert split_holdout("data.holdout", URLS, None) == (URLS, [])


def test_a_glob_that_matches_no_shard_is_one_line_naming_the_key_and_a_real_name():
    with pytest.raises(DataError) as err:
        split_holdout("data.sources.commercial.holdout", URLS, "0001.tar")
    message = str(err.value)
    assert "\n" not in message
    assert "data.sources.commercial.holdout='0001.tar'" in message and "'000000.tar'" in message


def test_holding_out_every_shard_of_a_source_is_refused():
    with pytest.raises(DataError, match=r"holds out all 6 shards of the source, leaving none to train on"):
        split_holdout("data.holdout", URLS, "*.tar")


def test_data_holdout_with_named_sources_is_refused():
    with pytest.raises(ConfigError, match=r"data.holdout.*data.sources.<name>.holdout"):
        DataConfig(sources={"a": SourceConfig(shards="x")}, holdout="000000.tar")


def _sources_cfg(corpus, **held) -> DataConfig:
    train = corpus / "train"
    sources = {
        sub: SourceConfig(shards=str(train / sub), weight=w, holdout=held.get(sub))
        for sub, w in (("commercial", 3.0), ("noncommercial", 1.0))
    }
    return DataConfig(sources=sources, num_workers=0, shuffle_buffer=20, shuffle_initial=5, resampled=False)


def test_held_out_shards_never_appear_in_training_batches(corpus):
    """Two passes over the non-resampled stream: every training shard is read, none of the held-out ones."""
    cfg = _sources_cfg(corpus, commercial="000000.tar", noncommercial="000001.tar")
    sources = resolve_sources(cfg, HttpPolicy())
    held = {s.name: s.heldout for s in sources}
    assert [len(s.urls) for s in sources] == [
        len(list((corpus / "train" / s.name).glob("*.tar"))) - 1 for s in sources
    ]
    pairs = read_heldout(sources, cfg, IMAGE_FN, 10_000)
    held_keys = {k.split("/", 1)[1] for k in pairs.keys}
    assert len(held_keys) == 200  # both held-out shards, 100 pairs each
    assert held == {
        "commercial": [str(corpus / "train/commercial/000000.tar")],
        "noncommercial": [str(corpus / "train/noncommercial/000001.tar")],
    }
    trained = {k for batch in first_batch_keys(tiny_loader(cfg, batch_size=50), 40) for k in batch}
    assert len(trained) > 900  # both passes read every training shard
    assert not trained & held_keys


def test_the_validation_pairs_are_the_same_every_call_in_proportion_to_the_sources(corpus):
    cfg = _sources_cfg(corpus, commercial="00000[01].tar", noncommercial="000000.tar")
    sources = resolve_sources(cfg, HttpPolicy())
    first, again = read_heldout(sources, cfg, IMAGE_FN, 80), read_heldout(sources, cfg, IMAGE_FN, 80)
    assert first.keys == again.keys and first.captions == again.captions
    assert bool((first.images == again.images).all())
    assert first.images.dtype == torch.uint8 and len(first.images) == 80  # the eval transform's pixels
    names = [k.split("/")[0] for k in first.keys]
    assert names.count("commercial") == 60 and names.count("noncommercial") == 20  # weights 3 : 1
    # Inside a source the held-out shards take turns: both commercial shards give pairs.
    one = _sources_cfg(corpus, commercial="000000.tar", noncommercial="000000.tar")
    only_first = set(read_heldout(resolve_sources(one, HttpPolicy()), one, IMAGE_FN, 80).keys)
    commercial = {k for k in first.keys if k.startswith("commercial/")}
    assert commercial & only_first and commercial - only_first


def test_the_validation_pairs_pass_data_filter_as_training_samples_do(corpus):
    cfg = _sources_cfg(corpus, commercial="000000.tar", noncommercial="000000.tar")
    kept = DataConfig(sources=cfg.sources, filter=FilterConfig(include_primary=["Microscopy"]), num_workers=0)
    sources = resolve_sources(kept, HttpPolicy())
    pairs = read_heldout(sources, kept, IMAGE_FN, 10_000)
    everything = read_heldout(sources, cfg, IMAGE_FN, 10_000)
    assert 0 < len(pairs.keys) < len(everything.keys)
    assert set(pairs.keys) <= set(everything.keys)


def test_fewer_pairs_than_asked_when_the_held_out_shards_hold_fewer(corpus):
    cfg = _sources_cfg(corpus, noncommercial="000000.tar")
    pairs = read_heldout(resolve_sources(cfg, HttpPolicy()), cfg, IMAGE_FN, 1000)
    assert len(pairs.keys) == 100 and all(k.startswith("noncommercial/") for k in pairs.keys)


def test_a_change_of_held_out_shards_is_a_data_stream_change_and_val_settings_are_applied(corpus, tmp_path):
    def resolved(**extra):
        cfg = compose_config("pretrain", tiny_train_overrides(corpus, tmp_path, **extra))
        return to_object(cfg, PretrainConfig)

    old = OmegaConf.to_container(OmegaConf.structured(resolved()), resolve=True)
    with pytest.raises(
        ConfigError, match=r"resume: data.holdout None -> 000000.tar would change which samples"
    ):
        plan_resume(old, resolved(**{"data.holdout": "000000.tar"}), step=3, old_world=1, world=1)
    plan = plan_resume(
        old, resolved(**{"val.every_steps": 7, "val.samples": 50}), step=3, old_world=1, world=1
    )
    assert plan.changed == {"val.every_steps": [1000, 7], "val.samples": [1000, 50]}
    assert not plan.reset_data
