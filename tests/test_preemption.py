"""Preemption and crashes: SIGTERM/SIGUSR1 save and exit for a requeue; kill -9 loses only the steps since
the last checkpoint; a corrupt newest checkpoint is skipped; wandb keeps its run id across restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, tiny_train_overrides

from bmca_clip.checkpoint import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from bmca_clip.config import LoggerConfig, WandbConfig
from bmca_clip.preempt import REQUEUE_EXIT_CODE
from bmca_clip.tracking import MetricLogger


def _start(corpus, out, **extra) -> subprocess.Popen:
    overrides = tiny_train_overrides(
        corpus, out, **{"train.steps": 10_000, "checkpoint.every_steps": 10_000, **extra}
    )
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


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
    subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO, check=True, capture_output=True, timeout=120
    )
    straight = tiny_train_overrides(corpus, tmp_path / "straight", **flat, **{"train.steps": 8})
    subprocess.run(
        [sys.executable, "train.py", *straight], cwd=REPO, check=True, capture_output=True, timeout=120
    )
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
