"""Step checkpoints: written atomically, pruned to the last K, found again by `resume=latest`.

A checkpoint is one `step_NNNNNNNN.pt` file holding plain tensors and Python containers only, so it loads
with `torch.load(weights_only=True)`: model, optimizer, scheduler, grad scaler, step, samples seen, the data
position and RNG states of every rank, the resolved config (and its history over resumes) and library
versions. It is first written to a temporary name in the same folder and then renamed, so a crash
mid-write never leaves a file that looks complete. Under train.strategy=fsdp a checkpoint is a folder
`step_NNNNNNNN.dcp/` instead (bmca_clip/sharded.py); listing, `latest`, pruning and stale-tmp cleanup
treat both kinds alike.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from bmca_clip.cadence import every
from bmca_clip.errors import CheckpointError
from bmca_clip.io import atomic_writer, is_bmca_checkpoint

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8})\.(pt|dcp)$")
DCP_STATE = "state.pt"  # in a sharded checkpoint's folder: everything but the model and optimizer tensors


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:08d}.pt"


def dcp_path(ckpt_dir: Path, step: int) -> Path:
    """The folder of a sharded (train.strategy=fsdp) checkpoint."""
    return Path(ckpt_dir) / f"step_{step:08d}.dcp"


def is_dcp(path: Path) -> bool:
    return Path(path).suffix == ".dcp" and Path(path).is_dir()


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete step checkpoints in `ckpt_dir` (files, and sharded checkpoints' folders), oldest first
    (temporary ones are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(ckpt_dir: Path, final: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, never `final` (the one just written), even when
    others sort after it (a newer step left by another run): the folder keeps the one known to load."""
    others = [p for p in list_checkpoints(ckpt_dir) if p != final]
    for old in others[: max(0, len(others) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def atomic_torch_save(obj: dict, path: Path) -> Path:
    """torch.save to `.<name>.tmp<pid>` in the same folder, fsync, then os.replace: never a half-written
    file under the final name; on any failure (a full disk, a KeyboardInterrupt) the tmp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb", fsync=True, tmp=path.with_name(f".{path.name}.tmp{os.getpid()}")) as f:
        torch.save(obj, f)
    return path


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep_last: int) -> Path:
    """Write `state` as the checkpoint of `step`, atomically, then delete all but the newest `keep_last`.
    The file just written is never deleted, even when other files sort after it (a newer step left by
    another run): pruning must not leave a folder without the one checkpoint known to load."""
    final = atomic_torch_save(state, checkpoint_path(ckpt_dir, step))
    prune_checkpoints(Path(ckpt_dir), final, keep_last)
    return final


def remove_stale_tmp(ckpt_dir: Path) -> list[Path]:
    """Delete half-written `.step_N.pt.tmp<pid>` files (and `.step_N.dcp.tmp` folders) a killed run or a
    full disk left; call it only while holding the run folder's lock (bmca_clip/train/rundir.py), so no
    live writer owns them."""
    ckpt_dir = Path(ckpt_dir)
    stale = [p for p in ckpt_dir.glob(".step_*.pt.tmp*") if p.is_file()] if ckpt_dir.is_dir() else []
    stale += [p for p in ckpt_dir.glob(".step_*.dcp.tmp") if p.is_dir()] if ckpt_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        log.info("removed %s, a checkpoint left half-written by an earlier run", path)
    return stale


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state; for a sharded one, its state.pt with "dcp" = the folder, whose model and
    optimizer tensors the Trainer loads into its sharded model (bmca_clip/sharded.py load_dcp)."""
    path = Path(path)
    if is_dcp(path):
        if not (path / DCP_STATE).is_file():
            raise CheckpointError(
                f"checkpoint {path} is unreadable or incomplete (no {DCP_STATE} in the folder)"
            )
        return load_checkpoint(path / DCP_STATE) | {"dcp": str(path)}
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable or incomplete ({type(err).__name__}: {err})"
        ) from err
    if not is_bmca_checkpoint(state):
        raise CheckpointError(f"{path} is not a bmca-clip training checkpoint (no 'model'/'step' entries)")
    return state


def resolve_resume(resume: str | None, ckpt_dir: Path) -> tuple[Path, dict] | None:
    """The checkpoint to resume from: `latest` = newest readable one in ckpt_dir (older ones if it is
    corrupt), or an explicit path. None when starting fresh: `latest` in a folder without checkpoints
    (how a sweep or a first Slurm start begins). Checkpoints that exist but none of which loads are
    refused: starting over would overwrite and prune them."""
    if resume is None:
        return None
    if resume != "latest":
        return Path(resume), load_checkpoint(Path(resume))
    found = list_checkpoints(ckpt_dir)
    failures = []
    for path in reversed(found):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            log.warning("%s; trying the previous checkpoint", err)
            failures.append(str(err).replace(f"checkpoint {path}", path.name).replace(str(path), path.name))
    if found:
        raise CheckpointError(
            f"resume=latest: none of the {len(found)} checkpoints in {ckpt_dir} loads ({'; '.join(failures)}); "
            "nothing was overwritten. Resume from a good copy with resume=<path>, or move them away to start over"
        )
    log.info("resume=latest: no checkpoint in %s yet, starting from step 0", ckpt_dir)
    return None


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint file, or the newest step checkpoint of a run folder (or of its checkpoints/ folder)."""
    p = Path(path)
    if p.is_file():
        return p
    if is_dcp(p) or (
        p.is_dir()
        and (found := list_checkpoints(p / "checkpoints") or list_checkpoints(p))
        and is_dcp(found[-1])
    ):
        newest = p if is_dcp(p) else found[-1]
        raise CheckpointError(
            f"checkpoint={path}: {newest.name} is a sharded (train.strategy=fsdp) checkpoint; convert it with "
            f"bmca-dcp-convert {newest} and pass the .pt file it writes"
        )
    if p.is_dir():
        found = list_checkpoints(p / "checkpoints") or list_checkpoints(p)
        if found:
            return found[-1]
        raise CheckpointError(f"checkpoint={path}: the folder holds no step_*.pt checkpoints")
    raise CheckpointError(f"checkpoint={path}: no such file or folder")


class Checkpointer:
    """The Trainer's checkpoint writer: when to save (every `every_steps` steps and at the last step,
    checkpoint.every_steps) and where (`folder`, keeping the newest `keep_last`). `extra` is what every
    checkpoint records besides the training state: the resolved config and its history, library
    versions, the start weights."""

    def __init__(self, folder: Path, *, every_steps: int, keep_last: int, extra: dict | None = None):
        self.folder, self.every_steps, self.keep_last = Path(folder), every_steps, keep_last
        self.extra = dict(extra or {})

    def should_save(self, step: int, last_step: int) -> bool:
        return every(self.every_steps, step, last_step)

    def write(self, state: dict, step: int) -> Path:
        """`state` plus `extra` as the checkpoint of `step`, atomically, pruned to keep_last (rank 0 only)."""
        path = save_checkpoint(state | self.extra, self.folder, step, self.keep_last)
        log.info("saved %s", path)
        return path


def rng_state(device: torch.device | None = None) -> dict:
    """This process's RNG states as tensors and plain ints, loadable with weights_only=True; on a CUDA
    `device`, that device's generator (the one this rank's dropout draws from)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def packed_rng_state(device: torch.device | None = None) -> bytes:
    """rng_state() serialised, for all_gather_object: tensors pickled inside an object do not load on the
    other side (torch 2.14: "UntypedStorage has no attribute dtype" in its legacy unpickler)."""
    buffer = io.BytesIO()
    torch.save(rng_state(device), buffer)
    return buffer.getvalue()


def unpack_rng_state(packed: bytes) -> dict:
    return torch.load(io.BytesIO(packed), map_location="cpu", weights_only=True)


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" not in state or not torch.cuda.is_available():
        return
    if isinstance(state["cuda"], torch.Tensor):  # one device's generator: this rank's
        torch.cuda.set_rng_state(state["cuda"], device if device is not None else "cuda")
    else:  # every visible device's, as checkpoints before per-rank states held them
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rank_rng(saved: dict, rank: int, world_size: int, device: torch.device | None = None) -> None:
    """Set this rank's RNG from a checkpoint's "rng" entry: {"ranks": [one state per rank]}, or one state
    (checkpoints before per-rank states), which every rank then gets as before, with a warning."""
    states = saved.get("ranks")
    if states is None:
        if world_size > 1:
            log.warning(
                "the checkpoint holds one RNG state (saved before per-rank states): every rank resumes with "
                "rank 0's, so ranks >= 1 do not continue their own random stream (dropout) exactly"
            )
        set_rng_state(saved, device)
        return
    if rank >= len(states):
        log.warning(
            "the checkpoint holds RNG states of %d ranks and this is rank %d: it resumes with rank 0's",
            len(states),
            rank,
        )
        rank = 0
    set_rng_state(states[rank], device)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
