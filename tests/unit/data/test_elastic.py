"""Logical streams (bmca_clip/data/elastic.py): which rank and worker reads which, how a checkpoint's
positions (old ones too) are gathered and handed out again, and that the same topology is today's stream."""

from __future__ import annotations

import itertools

import pytest

from bmca_clip.config import DataConfig
from bmca_clip.data.elastic import (
    default_streams,
    gather_positions,
    rank_streams,
    redistribute,
    worker_groups,
)
from bmca_clip.errors import DataError
from tests.helpers.elastic import assert_streams_continue, elastic_data, stream_keys, write_keyed_corpus
from tests.helpers.loaders import tiny_loader
from tests.helpers.shards import deadline


@pytest.mark.parametrize("world, workers", [(1, 1), (2, 1), (2, 3), (4, 2)])
def test_with_as_many_streams_as_readers_each_worker_reads_todays_stream(world, workers):
    """L = ranks x workers: rank r's worker w reads logical stream r x K + w, as before logical streams."""
    cfg = DataConfig(num_workers=workers)
    streams = default_streams(cfg, world)
    assert streams == world * workers
    for rank in range(world):
        mine = rank_streams(streams, world, rank)
        assert list(mine) == [rank * workers + w for w in range(workers)]
        assert worker_groups(len(mine), workers) == [[w] for w in range(workers)]


@pytest.mark.parametrize("streams, world", [(12, 1), (12, 5), (7, 3), (6, 6), (16, 3)])
def test_every_logical_stream_has_one_rank_and_ranks_share_them_evenly(streams, world):
    blocks = [list(rank_streams(streams, world, r)) for r in range(world)]
    assert [s for block in blocks for s in block] == list(range(streams))  # contiguous, each once
    assert {len(b) for b in blocks} <= {streams // world, -(-streams // world)}


def test_a_rank_runs_no_more_workers_than_it_has_streams_and_workers_share_them_round_robin():
    assert worker_groups(2, 4) == [[0], [1]]
    assert worker_groups(5, 2) == [[0, 2, 4], [1, 3]]
    assert worker_groups(3, 0) == [[0, 1, 2]]  # data.num_workers=0: the main process reads them all
    assert DataConfig(streams=8).streams == 8 and default_streams(DataConfig(streams=8), 3) == 8


def test_more_ranks_than_logical_streams_is_refused_in_one_line_naming_data_streams():
    with pytest.raises(DataError) as err:
        rank_streams(2, 3, 0)
    message = str(err.value)
    assert "data.streams" in message and "multiple of the largest" in message
    assert len(message.splitlines()) == 1


def _pos(n: int) -> dict:
    return {"sample": n, "sources": [(0, n)]}


def _rank(positions: dict, held: int, next_stream: int = 0) -> dict:
    return {
        "positions": {str(j): p for j, p in positions.items()},
        "next_stream": next_stream,
        "num_streams": held,
        "sources": ["train"],
        "commits": {"train": None},
    }


def test_an_old_checkpoint_reads_as_logical_streams_rank_times_workers_plus_worker():
    """Before logical streams a rank saved its workers' positions keyed 0..K-1 and num_streams=K."""
    old = [_rank({0: _pos(10), 1: _pos(11)}, 2), _rank({0: _pos(20), 1: _pos(21)}, 2)]
    assert gather_positions(old) == {0: _pos(10), 1: _pos(11), 2: _pos(20), 3: _pos(21)}
    # On 1 rank it holds all four; on 3 ranks (blocks of 2, 1, 1) the positions follow their streams.
    assert redistribute(old, 0, 1, same_workers=True)["positions"] == {
        str(s): _pos(n) for s, n in enumerate([10, 11, 20, 21])
    }
    three = [redistribute(old, r, 3, same_workers=True) for r in range(3)]
    assert [r["num_streams"] for r in three] == [2, 1, 1]
    assert [r["positions"] for r in three] == [
        {"0": _pos(10), "1": _pos(11)},
        {"0": _pos(20)},
        {"0": _pos(21)},
    ]
    assert all(r["next_stream"] == 0 for r in three)  # no batch order to continue across topologies


def test_the_same_topology_gets_its_own_state_back_and_a_stream_never_read_starts_at_zero():
    ranks = [_rank({0: _pos(3)}, 2, next_stream=1), _rank({1: _pos(4)}, 2, next_stream=1)]
    assert redistribute(ranks, 1, 2, same_workers=True) is ranks[1]  # the batch order continues too
    other = redistribute(ranks, 1, 2, same_workers=False)  # same ranks, other workers: regrouped
    assert other["positions"] == {"1": _pos(4)} and other["next_stream"] == 0
    assert gather_positions(ranks) == {0: _pos(3), 3: _pos(4)}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    folder = write_keyed_corpus(tmp_path_factory.mktemp("keyed"), shards=8, per_shard=6)
    return folder, {f"{s:02d}_{i:02d}" for s in range(8) for i in range(6)}


def test_one_stream_per_worker_is_todays_stream_bit_for_bit(keyed):
    """With the default L each worker's batches are its own SampleStream (stream = worker, L = workers)."""
    cfg = elastic_data(keyed[0], num_workers=2)
    with deadline(120):
        batches = [b["keys"] for b in itertools.islice(tiny_loader(cfg, batch_size=4), 6)]
    per_worker = [sum(batches[w::2], []) for w in range(2)]
    assert per_worker == [stream_keys(cfg, w, 2, 12) for w in range(2)]


@pytest.mark.parametrize("workers, resumed_workers", [(2, 2), (2, 0), (2, 3)])
def test_several_streams_per_worker_resume_exactly_and_across_a_change_of_workers(
    keyed, workers, resumed_workers
):
    """data.streams=4: a worker interleaves its streams; a resume on the same workers repeats the
    uninterrupted batches, one on other workers continues every logical stream where it stopped."""
    cfg = elastic_data(keyed[0], num_workers=workers, streams=4)
    with deadline(240):
        whole = [b["keys"] for b in itertools.islice(tiny_loader(cfg, batch_size=4), 10)]
        loader = tiny_loader(cfg, batch_size=4)
        first = [b["keys"] for b in itertools.islice(loader, 5)]
        state = redistribute([loader.state_dict()], 0, 1, same_workers=workers == resumed_workers)
        again = elastic_data(keyed[0], num_workers=resumed_workers, streams=4)
        rest = [
            b["keys"] for b in itertools.islice(tiny_loader(again, batch_size=4, state=state, streams=4), 16)
        ]
    assert first == whole[:5]
    if workers == resumed_workers:
        assert rest[:5] == whole[5:]
    assert_streams_continue(sum(first + rest, []), cfg, 4, keyed[1])
