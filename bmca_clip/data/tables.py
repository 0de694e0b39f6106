"""Samples of the table-shaped sources: parquet files (a hub dataset's, or local ones) and CSV/TSV tables.

Both yield the same dicts a tar shard does (`__key__`, `__url__`, the image under data.image_key, the
caption under data.caption_key, and with `metadata` the row's other columns as the `json` member), so the
filters, the mixer, the decoder and the resume position (file number, rows taken) treat them alike.

- **parquet**: one "shard" is one file, read row group by row group. A hub file is read through http.py's
  RangeReader (footer first, then only the columns asked for), with its retries, auth and counters, so no
  file is ever downloaded whole before its first row is used. The image column holds bytes, or the struct
  {bytes, path} that Hugging Face `datasets` writes for an Image feature; a row without image bytes (a
  null, or only a path, which names a file on the uploader's machine) counts as missing_image. Parquet
  files are not kept by data.cache_limit_gb's shard cache (its copies are written while a shard streams
  front to back; a parquet file is read footer first).
- **csv**: a table with an image path column (relative to the table's folder, or absolute) and a caption
  column, as open_clip_train's `--dataset-type csv` reads. `index_table` scans it once into chunks of
  ROWS_PER_CHUNK rows, each a "shard" `<table>#rows=<first>:bytes=<start>-<end>`, so a stream reads its
  chunks by seeking, never the whole table. A row whose image file is missing counts as missing_image.

A missing column is a config error (DataError naming the source and the columns the file has); an
unreadable file is a ShardError (counted, the stream goes on with the next one).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bmca_clip.data.http import HttpPolicy, RangeReader
from bmca_clip.errors import DataError, ShardError

ROWS_PER_CHUNK = 10_000  # rows of a CSV table per shard, like a BIOMEDICA tar shard
_CHUNK = re.compile(r"#rows=(\d+):bytes=(\d+)-(\d+)$")


@dataclass(frozen=True)
class TableSpec:
    """How to read one table-shaped source (data.sources.<name>.format, the columns, the separator)."""

    name: str  # the source's name, for messages
    format: str  # parquet or csv
    image_column: str
    caption_column: str
    separator: str = ","


@dataclass(frozen=True)
class Members:
    """Where a row's values go in the sample dict: data.image_key, data.caption_key."""

    image: str
    caption: str
    metadata: bool = False  # also the other columns, as the `json` member the metadata filters read


def table_samples(spec: TableSpec, url: str, members: Members, policy: HttpPolicy, stats: dict):
    """The samples of one parquet file or CSV chunk, in file order."""
    if spec.format == "parquet":
        return parquet_samples(spec, url, members, policy, stats)
    return csv_samples(spec, url, members)


def _missing_column(spec: TableSpec, where: str, names: list[str]) -> None:
    for column, key in ((spec.image_column, "image_column"), (spec.caption_column, "caption_column")):
        if column not in names:
            raise DataError(
                f"data.sources.{spec.name}: {where} has no column {column!r} (it has: {', '.join(names)}); "
                f"set data.sources.{spec.name}.{key}"
            )


def _sample(key: str, url: str, image, caption, meta: dict | None, members: Members, ref: str) -> dict:
    """One row as a sample; `ref` says where its image was looked for, for the missing_image message."""
    sample = {"__key__": key, "__url__": url}
    if isinstance(image, dict):  # datasets' Image feature: {bytes, path}
        image = image.get("bytes")
    if isinstance(image, (bytes, bytearray)):
        sample[members.image] = bytes(image)
    else:
        sample["__image_ref__"] = ref
    if caption is not None:
        sample[members.caption] = (caption if isinstance(caption, str) else str(caption)).encode()
    if meta is not None:
        sample["json"] = json.dumps(meta, default=str).encode()
    return sample


def _open_file(url: str, policy: HttpPolicy, stats: dict):
    if url.startswith(("http://", "https://")):
        return io.BufferedReader(RangeReader(url, policy, stats), buffer_size=1 << 20)
    path = url[len("file://") :] if url.startswith("file://") else url
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ShardError(url, "missing", "no such file") from None


@contextlib.contextmanager
def _unreadable_as_shard_error(url: str):
    """pyarrow's errors on a file that is not (or no longer) parquet: a ShardError, counted, the stream goes
    on; a ShardError from the RangeReader underneath passes through as it is."""
    import pyarrow as pa

    try:
        yield
    except ShardError:
        raise
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ShardError(url, "unreadable_parquet", f"{type(err).__name__}: {err}") from None


def parquet_samples(spec: TableSpec, url: str, members: Members, policy: HttpPolicy, stats: dict):
    import pyarrow.parquet as pq

    with _open_file(url, policy, stats) as handle:
        with _unreadable_as_shard_error(url):
            parquet = pq.ParquetFile(handle, pre_buffer=False)
        names = parquet.schema_arrow.names
        _missing_column(spec, f"parquet file {url}", names)
        columns = names if members.metadata else [spec.image_column, spec.caption_column]
        stem = url.rsplit("/", 1)[-1].removesuffix(".parquet")
        no_bytes = f"no image bytes in column {spec.image_column!r}"  # where a missing image was looked for
        row = 0
        for group in range(parquet.num_row_groups):
            with _unreadable_as_shard_error(url):
                table = parquet.read_row_group(group, columns=columns, use_threads=False)
            images = table.column(spec.image_column).to_pylist()
            captions = table.column(spec.caption_column).to_pylist()
            metas = table.drop_columns([spec.image_column]).to_pylist() if members.metadata else None
            for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
                meta = metas[i] if metas is not None else None
                yield _sample(f"{stem}:{row:07d}", url, image, caption, meta, members, no_bytes)
                row += 1


class _Lines:
    """The lines of a binary file as text, counting the bytes consumed (csv.reader reads no line ahead)."""

    def __init__(self, handle, encoding: str = "utf-8"):
        self.handle, self.encoding, self.offset = handle, encoding, handle.tell()

    def __iter__(self) -> Iterator[str]:
        for line in self.handle:
            self.offset += len(line)
            yield line.decode(self.encoding, "replace")


def _header(handle, spec: TableSpec) -> list[str]:
    lines = _Lines(handle, "utf-8-sig")  # a BOM (Excel's CSVs) is not part of the first column's name
    header = next(csv.reader(lines, delimiter=spec.separator), None)
    if not header:
        raise DataError(f"data.sources.{spec.name}: the table is empty; it needs a header row")
    handle.seek(lines.offset)
    return [h.strip() for h in header]


def index_table(path: str, spec: TableSpec) -> list[str]:
    """The table's chunks of ROWS_PER_CHUNK rows (its shards), checking its header names both columns."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError(
            f"data.sources.{spec.name}: table {path} does not exist; set data.sources.{spec.name}.shards "
            "to the CSV/TSV file"
        ) from None
    with handle:
        _missing_column(spec, f"table {path}", _header(handle, spec))
        lines = _Lines(handle)
        chunks, first, start, row = [], 0, lines.offset, 0
        for row, _ in enumerate(csv.reader(lines, delimiter=spec.separator), start=1):
            if row % ROWS_PER_CHUNK == 0:
                chunks.append(f"{path}#rows={first}:bytes={start}-{lines.offset}")
                first, start = row, lines.offset
        if row > first:
            chunks.append(f"{path}#rows={first}:bytes={start}-{lines.offset}")
    if not chunks:
        raise DataError(f"data.sources.{spec.name}: table {path} has a header and no rows")
    return chunks


def csv_samples(spec: TableSpec, url: str, members: Members) -> Iterator[dict]:
    match = _CHUNK.search(url)
    if match is None:
        raise ShardError(url, "not_a_table_chunk", "not a chunk of a CSV table (index_table names them)")
    path = url[: match.start()]
    first, start, end = (int(g) for g in match.groups())
    folder, stem = Path(path).parent, Path(path).stem
    try:
        with open(path, "rb") as handle:
            names = _header(handle, spec)
            handle.seek(start)
            body = handle.read(end - start)
    except FileNotFoundError:
        raise ShardError(url, "missing", "the table is gone") from None
    image_at, caption_at = names.index(spec.image_column), names.index(spec.caption_column)
    lines = io.BytesIO(body)
    for row, values in enumerate(csv.reader(_Lines(lines), delimiter=spec.separator), start=first):
        values += [""] * (len(names) - len(values))  # a short row: its missing cells are empty
        relative = values[image_at].strip()
        meta = dict(zip(names, values, strict=False)) if members.metadata else None
        image_path = folder / relative if relative else None
        ref = f"no image file {image_path}" if image_path else f"an empty {spec.image_column!r}"
        image = _image_bytes(image_path)
        yield _sample(f"{stem}:{row:07d}", url, image, values[caption_at], meta, members, ref)


def _image_bytes(path: Path | None) -> bytes | None:
    """The image file's bytes (relative to the table's folder, or absolute); None when empty or missing."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
