"""The filter and balance config (bmca_clip/data/filters.py) and the BIOMEDICA data presets: bad values fail
when the config is built naming the key, source weights normalise, filter stats merge, and every preset
composes into the subset its comments describe."""

from __future__ import annotations

from collections import Counter

import braceexpand
import pytest

from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.data import biomedica as bm
from bmca_clip.data.filters import BalanceConfig, FilterConfig, FilterStats
from bmca_clip.data.mixing import source_probabilities
from bmca_clip.data.predicates import ConceptBalancer, MetadataFilter, parse_metadata
from tests.helpers.config import CONF, compose_config

PRESETS = sorted(p.stem for p in (CONF / "data").glob("biomedica*.yaml"))


# --- FilterConfig and BalanceConfig: bad values fail when the config is built ---------------------------


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
