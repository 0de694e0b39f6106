"""The confusion-matrix PNG of a task's per-class results (eval.py per_class_plots=true): beside the task's
JSON as <task>.confusion.png. No torch: it reads the `per_class` object of a result (per_class.py).

Rows are the true classes, columns the predicted ones, both in label order; each cell shows its count and
is shaded by its share of the row (so a rare class's recall reads as clearly as a frequent one's); the row
labels carry each class's recall (sensitivity) and support. Drawn with the Agg canvas, as summary.png.
"""

from __future__ import annotations

import io
from pathlib import Path

from bmca_clip.io import atomic_write

PLOT_SUFFIX = ".confusion.png"
_MAX_CLASSES = 60  # beyond this a cell is too small to read: the plot is skipped (the JSON has it all)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def plot_confusion(per_class: dict, title: str, path: str | Path) -> Path | None:
    """Write the PNG for a per_class record to path; None (nothing written) when it has no confusion
    matrix (multilabel) or more classes than a readable plot holds."""
    matrix = per_class.get("confusion_matrix")
    if not matrix or len(matrix) > _MAX_CLASSES:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = per_class["classes"]
    columns = per_class.get("predicted_columns") or classes
    shares = [[v / sum(row) if sum(row) else 0.0 for v in row] for row in matrix]
    side = max(4.0, 0.5 * len(columns) + 3)
    figure = Figure(figsize=(side + 1.5, side), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, label="share of the true class")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            text = f"{value:g}" if isinstance(value, int | float) else str(value)
            ax.text(j, i, text, ha="center", va="center", color="white" if shares[i][j] > 0.5 else "black")
    rows = [
        f"{name} (recall {_pct(r)}, n={s:g})"
        for name, r, s in zip(classes, per_class["recall"], per_class["support"], strict=True)
    ]
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write(Path(path), buffer.getvalue())
    return Path(path)
