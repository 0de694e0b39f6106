"""Seeded percentile bootstrap over test items, or over clusters of items: resample counts, intervals,
and their JSON record. Knows no metric: a statistic maps resample counts to values, and every metric
is one (weighted.py: a metric given counts [r, n] as weights scores the r resamples).

Items that are not independent (crops of one image, captions of one image, images of one patient) are
resampled as whole clusters (`Clusters`, `cluster_counts`): as many clusters as there are, drawn with
replacement, each bringing all its items (the cluster bootstrap). Without clusters, items are drawn one
by one. The same inputs and seed always give the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BOOTSTRAP_RESAMPLES = 1000  # resamples behind every confidence interval of a run
BOOTSTRAP_SEED = 0  # fixed, so the same predictions always give the same interval


class UndefinedInterval(ValueError):
    """Too many resamples where the statistic is undefined for the interval to mean much."""


# Bootstrap. A statistic maps resample counts [r, C] (float32) over C categories of items to values [r]
# (float64; NaN where undefined in a resample). Categories are single items, or groups of items that
# every metric treats alike (same label, prediction, top-k hits, score): resampling those with their
# sizes as weights has the same distribution as resampling the items one by one, with far fewer random
# draws (a few hundred categories, not 50k items). Clusters likewise: those holding the same number of
# items of each category are interchangeable, so the draws are over these cluster types.
Statistic = Callable[[Tensor], Tensor]
CI_METHOD = "percentile bootstrap"
CI_LEVEL = 0.95
_MAX_UNDEFINED_SHARE = 0.05  # more undefined resamples than this and the interval means little
_CHUNK_ELEMENTS = 1 << 22  # counts are drawn in chunks of ~4M cells (32 MB)


def resample_counts(sizes: Tensor, n_resamples: int, seed: int, width: int = 0) -> Iterator[Tensor]:
    """Bootstrap resamples as counts [r, C] of each category (of sizes[c] items), in chunks: n =
    sizes.sum() items drawn with replacement per resample. The same (sizes, seed) gives the same counts.
    width: the widest array a chunk's counts become downstream (cluster_counts), to size the chunks."""
    n, n_categories = int(sizes.sum()), len(sizes)
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n, n_categories, width))
    # Few categories: one multinomial draw per category (cost r x C). Many (AUROC's score groups): draw
    # items and count them per category (cost r x n, but ~4x cheaper per draw than a binomial).
    # Counts are float32: exact up to 2**24 items, and half the memory traffic of float64.
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    owner = torch.arange(n_categories, dtype=torch.int32).repeat_interleave(sizes)  # item -> category
    for start in range(0, n_resamples, per_chunk):
        r = min(per_chunk, n_resamples - start)
        if 4 * n_categories < n:
            yield torch.from_numpy(rng.multinomial(n, (sizes / n).double().numpy(), size=r)).float()
        else:
            drawn = torch.randint(n, (r, n), generator=generator, dtype=torch.int32)
            drawn = drawn if n_categories == n else owner[drawn]
            drawn += n_categories * torch.arange(r, dtype=torch.int32)[:, None]
            yield torch.bincount(drawn.flatten(), minlength=r * n_categories).view(r, -1).float()


def group_ids(values: Sequence) -> Tensor:
    """Cluster ids [n] (0, 1, ... in order of first appearance) of per-item group values, e.g. the
    strings of a task's group_column."""
    index: dict = {}
    return torch.tensor([index.setdefault(v, len(index)) for v in values], dtype=torch.long)


@dataclass(frozen=True)
class Clusters:
    """Which cluster each item belongs to, for a cluster bootstrap, and what a cluster is."""

    ids: Tensor  # [n] cluster id of each item (group_ids)
    name: str  # what one cluster is: "image", or the task's source.group_column

    @classmethod
    def of(cls, values: Sequence, name: str) -> Clusters:
        return cls(group_ids(values), name)

    @property
    def unit(self) -> str:
        return f"cluster ({self.name})"  # the CI record's unit: what one bootstrap draw brings in


def _cluster_types(category: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Clusters holding the same number of items of each category are interchangeable in a resample:
    (clusters of each type [T], and the composition of each type as (type, category, items) triples)."""
    pairs, mult = torch.unique(torch.stack([groups, category], dim=1), dim=0, return_counts=True)
    signatures: dict[int, list] = {}
    for (group, cat), m in zip(pairs.tolist(), mult.tolist(), strict=True):
        signatures.setdefault(group, []).append((cat, m))
    # Sorted signatures: single-item clusters come in category order, so that clusters of one item
    # each, or of k copies of one item, draw exactly what the item bootstrap of one copy draws.
    kinds = sorted(set(map(tuple, signatures.values())))
    kind_index = {kind: t for t, kind in enumerate(kinds)}
    sizes = torch.bincount(
        torch.tensor([kind_index[tuple(s)] for s in signatures.values()]), minlength=len(kinds)
    )
    triples = torch.tensor([(t, cat, m) for t, kind in enumerate(kinds) for cat, m in kind], dtype=torch.long)
    return sizes, triples[:, 0], triples[:, 1], triples[:, 2]


def cluster_counts(category: Tensor, groups: Tensor | None, n_resamples: int, seed: int) -> Iterator[Tensor]:
    """Bootstrap resamples as counts [r, C] of the items of each category (category[i] of item i), in
    chunks. Without groups, the n items are drawn with replacement. With groups (groups[i]: item i's
    cluster id), as many clusters as there are are drawn with replacement and each brings all its items:
    the cluster bootstrap, for items that are not independent (crops or captions of one image, images of
    one patient). One item per cluster gives exactly the item bootstrap's counts."""
    if groups is not None and groups.shape != category.shape:
        raise ValueError(f"cluster ids {tuple(groups.shape)} do not align with the {len(category)} items")
    n_categories = int(category.max()) + 1
    if groups is None:
        yield from resample_counts(torch.bincount(category, minlength=n_categories), n_resamples, seed)
        return
    sizes, kind, cat, items = _cluster_types(category, groups)
    for drawn in resample_counts(sizes, n_resamples, seed, width=max(len(cat), n_categories)):
        # A drawn cluster type adds its items to their categories; float32 sums of integers are exact.
        yield drawn.new_zeros(len(drawn), n_categories).index_add_(1, cat, drawn[:, kind] * items.float())


def percentile_interval(values: Tensor, level: float = CI_LEVEL) -> tuple[float, float]:
    """(low, high) quantiles of the defined (non-NaN) resample values, linear interpolation like numpy."""
    defined = values[~values.isnan()].double()
    undefined = values.numel() - defined.numel()
    if defined.numel() == 0 or undefined > _MAX_UNDEFINED_SHARE * values.numel():
        raise UndefinedInterval(
            f"undefined in {undefined} of {values.numel()} bootstrap resamples "
            "(a class too rare to appear in every resample)"
        )
    quantiles = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(defined, quantiles).tolist()
    return low, high


def ci_record(
    low: float | None, high: float | None, unit: str, n_resamples: int, seed: int, reason: str | None = None
) -> dict:
    """The JSON form of an interval (report.py's `ci`); low and high are None, with a reason, when
    the interval is undefined."""
    return {
        "low": low,
        "high": high,
        "level": CI_LEVEL,
        "method": CI_METHOD,
        "unit": unit,  # what is resampled: "item", "query", or "cluster (<what>)" (cluster_counts)
        "n_resamples": n_resamples,
        "seed": seed,
        "reason": reason,
    }


def bootstrap_intervals(
    stats: dict[str, Statistic],
    category: Tensor,
    unit: str,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Tensor | None = None,
) -> dict[str, dict]:
    """ci_record of each statistic, all on the same resamples of the items (category[i]: item i's
    category), or of their clusters when groups (cluster ids [n]) are given (cluster_counts)."""
    if n_resamples <= 0 or not stats:
        return {}
    values: dict[str, list[Tensor]] = {name: [] for name in stats}
    for counts in cluster_counts(category, groups, n_resamples, seed):
        for name, stat in stats.items():
            values[name].append(stat(counts))
    out = {}
    for name, chunks in values.items():
        try:
            low, high = percentile_interval(torch.cat(chunks))
        except UndefinedInterval as exc:
            out[name] = ci_record(None, None, unit, n_resamples, seed, reason=str(exc))
        else:
            out[name] = ci_record(low, high, unit, n_resamples, seed)
    return out
