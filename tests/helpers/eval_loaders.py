"""What the eval loader tests share (tests/integration/eval/test_loader_*.py, test_shipped_tasks.py): a task
YAML written from a source block, the image-to-tensor transform, the centre colour of each item, and the
source blocks of the two stand-in repos most tests read."""

from __future__ import annotations

import numpy as np
import torch

from bmca_clip.eval.tasks import load_task
from tests.helpers.eval_fixtures import COLOR_NAMES, COLORS, write_task_yaml

PROMPTS = 'templates: ["a {} image."]\n'
COLOR_CLASSES = f"classes: {COLOR_NAMES}\n" + PROMPTS
SKIN = "  loader: hf_dataset\n  repo_id: org/skin\n"
UBENCH = "  loader: hf_dataset\n  repo_id: org/ubench\n"


def to_tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def task(tmp_path, name: str, source: str, rest: str = COLOR_CLASSES, kind: str = "classification"):
    """A task YAML in tmp_path: `source` is the indented body of its source block."""
    body = f"type: {kind}\ndomain: pathology\nsource:\n{source}{rest}"
    return load_task(write_task_yaml(tmp_path, name, body))


def centre_colours(dataset) -> list[str]:
    names = {v: k for k, v in COLORS.items()}
    out = []
    for i in range(len(dataset)):
        image = dataset[i][0]
        centre = tuple(int(round(float(c) * 255)) for c in image[:, image.shape[1] // 2, image.shape[2] // 2])
        out.append(names.get(centre, str(centre)))
    return out
