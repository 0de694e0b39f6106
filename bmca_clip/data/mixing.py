"""Which source a stream draws its next sample from: `data.mixing` gives the source weights their meaning.

- `weights`: source i is drawn with probability weight_i / sum(weights). Sources are drawn AFTER their
  filters, so a weight is the source's share of the samples trained on, whatever its filter keeps.
- `natural`: weight_i is the source's raw pair count (before any filter), and source i is drawn with
  probability proportional to weight_i x kept_i, where kept_i is the fraction of its pairs that survive
  data.filter and data.balance. That is the natural proportions of the filtered data: the mix an
  epoch over the filtered union of the sources would have. Without a filter it equals `weights`.

kept_i is not known in advance (it depends on the filter and on each subset's concept mix: clinical imaging
is 14% of BIOMEDICA's noncommercial pairs but 6% of its commercial ones), so each stream estimates it from
the pairs it has read: kept_i = (kept + m) / (seen + m), a prior of 1.0 worth m = data.mixing_prior_samples
pairs. Every stream (rank x dataloader worker) keeps its own counts, counted when a sample is consumed (not
when the shuffle buffer reads ahead), so the counts are part of the stream's position and a resumed stream
draws exactly what the uninterrupted one would have. Estimates differ a little between streams early on;
they all converge to the same fractions.

`source_probabilities(weights)` turns `data.sources.<name>.weight` into the shares the mixer starts from.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence

from bmca_clip.errors import ConfigError

MIXINGS = ("weights", "natural")


class SourceMixer:
    """Picks sources from uniform draws; counts (seen, kept) pairs per source for `natural` mixing."""

    def __init__(
        self,
        probabilities: Sequence[float],
        mixing: str = "weights",
        prior_samples: int = 100,
        counts: Sequence[Sequence[int]] | None = None,
    ):
        if mixing not in MIXINGS:
            raise ValueError(f"data.mixing={mixing!r} is not allowed; choose one of: {', '.join(MIXINGS)}")
        self.probabilities, self.natural, self.prior = list(probabilities), mixing == "natural", prior_samples
        counts = counts or [(0, 0)] * len(self.probabilities)
        self.seen = [int(seen) for seen, _ in counts]
        self.kept = [int(kept) for _, kept in counts]
        self._cumulative = [sum(self.probabilities[: i + 1]) for i in range(len(self.probabilities))]

    def pick(self, u: float) -> int:
        """The source of the next sample, for a uniform draw u in [0, 1)."""
        if not self.natural:
            cumulative, total = self._cumulative, 1.0
        else:
            scores = [p * f for p, f in zip(self.probabilities, self.kept_fractions(), strict=True)]
            cumulative = [sum(scores[: i + 1]) for i in range(len(scores))]
            total = cumulative[-1]
        return min(bisect.bisect_right(cumulative, u * total), len(cumulative) - 1)

    def observe(self, source: int, seen: int) -> None:
        """Source `source` gave one kept sample, after `seen` pairs read (that one and those dropped)."""
        self.seen[source] += seen
        self.kept[source] += 1

    def kept_fractions(self) -> list[float]:
        """The estimated fraction of each source's pairs that survive the filters (prior 1.0)."""
        return [(k + self.prior) / (s + self.prior) for s, k in zip(self.seen, self.kept, strict=True)]

    def state(self) -> list[tuple[int, int]]:
        """(seen, kept) per source: the `counts` that continue this mixer exactly."""
        return list(zip(self.seen, self.kept, strict=True))


def source_probabilities(weights: Mapping[str, float]) -> dict[str, float]:
    """Mixing probability of each source: its weight over the total (a source with weight 0 gets 0: off)."""
    for name, weight in weights.items():
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"data.sources.{name}.weight={weight!r} is invalid: expected a float >= 0")
    total = sum(weights.values())
    if total <= 0:
        names = ", ".join(weights) or "none configured"
        raise ConfigError(
            f"data.sources: no source has a weight > 0 ({names}); set data.sources.<name>.weight > 0 for one"
        )
    return {name: weight / total for name, weight in weights.items()}
