"""What the sample filters and the concept balancing do to one sample, over BIOMEDICA's `json` metadata.

- `parse_metadata(raw)`: the `json` member as a dict, without the heavy article fields.
- `MetadataFilter(cfg).reason(meta, caption)`: None to keep a sample, else a stable reason (`REASONS`).
- `ConceptBalancer(cfg).accept(meta, u)`: keep with probability weight / max weight, given a uniform draw `u`
  from the caller; `key_uniform(key, seed)` makes that draw a function of the sample, so a fixed subset passes.

`cfg` is filters.py's FilterConfig or BalanceConfig (not imported here: their `__post_init__` builds these
classes to validate themselves). Both classes validate their config once (a misspelled concept fails naming
the key and the closest names) and then do only set lookups per sample: they run on every streamed sample.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterable

from bmca_clip.data import biomedica as bm
from bmca_clip.errors import ConfigError

# Reasons returned by MetadataFilter.reason (plus `field:<name>`), and the one for a balancing rejection.
REASONS = (
    "caption_length",
    "primary_label",
    "secondary_label",
    "panel_type",
    "licence",
    "image_size",
    "missing_metadata",
    "balance",
)
PANEL_TYPES = ("single", "multiple")
_HEAVY = frozenset(bm.HEAVY_FIELDS)
_LICENCES = tuple(licence for licences in bm.SUBSETS.values() for licence in licences)


@functools.lru_cache(maxsize=8192)
def _norm(value: str) -> str:
    """Case- and whitespace-insensitive form of a label; cached because a few hundred labels repeat."""
    return " ".join(value.split()).casefold()


def _labels(value) -> tuple[str, ...]:
    """A label field (a list, or a single string) as normalised strings."""
    if isinstance(value, str):
        return (_norm(value),)
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v if isinstance(v, str) else str(v)) for v in value if v is not None)
    return (_norm(str(value)),)


def parse_metadata(raw: bytes | str) -> dict:
    """The sample's `json` member as a dict, without HEAVY_FIELDS (the article text never travels further)."""
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"metadata json is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"metadata json is a {type(meta).__name__}, not an object")
    for name in _HEAVY:
        meta.pop(name, None)
    return meta


def _suggest(value: str, known: Iterable[str]) -> str:
    by_norm = {_norm(k): k for k in known}
    close = difflib.get_close_matches(_norm(value), list(by_norm), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(by_norm[c]) for c in close)}? " if close else ""
    return f"{hint}Known: {', '.join(by_norm.values())}"


def _vocab_set(key: str, values: Iterable, known: tuple[str, ...], what: str, strict: bool) -> frozenset:
    """Normalised set of configured names; unknown names fail (strict) or warn (open vocabularies)."""
    out, vocab = set(), {_norm(k) for k in known}
    for value in values:
        name = _norm(str(value))
        if not name:
            raise ConfigError(f"{key}: empty name {value!r}; remove it from the list")
        if name not in vocab:
            message = f"{key}: {str(value)!r} is not a known {what}; {_suggest(str(value), known)}"
            if strict:
                raise ConfigError(message)
            warnings.warn(message + " (kept: this vocabulary is open-ended)", UserWarning, stacklevel=3)
        out.add(name)
    return frozenset(out)


def _check_field_name(key: str, name: str) -> None:
    if name in _HEAVY:
        raise ConfigError(f"{key}: {name!r} is dropped by parse_metadata (too large); choose another field")
    if name not in bm.METADATA_FIELDS:
        warnings.warn(
            f"{key}: {name!r} is not a BIOMEDICA metadata field, so samples without it are dropped as "
            f"missing_metadata; {_suggest(name, bm.METADATA_FIELDS)}",
            UserWarning,
            stacklevel=3,
        )


def _check_bounds(key: str, low: int, high: int | None) -> None:
    if low < 0:
        raise ConfigError(f"data.filter.min_{key}={low} is invalid: expected an integer >= 0")
    if high is not None and high < low:
        raise ConfigError(f"data.filter.max_{key}={high} is below data.filter.min_{key}={low}; raise it")


Check = Callable[[dict, str], "str | None"]


def _label_check(name: str, include: frozenset, exclude: frozenset, reason: str) -> Check:
    def check(meta: dict, caption: str) -> str | None:
        value = meta.get(name)
        if value is None:
            return "missing_metadata"
        labels = _labels(value)
        if include and include.isdisjoint(labels):
            return reason
        if exclude and not exclude.isdisjoint(labels):
            return reason
        return None

    return check


class MetadataFilter:
    """Keeps or drops one sample by its metadata and caption; built once per stream from a FilterConfig."""

    def __init__(self, cfg):  # a FilterConfig
        self.cfg, key = cfg, "data.filter."
        primary = [
            _vocab_set(key + k, getattr(cfg, k), bm.PRIMARY_CONCEPTS, "BIOMEDICA global concept", True)
            for k in ("include_primary", "exclude_primary")
        ]
        secondary = [
            _vocab_set(key + k, getattr(cfg, k), bm.SECONDARY_CONCEPTS, "local concept", False)
            for k in ("include_secondary", "exclude_secondary")
        ]
        panels = _vocab_set(key + "panel_types", cfg.panel_types, PANEL_TYPES, "image_panel_type", True)
        licences = _vocab_set(key + "licences", cfg.licences, _LICENCES, "article_license", False)
        _check_bounds("caption_chars", cfg.min_caption_chars, cfg.max_caption_chars)
        _check_bounds("image_side", cfg.min_image_side, cfg.max_image_side)
        for name in cfg.fields:
            _check_field_name(f"{key}fields.{name}", name)
        # Only the checks the config asks for, cheapest first: the caption needs no parsed json at all.
        checks: list[Check] = []
        by_caption = bool(cfg.min_caption_chars or cfg.max_caption_chars is not None)
        if by_caption:
            checks.append(self._caption_length)
        if any(primary):
            checks.append(_label_check("image_primary_label", *primary, "primary_label"))
        if any(secondary):
            checks.append(_label_check("image_secondary_label", *secondary, "secondary_label"))
        if panels:
            checks.append(_label_check("image_panel_type", panels, frozenset(), "panel_type"))
        if licences:
            checks.append(_label_check("article_license", licences, frozenset(), "licence"))
        if cfg.min_image_side or cfg.max_image_side is not None:
            checks.append(self._image_size)
        for name, values in cfg.fields.items():
            if values:  # an empty list keeps everything, like every other empty list here
                wanted = frozenset(_norm(str(v)) for v in values)
                checks.append(_label_check(name, wanted, frozenset(), f"field:{name}"))
        self._checks = tuple(checks)
        self._needs_metadata = len(checks) > by_caption

    @property
    def active(self) -> bool:
        """False when the config keeps everything: the pipeline can skip this filter (and the json)."""
        return bool(self._checks)

    @property
    def needs_metadata(self) -> bool:
        """False when only the caption is checked: reason() then accepts an empty dict for meta."""
        return self._needs_metadata

    def reason(self, meta: dict, caption: str) -> str | None:
        """None to keep the sample, else why it is dropped (a REASONS name or `field:<name>`)."""
        for check in self._checks:
            why = check(meta, caption)
            if why is not None:
                return why
        return None

    def _caption_length(self, meta: dict, caption: str) -> str | None:
        n, high = len(caption.strip()), self.cfg.max_caption_chars
        if n < self.cfg.min_caption_chars or (high is not None and n > high):
            return "caption_length"
        return None

    def _image_size(self, meta: dict, caption: str) -> str | None:
        try:
            width, height = meta["image_size"]
            short, long = (width, height) if width <= height else (height, width)
        except (KeyError, TypeError, ValueError):  # absent, null, not a pair, not numbers
            return "missing_metadata"
        high = self.cfg.max_image_side
        if short < self.cfg.min_image_side or (high is not None and long > high):
            return "image_size"
        return None


class ConceptBalancer:
    """Keeps a sample with probability weight(concept) / max weight, to flatten the concept distribution."""

    def __init__(self, cfg):  # a BalanceConfig
        self.cfg, key = cfg, "data.balance"
        _check_field_name(f"{key}.concept_field", cfg.concept_field)
        named = {f"{key}.weights.{name}": w for name, w in cfg.weights.items()}
        for name, weight in {**named, f"{key}.default_weight": cfg.default_weight}.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"{name}={weight!r} is invalid: expected a float >= 0")
        vocab = {
            "image_primary_label": (bm.PRIMARY_CONCEPTS, True),
            "image_secondary_label": (bm.SECONDARY_CONCEPTS, False),
        }
        if cfg.concept_field in vocab:
            known, strict = vocab[cfg.concept_field]
            _vocab_set(f"{key}.weights", cfg.weights, known, f"{cfg.concept_field} value", strict)
        # default_weight counts towards the maximum so that every probability stays <= 1.
        top = max([*cfg.weights.values(), cfg.default_weight])
        if top <= 0:
            raise ConfigError(
                f"{key}: every weight is 0, so nothing would be kept; give some concept a weight > 0"
            )
        self._probs = {_norm(str(k)): w / top for k, w in cfg.weights.items()}
        self._default = cfg.default_weight / top

    @property
    def active(self) -> bool:
        """False when every concept is kept with probability 1 (no weights, or all equal)."""
        return any(p < 1 for p in (*self._probs.values(), self._default))

    def keep_probability(self, meta: dict) -> float:
        """weight / max weight of the sample's concept; several concepts take the largest weight."""
        value = meta.get(self.cfg.concept_field)
        if value is None:
            return self._default
        # The MAX, not the mean or min: labels are per cluster and noisy, and a figure that is both
        # Microscopy and a chart still carries the microscopy we balance towards; it must not be rejected
        # for the chart it also holds.
        probs = [self._probs.get(label, self._default) for label in _labels(value)]
        return max(probs) if probs else self._default

    def accept(self, meta: dict, u: float) -> bool:
        """Keep the sample, given a uniform draw u in [0, 1) from the caller (see key_uniform)."""
        return u < self.keep_probability(meta)


def key_uniform(key: str, seed: int) -> float:
    """A uniform draw in [0, 1) fixed by (seed, sample key): balancing then selects the same subset on every
    pass and every resume, like the paper's fixed 8M subset. Python's hash() of a str is salted per process."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
