"""Parquet and arrow files read into a Table: the columns a task names, image columns kept as bytes.

Shared by the hf_dataset and hf_parquet loaders. A column of encoded images ({bytes, path} structs or
plain binary) becomes an ImageSource over the memory-mapped column; ClassLabel names in the schema that
datasets wrote become the Table's class_names (verify.py checks them against the task's classes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bmca_clip.eval.loaders.hub import snapshot_commit
from bmca_clip.eval.loaders.table import ImageSource, Table, fail
from bmca_clip.eval.spec import Task

DATA_SUFFIXES = (".parquet", ".arrow")


@dataclass
class _ArrowBytes:
    """Encoded images in an arrow binary column; memory-mapped for arrow files, so nothing is copied."""

    column: pa.ChunkedArray
    where: str

    def __call__(self, row: int) -> bytes | None:
        return self.column[row].as_py()

    def name(self, row: int) -> str:
        return f"{self.where} row {row}"


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


def where_read(task: Task, folder: Path, files: Sequence[str]) -> str:
    shown = files[0] + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")
    return f"{task.source.repo_id}@{snapshot_commit(folder)[:10]}:{shown}"
