"""Declarative sample filters and per-concept sampling weights over BIOMEDICA's `json` metadata.

(Schema only so far; the logic is being written.)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FilterConfig:
    """Which samples to keep. Empty lists and null bounds keep everything."""

    include_primary: list[str] = field(default_factory=list)  # keep if any image_primary_label is listed
    exclude_primary: list[str] = field(default_factory=list)  # drop if any image_primary_label is listed
    include_secondary: list[str] = field(default_factory=list)  # same, over image_secondary_label
    exclude_secondary: list[str] = field(default_factory=list)
    panel_types: list[str] = field(default_factory=list)  # image_panel_type values to keep (single, multiple)
    licences: list[str] = field(default_factory=list)  # article_license values to keep
    min_caption_chars: int = 0
    max_caption_chars: int | None = None
    min_image_side: int = 0  # shorter side of image_size, in pixels
    max_image_side: int | None = None  # longer side of image_size
    fields: dict[str, list[str]] = field(default_factory=dict)  # any json field by name: the values to keep


@dataclass
class BalanceConfig:
    """Per-concept sampling weights: a sample is kept with probability weight / max(weights)."""

    concept_field: str = "image_primary_label"  # the json field whose labels carry the weights
    weights: dict[str, float] = field(default_factory=dict)  # concept -> relative weight; empty = no balancing
    default_weight: float = 1.0  # weight of concepts not listed
