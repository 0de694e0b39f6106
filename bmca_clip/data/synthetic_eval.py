"""The synthetic eval sets the demo suite's tasks read: `eval/<name>/images/NNNNNN.jpg` + `test.csv`.

`synthetic_modality` and `synthetic_color` are classification sets (`image,label`, the label indexing
`FIGURE_TYPES` or `COLORS`), `synthetic_retrieval` a retrieval set (`image,caption`, two captions per image).
Each set draws from generators seeded by (seed, its stream number), apart from training's stream 0.
"""

import csv
from pathlib import Path

import numpy as np

from bmca_clip.data.synthetic_figures import CAPTION_TEMPLATES, COLORS, FIGURE_TYPES, caption, draw_figure

EVAL_SETS = ("synthetic_modality", "synthetic_color", "synthetic_retrieval")


def write_eval(out: Path, name: str, stream: int, seed: int, n: int, sizes, log) -> dict:
    """One eval folder; stream separates its seeds from training (0) and the other eval sets."""
    folder = out / "eval" / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    n_classes = {1: len(FIGURE_TYPES), 2: len(COLORS), 3: 1}[stream]
    labels = np.random.default_rng([seed, stream]).permutation(np.arange(n) % n_classes)
    rows = []
    for i, label in enumerate(labels.tolist()):
        rng = np.random.default_rng([seed, stream, i])
        kind, color, count = int(rng.integers(6)), int(rng.integers(4)), int(rng.integers(1, 6))
        kind, color = (label, color) if stream == 1 else (kind, label) if stream == 2 else (kind, color)
        size = (int(rng.integers(sizes[0], sizes[1] + 1)), int(rng.integers(sizes[0], sizes[1] + 1)))
        image = f"images/{i:06d}.jpg"
        (folder / image).write_bytes(draw_figure(rng, kind, color, count, size))
        if stream == 3:
            for template in rng.choice(len(CAPTION_TEMPLATES), size=2, replace=False).tolist():
                rows.append((image, caption(kind, color, count, template)))
        else:
            rows.append((image, label))
    with open(folder / "test.csv", "w", newline="", encoding="utf-8") as f:
        header = ("image", "caption") if stream == 3 else ("image", "label")
        csv.writer(f, lineterminator="\n").writerows([header, *rows])  # "\n": same bytes on every OS
    log(f"eval/{name}: {n} images, {len(rows)} rows")
    return {"csv": str(folder / "test.csv"), "images": n, "rows": len(rows)}
