"""The synthetic eval sets the demo suite's tasks read: `eval/<name>/images/NNNNNN.jpg` + `test.csv`.

The two classification sets also get a train split (`train.csv` over `train_images/NNNNNN.jpg`, as many
images as the test split, drawn from their own streams) for the linear-probe and k-shot task types.

`synthetic_modality` and `synthetic_color` are classification sets (`image,label`, the label indexing
`FIGURE_TYPES` or `COLORS`), `synthetic_retrieval` a retrieval set (`image,caption`, two captions per image).
Each set draws from generators seeded by (seed, its stream number), apart from training's stream 0.
"""

import csv
from pathlib import Path

import numpy as np

from bmca_clip.data.synthetic_figures import CAPTION_TEMPLATES, COLORS, FIGURE_TYPES, caption, draw_figure

EVAL_SETS = ("synthetic_modality", "synthetic_color", "synthetic_retrieval")


TRAIN_STREAM = 100  # added to a set's stream for its train split's seeds


def write_eval(out: Path, name: str, stream: int, seed: int, n: int, sizes, log) -> dict:
    """One eval folder; stream separates its seeds from training (0) and the other eval sets."""
    summary = _write_split(out / "eval" / name, "test", stream, seed, n, sizes)
    log(f"eval/{name}: {n} images, {summary['rows']} rows")
    if stream != 3:  # classification: a train split too
        train = _write_split(out / "eval" / name, "train", stream, seed, n, sizes)
        summary["train_csv"] = train["csv"]
        log(f"eval/{name}: train split, {n} images")
    return summary


def _write_split(folder: Path, split: str, stream: int, seed: int, n: int, sizes) -> dict:
    """folder/<split>.csv and its images; the train split draws from stream + TRAIN_STREAM."""
    images = "train_images" if split == "train" else "images"
    (folder / images).mkdir(parents=True, exist_ok=True)
    n_classes = {1: len(FIGURE_TYPES), 2: len(COLORS), 3: 1}[stream]
    draw = stream + (TRAIN_STREAM if split == "train" else 0)
    labels = np.random.default_rng([seed, draw]).permutation(np.arange(n) % n_classes)
    rows = []
    for i, label in enumerate(labels.tolist()):
        rng = np.random.default_rng([seed, draw, i])
        kind, color, count = int(rng.integers(6)), int(rng.integers(4)), int(rng.integers(1, 6))
        kind, color = (label, color) if stream == 1 else (kind, label) if stream == 2 else (kind, color)
        size = (int(rng.integers(sizes[0], sizes[1] + 1)), int(rng.integers(sizes[0], sizes[1] + 1)))
        image = f"{images}/{i:06d}.jpg"
        (folder / image).write_bytes(draw_figure(rng, kind, color, count, size))
        if stream == 3:
            for template in rng.choice(len(CAPTION_TEMPLATES), size=2, replace=False).tolist():
                rows.append((image, caption(kind, color, count, template)))
        else:
            rows.append((image, label))
    with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
        header = ("image", "caption") if stream == 3 else ("image", "label")
        csv.writer(f, lineterminator="\n").writerows([header, *rows])  # "\n": same bytes on every OS
    return {"csv": str(folder / f"{split}.csv"), "images": n, "rows": len(rows)}
