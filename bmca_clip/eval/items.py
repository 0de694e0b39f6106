"""The Dataset shapes that the task types build from a loader's Table, and the helpers their builders share.

Dataset shapes, by task type (each type's `build`, eval/types/):
- classification: `ImageLabelDataset`, items `(image_tensor, label_int)`, label i meaning classes[i];
- multilabel: `ImageMultiLabelDataset`, items `(image_tensor, multi_hot)`, a float tensor [n_classes];
- multiple_choice: `ImageQuestionDataset`, items `(image_tensor, item_index)`, with `.questions[i]`,
  `.options[i]` (that item's own list) and `.answers[i]` (index into it);
- retrieval: `ImageCaptionDataset`, items `(image_tensor, image_index)`, with `.captions[i]` the list of
  captions of image i.
Every dataset carries `.notes` ({key: text}: the hub commit read, items skipped or dropped, ...) that the
harness copies into the result. Images are opened when an item is read, converted to RGB (grayscale CXR
and OCT become 3 equal channels; 16-bit and float images are first stretched min-max to 8 bits, since
PIL would clip them) and passed through the model's preprocess transform. A label that does not decode
raises TaskError naming the task, the file and column, the rows, and what was expected.
`.clusters` (bootstrap.Clusters or None) says which items the bootstrap resamples together: the rows
sharing a source.group_column value, or the crops of one image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from bmca_clip.data.decode import to_rgb8
from bmca_clip.errors import TaskError
from bmca_clip.eval.bootstrap import Clusters
from bmca_clip.eval.decode import Box
from bmca_clip.eval.loaders.table import SHOW, ImageSource, Table, file_images
from bmca_clip.eval.spec import Task
from bmca_clip.eval.verify import values_held


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as training sees it: the same conversion, so a 16-bit image looks alike in both."""
    return to_rgb8(img)


class _ImageItems(Dataset):
    """Shared by every shape: item i's image, optionally cropped to boxes[i], preprocessed."""

    def __init__(self, images, preprocess: Callable, task_name: str, boxes: Sequence[Box] | None = None):
        self.images = images if isinstance(images, ImageSource) else file_images([Path(p) for p in images])
        self.preprocess, self.task_name, self.boxes = preprocess, task_name, boxes
        self.notes: dict[str, str] = {}
        self.clusters: Clusters | None = None  # per item (retrieval: per image); None: independent

    def __len__(self) -> int:
        return len(self.images)

    def payload(self) -> list:
        """What, besides the images, makes the items (labels, captions, options...)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 of everything that makes the items, not the preprocess (cache.py keys features by it)."""
        digest = hashlib.sha256(type(self).__name__.encode())
        for i in range(len(self)):
            digest.update(f"{self.images.identity(i)}\n".encode())
        digest.update(json.dumps([self.boxes, self.payload()], default=repr).encode())
        return digest.hexdigest()

    def image(self, i: int):
        try:
            img = self.images.open(i)
            rgb = to_rgb(img if self.boxes is None else img.crop(self.boxes[i]))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise TaskError(
                f"task '{self.task_name}': cannot read image {self.images.describe(i)}: {exc}"
            ) from exc
        return self.preprocess(rgb)


class ImageLabelDataset(_ImageItems):
    """Classification items: (preprocessed image, integer label)."""

    def __init__(self, images, labels: Sequence[int], preprocess, task_name, boxes=None):
        super().__init__(images, preprocess, task_name, boxes)
        self.labels = list(labels)

    def payload(self) -> list:
        return self.labels

    def __getitem__(self, i: int):
        return self.image(i), self.labels[i]


class ImageMultiLabelDataset(_ImageItems):
    """Multilabel items: (preprocessed image, multi-hot float tensor), targets decoded when read."""

    def __init__(self, images, targets: ImageSource, decode: Callable, preprocess, task_name):
        super().__init__(images, preprocess, task_name)
        self.targets, self.decode = targets, decode

    def payload(self) -> list:
        return [[self.targets.identity(i) for i in range(len(self))], self.decode]

    def target(self, i: int) -> torch.Tensor:
        try:
            return self.decode(self.targets.open(i))
        except (OSError, ValueError) as exc:
            raise TaskError(
                f"task '{self.task_name}': cannot read mask {self.targets.describe(i)}: {exc}"
            ) from exc

    def __getitem__(self, i: int):
        return self.image(i), self.target(i)


class ImageQuestionDataset(_ImageItems):
    """Closed-VQA items: (preprocessed image, its index); options[i] is item i's own list of answers."""

    def __init__(self, images, questions, options, answers, preprocess, task_name):
        super().__init__(images, preprocess, task_name)
        self.questions, self.options, self.answers = (
            list(questions),
            [list(o) for o in options],
            list(answers),
        )

    def payload(self) -> list:
        return [self.questions, self.options, self.answers]

    def __getitem__(self, i: int):
        return self.image(i), i


class ImageCaptionDataset(_ImageItems):
    """Retrieval items: (preprocessed image, its index); `captions[i]` lists image i's captions."""

    def __init__(self, images, captions: Sequence[list[str]], preprocess, task_name):
        super().__init__(images, preprocess, task_name)
        self.captions = [list(c) for c in captions]

    def payload(self) -> list:
        return self.captions

    def __getitem__(self, i: int):
        return self.image(i), i

    @property
    def text_to_image(self) -> torch.Tensor:
        """For each caption, flattened in image order, the index of its image."""
        return torch.tensor([i for i, caps in enumerate(self.captions) for _ in caps], dtype=torch.long)


def bad_cells(
    task: Task, table: Table, column: str, errors: list[str], what: str = "label", held=None
) -> TaskError:
    values = f"; the column holds {values_held(held)}" if held is not None else ""
    return TaskError(
        f"task '{task.name}': {table.where} column '{column}': {len(errors)} bad {what}(s); "
        + "; ".join(errors[:SHOW])
        + values
    )


def item_clusters(task: Task, table: Table, rows: list[int]) -> Clusters | None:
    """The source.group_column cluster of each item (from its row); an empty cell is its own cluster."""
    if task.source.group_column is None:
        return None
    values = table.column(task, "group_column")
    cells = [values[r] if values[r] not in (None, "") else ("no group", i) for i, r in enumerate(rows)]
    return Clusters.of(cells, task.source.group_column)
