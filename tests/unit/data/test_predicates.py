"""The per-sample predicates (bmca_clip/data/predicates.py) behave as their docs say: parse_metadata, each
MetadataFilter check and its drop reason, ConceptBalancer's acceptance and key_uniform's fixed subset, and
what they cost per sample."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.data import biomedica as bm
from bmca_clip.data.filters import BalanceConfig, FilterConfig
from bmca_clip.data.predicates import ConceptBalancer, MetadataFilter, key_uniform, parse_metadata
from tests.helpers.config import compose_config

CAPTION = "Representative fluorescence micrograph showing 3 green-stained cells."


def _meta(**overrides) -> dict:
    """Hand-made metadata of a single-panel microscopy figure; overrides replace fields (None removes)."""
    meta = {
        "image_primary_label": ["Microscopy"],
        "image_secondary_label": ["fluorescence microscopy"],
        "image_panel_type": "single",
        "image_size": [640, 480],
        "article_license": "CC BY",
        "article_journal": "PLoS One",
        "article_subject": ["Cell Biology", "Research Article"],
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


# --- parse_metadata ------------------------------------------------------------------------------------


def test_parse_metadata_drops_heavy_fields_of_real_samples(synthetic_samples):
    raw = synthetic_samples[0]["json"]
    assert all(name in json.loads(raw) for name in bm.HEAVY_FIELDS)  # the shard does carry them
    for sample in synthetic_samples:
        meta = parse_metadata(sample["json"])
        assert not set(bm.HEAVY_FIELDS) & set(meta)
        assert set(meta) == set(bm.METADATA_FIELDS) - set(bm.HEAVY_FIELDS)
    assert parse_metadata(raw.decode()) == parse_metadata(raw)  # str and bytes alike


@pytest.mark.parametrize(
    "raw, why", [(b"{not json", "not valid JSON"), (b"[1, 2]", "not an object"), (b"", "JSON")]
)
def test_parse_metadata_rejects_bad_json_with_a_reason(raw, why):
    with pytest.raises(ValueError, match=why):
        parse_metadata(raw)


# --- MetadataFilter --------------------------------------------------------------------------------------

CASES = [
    # (config, metadata, caption, expected reason)
    (dict(include_primary=["Microscopy"]), _meta(), CAPTION, None),
    (
        dict(include_primary=["Microscopy"]),
        _meta(image_primary_label=["Plots and Charts"]),
        CAPTION,
        "primary_label",
    ),
    (
        dict(include_primary=["Microscopy"]),
        _meta(image_primary_label=["Plots and Charts", "Microscopy"]),
        CAPTION,
        None,
    ),
    (
        dict(include_primary=["Microscopy"]),
        _meta(image_primary_label="MICROSCOPY"),
        CAPTION,
        None,
    ),  # a string
    (dict(include_primary=["Microscopy"]), _meta(image_primary_label=[]), CAPTION, "primary_label"),
    (dict(include_primary=["Microscopy"]), _meta(image_primary_label=None), CAPTION, "missing_metadata"),
    (
        dict(exclude_primary=["Tables"]),
        _meta(image_primary_label=["Microscopy", "tables"]),
        CAPTION,
        "primary_label",
    ),
    (dict(exclude_primary=["Tables"]), _meta(), CAPTION, None),
    (dict(include_secondary=["x-ray radiography"]), _meta(), CAPTION, "secondary_label"),
    (dict(include_secondary=["Fluorescence  Microscopy"]), _meta(), CAPTION, None),
    (dict(exclude_secondary=["fluorescence microscopy"]), _meta(), CAPTION, "secondary_label"),
    (dict(panel_types=["single"]), _meta(image_panel_type="multiple"), CAPTION, "panel_type"),
    (dict(panel_types=["single"]), _meta(), CAPTION, None),
    (dict(licences=["CC BY", "CC0"]), _meta(article_license="CC BY-NC"), CAPTION, "licence"),
    (dict(licences=["CC BY", "CC0"]), _meta(), CAPTION, None),
    (dict(licences=["CC BY"]), _meta(article_license=None), CAPTION, "missing_metadata"),
    (dict(min_caption_chars=20), _meta(), "Figure 1.", "caption_length"),
    (dict(min_caption_chars=20), _meta(), "   " + CAPTION, None),
    (dict(max_caption_chars=20), _meta(), CAPTION, "caption_length"),
    (dict(min_image_side=500), _meta(), CAPTION, "image_size"),  # shorter side 480
    (dict(min_image_side=480, max_image_side=640), _meta(), CAPTION, None),
    (dict(max_image_side=600), _meta(), CAPTION, "image_size"),  # longer side 640
    (dict(min_image_side=32), _meta(image_size="640x480"), CAPTION, "missing_metadata"),
    (dict(fields={"article_journal": ["PLoS One"]}), _meta(), CAPTION, None),
    (dict(fields={"article_journal": ["eLife"]}), _meta(), CAPTION, "field:article_journal"),
    (dict(fields={"article_subject": ["cell biology"]}), _meta(), CAPTION, None),  # list field: any element
    (dict(fields={"article_journal": ["eLife"]}), _meta(article_journal=None), CAPTION, "missing_metadata"),
]


@pytest.mark.parametrize("config, meta, caption, expected", CASES)
def test_each_filter_keeps_or_drops_with_its_reason(config, meta, caption, expected):
    assert MetadataFilter(FilterConfig(**config)).reason(meta, caption) == expected


def test_first_failing_check_wins_and_the_caption_is_checked_first():
    filt = MetadataFilter(FilterConfig(include_primary=["Clinical Imaging"], min_caption_chars=500))
    assert filt.reason(_meta(image_primary_label=["Tables"]), "short") == "caption_length"
    assert filt.reason(_meta(image_primary_label=["Tables"]), "x" * 500) == "primary_label"


def test_empty_config_is_inactive_and_caption_only_needs_no_json():
    keep_all = MetadataFilter(FilterConfig())
    assert not keep_all.active and keep_all.reason({}, "") is None
    caption_only = MetadataFilter(FilterConfig(min_caption_chars=5))
    assert caption_only.active and not caption_only.needs_metadata
    assert caption_only.reason({}, CAPTION) is None
    assert MetadataFilter(FilterConfig(panel_types=["single"])).needs_metadata


def test_unknown_secondary_label_or_licence_only_warns():
    with pytest.warns(UserWarning, match="data.filter.include_secondary.*did you mean 'confocal microscopy'"):
        filt = MetadataFilter(FilterConfig(include_secondary=["confocal microscopyy"]))
    assert filt.reason(_meta(image_secondary_label=["Confocal Microscopyy"]), CAPTION) is None
    with pytest.warns(UserWarning, match="data.filter.licences"):
        MetadataFilter(FilterConfig(licences=["CC BY 4.0"]))


# --- ConceptBalancer ---------------------------------------------------------------------------------------

WEIGHTS = {"Plots and Charts": 0.5, "Microscopy": 2.5, "Clinical Imaging": 5.0}


@pytest.mark.parametrize(
    "labels, expected",
    [
        (["Plots and Charts"], 0.1),
        (["Microscopy"], 0.5),
        (["Clinical Imaging"], 1.0),
        (["Maps"], 0.25),
        (None, 0.25),
    ],
)
def test_acceptance_matches_weight_over_max(labels, expected):
    balancer = ConceptBalancer(BalanceConfig(weights=WEIGHTS, default_weight=1.25))
    meta = _meta(image_primary_label=labels)
    assert balancer.keep_probability(meta) == pytest.approx(expected)
    draws = np.random.default_rng(1234).random(20_000)
    accepted = np.mean([balancer.accept(meta, u) for u in draws.tolist()])
    assert abs(accepted - expected) <= 0.02


def test_several_concepts_take_the_largest_weight():
    balancer = ConceptBalancer(BalanceConfig(weights=WEIGHTS, default_weight=0.0))
    both = _meta(image_primary_label=["Plots and Charts", "microscopy"])
    assert balancer.keep_probability(both) == pytest.approx(0.5)
    assert balancer.keep_probability(_meta(image_primary_label="Plots and Charts")) == pytest.approx(0.1)
    assert balancer.keep_probability(_meta(image_primary_label=[])) == 0.0  # default weight
    assert not balancer.accept(_meta(image_primary_label=["Maps"]), 0.0)


def test_key_uniform_is_deterministic_and_selects_a_fixed_subset():
    keys = [f"PMC{1_000_000 + i}_fig1_panel0" for i in range(20_000)]
    draws = np.array([key_uniform(k, seed=7) for k in keys])
    assert draws.min() >= 0 and draws.max() < 1 and abs(draws.mean() - 0.5) < 0.01
    assert [key_uniform(k, seed=7) for k in keys[:100]] == draws[:100].tolist()
    assert key_uniform(keys[0], seed=8) != draws[0]
    balancer = ConceptBalancer(BalanceConfig(weights=WEIGHTS))
    chart = _meta(image_primary_label=["Plots and Charts"])
    assert abs(np.mean([balancer.accept(chart, u) for u in draws.tolist()]) - 0.1) <= 0.02


def test_filter_and_balancer_cost_microseconds_per_sample(synthetic_samples):
    cfg = to_object(compose_config("pretrain", ["data=biomedica_concept_filtered"]), PretrainConfig).data
    filt = MetadataFilter(cfg.filter)
    balancer = ConceptBalancer(BalanceConfig(weights=WEIGHTS))
    metas = [parse_metadata(s["json"]) for s in synthetic_samples] * 200
    start = time.perf_counter()
    for meta in metas:
        filt.reason(meta, CAPTION)
        balancer.accept(meta, 0.5)
    per_sample = (time.perf_counter() - start) / len(metas)
    assert per_sample < 50e-6  # generous: ~2 us on a laptop core; parsing the json costs far more
