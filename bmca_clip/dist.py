"""Where this process runs: rank, world size and device, as one small value that is passed around."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from accelerate import PartialState


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    if preference in ("cuda", "auto") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group that the launcher (torchrun, or srun running torchrun) describes.

    accelerate's PartialState reads the launcher's environment, picks the backend (NCCL on GPUs, gloo on
    CPUs) and the device. Without CUDA it must be told cpu=True: otherwise each process silently runs
    alone (tests/test_distributed.py proves the processes form one group).
    """
    use_cpu = device_preference == "cpu" or not torch.cuda.is_available()
    if device_preference == "cuda" and use_cpu:
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    state = PartialState(cpu=use_cpu)
    device = torch.device("cpu") if use_cpu else state.device
    return DistInfo(
        rank=state.process_index,
        local_rank=state.local_process_index,
        world_size=state.num_processes,
        device=device,
    )


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
