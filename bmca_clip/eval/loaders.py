"""Hub loaders: read a task's split from a Hugging Face dataset repo into a `Table`.

A Table is what every task type starts from: the split's rows, their columns as Python lists, and their
images as an `ImageSource` that opens image i only when an item is read (in a DataLoader worker).
datasets.py holds the csv loader, the LOADERS registry and the Dataset shapes built from a Table.

- hf_dataset: parquet or arrow files, the split's files found from the card's `configs:` header, else
  the hub's naming conventions (no loading scripts: datasets>=4 refuses them).
- hf_parquet: explicit `data_files` globs inside the repo.
- zip_split_json: a zip of images plus a JSON `{split: [[relpath, label, classname], ...]}` (BiomedCoOp).
- wds: CLIP_benchmark's WebDataset layout: `<split>/*.tar`, `classnames.txt` at the repo root.

Files come through huggingface_hub's `snapshot_download` into its cache (HF_HUB_CACHE), so a second run,
or a run with HF_HUB_OFFLINE=1, reads the cache; when neither the hub nor the cache has them, the
TaskError gives the `hf download` command that fills the cache. HF_ENDPOINT may point at a mirror.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import os
import re
import shlex
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import CachedRepoTreeNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from PIL import Image
from webdataset.tariterators import base_plus_ext

from bmca_clip.eval.tasks import Task, TaskError

SHOW = 3  # bad rows quoted in an error message
DATA_SUFFIXES = (".parquet", ".arrow")


def fail(task: Task, where: str, problem: str) -> TaskError:
    return TaskError(f"task '{task.name}': {where}: {problem}")


# --- images, opened lazily ---


def _load(data: bytes | Path) -> Image.Image:
    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    img.load()  # decode now, so a broken file fails here and a path's file is closed
    return img


@dataclass
class ImageSource:
    """Images by row, opened when asked: read(refs[i]) gives image i's file path or encoded bytes.

    read and name are module-level functions or small objects, so a spawned worker can pickle them."""

    refs: list
    read: Callable[[object], bytes | Path]
    name: Callable[[object], str]  # where image i lives, for messages; equal names, same image

    def __len__(self) -> int:
        return len(self.refs)

    def open(self, i: int) -> Image.Image:
        data = self.read(self.refs[i])
        if data is None:
            raise OSError("the image cell holds no bytes")
        return _load(data)

    def describe(self, i: int) -> str:
        return self.name(self.refs[i])

    def identity(self, i: int) -> str:
        """What image i is, for fingerprints: its place, plus size and mtime for a local file (hub
        files sit in snapshot folders named by commit, and arrow rows name their commit)."""
        if self.read is not Path:
            return self.describe(i)
        stat = os.stat(self.refs[i])
        return f"{self.refs[i]}\0{stat.st_size}\0{stat.st_mtime_ns}"

    def select(self, rows: Sequence[int]) -> ImageSource:
        return replace(self, refs=[self.refs[r] for r in rows])


def file_images(paths: Sequence[Path]) -> ImageSource:
    return ImageSource(list(paths), Path, str)


@dataclass
class _ArrowBytes:
    """Encoded images in an arrow binary column; memory-mapped for arrow files, so nothing is copied."""

    column: pa.ChunkedArray
    where: str

    def __call__(self, row: int) -> bytes | None:
        return self.column[row].as_py()

    def name(self, row: int) -> str:
        return f"{self.where} row {row}"


@dataclass
class _ZipMembers:
    archive: Path
    _zip: tuple[int, zipfile.ZipFile] | None = field(default=None, repr=False)

    def __call__(self, member: str) -> bytes:
        # One handle per process: a ZipFile shared by forked DataLoader workers would share its offset.
        if self._zip is None or self._zip[0] != os.getpid():
            self._zip = (os.getpid(), zipfile.ZipFile(self.archive))
        return self._zip[1].read(member)

    def name(self, member: str) -> str:
        return f"{self.archive}:{member}"


def _tar_read(ref: tuple[Path, str, int, int]) -> bytes:
    # Uncompressed tar members read by offset: random access for a map-style Dataset.
    shard, _, offset, size = ref
    with open(shard, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _tar_name(ref: tuple[Path, str, int, int]) -> str:
    return f"{ref[0]}:{ref[1]}"


# --- the table every loader returns ---


@dataclass
class Table:
    """A split's rows: plain columns as lists, image columns as ImageSources, all of the same length."""

    where: str  # the file(s) read, for messages
    columns: dict[str, list]
    images: dict[str, ImageSource]
    row_ids: list[int]  # each row's number in the source, for messages ("line 3", "row 17")
    row_word: str = "row"
    class_names: dict[str, list[str]] = field(default_factory=dict)  # a column's ClassLabel names
    names_source: str = "ClassLabel names"  # where class_names come from, for messages (verify.py)
    notes: dict[str, str] = field(default_factory=dict)  # facts for the result's notes

    def __len__(self) -> int:
        return len(self.row_ids)

    def row(self, i: int) -> str:
        return f"{self.row_word} {self.row_ids[i]}"

    def names(self) -> list[str]:
        return [*self.columns, *self.images]

    def column(self, task: Task, key: str, default: str | None = None) -> list:
        """The values of the column that source.<key> names (default when it names none)."""
        name = getattr(task.source, key) or default
        if name not in self.columns:
            found = f"'{name}' holds images" if name in self.images else f"no column '{name}'"
            raise fail(task, self.where, f"{found} (source.{key}); its columns are {self.names()}")
        return self.columns[name]

    def image_column(self, task: Task, key: str = "image_column") -> ImageSource:
        """The images of the column that source.<key> names."""
        name = getattr(task.source, key)
        if name not in self.images:
            found = f"column '{name}' holds no images" if name in self.columns else f"no column '{name}'"
            raise fail(task, self.where, f"{found} (source.{key}); its columns are {self.names()}")
        return self.images[name]

    def select(self, rows: Sequence[int]) -> Table:
        return replace(
            self,
            columns={k: [v[r] for r in rows] for k, v in self.columns.items()},
            images={k: v.select(rows) for k, v in self.images.items()},
            row_ids=[self.row_ids[r] for r in rows],
        )


def _matches(cell, wanted) -> bool:
    # YAML `0` must match a ClassLabel 0 and a CSV "0" alike; None matches only None.
    return cell == wanted or (cell is not None and wanted is not None and str(cell) == str(wanted))


def apply_filter(task: Task, table: Table) -> Table:
    """The rows whose filter columns hold one of the wanted values (source.filter), in order."""
    if not task.source.filter:
        return table
    keep = np.ones(len(table), dtype=bool)
    for column, wanted in task.source.filter.items():
        if column not in table.columns:
            raise fail(
                task,
                table.where,
                f"no column '{column}' to filter on (source.filter); it has {table.names()}",
            )
        allowed = wanted if isinstance(wanted, list) else [wanted]
        keep &= [any(_matches(cell, w) for w in allowed) for cell in table.columns[column]]
    if not keep.any():
        found = {c: Counter(map(str, table.columns[c])).most_common(12) for c in task.source.filter}
        raise fail(task, table.where, f"no row matches filter {task.source.filter}; values found: {found}")
    return table.select(np.flatnonzero(keep).tolist())


# --- the hub ---


def _revision(task: Task) -> str:
    return task.source.revision or "main"


def download_command(task: Task, patterns: Sequence[str]) -> str:
    """The shell command that puts the task's hub files into the cache the loaders read."""
    include = " ".join(f"--include {shlex.quote(p)}" for p in patterns)
    return (
        f"hf download {task.source.repo_id} --repo-type dataset --revision {_revision(task)} "
        f"{include} --cache-dir {shlex.quote(str(hf_constants.HF_HUB_CACHE))}"
    )


def fetch(task: Task, patterns: Sequence[str], command_patterns: Sequence[str] | None = None) -> Path:
    """The local snapshot folder holding the repo files matching patterns (fnmatch), from the hub or
    from the cache when the hub is unreachable; TaskError with the command to run when neither works."""
    repo, revision = task.source.repo_id, _revision(task)
    try:
        return Path(
            snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=list(patterns))
        )
    except LocalEntryNotFoundError as exc:  # offline or unreachable, and not (completely) cached
        reason = str(exc).strip().splitlines()[0]
        raise TaskError(
            f"task '{task.name}': dataset {repo}@{revision} is not reachable on the hub "
            f"({hf_constants.ENDPOINT}) and not in the cache {hf_constants.HF_HUB_CACHE} "
            f"(HF_HOME={hf_constants.HF_HOME}): {reason}\n"
            f"Fetch it where the hub is reachable with:\n  {download_command(task, command_patterns or patterns)}\n"
            "then copy that cache folder here or point HF_HUB_CACHE at it (HF_HUB_OFFLINE=1 reads it "
            "without trying the hub)."
        ) from exc
    except HfHubHTTPError as exc:  # no such repo or revision, gated, server error
        reason = str(exc).strip().splitlines()
        raise TaskError(
            f"task '{task.name}': dataset {repo}@{revision}: {type(exc).__name__}: {' '.join(reason[:3])}"
        ) from exc


def _commit(folder: Path) -> str:
    return folder.name  # snapshot folders are named by commit sha


def _repo_files(task: Task, folder: Path) -> list[str]:
    """Every file of the repo at the snapshot's commit: the listing huggingface_hub cached with the
    snapshot, else whatever the local snapshot folder holds."""
    try:
        tree = get_cached_repo_tree(task.source.repo_id, repo_type="dataset", revision=_commit(folder))
        return sorted(f.path for f in tree)
    except CachedRepoTreeNotFoundError:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _glob(files: Sequence[str], pattern: str) -> list[str]:
    # fnmatch's `*` also crosses `/`, as in snapshot_download's allow_patterns; `**/x` also matches `x`.
    patterns = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
    return [f for f in files if any(fnmatch.fnmatchcase(f, p) for p in patterns)]


def _card_patterns(task: Task, card: Path) -> list[str] | None:
    """The split's data_files from the dataset card's `configs:` YAML header, if it has one."""
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    match = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    configs = (yaml.safe_load(match[1]) or {}).get("configs") if match else None
    if not configs:
        return None
    by_name = {c.get("config_name", "default"): c for c in configs}
    wanted = task.source.config_name
    if wanted is None:  # the card's default config, else the one called default, else the only one
        marked = [name for name, c in by_name.items() if c.get("default")]
        wanted = marked[0] if marked else next(iter(by_name)) if len(by_name) == 1 else "default"
    if wanted not in by_name:
        raise fail(
            task, f"{task.source.repo_id} README.md", f"no config '{wanted}'; configs: {list(by_name)}"
        )
    data_files = by_name[wanted].get("data_files")
    if isinstance(data_files, str) or (
        isinstance(data_files, list) and all(isinstance(d, str) for d in data_files)
    ):
        data_files = [{"split": "train", "path": data_files}]  # a bare list is the train split
    if isinstance(data_files, dict):
        data_files = [{"split": k, "path": v} for k, v in data_files.items()]
    splits = {d["split"]: d["path"] for d in data_files or []}
    if task.source.split not in splits:
        raise fail(
            task,
            f"{task.source.repo_id} README.md",
            f"config '{wanted}' has no split '{task.source.split}'; splits: {list(splits)}",
        )
    paths = splits[task.source.split]
    return [paths] if isinstance(paths, str) else list(paths)


def _convention_patterns(task: Task) -> list[list[str]]:
    """The hub's file naming conventions for a split, most specific first."""
    split, config = task.source.split, task.source.config_name or "default"
    return [
        [f"{config}/{split}/*", f"{config}/partial-{split}/*"],  # refs/convert/parquet
        [f"{config}/{split}-*"],  # push_to_hub(config_name=...)
        [f"data/{split}-*", f"data/{split}/*", f"data/{split}.*"],  # push_to_hub's default
    ]


def _split_files(task: Task, files: list[str], card: Path) -> list[str]:
    data = [f for f in files if f.endswith(DATA_SUFFIXES)]
    card_patterns = _card_patterns(task, card)
    candidates = [card_patterns] if card_patterns else _convention_patterns(task)
    for patterns in candidates:
        found = sorted({f for p in patterns for f in _glob(data, p)})
        if found:
            return found
    if not card_patterns:  # last resort, as datasets does: the split's name as a word in the path
        word = re.compile(rf"(^|[-._ /0-9]){re.escape(task.source.split)}([-._ /0-9]|$)")
        found = [f for f in data if word.search(f)]
        if found:
            return found
    raise fail(
        task,
        f"{task.source.repo_id}@{_revision(task)}",
        f"no parquet/arrow files for split '{task.source.split}' (config {task.source.config_name!r}); "
        f"data files in the repo: {data[:10]}{' ...' if len(data) > 10 else ''}; "
        "set source.split / config_name, or use loader hf_parquet with data_files",
    )


def _image_bytes(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """The encoded bytes of an image column ({bytes, path} struct or plain binary), else None."""
    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return pc.struct_field(column, "bytes")
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return column
    return None


def _open_file(path: Path, needed: list[str]) -> tuple[pa.Table, list[str]]:
    """The needed columns that the file has, and the names of all its columns."""
    if path.suffix == ".parquet":
        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in needed if c in names]), names
    source = pa.memory_map(str(path))  # datasets' arrow shards are IPC streams; mapped, not read
    try:
        table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        table = pa.ipc.open_file(source).read_all()
    return table.select([c for c in needed if c in table.column_names]), table.column_names


def _needed_columns(task: Task) -> list[str]:
    source = task.source
    keys = (source.image_column, source.label_column, source.caption_column, source.questions_column)
    keys += (source.group_column,)
    return list(dict.fromkeys([*(k for k in keys if k), *(source.filter or {})]))


def _class_names(schema: pa.Schema) -> dict[str, list[str]]:
    # datasets writes its Features into the schema metadata; ClassLabel names are the only part we read.
    meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
    features = meta.get("info", {}).get("features", {})
    return {k: v["names"] for k, v in features.items() if isinstance(v, dict) and "names" in v}


def read_arrow_files(task: Task, folder: Path, files: Sequence[str], where: str) -> Table:
    """A Table of the task's columns from parquet/arrow files inside folder."""
    needed = _needed_columns(task)
    tables = []
    for name in files:
        table, names = _open_file(folder / name, needed)
        missing = [c for c in needed if c not in names]
        if missing:
            raise fail(task, f"{where}: {name}", f"no column(s) {missing}; its columns are {names}")
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="permissive")
    columns, images = {}, {}
    for name in needed:
        encoded = _image_bytes(table.column(name))
        if encoded is not None:
            reader = _ArrowBytes(encoded, where)
            images[name] = ImageSource(list(range(table.num_rows)), reader, reader.name)
        else:
            columns[name] = table.column(name).to_pylist()
    return Table(
        where, columns, images, list(range(table.num_rows)), class_names=_class_names(tables[0].schema)
    )


def _where(task: Task, folder: Path, files: Sequence[str]) -> str:
    shown = files[0] + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")
    return f"{task.source.repo_id}@{_commit(folder)[:10]}:{shown}"


def read_hf_dataset(task: Task, data_root: str | Path) -> Table:
    split = task.source.split
    card = fetch(task, ["README.md"], command_patterns=["README.md", f"*{split}*"]) / "README.md"
    files = _split_files(task, _repo_files(task, card.parent), card)
    folder = fetch(task, [glob.escape(f) for f in files])
    table = read_arrow_files(task, folder, files, _where(task, folder, files))
    table.notes["hub_commit"] = _commit(folder)
    return table


def read_hf_parquet(task: Task, data_root: str | Path) -> Table:
    folder = fetch(task, task.source.data_files)
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = []
    for pattern in task.source.data_files:
        found = _glob(local, pattern)
        if not found:
            listing = _repo_files(task, folder)
            raise fail(
                task,
                f"{task.source.repo_id}@{_revision(task)}",
                f"data_files '{pattern}' matches no file; files: {listing[:10]}",
            )
        files += [f for f in found if f not in files]
    table = read_arrow_files(task, folder, files, _where(task, folder, files))
    table.notes["hub_commit"] = _commit(folder)
    return table


# --- zip + split JSON (BiomedCoOp) ---


def _locate(task: Task, where: str, relpaths: list[str], names: set[str]) -> list[str]:
    """Zip member names of relpaths, which may lack (or add) the zip's top-level folder(s)."""
    first = relpaths[0].lstrip("./")
    prefix, strip = "", 0
    if first not in names:
        parts = first.split("/")
        strip = next((k for k in range(1, len(parts)) if "/".join(parts[k:]) in names), 0)
        if not strip:
            prefix = next((n[: -len(first)] for n in names if n.endswith("/" + first)), "")
    members = [prefix + "/".join(r.lstrip("./").split("/")[strip:]) for r in relpaths]
    missing = [r for r, m in zip(relpaths, members, strict=True) if m not in names]
    if missing:
        raise fail(
            task,
            where,
            f"{len(missing)} image(s) of the split are not in the zip, e.g. {missing[:SHOW]}; "
            f"it holds e.g. {sorted(names)[:SHOW]}",
        )
    return members


def read_zip_split_json(task: Task, data_root: str | Path) -> Table:
    source = task.source
    folder = fetch(task, [glob.escape(source.archive), glob.escape(source.split_file)])
    where = f"{source.repo_id}@{_commit(folder)[:10]}:{source.split_file}"
    try:
        splits = json.loads((folder / source.split_file).read_text())
    except (OSError, ValueError) as exc:
        raise fail(task, where, f"cannot read the split JSON: {exc}") from exc
    if not isinstance(splits, dict) or source.split not in splits:
        found = list(splits) if isinstance(splits, dict) else type(splits).__name__
        raise fail(task, where, f"no split '{source.split}'; it holds {found}")
    entries = splits[source.split]
    bad = [e for e in entries if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str))]
    if bad or not entries:
        raise fail(
            task,
            where,
            f"'{source.split}' must be a non-empty list of [relpath, label, classname]; got e.g. {bad[:SHOW]}",
        )
    archive = folder / source.archive
    try:
        with zipfile.ZipFile(archive) as zf:
            names = {n for n in zf.namelist() if not n.endswith("/")}
    except (OSError, zipfile.BadZipFile) as exc:
        raise fail(task, str(archive), f"not a readable zip: {exc}") from exc
    members = _locate(task, f"{source.repo_id}:{source.archive}", [e[0] for e in entries], names)
    zip_reader = _ZipMembers(archive)
    labels = [e[1] for e in entries]
    # Class names from every split: a class absent from this one still has its name elsewhere (verify.py).
    every = [e for split in splits.values() if isinstance(split, list) for e in split]
    named = {(e[1], e[2]) for e in every if isinstance(e, list) and len(e) == 3 and isinstance(e[1], int)}
    names_by_label = dict(sorted(named))
    table = Table(
        where,
        {"label": labels, "classname": [e[2] for e in entries]},
        {source.image_column: ImageSource(members, zip_reader, zip_reader.name)},
        list(range(len(entries))),
        class_names={
            "label": [names_by_label.get(i, "?") for i in range(max(names_by_label, default=-1) + 1)]
        },
        names_source=f"the class names of {source.split_file}",
    )
    table.notes["hub_commit"] = _commit(folder)
    return table


# --- WebDataset (CLIP_benchmark layout) ---


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
    where = f"{source.repo_id}@{_commit(folder)[:10]}:{source.split}/"
    shards = sorted((folder / source.split).glob("*.tar"), key=_shard_order)
    if not shards:
        raise fail(task, where, f"no .tar shards; the repo holds {_repo_files(task, folder)[:10]}")
    classnames = folder / "classnames.txt"
    notes = {"hub_commit": _commit(folder)}
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
