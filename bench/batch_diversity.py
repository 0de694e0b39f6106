"""Batch diversity on a cluster-ordered corpus: data.shards_in_flight against clusters per batch and zero-shot.

    python bench/batch_diversity.py [--work /tmp/bmca-diversity] [--shards-in-flight 1 2 4 8]
                                    [--buffers 1000 100] [--batches 200] [--batch 64]
                                    [--train 1 4 8] [--steps 120] [--seeds 0]

BIOMEDICA writes its shards cluster by cluster (k-means over DINOv2 features). The synthetic corpus written
with `--cluster-ordered` is its stand-in: 6,000 pairs in shards of 500, sorted by cluster (figure type x
colour, 24 clusters of ~250 pairs), so a shard holds two or three clusters. Two measures:

(a) distinct clusters per batch (mean and min over `--batches` batches of `--batch`) of one stream reading
    the corpus as `conf/data/synthetic.yaml` does (resampled shards), for each shards_in_flight and shuffle
    buffer. 1000 is the preset's buffer (two shards' worth); 100 is BIOMEDICA's ratio (data.shuffle_buffer=2000
    in shards of ~10,000). Images are not decoded: only the order of keys is measured.
(b) zero-shot of `experiment=demo` (bmca-small, batch 64) trained `--steps` steps on that corpus, per
    shards_in_flight in `--train` and seed in `--seeds`: the main metric of the three `suite=demo` tasks
    and their mean, in percent.

Prints Markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import webdataset as wds
from machine import cpu_name  # bench/machine.py: scripts run from bench/

from bmca_clip.config import DataConfig
from bmca_clip.data.loader import build_train_loader
from bmca_clip.data.synthetic import write_corpus
from bmca_clip.data.synthetic_corpus import cluster_of

ROOT = Path(__file__).resolve().parent.parent


def cluster_map(train_dir: Path) -> dict[str, int]:
    """Sample key -> cluster, from the metadata of every training shard under `train_dir`."""
    shards = sorted(str(p) for p in Path(train_dir).rglob("*.tar"))
    return {
        s["__key__"]: cluster_of(json.loads(s["json"])) for s in wds.WebDataset(shards, shardshuffle=False)
    }


def distinct_per_batch(batches: list[list[str]], clusters: dict[str, int]) -> list[int]:
    return [len({clusters[key] for key in keys}) for keys in batches]


def batch_keys(train_dir, cfg: dict, n_batches: int, batch_size: int, seed: int = 0) -> list[list[str]]:
    """The keys of one stream's first batches (images not decoded) under the data settings `cfg`."""
    data = DataConfig(train_shards=str(train_dir), num_workers=0, **cfg)
    loader = build_train_loader(
        data, lambda _: torch.zeros(1), lambda texts: texts, batch_size=batch_size, seed=seed
    )
    batches = []
    for batch in loader:
        batches.append(batch["keys"])
        if len(batches) == n_batches:
            return batches
    return batches


def diversity(train_dir, clusters, *, shards_in_flight, buffer, batches, batch_size) -> tuple[float, int]:
    """(mean, min) distinct clusters per batch of a stream reading `train_dir` resampled, as the preset."""
    cfg = dict(shards_in_flight=shards_in_flight, shuffle_buffer=buffer, shuffle_initial=max(1, buffer // 5))
    counts = distinct_per_batch(batch_keys(train_dir, cfg, batches, batch_size), clusters)
    return statistics.mean(counts), min(counts)


def train_and_eval(work: Path, shards_in_flight: int, steps: int, seed: int) -> dict[str, float]:
    """Train experiment=demo for `steps` steps on the cluster-ordered corpus; the demo suite's main metrics."""
    run = work / f"runs/s{shards_in_flight}_seed{seed}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = [f"output_dir={run}"]
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=demo",
            f"data.train_shards={work}/synthetic/train",
            f"data.shards_in_flight={shards_in_flight}",
            f"train.steps={steps}",
            f"train.seed={seed}",
            f"checkpoint.every_steps={steps}",
            "train.log_every=50",
            *common,
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            "eval.py",
            "suite=demo",
            "model=bmca-small",
            f"checkpoint=[{run}]",
            f"data_root={work}",
            "cache_dir=null",
            f"output_dir={run}/eval",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    with open(run / "eval" / "summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    return {r["task"]: 100 * float(r["value"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bmca-diversity"))
    parser.add_argument("--shards-in-flight", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--buffers", type=int, nargs="+", default=[1000, 100])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--train", type=int, nargs="*", default=[1, 4, 8], help="shards_in_flight to train")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    corpus = args.work / "synthetic"
    if not (corpus / "train").exists():
        write_corpus(corpus, cluster_ordered=True)
    clusters = cluster_map(corpus / "train")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores; {len(clusters)} pairs, {len(set(clusters.values()))} clusters"
    )
    print("\n| shards_in_flight | " + " | ".join(f"buffer {b}: mean (min)" for b in args.buffers) + " |")
    print("|---|" + "---|" * len(args.buffers))
    for s in args.shards_in_flight:
        cells = []
        for b in args.buffers:
            mean, low = diversity(
                corpus / "train",
                clusters,
                shards_in_flight=s,
                buffer=b,
                batches=args.batches,
                batch_size=args.batch,
            )
            cells.append(f"{mean:.1f} ({low})")
        print(f"| {s} | " + " | ".join(cells) + " |")
    if not args.train:
        return
    print(f"\n| shards_in_flight | seed | {' | '.join(['modality', 'color', 'retrieval'])} | mean | wall |")
    print("|---|---|---|---|---|---|---|")
    for s in args.train:
        for seed in args.seeds:
            start = time.perf_counter()
            scores = train_and_eval(args.work, s, args.steps, seed)
            values = [scores.get(f"synthetic_{t}", float("nan")) for t in ("modality", "color", "retrieval")]
            cells = " | ".join(f"{v:.2f}" for v in values)
            wall = time.perf_counter() - start
            print(f"| {s} | {seed} | {cells} | {statistics.mean(values):.2f} | {wall:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
