"""`bmca-dcp-convert checkpoint=<step_N.dcp> [out=<file.pt>]`: a sharded (train.strategy=fsdp) checkpoint folder
`step_NNNNNNNN.dcp/` -> the plain single-file checkpoint a DDP run writes, which export, WiSE-FT, eval.py
and a train.strategy=ddp resume read like any other.

It runs in one process without a process group, on any number of ranks' shards. The result holds the whole
model and optimizer state (the optimizer keyed by position, as `optimizer.state_dict()` keys it), the
1-element logit_scale / logit_bias of a sharded model back as scalars, and the rest of the training state as
the checkpoint recorded it; its config says train.strategy=ddp (the format it now is) and its config
history notes the conversion. `out` defaults to converted/step_N.pt beside the folder: not in the
checkpoints folder itself, where resume=latest of the fsdp run would take it for its newest checkpoint.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch

from bmca_clip.checkpoint import DCP_STATE, atomic_torch_save, is_dcp, load_checkpoint
from bmca_clip.errors import CheckpointError
from bmca_clip.sharded import SCALARS


def _read_dcp(folder: Path) -> dict:
    """The DCP part of `folder` whole, as {"model": ..., "optimizer": ...} keyed by parameter name."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".dcp_convert") as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "whole.pt")
        return torch.load(Path(tmp) / "whole.pt", map_location="cpu", weights_only=True)


def _scalar(name: str, tensor):
    """logit_scale / logit_bias (and their optimizer moments) as the scalars an unsharded model holds."""
    if name in SCALARS and isinstance(tensor, torch.Tensor) and tensor.shape == (1,):
        return tensor.reshape(())
    return tensor


def positional_optimizer(named: dict) -> dict:
    """An optimizer state keyed by parameter name (torch.distributed.checkpoint.state_dict) -> keyed by
    position over the param groups, as `torch.optim.Optimizer.state_dict()` and a DDP checkpoint hold it."""
    index: dict[str, int] = {}
    groups = []
    for group in named["param_groups"]:
        ids = [index.setdefault(name, len(index)) for name in group["params"]]
        groups.append(group | {"params": ids})
    state = {
        index[name]: {k: (v if k == "step" else _scalar(name, v)) for k, v in values.items()}
        for name, values in named["state"].items()
    }
    return {"state": state, "param_groups": groups}


def convert(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the single-file checkpoint of the sharded checkpoint `folder`; returns its path."""
    folder = Path(folder)
    if not is_dcp(folder):
        raise CheckpointError(
            f"{folder}: not a sharded checkpoint folder (step_NNNNNNNN.dcp with {DCP_STATE})"
        )
    state = load_checkpoint(folder)  # state.pt; refuses a half-written folder
    state.pop("dcp")
    sharded = state.pop("sharded")
    tensors = _read_dcp(folder)
    state["model"] = {name: _scalar(name, t) for name, t in tensors["model"].items()}
    state["optimizer"] = positional_optimizer(tensors["optimizer"])
    for name in ("config", "config_history"):  # the last history entry is this config
        state[name] = copy.deepcopy(state.get(name))
    if state.get("config"):
        state["config"]["train"]["strategy"] = "ddp"
    note = f"converted from {folder.name} (fsdp, {sharded['world_size']} ranks) by bmca-dcp-convert"
    if state.get("config_history"):
        state["config_history"][-1]["config"]["train"]["strategy"] = "ddp"
        state["config_history"][-1]["note"] = note
    out = Path(out) if out else folder.parent / "converted" / f"{folder.stem}.pt"
    return atomic_torch_save(state, out)


USAGE = "bmca-dcp-convert checkpoint=<step_N.dcp folder> [out=<file.pt>]"
KEY_HELP = {
    "checkpoint": "a step_NNNNNNNN.dcp folder that a train.strategy=fsdp run wrote",
    "out": "the single-file checkpoint to write; default: converted/step_N.pt beside the folder",
}


def main(argv: list[str] | None = None) -> None:
    from bmca_clip.cli import exit_on_user_error, parse_key_values

    with exit_on_user_error():
        args = parse_key_values(
            sys.argv[1:] if argv is None else argv, ("checkpoint",), ("out",), USAGE, KEY_HELP
        )
        out = convert(args["checkpoint"], args.get("out"))
    print(
        f"wrote {out} (single-file checkpoint of {args['checkpoint']}: export, WiSE-FT, eval.py, ddp resume)"
    )


if __name__ == "__main__":
    main()
