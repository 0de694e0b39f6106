"""The process group bench/train_throughput.py's --strategy needs: the one torchrun describes (RANK,
WORLD_SIZE, ...), else a 1-rank group of this process alone (NCCL on a GPU, gloo on the CPU), since FSDP2's
fully_shard needs a device mesh even on one GPU."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as torch_dist

from bmca_clip.dist import DistInfo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(device: torch.device) -> DistInfo:
    """This process's rank in the torchrun group (or a 1-rank group), on its own GPU when on CUDA."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return DistInfo(
        rank=torch_dist.get_rank(), local_rank=local, world_size=torch_dist.get_world_size(), device=device
    )


def leave_group() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def peak_memory_gib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated on this GPU since the last reset, in GiB; None on the CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
