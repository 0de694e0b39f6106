"""Never destroy the last good state: non-finite steps are skipped and counted, a run that keeps diverging
stops with its last finite checkpoint intact, resume=latest refuses a folder whose checkpoints all fail to
load, the run folder is locked against a second run, and a refused start writes nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bmca_clip.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from bmca_clip.config import ConfigError, PretrainConfig, to_object
from bmca_clip.train import run as train_mod
from bmca_clip.train.trainer import Trainer, TrainingDiverged
from tests.helpers.config import REPO, compose_config, tiny_train_overrides


def _cfg(corpus, out, **extra) -> PretrainConfig:
    return to_object(compose_config("pretrain", tiny_train_overrides(corpus, out, **extra)), PretrainConfig)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _finite(state: dict) -> bool:
    return all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())


@pytest.fixture
def nan_grads(monkeypatch):
    """Poison one gradient before the optimizer step of each 1-based step in the returned set."""
    steps: set[int] = set()
    original = Trainer._optimizer_step

    def poisoned(self, loss):
        if self.step + 1 in steps:
            next(p for p in self.trainable if p.grad is not None).grad.fill_(float("nan"))
        return original(self, loss)

    monkeypatch.setattr(Trainer, "_optimizer_step", poisoned)
    return steps


# --- item 6: non-finite values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=inf",
        "optim.eps=nan",
        "optim.beta2=nan",
        "optim.weight_decay=inf",
        "model.init_logit_bias=nan",
        "train.logit_scale_max=-1",
        "train.logit_scale_max=inf",
        "train.max_nonfinite_steps=0",
    ],
)
def test_non_finite_settings_are_refused_at_compose_time(override):
    key = override.split("=")[0].rsplit(".", 1)[-1]  # beta2 is reported as optim.beta1/beta2
    with pytest.raises(ConfigError, match=key):
        to_object(compose_config("pretrain", [override]), PretrainConfig)


def test_a_nan_gradient_skips_that_update_and_counts_it(corpus, tmp_path, nan_grads):
    nan_grads.add(2)
    train_mod.run(_cfg(corpus, tmp_path))
    rows = {r["step"]: r for r in _rows(tmp_path)}
    assert [rows[s]["nonfinite_steps"] for s in range(1, 7)] == [0, 1, 1, 1, 1, 1]
    assert all(rows[s]["loss"] == rows[s]["loss"] for s in range(1, 7))  # never NaN
    for path in list_checkpoints(tmp_path / "checkpoints"):
        assert _finite(load_checkpoint(path)), path.name


def test_nan_steps_in_a_row_stop_the_run_and_keep_the_last_finite_checkpoint(corpus, tmp_path, nan_grads):
    nan_grads.update({4, 5, 6})
    cfg = _cfg(corpus, tmp_path, **{"checkpoint.keep_last": 1, "train.max_nonfinite_steps": 2})
    with pytest.raises(TrainingDiverged, match=r"step 5: .*2 steps in a row.*lr .*precision fp32"):
        train_mod.run(cfg)
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in kept] == ["step_00000003.pt"] and _finite(load_checkpoint(kept[0]))


def test_non_finite_weights_are_never_saved_nor_prune_a_finite_checkpoint(corpus, tmp_path, monkeypatch):
    original = Trainer._optimizer_step

    def blow_up(self, loss):  # a finite update that overflows the weights, as a huge lr does
        metrics = original(self, loss)
        if self.step + 1 == 5:
            with torch.no_grad():
                self.trainable[0].fill_(float("inf"))
        return metrics

    monkeypatch.setattr(Trainer, "_optimizer_step", blow_up)
    with pytest.raises(TrainingDiverged, match="non-finite weights"):
        train_mod.run(_cfg(corpus, tmp_path, **{"checkpoint.keep_last": 1}))
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in kept] == ["step_00000003.pt"] and _finite(load_checkpoint(kept[0]))


# --- item 7: resume=latest with nothing loadable ----------------------------------------------------


def test_resume_latest_refuses_a_folder_whose_checkpoints_all_fail_to_load(corpus, tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "step_00000003.pt").write_bytes(b"truncated")
    torch.save({"weights": torch.zeros(1)}, ckpts / "step_00000006.pt")
    with pytest.raises(
        CheckpointError, match=r"step_00000006\.pt.*not a bmca-clip.*step_00000003\.pt.*unreadable"
    ):
        train_mod.run(_cfg(corpus, tmp_path, resume="latest"))
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000003.pt", "step_00000006.pt"]
    assert (ckpts / "step_00000003.pt").read_bytes() == b"truncated"
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_latest_in_an_empty_folder_starts_from_step_0(corpus, tmp_path):
    out = tmp_path / "new"
    train_mod.run(_cfg(corpus, out, resume="latest", **{"train.steps": 2}))
    assert [r["step"] for r in _rows(out)] == [1, 2]


def test_saving_never_prunes_the_checkpoint_just_written(tmp_path):
    (tmp_path / "step_00000006.pt").write_bytes(b"left by another run")
    written = save_checkpoint({"model": {}, "step": 3}, tmp_path, 3, keep_last=1)
    assert written.exists() and load_checkpoint(written)["step"] == 3


# --- item 8: one run per folder ----------------------------------------------------------------------


def _lock(out: Path, **holder) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "start": "earlier", **holder}))
    return out / ".lock"


def test_a_second_run_in_a_locked_folder_refuses_and_writes_nothing(corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        _lock(tmp_path, pid=holder.pid)
        with pytest.raises(ConfigError, match=rf"is in use by pid {holder.pid} on {socket.gethostname()}"):
            train_mod.run(_cfg(corpus, tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_a_stale_lock_of_a_dead_process_or_of_this_slurm_job_is_taken_over(corpus, tmp_path, monkeypatch):
    dead = subprocess.Popen(["true"])
    dead.wait()
    _lock(tmp_path, pid=dead.pid)
    train_mod.run(_cfg(corpus, tmp_path, **{"train.steps": 1}))
    assert not (tmp_path / ".lock").exists()  # released at the end

    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # a requeue of the same job, on another node
    _lock(tmp_path, pid=1, host="node-that-died", slurm_job_id="4242")
    train_mod.run(_cfg(corpus, tmp_path, resume="latest", **{"train.steps": 2}))
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2]


def test_under_torchrun_every_rank_refuses_a_locked_folder_without_hanging(corpus, tmp_path):
    holder = subprocess.Popen(["sleep", "120"])
    try:
        _lock(tmp_path, pid=holder.pid)
        env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        env.pop("SLURM_JOB_ID", None)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        command += ["train.py", *tiny_train_overrides(corpus, tmp_path)]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0 and done.stderr.count(f"is in use by pid {holder.pid}") == 2, done.stderr[
        -2000:
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


# --- item 9: a refused start writes nothing; tmp files; links ------------------------------------------


def _train_py(corpus, out, **extra) -> subprocess.CompletedProcess:
    overrides = tiny_train_overrides(corpus, out, **extra)
    return subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_a_refused_start_leaves_hydra_files_and_config_alone(corpus, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000003.pt").write_bytes(b"earlier run")
    (tmp_path / ".hydra").mkdir()
    for name in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        (tmp_path / name).write_text("earlier run\n")
    done = _train_py(corpus, tmp_path, **{"train.steps": 1})
    assert done.returncode == 2 and "nothing was overwritten" in done.stderr, done.stderr[-2000:]
    for name in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (tmp_path / name).read_text() == "earlier run\n", name
    assert sorted(p.name for p in (tmp_path / ".hydra").iterdir()) == ["config.yaml", "overrides.yaml"]

    fresh = tmp_path / "fresh"
    done = _train_py(corpus, fresh, **{"train.steps": 1})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train.steps=1" in (fresh / ".hydra" / "overrides.yaml").read_text()
    assert sorted(p.name for p in (fresh / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]


def test_stale_tmp_checkpoints_are_removed_at_start(corpus, tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / ".step_00000003.pt.tmp4242").write_bytes(b"half written before a kill")
    train_mod.run(_cfg(corpus, tmp_path, **{"train.steps": 1}))
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000001.pt"]


def test_a_failed_save_removes_its_tmp_file(tmp_path, monkeypatch):
    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"model": {}, "step": 3}, tmp_path, 3, keep_last=1)
    assert list(tmp_path.iterdir()) == []


def test_symlinked_config_and_metrics_are_not_written_through(corpus, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        (elsewhere / name).write_text('{"step": 0, "other": "run"}\n')
        os.symlink(elsewhere / name, out / name)
    train_mod.run(_cfg(corpus, out, **{"train.steps": 1}))
    for name in ("config.yaml", "metrics.jsonl"):
        assert (elsewhere / name).read_text() == '{"step": 0, "other": "run"}\n', name
        assert not (out / name).is_symlink(), name
    assert [r["step"] for r in _rows(out)] == [0, 1]  # the linked history is kept, as a copy


def test_a_lock_whose_pid_was_reused_by_another_process_is_stale(tmp_path, monkeypatch):
    from bmca_clip.train.rundir import _stale

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    here = {"host": socket.gethostname(), "pid": os.getpid()}
    assert _stale(here | {"pid_start": "1"}) == "its pid now belongs to another process"
    assert _stale(here) is None  # alive, and nothing says it is another process
    assert _stale({"host": "elsewhere", "pid": 1}) is None  # cannot be checked from here: held


def test_a_checkpoint_due_on_a_nan_step_is_deferred_to_the_next_finite_step(corpus, tmp_path, nan_grads):
    nan_grads.add(3)  # checkpoint.every_steps=3: weights that may have produced the nan are not saved
    train_mod.run(_cfg(corpus, tmp_path))
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in kept] == ["step_00000004.pt", "step_00000006.pt"]
    assert all(_finite(load_checkpoint(p)) for p in kept)


def test_a_run_that_ends_in_nan_steps_writes_no_final_checkpoint(corpus, tmp_path, nan_grads):
    nan_grads.add(6)
    with pytest.raises(TrainingDiverged, match="step 6: the run ended with 1 non-finite steps in a row"):
        train_mod.run(_cfg(corpus, tmp_path, **{"checkpoint.keep_last": 1}))
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000003.pt"]
