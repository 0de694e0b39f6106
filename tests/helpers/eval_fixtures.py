"""Helpers for the evaluation tests: a tiny random-init CLIP and stand-in task data on disk.

Imported by the eval tests; the hub-format stand-ins are in eval_hub_repos.py. Nothing here downloads.
"""

from __future__ import annotations

import csv
import functools
import json
import tempfile
from pathlib import Path

import open_clip
import torch
from PIL import Image

TINY_MODEL = "bmca-eval-test-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
COLOR_NAMES = list(COLORS)  # red, green, blue, yellow


@functools.cache
def _register_tiny_model() -> None:
    # open_clip reads the file when it is added, so the temporary folder can go right away.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{TINY_MODEL}.json"
        path.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(path)


def tiny_clip(seed: int = 0):
    """(model, preprocess, tokenizer) of a 32-px, 2-layer CLIP with random weights, in eval mode."""
    _register_tiny_model()
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_MODEL)


def write_image(path: Path, color: tuple[int, int, int], size: int = 40, fmt: str = "PNG") -> None:
    """A small image: a coloured square on grey, so images differ from one another."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size), (128, 128, 128))
    img.paste(color, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    img.save(path, format=fmt)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_color_task_data(folder: Path, per_class: int = 3) -> list[int]:
    """folder/test.csv (image,label) over images of the four COLORS; returns the labels."""
    rows, labels = [], []
    for label, color in enumerate(COLORS.values()):
        for j in range(per_class):
            name = f"images/{label}_{j}.{'jpg' if j % 2 else 'png'}"
            write_image(folder / name, color, fmt="JPEG" if j % 2 else "PNG")
            rows.append([name, label])
            labels.append(label)
    write_csv(folder / "test.csv", ["image", "label"], rows)
    return labels


def make_retrieval_data(folder: Path, n_images: int = 4) -> None:
    """folder/test.csv (image,caption) with two captions per image."""
    rows = []
    for i, (name, color) in enumerate(list(COLORS.items())[:n_images]):
        write_image(folder / f"images/{i}.png", color)
        rows += [
            [f"images/{i}.png", f"a {name} square."],
            [f"images/{i}.png", f"a figure with a {name} object."],
        ]
    write_csv(folder / "test.csv", ["image", "caption"], rows)


def write_task_yaml(folder: Path, name: str, body: str) -> Path:
    """folder/<name>.yaml holding `name: <name>` followed by body (YAML text)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n{body}")
    return path


COLOR_TASK_BODY = """\
type: classification
domain: synthetic
source:
  loader: csv
  path: colors
  file: test.csv
  image_column: image
  label_column: label
  label_encoding: int
classes: [red, green, blue, yellow]
templates: ["an image with {} objects.", "a {} square."]
main_metric: balanced_accuracy
"""

RETRIEVAL_TASK_BODY = """\
type: retrieval
domain: synthetic
source:
  loader: csv
  path: pairs
  file: test.csv
  image_column: image
  caption_column: caption
main_metric: text_to_image_R@1
metrics: [image_to_text_R@1, image_to_text_R@5, text_to_image_R@1, text_to_image_R@5, text_to_image_R@10]
"""
