"""Run by tests/integration/test_fsdp.py under `torchrun --nproc_per_node=2`: one optimizer step of the same
bmca-tiny model on the same global batch, once under DDP and once under FSDP2, for each accumulation given;
rank 0 writes both sides' loss, gradients (FSDP's gathered whole) and updated weights, and what the
GradScaler found on every rank."""

import sys
from pathlib import Path

import torch

import bmca_clip.model  # noqa: F401  registers bmca-tiny
from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.dist import init_distributed, shutdown
from bmca_clip.model import ModelConfig, build_model
from bmca_clip.sharded import full, shard
from bmca_clip.train.step import unwrap
from bmca_clip.train.trainer import Trainer
from tests.helpers.batch import global_batch
from tests.helpers.config import compose_config


def one_step(dist, strategy: str, accum: int, extra: list[str]) -> dict:
    overrides = ["model=bmca-tiny", f"train.strategy={strategy}", *extra]
    cfg = to_object(compose_config("pretrain", overrides), PretrainConfig)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="bmca-tiny", grad_checkpointing=cfg.model.grad_checkpointing)).model
    trainer = Trainer(cfg, dist, model)
    half = {k: v.chunk(2)[dist.rank] for k, v in global_batch(16).items()}
    micro = [{k: v.chunk(accum)[i] for k, v in half.items()} for i in range(accum)]
    metrics = trainer._agree(trainer.train_step(micro))
    params = dict(unwrap(trainer.model).named_parameters())
    shape = {n: p.shape for n, p in build_model(ModelConfig(name="bmca-tiny")).model.named_parameters()}
    return {
        "loss": metrics["loss"].item(),
        "grad_norm": metrics["grad_norm"].item(),
        "logit_scale": metrics["logit_scale"].item(),
        # clipped gradients and the weights after the update, as plain tensors of the model's own shapes
        "grads": {n: full(p.grad).reshape(shape[n]) for n, p in params.items() if p.grad is not None},
        "weights": {n: full(p.detach()).reshape(shape[n]) for n, p in params.items()},
    }


def scaler_on_shards(dist) -> dict:
    """torch.amp.GradScaler (what amp_fp16 uses) on FSDP2's DTensor gradients, with an inf in rank 1's shard
    only: every rank must find it (or the ranks would step apart) and back the scale off alike."""
    torch.manual_seed(0)
    model = shard(build_model(ModelConfig(name="bmca-tiny")).model, dist.device, "fp32")
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    half = {k: v.chunk(2)[dist.rank] for k, v in global_batch(8).items()}
    out = model(half["images"], half["texts"])
    scaler.scale(out["image_features"].sum() + out["text_features"].sum()).backward()
    before = full(model.visual.proj.detach()).clone()
    if dist.rank == 1:
        model.visual.proj.grad.to_local().view(-1)[0] = float("inf")
    scaler.unscale_(optimizer)
    found = sum(v.item() for v in scaler._found_inf_per_device(optimizer).values())
    scaler.step(optimizer)
    scaler.update()
    moved = not torch.equal(full(model.visual.proj.detach()), before)
    return {"found_inf": found, "scale": scaler.get_scale(), "stepped": moved}


def main(out: Path, accums: list[int]) -> None:
    dist = init_distributed("cpu")
    extra = ["model.grad_checkpointing=true", "optim.grad_clip_norm=0.5"]
    results = {
        f"{strategy}-{accum}": one_step(dist, strategy, accum, extra)
        for accum in accums
        for strategy in ("ddp", "fsdp")
    }
    scaler = scaler_on_shards(dist)
    gathered = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, scaler)
    results["scaler"] = gathered
    if dist.is_main:
        torch.save(results, out / "steps.pt")
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(a) for a in sys.argv[2:]])
