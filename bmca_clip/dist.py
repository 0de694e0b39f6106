"""Where this process runs: rank, world size and device, as one small value that is passed around."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from accelerate import PartialState

from bmca_clip.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _no_cuda(key: str) -> ConfigError:
    return ConfigError(f"{key}=cuda but no CUDA device is visible; use {key}=cpu or auto")


def pick_device(preference: str, local_rank: int, key: str = "train.device") -> torch.device:
    """The device `preference` (auto | cpu | cuda) names; key: the setting it came from, for the message."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise _no_cuda(key)
    if preference in ("cuda", "auto") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def slurm_rendezvous_port(job_id: int | str) -> int:
    """The port rank 0 listens on in a Slurm job: fixed by the job id, the same as slurm/train.sbatch."""
    return 20000 + int(job_id) % 20000


def torch_env_from_slurm(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for a process that srun started as one of
    several tasks of a job step (what hydra-submitit-launcher does with tasks_per_node > 1), when no
    launcher (torchrun) set them; {} otherwise, also for a lone `python train.py` in a batch script."""
    if "RANK" in environ or int(environ.get("SLURM_STEP_NUM_TASKS", "1")) <= 1:
        return {}
    nodes = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
    if re.fullmatch(r"[\w.-]+", nodes):  # one plain host name
        head = nodes
    else:  # node[01-04],gpu7: let Slurm expand it
        head = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    return {
        "RANK": environ["SLURM_PROCID"],
        "LOCAL_RANK": environ["SLURM_LOCALID"],
        "WORLD_SIZE": environ["SLURM_STEP_NUM_TASKS"],
        "MASTER_ADDR": environ.get("MASTER_ADDR", head),
        "MASTER_PORT": environ.get("MASTER_PORT", str(slurm_rendezvous_port(environ["SLURM_JOB_ID"]))),
    }


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group that the launcher (torchrun, srun running torchrun, or srun alone with one
    task per GPU) describes.

    accelerate's PartialState reads the launcher's environment, picks the backend (NCCL on GPUs, gloo on
    CPUs) and the device. Without CUDA it must be told cpu=True: otherwise each process silently runs
    alone (tests/integration/test_distributed.py proves the processes form one group).
    """
    os.environ.update(torch_env_from_slurm())
    use_cpu = device_preference == "cpu" or not torch.cuda.is_available()
    if device_preference == "cuda" and use_cpu:
        raise _no_cuda("train.device")
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
