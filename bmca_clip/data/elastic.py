"""Logical streams: the data position of a run, independent of how many ranks and workers read it.

A run reads a fixed number L of logical streams (data.streams; 0 = world size x max(1, data.num_workers)
of the run that starts fresh). Logical stream l is stream.py's SampleStream with stream=l, num_streams=L:
its samples depend on (seed, l, L, sources, data settings), never on the topology.

Rank r of W holds the contiguous block of logical streams l with l * W // L == r (a rank gets floor or
ceil of L / W of them); its j-th stream (local index j) runs on dataloader worker j % K, K = the rank's
workers, at most its number of streams. With L = W x K each worker holds one stream, l = r x K + worker:
today's streams, bit for bit. A checkpoint keeps, per rank, `positions` keyed by local index and
`num_streams`, the number of logical streams the rank held: the ranks' blocks are contiguous, so
rank r's stream j is l = (sum of num_streams of the ranks before it) + j, and L is their sum. A checkpoint
from before logical streams (num_streams = workers per rank) reads the same way, as l = r x K + worker.
"""

from __future__ import annotations

from bmca_clip.config import DataConfig
from bmca_clip.errors import DataError

STREAMS_ADVICE = "set data.streams to a multiple of the largest world size x data.num_workers expected"


def default_streams(cfg: DataConfig, world_size: int) -> int:
    """L for a run that starts a fresh data stream: data.streams, or world size x max(1, num_workers)."""
    return cfg.streams or world_size * max(1, cfg.num_workers)


def checkpoint_streams(ranks: list[dict]) -> int:
    """L of a checkpoint's data state (state["data"]["ranks"])."""
    return sum(r["num_streams"] for r in ranks)


def check_world(streams: int, world_size: int) -> None:
    if world_size > streams:
        raise DataError(
            f"the data stream has {streams} logical streams (data.streams) and this run {world_size} "
            f"ranks: each rank needs at least one; {STREAMS_ADVICE} (a resume keeps the checkpoint's)"
        )


def rank_streams(streams: int, world_size: int, rank: int) -> range:
    """The logical streams rank `rank` of `world_size` holds, in local order."""
    check_world(streams, world_size)
    return range(-(-rank * streams // world_size), -(-(rank + 1) * streams // world_size))


def worker_groups(num_local: int, num_workers: int) -> list[list[int]]:
    """The rank's local stream indices per dataloader worker (one group when data.num_workers=0)."""
    workers = min(max(1, num_workers), num_local)
    return [list(range(g, num_local, workers)) for g in range(workers)]


def gather_positions(ranks: list[dict]) -> dict[int, dict]:
    """Logical stream -> position, the union of every rank's positions (streams that never produced a
    batch are absent: they start at their beginning)."""
    out, offset = {}, 0
    for state in ranks:
        out.update({offset + int(j): pos for j, pos in state["positions"].items()})
        offset += state["num_streams"]
    return out


def redistribute(ranks: list[dict], rank: int, world_size: int, same_workers: bool) -> dict:
    """This rank's data state (TrainLoader.state_dict's shape) from a checkpoint's `ranks`: its own when
    the topology is unchanged (same ranks, same workers: the batch order resumes too), else its block
    of the union of all ranks' positions, starting with its first worker."""
    if len(ranks) == world_size and same_workers:
        return ranks[rank]
    positions = gather_positions(ranks)
    mine = rank_streams(checkpoint_streams(ranks), world_size, rank)
    return {
        "positions": {str(j): positions[s] for j, s in enumerate(mine) if s in positions},
        "next_stream": 0,
        "num_streams": len(mine),
        "sources": ranks[0]["sources"],
        "commits": ranks[0].get("commits", {}),
    }
