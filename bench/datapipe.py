"""Data-pipeline benchmark: JPEG bytes -> normalised batch, images/s on one CPU core.

    python bench/datapipe.py [--n 400] [--size 224] [--batch 64] [--repeats 3] [--seed 0]

Compares open_clip's train transform after a full PIL decode (what a loader does by default) with
`FastTrainTransform` + `normalize_on_device`, with and without the reduced-size JPEG decode. The images are
made in memory: BIOMEDICA-like sizes (each side uniform in 256-1500 px) and content (smooth gradients,
texture, shapes), JPEG quality 90, from a fixed seed. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import open_clip
import torch
from machine import cpu_name  # bench/machine.py: scripts run from bench/
from PIL import Image, ImageDraw, ImageFilter

from bmca_clip.data.transforms import FastTrainTransform, normalize_on_device


def make_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A figure-like image: a colour gradient, low-frequency texture, fine grain and a few shapes."""
    x = np.linspace(0, rng.uniform(-1, 1), width, dtype=np.float32)
    y = np.linspace(0, rng.uniform(-1, 1), height, dtype=np.float32)[:, None]
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    img = c0 + (c1 - c0) * ((x + y) % 1.0)[..., None]
    # Blobby texture (tissue, cells) from upsampled noise; its scale varies like magnification does.
    cell = int(rng.integers(8, 48))
    coarse = rng.normal(0, 40, (height // cell + 2, width // cell + 2, 3)).astype(np.float32)
    coarse_img = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8))
    img += np.asarray(coarse_img.resize((width, height), Image.Resampling.BICUBIC), np.float32) - 128
    img += 6 * rng.standard_normal((height, width, 1), dtype=np.float32)  # sensor / scanning grain
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(10, width // 2), y0 + rng.integers(10, height // 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind, line_width = int(rng.integers(0, 3)), int(rng.integers(1, 6))
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill=colour, width=line_width)
        else:
            shape = draw.ellipse if kind == 1 else draw.rectangle
            shape(
                (x0, y0, x1, y1),
                outline=colour,
                fill=colour if rng.random() < 0.3 else None,
                width=line_width,
            )
    return out.filter(ImageFilter.SMOOTH) if rng.random() < 0.5 else out


def make_jpegs(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        width, height = (int(v) for v in rng.integers(256, 1501, 2))
        buf = io.BytesIO()
        make_image(rng, width, height).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def baseline(size: int) -> Callable[[list[bytes]], torch.Tensor]:
    transform = open_clip.image_transform(size, is_train=True)

    def run(batch: list[bytes]) -> torch.Tensor:
        images = []
        for i, data in enumerate(batch):
            # Each sample's crop is seeded, as in the loader. The CPU generator alone: torch.manual_seed also
            # queues a lazy CUDA/XPU seed, formatting a stack trace each call (~1 ms, as much as a resize).
            torch.default_generator.manual_seed(i)
            images.append(transform(Image.open(io.BytesIO(data)).convert("RGB")))
        return torch.stack(images)

    return run


def fast(size: int, draft: bool) -> Callable[[list[bytes]], torch.Tensor]:
    transform = FastTrainTransform(size, draft=draft)

    def run(batch: list[bytes]) -> torch.Tensor:
        images = []
        for i, data in enumerate(batch):
            torch.default_generator.manual_seed(i)
            images.append(transform(data))
        return normalize_on_device(torch.stack(images), transform.mean, transform.std)

    return run


def images_per_second(runs: dict[str, Callable], jpegs: list[bytes], batch: int, repeats: int) -> dict:
    """Median images/s of each pipeline; passes alternate between pipelines so that drift in the machine's
    speed (a shared VM) hits them all alike."""
    for run in runs.values():
        run(jpegs[:batch])  # warm-up: lazy imports, allocator, caches
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for i in range(0, len(jpegs), batch):
                run(jpegs[i : i + batch])
            rates[name].append(len(jpegs) / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def decoded_megapixels(jpegs: list[bytes], size: int, draft: bool) -> float:
    transform = FastTrainTransform(size, draft=draft)
    total = 0
    for i, data in enumerate(jpegs):
        torch.default_generator.manual_seed(i)
        img, _ = transform.decode(data)
        total += img.width * img.height
    return total / len(jpegs) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="number of images")
    parser.add_argument("--size", type=int, default=224, help="model input size (px)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core, as one DataLoader worker has

    start = time.perf_counter()
    jpegs = make_jpegs(args.n, args.seed)
    mb = sum(map(len, jpegs)) / 1e6
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; 1 thread, 1 process; torch {torch.__version__}")
    print(
        f"data: {args.n} JPEGs (q90, sides 256-1500 px), {mb:.1f} MB, made in {time.perf_counter() - start:.0f} s"
    )
    print(f"model input {args.size} px, batch {args.batch}, median of {args.repeats} passes after warm-up\n")

    runs = {
        "(a) baseline: PIL decode + open_clip train transform": (baseline(args.size), False),
        "(b) ours: FastTrainTransform + normalize_on_device": (fast(args.size, draft=True), True),
        "(c) ours without draft (full-size decode)": (fast(args.size, draft=False), False),
    }
    rates = images_per_second({k: run for k, (run, _) in runs.items()}, jpegs, args.batch, args.repeats)
    base_rate = rates[next(iter(runs))]
    print("| pipeline | images/s | ms/image | decoded MPix/image | speedup |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, draft) in runs.items():
        rate, mpix = rates[name], decoded_megapixels(jpegs, args.size, draft)
        print(f"| {name} | {rate:.0f} | {1000 / rate:.1f} | {mpix:.2f} | {rate / base_rate:.2f}x |")


if __name__ == "__main__":
    main()
