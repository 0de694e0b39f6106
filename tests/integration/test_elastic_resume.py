"""Elastic resume with real torchrun (gloo): a data position saved on W ranks x K workers continues on
W' x K' with every logical stream where it stopped, so nothing of the pass is lost or repeated."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.config import REPO, tiny_train_overrides
from tests.helpers.elastic import assert_streams_continue, by_stream, elastic_data, write_keyed_corpus
from tests.helpers.torchrun import torchrun

WORKER = REPO / "tests/helpers/elastic_worker.py"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """12 shards of 4: at most 12 logical streams, each reading whole shards of its own."""
    folder = write_keyed_corpus(tmp_path_factory.mktemp("keyed"), shards=12, per_shard=4)
    return folder, {f"{s:02d}_{i:02d}" for s in range(12) for i in range(4)}


def _phase(out, corpus, world, workers, streams, batches, more=0, state=None) -> tuple[list[str], list[str]]:
    """Under torchrun: the keys of the first `batches` batches of every rank, and of all batches + more."""
    out.mkdir()
    args = [WORKER, out, corpus, batches, more, workers, streams, *([state] if state else [])]
    proc = torchrun(*args, nproc=world)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"keys{r}.json").read_text()) for r in range(world)]
    return [k for r in ranks for b in r[:batches] for k in b], [k for r in ranks for b in r for k in b]


@pytest.mark.parametrize(
    "before, after, streams",
    [
        ((2, 1, 3), (1, 1, 10), 0),  # 2 ranks -> 1: L = 2 x 1, one worker takes both streams
        ((1, 2, 4), (3, 1, 4), 6),  # 1 rank -> 3: data.streams=6, two streams per rank after
        ((2, 1, 3), (2, 2, 5), 4),  # data.num_workers 1 -> 2 on 2 ranks: 2 streams per worker, then 1
    ],
    ids=["2-to-1-ranks", "1-to-3-ranks", "1-to-2-workers"],
)
def test_every_logical_stream_continues_where_it_stopped_on_another_topology(
    tmp_path, keyed, before, after, streams
):
    """(ranks, workers, batches per rank) before and after the resume. Per logical stream, the keys of
    both phases are that stream's own sequence and agree with the uninterrupted run's (the first phase
    read on without stopping); the first pass over all streams is the corpus once, as uninterrupted."""
    corpus, corpus_keys = keyed
    world, workers, batches = before
    more = -(-after[0] * after[2] // world)  # at least as many samples as the resumed phase reads
    seen, whole = _phase(tmp_path / "a", corpus, world, workers, streams, batches, more)
    saved = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    logical = sum(r["num_streams"] for r in saved["data"]["ranks"])
    assert logical == (streams or world * workers)
    world, workers, batches = after
    seen += _phase(
        tmp_path / "b", corpus, world, workers, streams, batches, state=tmp_path / "a" / "state.pt"
    )[0]
    assert_streams_continue(seen, elastic_data(corpus), logical, corpus_keys)
    assert_streams_continue(whole, elastic_data(corpus), logical, corpus_keys)
    resumed, straight = by_stream(seen, logical), by_stream(whole, logical)
    for s in range(logical):
        n = min(len(resumed[s]), len(straight[s]))
        assert resumed[s][:n] == straight[s][:n], f"logical stream {s}"


def test_train_py_saved_on_two_ranks_resumes_on_one_and_refuses_three_in_one_line(corpus, tmp_path):
    run = tmp_path / "run"
    floor = {"optim.lr_min": 1e-6}  # the schedule can be extended at the resume
    overrides = tiny_train_overrides(corpus, run, **{"train.steps": 3, "checkpoint.every_steps": 3}, **floor)
    proc = torchrun("train.py", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]

    more = tiny_train_overrides(corpus, run, **{"train.steps": 5, "checkpoint.every_steps": 5}) + [
        "resume=latest"
    ]
    proc = torchrun("train.py", *more, nproc=3)  # L = 2 ranks x 1: a third rank would have no stream
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if "logical streams" in line]
    assert refusals and all(line.startswith("error: resume:") and "data.streams" in line for line in refusals)
    assert not (run / "checkpoints" / "step_00000005.pt").exists()

    proc = torchrun("train.py", *more, nproc=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: world size 2 -> 1 applied" in proc.stderr
    state = torch.load(run / "checkpoints" / "step_00000005.pt", weights_only=True)
    assert state["step"] == 5 and len(state["data"]["ranks"]) == 1
    position = state["data"]["ranks"][0]
    # The one rank holds both logical streams: 3 steps x 16 each before, then 2 steps x 16 shared.
    assert position["num_streams"] == 2
    assert sum(p["sample"] for p in position["positions"].values()) == 2 * 3 * 16 + 2 * 16
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in logged if s > 3] == [4, 5]
