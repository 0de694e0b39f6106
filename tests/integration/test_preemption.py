"""Preemption and crashes: SIGTERM/SIGUSR1 save and exit for a requeue, also when the signal reaches every
process of the job (the DataLoader workers too, as Slurm sends it) and when the data source stalls; kill -9
loses only the steps since the last checkpoint; a corrupt newest checkpoint is skipped; wandb keeps its run
id across restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bmca_clip.checkpoint import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from bmca_clip.config import LoggerConfig, WandbConfig
from bmca_clip.tracking import MetricLogger
from bmca_clip.train.preemption import REQUEUE_EXIT_CODE
from tests.helpers.config import REPO, tiny_train_overrides
from tests.helpers.hub import FakeHub


def _start(corpus, out, **extra) -> subprocess.Popen:
    overrides = tiny_train_overrides(
        corpus, out, **{"train.steps": 10_000, "checkpoint.every_steps": 10_000, **extra}
    )
    return _launch(["train.py", *overrides])


def _launch(args: list[str]) -> subprocess.Popen:
    """In a session of its own: killpg() then reaches it and its DataLoader workers, and only them."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """stderr once proc has exited; a process still running after `timeout` is killed (with its group)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        raise AssertionError(f"still running {timeout:.0f} s after the signal:\n{stderr[-2000:]}") from None


def _run(args: list[str], timeout: float = 180) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_same_weights(a_dir, b_dir, step: int) -> None:
    name = f"checkpoints/step_{step:08d}.pt"
    a, b = load_checkpoint(a_dir / name)["model"], load_checkpoint(b_dir / name)["model"]
    assert a.keys() == b.keys()
    different = [k for k in b if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def _logged_steps(out) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError("training did not get there in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_exits_for_requeue_and_resumes_without_losing_a_step(corpus, tmp_path, sig):
    proc = _start(corpus, tmp_path)
    _wait_for(lambda: len(_logged_steps(tmp_path)) >= 3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, stderr[-2000:]
    stopped_at = _logged_steps(tmp_path)[-1]
    assert f"{sig.name} received: checkpoint saved at step {stopped_at}" in stderr
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [f"step_{stopped_at:08d}.pt"]

    overrides = tiny_train_overrides(corpus, tmp_path, **{"train.steps": stopped_at + 2, "resume": "latest"})
    done = subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _logged_steps(tmp_path) == list(range(1, stopped_at + 3))  # no step lost, none repeated


# A constant lr after warmup: a run's nominal length (10_000 steps until the signal) does not change its lrs,
# so the resumed run can be compared with an uninterrupted run of its final length.
FLAT = {"optim.schedule": "constant"}


def test_sigterm_to_the_whole_process_group_with_data_workers_saves_and_resumes_exactly(corpus, tmp_path):
    """What Slurm does on preemption: SIGTERM to every process of the job, the DataLoader workers included.
    torch's own handler in a worker dies of a SIGTERM that does not come from its parent; the main process
    then died at its next batch ("DataLoader worker ... killed by signal"), with exit 1 and no checkpoint."""
    run, workers = tmp_path / "run", {"data.num_workers": 2, **FLAT}
    proc = _start(corpus, run, **workers)
    _wait_for(lambda: len(_logged_steps(run)) >= 3)
    os.killpg(proc.pid, signal.SIGTERM)
    stderr = _finish(proc)
    assert proc.returncode == REQUEUE_EXIT_CODE, stderr[-2000:]
    stopped = _logged_steps(run)[-1]
    assert f"SIGTERM received: checkpoint saved at step {stopped}" in stderr
    assert "killed by signal" not in stderr

    _run(
        [
            "train.py",
            *tiny_train_overrides(corpus, run, **workers, **{"train.steps": stopped + 2, "resume": "latest"}),
        ]
    )
    _run(
        [
            "train.py",
            *tiny_train_overrides(corpus, tmp_path / "straight", **workers, **{"train.steps": stopped + 2}),
        ]
    )
    assert _logged_steps(run) == list(range(1, stopped + 3))  # no step lost, none repeated
    _assert_same_weights(run, tmp_path / "straight", stopped + 2)


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_with_its_workers_alive(corpus, tmp_path):
    """torchrun's agent passes a signal on to each rank's whole process group (its workers too): every rank
    finishes the same step, rank 0 saves, both exit 75, and the run resumes without losing a step."""
    run = tmp_path / "run"
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    overrides = {"data.num_workers": 2, "train.steps": 10_000, "checkpoint.every_steps": 10_000, **FLAT}
    proc = _launch([*torchrun, *tiny_train_overrides(corpus, run, **overrides)])
    _wait_for(lambda: len(_logged_steps(run)) >= 3)
    os.killpg(proc.pid, signal.SIGTERM)
    stderr = _finish(proc)
    stopped = _logged_steps(run)[-1]
    message = f"SIGTERM received: checkpoint saved at step {stopped}; exiting with {REQUEUE_EXIT_CODE}"
    assert stderr.count(message) == 2, stderr[-3000:]  # both ranks, at the same step
    assert "killed by signal" not in stderr
    state = load_checkpoint(run / "checkpoints" / f"step_{stopped:08d}.pt")
    assert state["step"] == stopped and len(state["data"]["ranks"]) == 2
    for rank in state["data"]["ranks"]:  # each rank's 2 streams took `stopped` batches between them
        assert sum(p["sample"] for p in rank["positions"].values()) >= stopped * 16

    more = {**overrides, "train.steps": stopped + 2, "resume": "latest"}
    _run([*torchrun, *tiny_train_overrides(corpus, run, **more)], timeout=240)
    assert _logged_steps(run) == list(range(1, stopped + 3))


def _hub_data(tmp_path, workers: int) -> dict:
    return {
        "data": "biomedica",
        "data.train_shards": "null",
        "data.num_workers": workers,
        "data.shuffle_buffer": 16,
        "data.shuffle_initial": 4,
        "data.cache_dir": tmp_path / "cache",
        "data.timeout_s": 600,  # the stall below outlasts the test's patience many times over
        "val.every_steps": 0,  # the preset's held-out shards unscored: one metrics line per step
        **FLAT,
    }


def _stall_mid_run(hub: FakeHub, run) -> None:
    """Once the run has logged 2 steps, the hub stops sending mid-shard; returns when a read is stalled."""

    def shard_reads() -> int:
        return sum(r["method"] == "GET" and r["path"].endswith(".tar") for r in hub.requests)

    _wait_for(lambda: len(_logged_steps(run)) >= 2)
    before = shard_reads()
    hub.fail("*.tar", "stall", seconds=3600)
    _wait_for(lambda: shard_reads() > before)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_during_a_stalled_shard_read_saves_the_last_step_at_once_and_resumes_exactly(
    corpus, tmp_path, workers
):
    """A hub that stops sending mid-shard: the read waits data.timeout_s x data.retries (110 minutes with
    the defaults) before the stream gives up. A signal must not wait for that: it saves the checkpoint of
    the last completed step (its data position, not that of a batch half read) and exits 75."""
    run, data = tmp_path / "run", _hub_data(tmp_path, workers)
    with FakeHub() as hub, hub.use():
        hub.add_dataset("BIOMEDICA/biomedica_webdataset_24M", corpus / "train")
        proc = _start(corpus, run, **data)
        _stall_mid_run(hub, run)
        os.killpg(proc.pid, signal.SIGTERM)
        stderr = _finish(proc, timeout=60)
        assert proc.returncode == REQUEUE_EXIT_CODE, stderr[-2000:]
        stopped = _logged_steps(run)[-1]
        assert f"SIGTERM received: checkpoint saved at step {stopped}" in stderr
        assert [p.name for p in list_checkpoints(run / "checkpoints")] == [f"step_{stopped:08d}.pt"]

        more = {**data, "train.steps": stopped + 2}
        _run(["train.py", *tiny_train_overrides(corpus, run, **more, resume="latest")])
        _run(["train.py", *tiny_train_overrides(corpus, tmp_path / "straight", **more)])
    assert _logged_steps(run) == list(range(1, stopped + 3))
    _assert_same_weights(run, tmp_path / "straight", stopped + 2)


def test_data_workers_stuck_in_a_stalled_read_end_when_their_training_process_is_killed(corpus, tmp_path):
    """Workers that ignore the job's signals must not outlive their training process: kill -9 of it ends
    them within seconds, even while they wait on a stalled shard (torch checks for its parent only
    between batches)."""
    run = tmp_path / "run"
    with FakeHub() as hub, hub.use():
        hub.add_dataset("BIOMEDICA/biomedica_webdataset_24M", corpus / "train")
        proc = _start(corpus, run, **_hub_data(tmp_path, 2))
        _stall_mid_run(hub, run)
        workers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(workers) == 2
        proc.kill()
        proc.wait()  # not communicate(): the workers hold its pipes open for as long as they live
        try:
            _wait_for(lambda: not any(map(_alive, workers)), timeout=60)
        finally:
            for pid in filter(_alive, workers):  # left behind by a failure: not by the next test
                os.kill(pid, signal.SIGKILL)
            proc.stdout.close()
            proc.stderr.close()


def _alive(pid: int) -> bool:
    try:  # an orphan that exited but was not reaped yet counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_loses_only_the_steps_since_the_last_checkpoint(corpus, tmp_path):
    # A constant schedule after warmup: the killed run's nominal length does not change its learning rates.
    flat = {"checkpoint.every_steps": 2, "optim.schedule": "constant"}
    proc = _start(corpus, tmp_path / "killed", **flat)
    _wait_for(lambda: (tmp_path / "killed" / "checkpoints" / "step_00000004.pt").exists())
    proc.kill()
    proc.communicate()
    newest = list_checkpoints(tmp_path / "killed" / "checkpoints")[-1]
    resumed_from = load_checkpoint(newest)["step"]
    assert resumed_from >= 4

    overrides = tiny_train_overrides(
        corpus, tmp_path / "killed", **flat, **{"train.steps": 8, "resume": "latest"}
    )
    # Every run at the killed one's thread count (_launch, _run): fp32 sums in another order differ.
    _run(["train.py", *overrides])
    straight = tiny_train_overrides(corpus, tmp_path / "straight", **flat, **{"train.steps": 8})
    _run(["train.py", *straight])
    if resumed_from < 8:  # the kill came before the end: the resumed run must equal the uninterrupted one
        a = load_checkpoint(tmp_path / "killed" / "checkpoints" / "step_00000008.pt")["model"]
        b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000008.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    for step in (2, 4):
        save_checkpoint(
            {"model": {"w": torch.full((3,), float(step))}, "step": step}, tmp_path, step, keep_last=3
        )
    newest = tmp_path / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a half-written file from a crashed copy, say
    path, state = resolve_resume("latest", tmp_path)
    assert path.name == "step_00000002.pt" and state["step"] == 2
    assert "step_00000004.pt is unreadable or incomplete" in caplog.text


def test_wandb_continues_the_same_run_after_a_restart(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LoggerConfig(progress_bar=False, jsonl=False, wandb=WandbConfig(mode="offline"))
    ids = []
    for _ in range(2):
        logger = MetricLogger(cfg, tmp_path, total_steps=10, start_step=0, run_name="t", config={"a": 1})
        logger.log(1, {"loss": 1.0})
        ids.append(logger.wandb_run.id)
        logger.close()
    assert ids[0] == ids[1] == (tmp_path / "wandb_run_id.txt").read_text()
