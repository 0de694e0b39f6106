"""Several shards of one source read at once (data.shards_in_flight): a pool of slots, each reading one shard
of the stream's shard sequence, drawn round robin sample by sample.

BIOMEDICA writes its shards cluster by cluster, so a stream that reads one shard at a time fills its batches
from a handful of clusters. A pool of S slots mixes S shards into every stretch of samples. A slot whose
shard ends takes the next shard number of the sequence (one counter for the pool), so within a pass every
shard is still read once; with epochs (data.resampled=false) a slot that would start the next pass waits
until the other slots have finished this one, so the first pass's samples all come before the second's.
Each slot shuffles its shard with shuffle_buffer // S samples: the pool holds what one buffer held.

The pool's position is the next shard number, each slot's (shard number, samples taken), whose turn it
is and a waiting slot's dropped pairs not yet counted (for natural mixing); a slot's shard is reopened on resume and its taken samples skipped, as with one shard. With one slot
the position is the plain (shard number, taken) of checkpoints from before the pool, and such a position
resumes a wider pool too: its shard goes on in the first slot, the next shards of the sequence fill the
others, so no sample of the pass is lost or repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bmca_clip.data.counters import DataCounters
from bmca_clip.errors import DataError, ShardError

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One shard in flight. `dropped`: pairs dropped since the slot's last kept one in this shard;
    `carry`: trailing drops of the slot's past shards, added to the `__seen__` of its next sample."""

    shard: int | None = None  # None: waiting for a shard (a fresh pool, or the end of a pass)
    taken: int = 0
    dropped: int = 0
    carry: int = 0
    got: int = 0  # samples this shard gave since it was (re)opened, or before the resume
    samples: Iterator[dict] | None = field(default=None, repr=False)


# What a SourceReader lends the pool: the kept samples of shard number `shard` for a slot (shuffled with
# the pool's buffer; it raises ShardError on a bad shard).
ShardSamples = Callable[[Slot], Iterator[dict]]


class ShardPool:
    """Slots over one source's shard sequence; `next()` is the source's next sample, `position()` where a
    pool built from it yields the same next sample."""

    def __init__(
        self,
        open_shard: ShardSamples,
        width: int,
        pass_length: int | None,
        what: str,
        max_empty: int,
        counters: DataCounters,
        position=(0, 0),
    ):
        self.open_shard, self.width, self.pass_length = open_shard, width, pass_length
        self.what, self.max_empty, self.counters = what, max_empty, counters
        self.empty_in_a_row, self.last_problem = 0, "no sample passed the filters"
        if isinstance(position, dict):
            if len(position["slots"]) != width:
                raise DataError(
                    f"{what}: the checkpoint's position holds {len(position['slots'])} shards in flight, "
                    f"this run reads {width}: resume with the old data.shards_in_flight or resume_data=reset"
                )
            self.next_shard, self.turn = position["next"], position["turn"]
            self.slots = [
                Slot(carry=carry) if s is None else Slot(s[0], s[1], got=s[1])
                for s, carry in zip(position["slots"], position["carry"], strict=True)
            ]
        else:  # (shard, taken): one slot, as before the pool; more slots take the shards after it
            shard, taken = position
            self.next_shard, self.turn = shard + 1, 0
            self.slots = [Slot(shard, taken, got=taken)] + [Slot() for _ in range(width - 1)]

    def position(self):
        if self.width == 1:
            return (self.slots[0].shard, self.slots[0].taken)
        return {
            "next": self.next_shard,
            "slots": [None if s.shard is None else (s.shard, s.taken) for s in self.slots],
            "turn": self.turn,
            # A waiting slot's trailing drops; a reading slot finds its own again when its shard is reread.
            "carry": [s.carry if s.shard is None else 0 for s in self.slots],
        }

    def next(self) -> dict:
        while True:
            slot = self.slots[self.turn]
            sample = self._from(slot) if slot.shard is not None or self._take_shard(slot) else None
            self.turn = (self.turn + 1) % self.width
            if sample is not None:
                return sample

    def _take_shard(self, slot: Slot) -> bool:
        """Give `slot` the next shard of the sequence, unless that starts a pass other slots are not done
        with (then the slot waits: False)."""
        starts_pass = self.pass_length is not None and self.next_shard % self.pass_length == 0
        if starts_pass and any(s.shard is not None for s in self.slots if s is not slot):
            slot.shard = None
            return False
        slot.shard, slot.taken, slot.got, slot.samples = self.next_shard, 0, 0, None
        self.next_shard += 1
        return True

    def _from(self, slot: Slot) -> dict | None:
        """The slot's next sample, taking the sequence's next shards as its shards end (None: it waits)."""
        while True:
            try:
                if slot.samples is None:
                    slot.samples = enumerate(self.open_shard(slot))
                for n, sample in slot.samples:
                    if n < slot.taken:
                        continue  # resuming: already consumed (and counted) before the checkpoint
                    slot.taken, slot.got = n + 1, slot.got + 1
                    sample["__seen__"] += slot.carry
                    slot.carry = 0
                    return sample
            except ShardError as err:
                self.counters.count("shards_failed", err.reason)
                self.last_problem = str(err)
                log.warning("%s", err)
            self._finish(slot)
            if not self._take_shard(slot):
                return None

    def _finish(self, slot: Slot) -> None:
        slot.carry += slot.dropped
        slot.dropped = 0
        self.empty_in_a_row = 0 if slot.got else self.empty_in_a_row + 1
        if self.empty_in_a_row >= self.max_empty:
            raise DataError(
                f"{self.what}: {self.empty_in_a_row} shards in a row gave no usable sample "
                f"(last: {self.last_problem}); check the shards, the HF token and data.filter"
            )
