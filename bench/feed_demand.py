"""Can the data path feed the GPU? CPU cores per GPU needed to decode and augment what a model consumes.

    python bench/feed_demand.py [--models ViT-B-16 ViT-L-14] [--peak-tflops 989] [--mfu 0.45]
                                [--cores-per-gpu 14] [--n 200] [--repeats 3]

Demand: a GPU at `--mfu` of `--peak-tflops` (dense bf16; 989 is the H100/H200 SXM datasheet figure) trains
peak x mfu / (3 x forward FLOPs per sample) samples/s; the forward FLOPs of both towers are counted with
`FlopCounterMode` on one CPU forward pass (train mode, as bench/train_throughput.py counts them).
Supply: the images/s one core turns from BIOMEDICA-like JPEG bytes into a uint8 training crop of the model's
input size, measured here with bench/datapipe.py's images and our `FastTrainTransform` (one thread, one
process: one DataLoader worker). Cores needed = demand / supply, against `--cores-per-gpu` (14: a 112-core
8-GPU node, such as a DGX H100/H200, less nothing for the training processes themselves).

Run it on the cluster's own CPUs for their figure: the supply is the machine's, the demand is arithmetic.
Tar reading, tokenisation and the batch's trip to the GPU are not in the supply (a few % of a worker's time:
see docs/benchmarks.md), so the cores needed are a lower bound.
"""

from __future__ import annotations

import argparse
import os

import open_clip
import torch
from datapipe import fast, images_per_second, make_jpegs  # bench/datapipe.py: scripts run from bench/
from machine import cpu_name
from torch.utils.flop_counter import FlopCounterMode


def forward_gflops(name: str) -> tuple[float, int]:
    """GFLOPs of one forward pass of both towers for one sample, and the model's image size."""
    model = open_clip.create_model(name, pretrained=None)
    size = model.visual.preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    images = torch.zeros(1, 3, size, size)
    texts = torch.ones(1, model.context_length, dtype=torch.long)
    model.train()  # eval mode takes nn.MultiheadAttention's fused path, which the counter misses
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images, texts)
    return counter.get_total_flops() / 1e9, size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B-16", "ViT-L-14"])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of one GPU")
    parser.add_argument("--mfu", type=float, default=0.45, help="model-FLOPs utilisation to feed")
    parser.add_argument("--cores-per-gpu", type=float, default=14.0, help="CPU cores a node gives one GPU")
    parser.add_argument("--n", type=int, default=200, help="JPEGs in the supply measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    jpegs = make_jpegs(args.n, seed=0)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(
        f"demand: {args.peak_tflops:g} TFLOP/s peak x {args.mfu:.0%} MFU; supply: {args.n} JPEGs "
        f"(q90, sides 256-1500 px), one core; {args.cores_per_gpu:g} cores per GPU available\n"
    )
    rows = []
    supply_at: dict[int, float] = {}
    for name in args.models:
        gflops, size = forward_gflops(name)
        if size not in supply_at:
            supply_at[size] = images_per_second({"ours": fast(size, draft=True)}, jpegs, 64, args.repeats)[
                "ours"
            ]
        demand = args.peak_tflops * 1e3 * args.mfu / (3 * gflops)
        cores = demand / supply_at[size]
        verdict = "yes" if cores <= args.cores_per_gpu else "no"
        rows.append((name, size, 3 * gflops, demand, supply_at[size], cores, verdict))
    print(
        "| model | input px | GFLOPs/sample (fwd+bwd) | samples/s per GPU | images/s per core | "
        "cores per GPU needed | fed by the cores given? |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, size, gflops, demand, supply, cores, verdict in rows:
        print(f"| {name} | {size} | {gflops:.0f} | {demand:.0f} | {supply:.0f} | {cores:.1f} | {verdict} |")


if __name__ == "__main__":
    main()
