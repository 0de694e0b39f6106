"""Metadata filters, concept balancing and the BIOMEDICA data presets behave as their docs and comments say."""

from __future__ import annotations

import json
import time
from collections import Counter

import braceexpand
import numpy as np
import pytest
import webdataset as wds

from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.data import biomedica as bm
from bmca_clip.data.filters import BalanceConfig, FilterConfig, FilterStats
from bmca_clip.data.mixing import source_probabilities
from bmca_clip.data.predicates import ConceptBalancer, MetadataFilter, key_uniform, parse_metadata
from bmca_clip.data.synthetic import write_corpus
from tests.helpers.config import CONF, compose_config

PRESETS = sorted(p.stem for p in (CONF / "data").glob("biomedica*.yaml"))
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


@pytest.fixture(scope="module")
def synthetic_samples(tmp_path_factory) -> list[dict]:
    """Every sample of a tiny synthetic corpus, read back from its tar shards with webdataset."""
    out = tmp_path_factory.mktemp("filters") / "synthetic"
    summary = write_corpus(
        out, train_samples=60, samples_per_shard=30, eval_samples=6, min_size=24, max_size=48
    )
    urls = [url for subset in summary["train"].values() for url in subset["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False))


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


@pytest.mark.parametrize("key", ["include_primary", "exclude_primary"])
def test_misspelled_concept_names_the_key_and_the_closest_concept(key):
    MetadataFilter(
        FilterConfig(**{key: ["Microscopy ", " clinical  imaging"]})
    )  # whitespace and case are fine
    with pytest.raises(ValueError) as err:
        FilterConfig(**{key: ["Micrsocopy"]})  # fails when the config is built, not per sample
    message = str(err.value)
    assert (
        f"data.filter.{key}" in message
        and "'Micrsocopy'" in message
        and "did you mean 'Microscopy'" in message
    )


def test_unknown_secondary_label_or_licence_only_warns():
    with pytest.warns(UserWarning, match="data.filter.include_secondary.*did you mean 'confocal microscopy'"):
        filt = MetadataFilter(FilterConfig(include_secondary=["confocal microscopyy"]))
    assert filt.reason(_meta(image_secondary_label=["Confocal Microscopyy"]), CAPTION) is None
    with pytest.warns(UserWarning, match="data.filter.licences"):
        MetadataFilter(FilterConfig(licences=["CC BY 4.0"]))


@pytest.mark.parametrize(
    "config, words",
    [
        (dict(panel_types=["singel"]), ["data.filter.panel_types", "'single'"]),
        (dict(fields={"article_text": ["x"]}), ["data.filter.fields.article_text", "parse_metadata"]),
        (dict(min_caption_chars=-1), ["data.filter.min_caption_chars"]),
        (dict(min_image_side=64, max_image_side=32), ["data.filter.max_image_side", "min_image_side=64"]),
    ],
)
def test_bad_filter_values_fail_naming_the_key(config, words):
    with pytest.raises(ValueError) as err:
        FilterConfig(**config)
    assert all(word in str(err.value) for word in words)


def test_misspelled_concept_fails_at_compose_time_through_hydra():
    overrides = ["data=biomedica_concept_filtered", "data.filter.include_primary=[Micrsocopy]"]
    with pytest.raises(ValueError, match="data.filter.include_primary.*did you mean 'Microscopy'"):
        to_object(compose_config("pretrain", overrides), PretrainConfig)


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


def test_balancer_active_and_validation():
    assert not ConceptBalancer(BalanceConfig()).active
    assert not ConceptBalancer(BalanceConfig(weights={"Microscopy": 1.0, "Maps": 1.0})).active
    assert ConceptBalancer(BalanceConfig(weights={"Microscopy": 0.5})).active
    with pytest.raises(ValueError, match="data.balance.weights.*did you mean 'Microscopy'"):
        BalanceConfig(weights={"Micrsocopy": 1.0})
    with pytest.raises(ValueError, match="data.balance.weights.Maps"):
        BalanceConfig(weights={"Maps": -1.0})
    with pytest.raises(ValueError, match="data.balance.default_weight=nan"):
        BalanceConfig(default_weight=float("nan"))
    with pytest.raises(ValueError, match="every weight is 0"):
        BalanceConfig(weights={"Maps": 0.0}, default_weight=0.0)
    with pytest.raises(ValueError, match="data.balance.concept_field"):
        BalanceConfig(concept_field="article_text")


# --- sources and stats ----------------------------------------------------------------------------------


def test_source_probabilities_normalise_and_switch_off_zero_weights():
    probs = source_probabilities({"commercial": 3.0, "noncommercial": 1.0, "other": 0.0})
    assert probs == pytest.approx({"commercial": 0.75, "noncommercial": 0.25, "other": 0.0})
    for bad in ({"commercial": 0.0, "other": 0.0}, {}):
        with pytest.raises(ValueError, match="data.sources"):
            source_probabilities(bad)
    with pytest.raises(ValueError, match="data.sources.other.weight"):
        source_probabilities({"commercial": 1.0, "other": -1.0})


def test_filter_stats_count_merge_and_round_trip():
    a, b = FilterStats(), FilterStats()
    for reason in (None, None, "primary_label", "balance"):
        a.add(reason)
    b.add("primary_label")
    b.add(None)
    merged = a.merge(b).as_dict()
    assert merged == {"seen": 6, "kept": 3, "dropped": {"balance": 1, "primary_label": 2}}
    assert FilterStats.from_dict(merged).as_dict() == merged


# --- presets --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_every_biomedica_preset_composes_with_the_hub_sources(preset):
    cfg = to_object(compose_config("pretrain", [f"data={preset}"]), PretrainConfig).data
    assert cfg.train_shards is None and set(cfg.sources) == set(bm.SUBSETS)
    assert cfg.mixing == "natural"  # weights are pair counts: drawn in proportion to pairs x kept fraction
    for name, source in cfg.sources.items():
        assert source.repo_id == "BIOMEDICA/biomedica_webdataset_24M" and source.subset == name
        assert source.weight == bm.SUBSET_PAIRS[name]
        assert len(list(braceexpand.braceexpand(source.pattern))) == bm.SUBSET_SHARDS[name]
    assert MetadataFilter(cfg.filter) and ConceptBalancer(cfg.balance)  # both build from every preset


def test_full_preset_keeps_everything_and_a_subset_can_be_switched_off():
    cfg = to_object(compose_config("pretrain", ["data=biomedica_full"]), PretrainConfig).data
    assert not MetadataFilter(cfg.filter).active and not ConceptBalancer(cfg.balance).active
    overrides = ["data=biomedica_concept_filtered", "data.sources.noncommercial.weight=0"]
    cfg = to_object(compose_config("pretrain", overrides), PretrainConfig).data
    probs = source_probabilities({name: s.weight for name, s in cfg.sources.items()})
    assert probs["noncommercial"] == 0.0
    assert probs["commercial"] == pytest.approx(17_607_694 / (17_607_694 + 1_109_948))


def test_filtered_preset_on_synthetic_samples_drops_charts_and_keeps_imaging(synthetic_samples):
    cfg = to_object(compose_config("pretrain", ["data=biomedica_concept_filtered"]), PretrainConfig).data
    filt, outcome = MetadataFilter(cfg.filter), Counter()
    assert filt.needs_metadata and not ConceptBalancer(cfg.balance).active
    for sample in synthetic_samples:
        meta = parse_metadata(sample["json"])
        concept, why = meta["image_primary_label"][0], filt.reason(meta, sample["txt"].decode())
        outcome[concept, why] += 1
        expected = None if concept in ("Clinical Imaging", "Microscopy") else "primary_label"
        assert why == expected, (concept, why)
    assert outcome["Plots and Charts", "primary_label"] and outcome["Clinical Imaging", None]


def _cap(pairs: list[int], size: float) -> float:
    """The cap T with sum(min(n, T)) == size: the flattest subset of that size (by bisection)."""
    low, high = 0.0, float(max(pairs))
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if sum(min(n, mid) for n in pairs) < size else (low, mid)
    return low


def test_balanced_preset_is_the_flattest_8m_subset_by_the_papers_counts():
    """From the paper's pairs per concept: the preset keeps ~8M pairs (the paper's size), every concept
    min(its pairs, one cap), so no concept outgrows the big ones (today's estimates made Chemical Structures,
    1.13M pairs kept whole, the largest concept at 14.7%)."""
    cfg = to_object(compose_config("pretrain", ["data=biomedica_concept_balanced"]), PretrainConfig).data
    balancer = ConceptBalancer(cfg.balance)
    assert balancer.active and not MetadataFilter(cfg.filter).active and cfg.balance.fixed_subset
    pairs = bm.PRIMARY_CONCEPT_PAIRS
    assert sum(pairs.values()) == pytest.approx(sum(bm.SUBSET_PAIRS.values()), rel=1e-3)  # they cover it all
    kept = {c: n * balancer.keep_probability({"image_primary_label": [c]}) for c, n in pairs.items()}
    total = sum(kept.values())
    assert total == pytest.approx(8e6, rel=0.01)
    cap = _cap(list(pairs.values()), 8e6)
    shares = {c: k / total for c, k in kept.items()}
    for concept, n in pairs.items():
        assert kept[concept] == pytest.approx(min(n, cap), rel=0.005), (concept, f"{shares[concept]:.1%}")
    assert shares["Chemical Structures"] <= shares["Plots and Charts"] * 1.005
    uncounted = set(bm.PRIMARY_CONCEPTS) - set(pairs)
    assert uncounted == {"Natural Images", "Laboratory Specimens and Cultures", "Ambiguous"}
    assert all(balancer.keep_probability({"image_primary_label": [c]}) == 1.0 for c in uncounted)


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
