"""Preemption: SIGTERM, SIGUSR1 and SIGUSR2 (what Slurm and submitit send before preemption or the time
limit) become a request to stop after the current step, save a checkpoint and exit with REQUEUE_EXIT_CODE.
Under Slurm the job is requeued first, and the restarted job (SLURM_RESTART_COUNT > 0) resumes from its
latest checkpoint, as `resume=latest` would.

Slurm signals every process of the job, and torchrun passes a signal on to each rank's whole process group:
the DataLoader workers get it too. `bmca_clip.signals.shield_data_worker` keeps them alive, so that only the
main process, which knows the data positions, reacts. A signal that comes while the main process waits for a
batch ends that wait at once (`PreemptionHandler.interruptible`): a stalled data source would otherwise hold
it for data.retries x data.timeout_s."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess

import torch
import torch.distributed as torch_dist

from bmca_clip.dist import DistInfo
from bmca_clip.signals import SIGNALS

log = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry". Not 0, so that `afterok`
# dependencies do not fire on a run that has not finished.
REQUEUE_EXIT_CODE = 75


class Preempted(SystemExit):
    """Raised after the checkpoint is written; its exit status asks the launcher to run the job again."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(REQUEUE_EXIT_CODE)
        self.step, self.signal_name = step, signal_name


class WaitInterrupted(BaseException):
    """Raised by the signal handler into a wait for data (PreemptionHandler.interruptible). A BaseException,
    as KeyboardInterrupt is: the data code's `except Exception` (retries, error counting) must not take it."""


class PreemptionHandler:
    """While entered (`with handler:`), handlers that set a flag; the training loop asks `should_stop()`
    before each step. Inside `interruptible()` the handler raises WaitInterrupted instead, so a blocked
    read cannot outlast a signal. Leaving the block (or `restore()`) puts the previous handlers back."""

    def __init__(self, dist: DistInfo):
        self.dist, self.received, self._waiting = dist, None, False
        self._previous: dict = {}

    def __enter__(self) -> PreemptionHandler:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _on_signal(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name
        if self._waiting:
            self._waiting = False  # once: a second signal must not break the unwinding of the first
            raise WaitInterrupted(self.received)

    @contextlib.contextmanager
    def interruptible(self):
        """A block that a signal ends with WaitInterrupted, at once if one came before it started. Whatever
        the block was doing is abandoned: use it only for work that is thrown away when training stops."""
        if self.received is not None:
            raise WaitInterrupted(self.received)
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank got a signal, so all ranks stop at the same step."""
        stop = self.received is not None
        if self.dist.world_size > 1:  # device sync, once per step: a one-element all_reduce
            flag = torch.tensor([float(stop)], device=self.dist.device)
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def restore(self) -> None:
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
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
