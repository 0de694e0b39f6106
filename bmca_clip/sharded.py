"""train.strategy=fsdp: FSDP2 (`torch.distributed.fsdp.fully_shard`) over every transformer block of both
towers and then the whole model, its mixed-precision policy, and sharded checkpoints through
`torch.distributed.checkpoint` (DCP).

A sharded checkpoint is a folder `step_NNNNNNNN.dcp/`: the DCP files of the model and optimizer (each rank
writes its shards), and `state.pt`, the rest of the training state (step, config and its history, every
rank's data position and RNG, schedule, scaler, counters, the optimizer's param groups) written by rank 0.
It is written as `.step_NNNNNNNN.dcp.tmp/` and renamed once complete, like a single-file checkpoint, so a
killed job never leaves a folder that looks complete. `python -m bmca_clip.dcp_convert` (bmca-dcp-convert)
turns one into the single-file format that export, WiSE-FT, eval.py and a DDP resume read.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from bmca_clip.checkpoint import DCP_STATE, atomic_torch_save, dcp_path, prune_checkpoints
from bmca_clip.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def require_process_group() -> None:
    """fully_shard needs a process group: the one torchrun (or srun) forms, even for one process."""
    if not torch.distributed.is_initialized():
        raise ConfigError(
            "train.strategy=fsdp needs a process group: launch with torchrun (torchrun --nproc_per_node=1 "
            "train.py ... for one process), or use train.strategy=ddp"
        )


def mixed_precision(precision: str):
    """The FSDP2 policy for train.precision: amp_bf16 gathers bf16 weights and reduces gradients in fp32;
    fp32, pure_bf16 (the weights are bf16 already) and amp_fp16 (autocast and the GradScaler) cast nothing."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "amp_bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every transformer block of both towers: open_clip's resblocks (image, native text, or a custom
    text tower's), a timm image tower's blocks and a Hugging Face text tower's encoder layers (BiomedCLIP's
    ViT and BERT)."""
    towers = [getattr(model, "visual", None), model, getattr(model, "text", None)]
    blocks: list[torch.nn.Module] = []
    for tower in towers:
        transformer = getattr(tower, "transformer", None)
        encoder = getattr(transformer, "encoder", None)
        found = (
            getattr(transformer, "resblocks", None)  # open_clip
            or getattr(getattr(tower, "trunk", None), "blocks", None)  # timm (open_clip's TimmModel)
            or getattr(encoder, "layer", None)  # BERT-like
            or getattr(encoder, "layers", None)
        )
        blocks.extend(found or [])
    return blocks


def shard(model: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """fully_shard each transformer block, then the root (its embeddings, heads and logit_scale), over a
    1-D mesh of all ranks; the model is changed in place and returned. Parameters become DTensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    require_process_group()
    _scalars_as_vectors(model)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = mixed_precision(precision)
    blocks = transformer_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    log.info(
        "train.strategy=fsdp: %d transformer blocks and the root sharded over %d ranks",
        len(blocks),
        mesh.size(),
    )
    return model


SCALARS = ("logit_scale", "logit_bias")  # 0-dim parameters of open_clip's models


def _scalars_as_vectors(model: torch.nn.Module) -> None:
    """fully_shard refuses 0-dim parameters: logit_scale and logit_bias become 1-element vectors (the same
    values, broadcast the same in the loss); bmca-dcp-convert turns them back into scalars."""
    for name in SCALARS:
        param = getattr(model, name, None)
        if isinstance(param, torch.nn.Parameter) and param.dim() == 0:
            vector = torch.nn.Parameter(param.detach().reshape(1).clone(), requires_grad=param.requires_grad)
            setattr(model, name, vector)


def meta_template(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the unsharded `model` whose parameters are on the meta device (no memory) and whose buffers
    are real (open_clip's attention mask is not in the state dict): what plain_copy fills for evaluation."""
    import copy

    memo = {
        id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def plain_copy(template: torch.nn.Module, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every rank (collective): an unsharded copy of the sharded `model`'s current weights, built on
    `template` (meta_template), for evaluation during training, where each rank scores other tasks and so
    cannot run the sharded forward in step with the others. It holds the whole model, as DDP does."""
    import copy

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    plain = copy.deepcopy(template)
    shapes = {name: p.shape for name, p in plain.named_parameters()}
    state = {k: v.reshape(shapes[k]) if k in shapes else v for k, v in state.items()}
    plain.load_state_dict(state, assign=True)
    return plain.to(device)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a DTensor gathered whole (collective), anything else as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def all_finite(model: torch.nn.Module) -> tuple[bool, list[str]]:
    """Whether every floating weight of a sharded model is finite on every rank (collective: all ranks
    agree), and the names of the non-finite ones among this rank's shards."""
    from torch.distributed.tensor import DTensor

    bad = []
    for name, tensor in model.state_dict().items():
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            bad.append(name)
    flag = torch.tensor([float(bool(bad))], device=next(model.parameters()).device)
    torch.distributed.all_reduce(flag)
    return not bool(flag.item()), bad


def check_resume_strategy(state: dict | None, strategy: str, path) -> None:
    """Refuse a resume across strategies: the two checkpoint formats hold the optimizer differently."""
    if state is None:
        return
    if "sharded" in state and strategy != "fsdp":
        raise ConfigError(
            f"resume={path} is a sharded (train.strategy=fsdp) checkpoint: resume with train.strategy=fsdp, "
            "or convert it with bmca-dcp-convert and resume=<the .pt file> with train.strategy=ddp"
        )
    if "sharded" not in state and strategy == "fsdp":
        raise ConfigError(
            f"resume={path} is a single-file (train.strategy=ddp) checkpoint: resume with train.strategy=ddp, "
            "or start a new run (name=...) with model.pretrained=<it> and train.strategy=fsdp"
        )


def save_dcp(state: dict, model, optimizer, folder: Path, step: int, keep_last: int, is_main: bool) -> Path:
    """Every rank: the checkpoint of `step` as folder/step_N.dcp (module docstring), atomically; `state` is
    the rest of the training state, written by rank 0, which then prunes to the newest `keep_last`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = dcp_path(folder, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a write of this step killed earlier
        tmp.mkdir(parents=True)
    torch.distributed.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp)
    if is_main:  # dcp.save returned on rank 0: every rank's shards and the metadata are written
        atomic_torch_save(state, tmp / DCP_STATE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
        prune_checkpoints(folder, final, keep_last)
        log.info("saved %s", final)
    torch.distributed.barrier()  # no rank trains on while the checkpoint could still be renamed
    return final


def load_dcp(model, optimizer, path: Path) -> None:
    """Every rank: the model and optimizer state of the sharded checkpoint `path`, resharded to this run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    wanted = {"model": model_state, "optimizer": optim_state}
    try:
        dcp.load(wanted, checkpoint_id=Path(path))
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path}: its sharded weights do not load ({type(err).__name__}: {err})"
        ) from err
    set_state_dict(model, optimizer, model_state_dict=wanted["model"], optim_state_dict=wanted["optimizer"])


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
