"""Loader wds: CLIP_benchmark's WebDataset layout, `<split>/*.tar` and `classnames.txt` at the repo root.

Tar members are indexed once and read by offset, so the map-style Dataset has random access.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from webdataset.tariterators import base_plus_ext

from bmca_clip.eval.loaders.hub import fetch, repo_files, snapshot_commit
from bmca_clip.eval.loaders.table import ImageSource, Table, fail
from bmca_clip.eval.spec import Task


def _tar_read(ref: tuple[Path, str, int, int]) -> bytes:
    # Uncompressed tar members read by offset: random access for a map-style Dataset.
    shard, _, offset, size = ref
    with open(shard, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _tar_name(ref: tuple[Path, str, int, int]) -> str:
    return f"{ref[0]}:{ref[1]}"


def _shard_order(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _index_shard(task: Task, shard: Path, image_keys: list[str], label_key: str) -> tuple[list, list]:
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    images, labels = [], []
    with tarfile.open(shard, "r:") as tar:
        members = [m for m in tar if m.isfile()]
        for member in members:
            key, ext = base_plus_ext(member.name)  # webdataset's own split of a member name
            if key is not None:
                samples.setdefault(key, {})[ext] = member
        for key, sample in samples.items():
            image_key = next((k for k in image_keys if k in sample), None)
            if image_key is None or label_key not in sample:
                raise fail(
                    task,
                    str(shard),
                    f"sample '{key}' has keys {sorted(sample)}; expected an image key "
                    f"{image_keys} (source.image_column) and '{label_key}' (source.label_column)",
                )
            member = sample[image_key]
            images.append((shard, member.name, member.offset_data, member.size))
            labels.append(tar.extractfile(sample[label_key]).read().decode("utf-8").strip())
    return images, labels


def read_wds(task: Task, data_root: str | Path) -> Table:
    source = task.source
    folder = fetch(task, [f"{source.split}/*", "classnames.txt", "zeroshot_classification_templates.txt"])
    where = f"{source.repo_id}@{snapshot_commit(folder)[:10]}:{source.split}/"
    shards = sorted((folder / source.split).glob("*.tar"), key=_shard_order)
    if not shards:
        raise fail(task, where, f"no .tar shards; the repo holds {repo_files(task, folder)[:10]}")
    classnames = folder / "classnames.txt"
    notes = {"hub_commit": snapshot_commit(folder)}
    if classnames.is_file():  # verify.py compares them with the task's classes
        names = [line.strip() for line in classnames.read_text().splitlines() if line.strip()]
    else:
        names, notes["classnames"] = None, "the repo has no classnames.txt; class order is unchecked"
    images, labels = [], []
    for shard in shards:
        shard_images, shard_labels = _index_shard(
            task, shard, source.image_column.split(";"), source.label_column
        )
        images += shard_images
        labels += shard_labels
    table = Table(
        where,
        {source.label_column: labels},
        {source.image_column: ImageSource(images, _tar_read, _tar_name)},
        list(range(len(labels))),
    )
    table.class_names, table.notes = ({source.label_column: names} if names else {}), notes
    table.names_source = f"{source.repo_id}:classnames.txt"
    return table
