"""Training-step benchmark: samples/s of `Trainer.train_step` against a bare loop; model-FLOPs utilisation.

    python bench/train_throughput.py [--models bmca-small] [--batch 64] [--precision fp32] [--threads 1]
                                     [--steps 2] [--blocks 12] [--warmup 3] [--grad-checkpointing]
                                     [--strategy ddp|fsdp] [--no-bare]
    torchrun --nproc_per_node=N bench/train_throughput.py --strategy fsdp ...   # N ranks, per-GPU figures

`--strategy fsdp` wraps our Trainer's model with FSDP2 (train.strategy=fsdp) and the bare loop's with the
same blocks (bmca_clip/sharded.py); it joins the torchrun group, or forms a 1-rank one (bench/strategy.py).
Under several ranks, or with `--no-bare`, only our loop runs, so that the peak GPU memory column
(torch.cuda.max_memory_allocated on rank 0's GPU, from the model's build to the last step) is one model's.

Defaults: on the CPU `bmca-small`, batch 64, fp32, one torch thread; on a CUDA GPU `ViT-B-16` (batch 256)
and `ViT-L-14` (batch 128) at amp_bf16 with TF32 on. `--batch` sets one batch size for every model. One
thread on the CPU because the CPU figure is a ratio, and a shared small machine ruins it otherwise: when
another process takes one of 2 cores, a 2-thread step waits at every OpenMP barrier and runs ~10x slower
for that block, while a 1-thread step slows at most ~2x, alike for both loops.

Both loops train the same architecture from the same initial weights on the same batch, already on the
device. The batch is uint8 images, as our loader sends them; both loops normalise on the device (ours
with `normalize_on_device`, the bare loop with the same three tensor ops), so the comparison is loop
against loop and not one input format against another. The bare loop is plain PyTorch: zero_grad
(set_to_none, first, as ours), AdamW with our hyperparameters and parameter groups, `open_clip.ClipLoss()`,
autocast of the same dtype, backward, `clip_grad_norm_`, step and the logit-scale clamp. What ours adds is
the framework: `model.train()`, config lookups, the LR schedule, the metric tensors it returns.

Timed blocks of `--steps` steps alternate between the two loops, in the order ours, bare, bare, ours, ...
(so neither always runs first, and drift in a shared machine's speed hits both alike); the median
samples/s of each loop's blocks is reported, and overhead = (bare - ours) / bare. Model FLOPs per sample
are 3 x the forward FLOPs (forward + backward) counted by `FlopCounterMode` on one forward pass of both
towers at the benchmark's batch size; recomputation under gradient checkpointing is not counted (MFU,
not hardware utilisation). Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import open_clip
import torch
from machine import cpu_name  # bench/machine.py: scripts run from bench/
from strategy import join_group, leave_group, peak_memory_gib
from torch.utils.flop_counter import FlopCounterMode

import bmca_clip.model  # noqa: F401  registers bmca-tiny / bmca-small with open_clip
from bmca_clip.config import PRECISIONS, ModelConfig, PretrainConfig, TrainConfig
from bmca_clip.dist import DistInfo
from bmca_clip.optim import decays
from bmca_clip.sharded import shard
from bmca_clip.train.trainer import Trainer

# Dense peak TFLOP/s of one GPU, from the vendors' datasheets (the "with sparsity" figures halved), keyed
# by a substring of torch.cuda.get_device_name(); the first match wins, so the PCIe H100 comes first.
# fp32 runs with TF32 matmuls, so its peak is the TF32 one.
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0},
    "H100": {"bf16": 989.0, "tf32": 494.5},
    "H200": {"bf16": 989.0, "tf32": 494.5},
    "A100": {"bf16": 312.0, "tf32": 156.0},
}
# Default batches on one GPU at amp_bf16 without gradient checkpointing, chosen for 80-141 GB cards and not
# yet measured; the run holds two models with their optimizer states (~14 GB for ViT-L-14). Out of memory,
# the script names the model and suggests a smaller --batch or --grad-checkpointing.
GPU_BATCH = {"ViT-B-16": 256, "ViT-L-14": 128}
_AUTOCAST = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}

Step = Callable[[dict], object]


def describe_machine(device: torch.device) -> str:
    versions = f"torch {torch.__version__}, open_clip {open_clip.__version__}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB; CUDA {torch.version.cuda}; {versions}"
    threads = torch.get_num_threads()
    return f"{cpu_name()}, {os.cpu_count()} cores, torch threads: {threads}; {versions}"


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    kind = "tf32" if precision == "fp32" else "bf16"  # fp16 tensor-core peak equals bf16's
    return next((peaks[kind] for key, peaks in PEAK_TFLOPS.items() if key in name), None)


def autocast(device: torch.device, precision: str):
    dtype = _AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_batch(model: torch.nn.Module, batch_size: int, device: torch.device) -> dict:
    """Random uint8 images and token ids of the model's sizes, on the device (a fixed seed)."""
    size = model.visual.preprocess_cfg["size"]
    height, width = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch_size, 3, height, width), dtype=torch.uint8, generator=g)
    texts = torch.randint(1, model.vocab_size, (batch_size, model.context_length), generator=g)
    return {"images": images.to(device), "texts": texts.to(device)}


def ours(cfg: PretrainConfig, dist: DistInfo, model: torch.nn.Module) -> Step:
    trainer = Trainer(cfg, dist, model)  # no components: train_step only
    return lambda batch: trainer.train_step([batch])["loss"]


def bare(cfg: PretrainConfig, device: torch.device, model: torch.nn.Module) -> Step:
    """What our step computes, in plain PyTorch: one autocast forward, ClipLoss, backward, clip, step.

    The GradScaler is the PyTorch AMP recipe's; it does nothing unless the precision is amp_fp16."""
    model = model.to(device)
    if cfg.train.precision == "pure_bf16":
        model = model.to(torch.bfloat16)
    if cfg.train.strategy == "fsdp":
        model = shard(model, device, cfg.train.precision)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    o = cfg.optim
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if decays(n, p)], "weight_decay": o.weight_decay},
            {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
        ],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
    )
    loss_fn = open_clip.ClipLoss()
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "amp_fp16")  # AMP recipe
    pre = model.visual.preprocess_cfg
    mean = torch.tensor(pre["mean"], device=device).view(-1, 1, 1)
    std = torch.tensor(pre["std"], device=device).view(-1, 1, 1)
    in_dtype = torch.bfloat16 if cfg.train.precision == "pure_bf16" else torch.float32
    clip = cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm is not None else float("inf")

    def step(batch: dict) -> torch.Tensor:
        # zero_grad first, as ours does (and PyTorch's tutorial loop): after opt.step() instead, the freed
        # gradients go back to the OS on the CPU and fault in again in backward: twice the page faults per
        # step for bmca-small and 5-10% slower, a cost of the loop's order that would read as ours' gain.
        opt.zero_grad(set_to_none=True)
        images = batch["images"].float().div_(255).sub_(mean).div_(std).to(in_dtype)
        with autocast(device, cfg.train.precision):
            out = model(images, batch["texts"])
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            model.logit_scale.clamp_(0, cfg.train.logit_scale_max)
        return loss.detach()

    return step


def forward_flops(model: torch.nn.Module, batch: dict, precision: str, device: torch.device) -> int:
    """FLOPs of one forward pass of both towers over `batch` (matmuls, convolutions, attention)."""
    dtype = torch.bfloat16 if precision == "pure_bf16" else torch.float32
    images = batch["images"].to(dtype)  # values do not change the count
    # Train mode: in eval mode nn.MultiheadAttention takes a fused fast path that FlopCounterMode misses.
    model.train()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), autocast(device, precision), counter:
        model(images, batch["texts"])
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU runs behind the Python loop; time what it has done


def timed_block(step: Step, batch: dict, n: int, device: torch.device) -> float:
    """samples/s over n steps."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step(batch)
    sync(device)
    return n * batch["texts"].shape[0] / (time.perf_counter() - start)


def bench_model(name: str, batch_size: int, args: argparse.Namespace, dist: DistInfo) -> dict:
    device = dist.device
    train = TrainConfig(precision=args.precision, batch_size=batch_size, steps=10**6, device=device.type)
    train.strategy = args.strategy
    cfg = PretrainConfig(
        model=ModelConfig(name=name, grad_checkpointing=args.grad_checkpointing), train=train
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = open_clip.create_model(name, output_dict=True).to(device)
    model.set_grad_checkpointing(args.grad_checkpointing)
    batch = make_batch(model, batch_size, device)
    flops = forward_flops(model, batch, args.precision, device) / batch_size  # unsharded: the whole model's
    with_bare = not args.no_bare and dist.world_size == 1
    bare_model = copy.deepcopy(model) if with_bare else None  # the same initial weights
    steps = {"ours": ours(cfg, dist, model)}
    if with_bare:
        steps["bare"] = bare(cfg, device, bare_model)
    first = {k: float(step(batch)) for k, step in steps.items()}  # same weights and batch: same loss
    for _ in range(args.warmup - 1):
        for step in steps.values():
            step(batch)
    rates: dict[str, list[float]] = {key: [] for key in steps}
    for block in range(args.blocks):
        for key in [k for k in (("ours", "bare") if block % 2 == 0 else ("bare", "ours")) if k in steps]:
            rates[key].append(timed_block(steps[key], batch, args.steps, device))
    ours_rate = statistics.median(rates["ours"])
    bare_rate = statistics.median(rates["bare"]) if with_bare else float("nan")
    pairs = [(b - o) / b for o, b in zip(rates["ours"], rates["bare"], strict=True)] if with_bare else [0.0]
    if dist.is_main:
        print(
            f"{name} ({args.strategy}, {dist.world_size} ranks): first-step loss {first}; samples/s per block: "
            f"{ {k: [round(r, 1) for r in v] for k, v in rates.items()} }; overhead per block pair: min "
            f"{min(pairs):+.1%}, median {statistics.median(pairs):+.1%}, max {max(pairs):+.1%}"
        )
    return {
        "model": name,
        "strategy": f"{args.strategy} x{dist.world_size}",
        "precision": args.precision,
        "batch": batch_size,
        "ours": ours_rate,
        "bare": bare_rate,
        "paired": statistics.median(pairs) if with_bare else float("nan"),
        "flops_per_sample": 3 * flops,
        "peak_gib": peak_memory_gib(device),
    }


def table_row(row: dict, peak: float | None, device: torch.device) -> str:
    achieved = row["ours"] * row["flops_per_sample"]
    shown = f"{achieved / 1e12:.1f} TFLOP/s" if device.type == "cuda" else f"{achieved / 1e9:.1f} GFLOP/s"
    if device.type != "cuda" and peak is None:
        mfu = "n/a (CPU)"
    else:
        mfu = f"{achieved / (peak * 1e12):.1%}" if peak else "unknown peak"
    bare_run = row["bare"] == row["bare"]  # nan: the bare loop did not run (--no-bare, several ranks)
    overhead = f"{(row['bare'] - row['ours']) / row['bare']:+.1%}" if bare_run else "n/a"
    paired, bare_rate = (f"{row['paired']:+.1%}", f"{row['bare']:.1f}") if bare_run else ("n/a", "n/a")
    peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "n/a"
    return (
        f"| {row['model']} | {row['strategy']} | {row['precision']} | {row['batch']} | {row['ours']:.1f} | "
        f"{bare_rate} | {overhead} | {paired} | {row['flops_per_sample'] / 1e9:.2f} | {shown} | {mfu} | {peak} |"
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


def parse_args(argv: list[str] | None, cuda: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", help="open_clip names (default: CPU bmca-small; GPU B-16, L-14)"
    )
    parser.add_argument("--batch", type=_positive, help="batch size for every model (default: per model)")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: fp32 on CPU, amp_bf16 on GPU")
    parser.add_argument("--steps", type=_positive, help="steps per timed block (default: 2 CPU, 10 GPU)")
    parser.add_argument(
        "--blocks", type=_positive, default=12, help="timed blocks per loop; the median is reported"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps per loop first (default: 3 CPU, 10 GPU)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for MFU (default: from the GPU name)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument(
        "--strategy", choices=("ddp", "fsdp"), default="ddp", help="train.strategy (see above)"
    )
    parser.add_argument("--no-bare", action="store_true", help="time our loop only (peak memory: one model)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default on the CPU: 1, see the module doc)"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda, but no CUDA device is visible; drop it to run on the CPU")
    gpu = args.device != "cpu" and cuda
    args.models = args.models or (["ViT-B-16", "ViT-L-14"] if gpu else ["bmca-small"])
    args.precision = args.precision or ("amp_bf16" if gpu else "fp32")
    args.steps = args.steps or (10 if gpu else 2)
    args.warmup = max(1, args.warmup if args.warmup is not None else (10 if gpu else 3))
    if args.precision == "amp_fp16" and not gpu:
        parser.error("--precision amp_fp16 needs a CUDA device; use fp32 or amp_bf16 on the CPU")
    known = open_clip.list_models()
    for name in args.models:
        if name not in known:
            parser.error(f"--models: {name!r} is not an open_clip architecture (see open_clip.list_models())")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, torch.cuda.is_available())
    gpu = args.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    distributed = args.strategy == "fsdp" or "RANK" in os.environ  # torchrun: every rank takes part
    dist = join_group(device) if distributed else DistInfo(device=device)
    device = dist.device
    if args.threads or not gpu:
        torch.set_num_threads(args.threads or 1)
    if gpu:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.tf32=true
    peak = peak_tflops(device, args.precision, args.peak_tflops)
    say = print if dist.is_main else (lambda *a, **k: None)
    say(f"machine: {describe_machine(device)}")
    say(
        f"{args.warmup} warm-up steps, then {args.blocks} alternating blocks of {args.steps} steps per loop; "
        f"uint8 batch on the device; grad checkpointing {'on' if args.grad_checkpointing else 'off'}"
    )
    if device.type == "cuda" and peak is None:
        say(f"unknown peak for {torch.cuda.get_device_name(device)}: MFU skipped (set --peak-tflops)")
    rows = []
    for name in args.models:
        batch = args.batch or (GPU_BATCH.get(name, 64) if device.type == "cuda" else 64)
        try:
            rows.append(bench_model(name, batch, args, dist))
        except torch.cuda.OutOfMemoryError:
            advice = f"try --batch {batch // 2} or --grad-checkpointing"
            say(f"{name}: out of GPU memory at batch {batch}; {advice}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    say(
        "\n| model | strategy | precision | batch/GPU | ours samples/s/GPU | bare samples/s | overhead | overhead, "
        "paired | GFLOPs/sample | achieved (ours) | MFU | peak GiB/GPU |"
    )
    say("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        say(table_row(row, peak, device))
    leave_group()


if __name__ == "__main__":
    main()
