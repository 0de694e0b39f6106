"""Shared bits of the command-line entry points: bad input ends with one clear line, not a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

from omegaconf.errors import OmegaConfBaseException

from bmca_clip.checkpoint import CheckpointError
from bmca_clip.config import ConfigError
from bmca_clip.data.pipeline import DataError
from bmca_clip.model import ModelLoadError
from bmca_clip.trainer import TrainingDiverged

USER_ERRORS = (
    ConfigError,
    DataError,
    ModelLoadError,
    CheckpointError,
    TrainingDiverged,
    OmegaConfBaseException,
)


@contextlib.contextmanager
def exit_on_user_error():
    """Turn errors caused by the user's input into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except USER_ERRORS as err:
        message = str(err).strip().splitlines()
        print(f"error: {' '.join(line.strip() for line in message if line.strip())}", file=sys.stderr)
        sys.exit(2)


def parse_key_values(argv: Sequence[str], required: Sequence[str], optional: Sequence[str], usage: str):
    """`key=value` arguments as a dict; a missing, unknown, repeated or malformed one is a ConfigError."""
    allowed = f"allowed keys: {', '.join([*required, *optional])} (usage: {usage})"
    values: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {arg!r} is not key=value; {allowed}")
        if key not in required and key not in optional:
            raise ConfigError(f"unknown key {key!r}; {allowed}")
        if key in values:
            raise ConfigError(f"{key}= is given twice; {allowed}")
        values[key] = value
    missing = [k for k in required if not values.get(k)]
    if missing:
        raise ConfigError(f"missing {', '.join(k + '=' for k in missing)}; {allowed}")
    return values
