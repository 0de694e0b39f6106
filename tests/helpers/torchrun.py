"""Start `torch.distributed.run --standalone --nproc_per_node=2` (two gloo ranks on this machine) from the repo."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.config import REPO


def torchrun(*args, timeout=240) -> subprocess.CompletedProcess:
    """Run `args` (a script and its arguments) under torchrun with two ranks, one thread each."""
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *map(str, args),
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
