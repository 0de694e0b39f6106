"""DataCounters: what a training stream did with the data, as one typed object.

Per source, `drawn` counts the samples that passed its filters and were drawn by the mixer and `read` the
pairs read to find them (drawn / read is the fraction that passes). Each drawn sample ends `decoded` or
skipped under a reason (health.SKIP_REASONS); `kept` counts the decoded ones handed out in batches, so in
every snapshot kept <= decoded and decoded + skipped = drawn. `filtered` counts samples the metadata filter
or the concept balancer dropped (as shards are read, a shuffle buffer ahead of the rest), `shards_failed`
shards that could not be read, and `transport` what the shard reader counts (retries, shards_from_cache;
data/http.py and data/shards.py count into this dict by name).

Counters are summed across dataloader workers with `+`. The log line's names (`as_metrics`: data/decoded,
data/skipped/<reason>, data/drawn/<source>, ...) are the flat names of `as_flat`, which is also this object's
read-only dict view, so `counters["skipped/empty_caption"]` reads as it did when counters were a dict. The
view is by hand, not collections.abc.Mapping: torch's DataLoader rebuilds every Mapping a worker yields from
a plain dict of its items, which would turn the object back into strings. Counters are not part of a
checkpoint: a resumed run counts from zero, as any new loader does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

# The per-reason and per-source groups, in the order of their flat-name prefixes.
_GROUPS = ("drawn", "read", "skipped", "filtered", "shards_failed")
_TOTALS = ("decoded", "kept")


def _add(into: dict[str, int], other: Mapping[str, int]) -> None:
    for name, n in other.items():
        into[name] = into.get(name, 0) + n


@dataclass
class DataCounters:
    """The counts of one stream, or the sum of several (`a + b`); a zero count is never listed."""

    decoded: int = 0
    kept: int = 0
    drawn: dict[str, int] = field(default_factory=dict)  # source name -> samples drawn
    read: dict[str, int] = field(default_factory=dict)  # source name -> pairs read to find them
    skipped: dict[str, int] = field(default_factory=dict)  # health.SKIP_REASONS -> samples
    filtered: dict[str, int] = field(default_factory=dict)  # filter reason, `balance`, `bad_metadata`
    shards_failed: dict[str, int] = field(default_factory=dict)  # ShardError.reason -> shards
    transport: dict[str, int] = field(default_factory=dict)  # retries, shards_from_cache

    def count(self, group: str, name: str, n: int = 1) -> None:
        """Add `n` to `name` in one of the groups (drawn, read, skipped, filtered, shards_failed)."""
        counts = getattr(self, group)
        counts[name] = counts.get(name, 0) + n

    @property
    def bad(self) -> int:
        """Samples drawn that could not be decoded."""
        return sum(self.skipped.values())

    @property
    def seen(self) -> int:
        """Samples drawn and judged: decoded or skipped."""
        return self.decoded + self.bad

    def __add__(self, other: DataCounters) -> DataCounters:
        total = self.copy()
        total += other
        return total

    def __iadd__(self, other: DataCounters) -> DataCounters:
        self.decoded += other.decoded
        self.kept += other.kept
        for group in (*_GROUPS, "transport"):
            _add(getattr(self, group), getattr(other, group))
        return self

    def copy(self) -> DataCounters:
        """A snapshot that later counting does not change (a batch carries one out of its worker)."""
        return DataCounters(
            self.decoded, self.kept, *(dict(getattr(self, g)) for g in (*_GROUPS, "transport"))
        )

    @classmethod
    def total(cls, parts) -> DataCounters:
        """The sum of `parts` (the streams of a loader, the ranks of a run)."""
        out = cls()
        for part in parts:
            out += part
        return out

    def as_flat(self) -> dict[str, int]:
        """The counters under their flat names (decoded, skipped/<reason>, retries, ...), sorted, none zero."""
        flat = {name: getattr(self, name) for name in _TOTALS}
        for group in _GROUPS:
            flat.update({f"{group}/{name}": n for name, n in getattr(self, group).items()})
        flat.update(self.transport)
        return {k: n for k, n in sorted(flat.items()) if n}

    @classmethod
    def from_flat(cls, flat: Mapping[str, int]) -> DataCounters:
        """The inverse of `as_flat`: reads a dict of flat names (as a loader stub or an old log line holds)."""
        out = cls()
        for name, n in flat.items():
            group, _, rest = name.partition("/")
            if name in _TOTALS:
                setattr(out, name, getattr(out, name) + n)
            elif rest and group in _GROUPS:
                out.count(group, rest, n)
            else:
                out.transport[name] = out.transport.get(name, 0) + n
        return out

    def as_metrics(self) -> dict[str, float]:
        """The log line's data metrics: data/<flat name> -> count, as metrics.jsonl, TensorBoard and wandb
        have always named them."""
        return {f"data/{name}": float(n) for name, n in self.as_flat().items()}

    # The read-only dict view over the flat names, for code that reads counters by name.
    def __getitem__(self, name: str) -> int:
        return self.as_flat()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_flat())

    def __len__(self) -> int:
        return len(self.as_flat())

    def __contains__(self, name: object) -> bool:
        return name in self.as_flat()

    def get(self, name: str, default: int | None = None) -> int | None:
        return self.as_flat().get(name, default)

    def keys(self):
        return self.as_flat().keys()

    def items(self):
        return self.as_flat().items()

    def values(self):
        return self.as_flat().values()
