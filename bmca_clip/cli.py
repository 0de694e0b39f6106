"""Shared bits of the command-line entry points: bad input ends with one clear line, not a traceback."""

from __future__ import annotations

import contextlib
import sys

from omegaconf.errors import OmegaConfBaseException

from bmca_clip.checkpoint import CheckpointError
from bmca_clip.config import ConfigError
from bmca_clip.data.pipeline import DataError
from bmca_clip.model import ModelLoadError

USER_ERRORS = (ConfigError, DataError, ModelLoadError, CheckpointError, OmegaConfBaseException)


@contextlib.contextmanager
def exit_on_user_error():
    """Turn errors caused by the user's input into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except USER_ERRORS as err:
        message = str(err).strip().splitlines()
        print(f"error: {' '.join(line.strip() for line in message if line.strip())}", file=sys.stderr)
        sys.exit(2)
