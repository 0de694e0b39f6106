"""Small helpers every layer uses: atomic writes, canonical-JSON hashing, library versions, precision ->
dtype, autocast, and "is this one of our checkpoints".

A leaf: it imports nothing from bmca_clip, and torch / open_clip only inside the functions that need them,
so light modules (eval/merge.py, the result JSON readers) can use it without loading torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

# --- atomic writes -------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_writer(
    path: str | Path, mode: str = "wb", *, fsync: bool = False, tmp: str | Path | None = None
) -> Iterator[IO]:
    """A file object to write `path` whole: written to a temporary file in the same folder, then
    os.replace'd over `path` when the block ends without an error. A reader never sees half a file, a crash
    or an exception mid-write leaves the old file (and no temporary one), and a symlink at `path` is
    replaced by the file instead of having its target written.

    mode: "wb" or "w" (text is UTF-8). fsync: flush to the disk before the rename (checkpoints: a power
    loss must not leave a renamed but empty file). tmp: the temporary file's path (checkpoint.py names
    it so that remove_stale_tmp finds what a killed run left); default: a unique name from mkstemp, so
    concurrent writers of one path never share it."""
    path = Path(path)
    if tmp is None:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp_path = Path(tmp_name)
        f = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    else:
        tmp_path = Path(tmp)
        # Opened by name: the file object's .name is the path, which a disk-full message quotes (cli.py).
        f = open(tmp_path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))  # noqa: SIM115
    try:
        with f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write `data` (str: UTF-8 text) to `path` whole, as atomic_writer does; returns path."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w", fsync=fsync) as f:
        f.write(data)
    return Path(path)


# --- hashing ------------------------------------------------------------------------------------------


def unlink_symlink(path: Path) -> None:
    """Turn a symlink at `path` into a regular file holding a copy of its target (so an appended history
    goes on), leaving the target untouched: it belongs to whatever the link pointed at."""
    path = Path(path)
    if path.is_symlink():
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        log.warning(
            "%s is a symlink to %s: replaced by a copy, the target is left as it is", path, path.resolve()
        )
        atomic_write(path, text)


def canonical_json(value: Any) -> bytes:
    """value as canonical JSON: sorted keys, no spaces, non-JSON values (paths, dtypes) as str."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def sha256_json(value: Any) -> str:
    """Hex sha256 of value's canonical JSON: the same for equal values whatever their key order."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


# --- versions -----------------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    """The versions that decide what a checkpoint or a result means: bmca_clip, torch, open_clip."""
    import open_clip
    import torch

    import bmca_clip

    return {
        "bmca_clip": bmca_clip.__version__,
        "torch": str(torch.__version__),
        "open_clip": str(open_clip.__version__),
    }


# --- precision ----------------------------------------------------------------------------------------

# train.precision / eval precision -> (autocast dtype or None, weight and input dtype), as torch dtype names.
_PRECISION_DTYPES = {
    "fp32": (None, "float32"),
    "amp_bf16": ("bfloat16", "float32"),
    "amp_fp16": ("float16", "float32"),
    "pure_bf16": (None, "bfloat16"),  # weights, grads and optimizer state all bf16: nothing to autocast
}


def _precision(precision: str) -> tuple[str | None, str]:
    try:
        return _PRECISION_DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(_PRECISION_DTYPES)}") from None


def autocast_dtype(precision: str):
    """The torch dtype autocast runs in under `precision`; None for no autocast (fp32, pure_bf16)."""
    import torch

    name = _precision(precision)[0]
    return None if name is None else getattr(torch, name)


def weight_dtype(precision: str):
    """The dtype of the weights (and of the images fed to them) under `precision`."""
    import torch

    return getattr(torch, _precision(precision)[1])


def autocast(device, dtype) -> contextlib.AbstractContextManager:
    """torch.autocast on device (a torch.device or its type) in dtype; a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type=device_type, dtype=dtype)


# --- checkpoints --------------------------------------------------------------------------------------


def is_bmca_checkpoint(obj: Any) -> bool:
    """Whether a loaded .pt is a checkpoint this code wrote (trainer.py, wise_ft.py): a dict whose `model`
    is a state dict and whose `step` is an integer. Anything else is an open_clip or foreign file."""
    return (
        isinstance(obj, Mapping)
        and isinstance(obj.get("model"), Mapping)
        and isinstance(obj.get("step"), int)
        and not isinstance(obj.get("step"), bool)
    )
