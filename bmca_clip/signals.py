"""The signals that announce a preemption, and the DataLoader `worker_init_fn` that keeps data workers alive
through them. A leaf (standard library only): the data loader installs the shield, the training loop's
PreemptionHandler (bmca_clip/train/preemption.py) reacts to the same signals in the main process."""

from __future__ import annotations

import os
import signal
import threading

# SIGUSR1: slurm/train.sbatch's --signal=USR1@120; SIGUSR2: what submitit (hydra/launcher=slurm) sends.
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

# How often a data worker checks that its main process is still there.
PARENT_CHECK_S = 2.0


def shield_data_worker(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: the worker lives through SIGTERM/SIGUSR1/SIGUSR2 sent to the whole job.

    torch installs (before this runs) a SIGTERM handler that exits quietly when the signal comes from the
    worker's parent, as on the DataLoader's own shutdown, and otherwise dies of it, so a preempted job lost its
    workers and then its main process with them. Here the three signals are blocked in this process's
    threads (a forked worker has only this one yet; threads started later inherit the mask) and one thread
    takes them with sigtimedwait, which tells who sent them: the parent's SIGTERM still ends the worker,
    others are dropped. That thread also ends the worker once its parent is gone, even while the worker
    is stuck in a stalled read that would keep it from torch's own check of its parent."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    threading.Thread(target=_obey_only_the_parent, args=(parent,), name="bmca-signals", daemon=True).start()


def _obey_only_the_parent(parent: int) -> None:
    while True:
        info = signal.sigtimedwait(SIGNALS, PARENT_CHECK_S)
        if os.getppid() != parent or (info and info.si_signo == signal.SIGTERM and info.si_pid == parent):
            os._exit(0)  # what torch's handler does on its parent's SIGTERM: no cleanup owed to anyone
