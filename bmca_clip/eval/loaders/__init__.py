"""The loaders: each reads a task's split into a loaders.table.Table, one module per data format.

- csv (local_csv.py): a table of image paths and labels or captions under the eval data_root.
- hf_dataset (hf_dataset.py): parquet or arrow files of a hub dataset repo, found from its card.
- hf_parquet (hf_parquet.py): explicit `data_files` globs inside a hub repo.
- zip_split_json (zip_split_json.py): a zip of images plus a JSON `{split: [[relpath, label, name]]}`.
- wds (wds.py): CLIP_benchmark's WebDataset layout, `<split>/*.tar` and `classnames.txt`.

LOADERS says what each one takes from a task YAML; source_schema.py checks a YAML against it on load, and
datasets.py calls its `read`. Shared parts: table.py (Table, ImageSource, the filter), hub.py (fetching
a repo into the hub cache), arrow.py (parquet/arrow files into a Table). A new format: one module with a
`read(task, data_root) -> Table` plus one LOADERS entry here. Loaders import spec and errors, never the
task parsing or the task types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bmca_clip.eval.loaders.hf_dataset import read_hf_dataset
from bmca_clip.eval.loaders.hf_parquet import read_hf_parquet
from bmca_clip.eval.loaders.local_csv import read_csv
from bmca_clip.eval.loaders.table import Table
from bmca_clip.eval.loaders.wds import read_wds
from bmca_clip.eval.loaders.zip_split_json import read_zip_split_json
from bmca_clip.eval.spec import Task


@dataclass(frozen=True)
class Loader:
    """A loader and what it takes from a task YAML; source_schema.py checks the YAML against it on load.

    Which task types it can feed follows from what it reads (source_schema.feeds): a type whose labels
    need a label encoding takes the loaders that decode one of its encodings; a type that reads its
    columns as they are (captions, questions) takes the loaders with other_columns, and with structured
    cells when it needs them."""

    read: Callable[[Task, str | Path], Table]
    encodings: tuple[str, ...]  # label encodings it can decode (the first is the default)
    required: tuple[str, ...]  # loader-specific source keys that must be set
    optional: tuple[str, ...] = ()  # other loader-specific source keys it reads
    has_columns: bool = True  # False: labels come from the split file, so no image/label columns
    other_columns: bool = True  # reads columns besides the image and the label (captions, groups, ...)
    structured: bool = True  # its cells may hold lists and mappings (not only text)


# Source keys that only some loaders read; a YAML setting one its loader ignores fails on load.
LOADER_KEYS = (
    "path",
    "file",
    "repo_id",
    "revision",
    "config_name",
    "data_files",
    "archive",
    "split_file",
    "filter",
)
_TABLE_ENCODINGS = ("int", "string", "bool", "sequence_first", "mask_presence", "detection_crops")

LOADERS: dict[str, Loader] = {
    "csv": Loader(read_csv, ("int", "string", "bool"), ("path",), ("file", "filter"), structured=False),
    "hf_dataset": Loader(
        read_hf_dataset, _TABLE_ENCODINGS, ("repo_id",), ("revision", "config_name", "filter")
    ),
    "hf_parquet": Loader(
        read_hf_parquet, _TABLE_ENCODINGS, ("repo_id", "data_files"), ("revision", "filter")
    ),
    "zip_split_json": Loader(
        read_zip_split_json,
        ("split_json",),
        ("repo_id", "archive", "split_file"),
        ("revision",),
        has_columns=False,
        other_columns=False,
        structured=False,
    ),
    "wds": Loader(
        read_wds, ("int", "string"), ("repo_id",), ("revision",), other_columns=False, structured=False
    ),
}
