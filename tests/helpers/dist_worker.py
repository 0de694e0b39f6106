"""Run by tests/integration/test_distributed.py under `torchrun --nproc_per_node=2`: one DDP train step on
this rank's half of a fixed global batch; rank 0 writes what the test compares with a single-process big
batch."""

import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist

import bmca_clip.model  # noqa: F401  registers bmca-tiny
from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.dist import init_distributed, shutdown
from bmca_clip.model import ModelConfig, build_model
from bmca_clip.train.step import unwrap
from bmca_clip.train.trainer import Trainer
from tests.helpers.batch import global_batch
from tests.helpers.config import compose_config


def main(out: Path, accum: int, loss: str) -> None:
    dist = init_distributed("cpu")
    # The processes must form one group: a sum over ranks sees both.
    probe = torch.tensor([dist.rank + 1.0])
    torch_dist.all_reduce(probe)
    overrides = ["model=bmca-tiny", "optim.grad_clip_norm=null", f"loss={loss}"]
    cfg = to_object(compose_config("pretrain", overrides), PretrainConfig)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="bmca-tiny", init_logit_bias=cfg.model.init_logit_bias)).model
    trainer = Trainer(cfg, dist, model)
    batch = global_batch(16)
    half = {k: v.chunk(2)[dist.rank] for k, v in batch.items()}
    micro = [{k: v.chunk(accum)[i] for k, v in half.items()} for i in range(accum)]
    metrics = trainer._agree(trainer.train_step(micro))
    grads = {n: p.grad.clone() for n, p in unwrap(trainer.model).named_parameters()}
    torch.save(
        {
            "world_size": torch_dist.get_world_size(),
            "probe": probe.item(),
            "loss": metrics["loss"].item(),
            "grads": grads,
        },
        out / f"rank{dist.rank}.pt",
    )
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
