"""The run folder: one run at a time in it (a lock file), and text files written whole.

The lock is `output_dir/.lock`, created with O_CREAT | O_EXCL and holding JSON {host, pid, pid_start,
start, slurm_job_id}. Not fcntl.flock: on NFS and Lustre, where the run folders of a cluster live, flock is
node-local or unreliable, and it leaves nothing a user can read to learn who holds the folder. A lock is
stale, and taken over with a warning, when
- its holder ran on this host and that process is gone (no such pid, a zombie, or a pid reused by a process
  that started at another time), or
- it was taken on another host by this process's Slurm job (same SLURM_JOB_ID): a requeued job continues
  its own run, and its earlier start died with its node or was killed by the requeue (on this host the pid
  check decides, so two live job steps of one allocation still cannot share a folder).
A lock held on another host by another job cannot be checked from here: the second run refuses, naming the
holder. Global rank 0 takes the lock before any rank writes and tells the others, so all ranks refuse
together. The lock guards output_dir; a checkpoint.dir outside it is not covered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as torch_dist

from bmca_clip.config import ConfigError
from bmca_clip.dist import DistInfo

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _proc_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot, /proc/<pid>/stat field 22); None if it is
    gone or a zombie. Where /proc is missing, "?" for any live pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    return None if fields[0] in ("Z", "X") else fields[19]


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _proc_start(os.getpid()),
        "start": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def _stale(held: dict) -> str | None:
    """Why the lock `held` is stale, or None when its holder may still be running."""
    if held.get("host") == socket.gethostname():
        started = _proc_start(int(held.get("pid", -1)))
        if started is None:
            return "its process is gone"
        if held.get("pid_start") not in (None, "?", started) and started != "?":
            return "its pid now belongs to another process"
        return None  # alive here, even within this Slurm job: two job steps must not share a folder
    job = os.environ.get("SLURM_JOB_ID")
    if job and held.get("slurm_job_id") == job:
        return f"it was taken by this Slurm job ({job}) on another node before a requeue"
    return None


def _try_lock(path: Path) -> str | None:
    """Take the lock at `path`; on failure, the one-line reason naming the holder."""
    mine = json.dumps(_holder())
    for _ in range(3):  # a stale lock is removed and the create tried again; a racing run may win it
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                seen = path.read_text()
            except FileNotFoundError:
                continue
            try:
                held = json.loads(seen)
            except ValueError:
                held = {}
            why = _stale(held) if held else None
            if why is None:
                who = (
                    f"pid {held.get('pid', '?')} on {held.get('host', '?')}" if held else "an unreadable lock"
                )
                return (
                    f"output_dir {path.parent} is in use by {who} (since {held.get('start', '?')}, Slurm job "
                    f"{held.get('slurm_job_id') or 'none'}): wait for that run to end, choose another name=/"
                    f"output_dir=, or delete {path} if that run is known to be dead"
                )
            with contextlib.suppress(FileNotFoundError):
                if path.read_text() == seen:  # still the lock judged stale, not a racer's fresh one
                    path.unlink()
                    log.warning("took over the stale lock %s (%s): %s", path, why, seen)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        return None
    return (
        f"output_dir {path.parent}: could not take the lock {path} (another run keeps taking it); try again"
    )


@contextlib.contextmanager
def run_lock(out_dir: Path, dist: DistInfo) -> Iterator[None]:
    """Hold output_dir's lock for the life of the run; every rank raises ConfigError if it is taken."""
    path = Path(out_dir) / LOCK_NAME
    refused = None
    if dist.is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        refused = _try_lock(path)
    if dist.world_size > 1 and torch_dist.is_initialized():
        box = [refused]
        torch_dist.broadcast_object_list(box, src=0)
        refused = box[0]
    if refused:
        raise ConfigError(refused)
    mine = path.read_text() if dist.is_main else None
    try:
        yield
    finally:
        if dist.is_main:
            with contextlib.suppress(FileNotFoundError):
                if path.read_text() == mine:  # never remove a lock another run took over meanwhile
                    path.unlink()
