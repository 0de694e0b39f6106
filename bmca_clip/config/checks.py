"""The value checks every schema's `__post_init__` runs, and the choices more than one schema offers.

Each check raises ConfigError with one line: the dotted key, the value given and what is allowed.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from bmca_clip.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")  # train.device and eval.py's device


def one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def finite(*values: float | None) -> bool:
    """Every value is a finite number: nan and inf compare false with < and >, so range checks miss them."""
    return all(v is None or math.isfinite(v) for v in values)


def did_you_mean(word: str, options, prefix: str = "") -> str:
    """'did you mean <prefix><closest>? ' for the options closest to a misspelt word, or '' when none is
    close: the hint of every unknown-key and unknown-name message."""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=3, cutoff=0.5)
    return f"did you mean {' or '.join(prefix + c for c in close)}? " if close else ""
