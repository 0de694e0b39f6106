"""Preemption: SIGTERM, SIGUSR1 and SIGUSR2 (what Slurm and submitit send before preemption or the time
limit) become a request to stop after the current step, save a checkpoint and exit with REQUEUE_EXIT_CODE.
Under Slurm the job is requeued first, and the restarted job (SLURM_RESTART_COUNT > 0) resumes from its
latest checkpoint, as `resume=latest` would."""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import torch
import torch.distributed as torch_dist

from bmca_clip.dist import DistInfo

log = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry". Not 0, so that `afterok`
# dependencies do not fire on a run that has not finished.
REQUEUE_EXIT_CODE = 75
# SIGUSR1: slurm/train.sbatch's --signal=USR1@120; SIGUSR2: what submitit (hydra/launcher=slurm) sends.
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(SystemExit):
    """Raised after the checkpoint is written; its exit status asks the launcher to run the job again."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(REQUEUE_EXIT_CODE)
        self.step, self.signal_name = step, signal_name


class PreemptionHandler:
    """Installs handlers that only set a flag; the training loop asks `should_stop()` between steps."""

    def __init__(self, dist: DistInfo):
        self.dist, self.received = dist, None
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}

    def _on_signal(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank got a signal, so all ranks stop at the same step."""
        stop = self.received is not None
        if self.dist.world_size > 1:  # device sync, once per step: a one-element all_reduce
            flag = torch.tensor([float(stop)], device=self.dist.device)
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def slurm_restart(environ=os.environ) -> int:
    """How many times Slurm has restarted (requeued) this job: 0 outside Slurm and on a first run."""
    try:
        return int(environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def requeue_if_slurm(dist: DistInfo) -> bool:
    """Ask SLURM to run this job again (rank 0 only); False when not under SLURM or it refused."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if job
        else os.environ.get("SLURM_JOB_ID")
    )
    if not job_id or not dist.is_main:
        return False
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job_id, result.stderr.strip())
        return False
    log.info("requeued SLURM job %s", job_id)
    return True
