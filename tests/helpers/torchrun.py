"""Start `torch.distributed.run --standalone --nproc_per_node=N` (N gloo ranks on this machine, two unless
told) from the repo."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.config import REPO


def torchrun(*args, timeout=240, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `args` (a script and its arguments) under torchrun with `nproc` ranks, one thread each;
    `env`: the environment to extend instead of os.environ (e.g. a fake hub's)."""
    env = (os.environ if env is None else env) | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *map(str, args),
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
