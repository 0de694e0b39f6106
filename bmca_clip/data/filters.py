"""Configuration of the sample filters and the concept balancing (`data.filter`, `data.balance`), and their
counts.

The BIOMEDICA paper trained on "concept-filtered" and "concept-balanced" subsets without releasing the code;
here both are configuration (presets in `conf/data/`). The dataclasses are the config schema (config.py
registers them); predicates.py holds what applies them to a sample, and validates them here, in
`__post_init__`, so that a misspelled concept fails when the config is composed, naming the key and the
closest names. `FilterStats`: kept and dropped counts per reason, mergeable across workers and ranks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bmca_clip.data.predicates import ConceptBalancer, MetadataFilter


@dataclass
class FilterConfig:
    """Which samples to keep. Empty lists and null bounds keep everything."""

    include_primary: list[str] = field(default_factory=list)  # keep if any image_primary_label is listed
    exclude_primary: list[str] = field(default_factory=list)  # drop if any image_primary_label is listed
    include_secondary: list[str] = field(default_factory=list)  # same, over image_secondary_label
    exclude_secondary: list[str] = field(default_factory=list)  # drop if any image_secondary_label is listed
    panel_types: list[str] = field(default_factory=list)  # image_panel_type values to keep (single, multiple)
    licences: list[str] = field(default_factory=list)  # article_license values to keep
    min_caption_chars: int = 0  # drop captions shorter than this many characters
    max_caption_chars: int | None = None  # drop captions longer than this; null = no limit
    min_image_side: int = 0  # shorter side of image_size, in pixels
    max_image_side: int | None = None  # longer side of image_size
    fields: dict[str, list[str]] = field(default_factory=dict)  # any json field by name: the values to keep

    def __post_init__(self):
        MetadataFilter(self)  # validates: a typo fails when the config is built, not hours into streaming


@dataclass
class BalanceConfig:
    """Per-concept sampling weights: a sample is kept with probability weight / max(weights)."""

    concept_field: str = "image_primary_label"  # the json field whose labels carry the weights
    weights: dict[str, float] = field(
        default_factory=dict
    )  # concept -> relative weight; empty = no balancing
    default_weight: float = 1.0  # weight of concepts not listed
    fixed_subset: bool = True  # u = key_uniform(__key__, seed): the same samples pass on every visit

    def __post_init__(self):
        ConceptBalancer(self)


@dataclass
class FilterStats:
    """Samples kept, and dropped per reason; one per stream, merged for logging."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str | None) -> None:
        """Count one sample: None = kept, else the reason it was dropped."""
        if reason is None:
            self.kept += 1
        else:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    @property
    def seen(self) -> int:
        return self.kept + sum(self.dropped.values())

    def merge(self, other: FilterStats) -> FilterStats:
        """Add other's counts into this one (in place) and return self."""
        self.kept += other.kept
        for reason, n in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        return self

    def as_dict(self) -> dict:
        """Plain counts for logs and checkpoints; from_dict reads them back."""
        return {"seen": self.seen, "kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}

    @classmethod
    def from_dict(cls, data: Mapping) -> FilterStats:
        return cls(
            kept=int(data.get("kept", 0)), dropped={k: int(v) for k, v in data.get("dropped", {}).items()}
        )
