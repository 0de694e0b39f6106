"""Optional parts, installed as pyproject extras (slurm, wandb, tensorboard): when one is missing the user
gets one line naming the extra to install, instead of an ImportError or Hydra's "Could not load
'hydra/launcher/submitit_slurm'"."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from bmca_clip.config import ConfigError

# hydra/launcher=... choices that come from hydra-submitit-launcher (conf/hydra/launcher/slurm.yaml and its own)
SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")


def installed(module: str) -> bool:
    """Whether module can be imported, without importing it (wandb takes seconds)."""
    if sys.modules.get(module) is not None:  # imported already, or put there by a test
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        return False


def require(module: str, what: str, package: str, extra: str) -> None:
    """ConfigError "<what> needs <package>: pip install 'bmca-clip[<extra>]'" unless module is installed."""
    if not installed(module):
        raise ConfigError(f"{what} needs {package}: pip install 'bmca-clip[{extra}]'")


def check_launcher(argv: Sequence[str]) -> None:
    """Before Hydra parses argv: a submitit launcher without its plugin would fail inside Hydra's defaults
    list with "Could not load 'hydra/launcher/submitit_slurm'", naming neither the package nor the extra."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra/launcher" and value in SUBMITIT_LAUNCHERS:
            require("hydra_plugins.hydra_submitit_launcher", arg, "hydra-submitit-launcher", "slurm")
