"""Image-caption tables as PMC-derived sets ship them: a hub dataset repo of parquet files laid out as
`datasets.push_to_hub` writes them (`data/<split>-NNNNN-of-NNNNN.parquet`, the image as the {bytes, path}
struct of an Image feature), and a CSV/TSV table beside an image folder (open_clip_train's csv)."""

from __future__ import annotations

import csv
import io

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

PARQUET_REPO_ID = "pmc/oa_parquet"


def jpeg(shade: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (shade % 255, 60, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def write_parquet_repo(
    folder, rows_per_file: list[int], split: str = "train", row_group_size: int = 8, **columns
) -> list[str]:
    """Parquet files of `split` under data/, rows captioned `<split> <file> <row>`; `columns` overrides
    a column's values (a list per file). Also a validation file, which a split=train source must not read.
    Returns the paths in the repo."""
    paths = []
    for split_name, counts in ((split, rows_per_file), ("validation", [3])):
        for f, n in enumerate(counts):
            rel = f"data/{split_name}-{f:05d}-of-{len(counts):05d}.parquet"
            values = {
                "image": [{"bytes": jpeg(f * 40 + i), "path": f"{i}.jpg"} for i in range(n)],
                "caption": [f"{split_name} file {f} row {i}" for i in range(n)],
                "license": ["CC BY" if i % 2 else "CC0" for i in range(n)],
            }
            if split_name == split:
                values.update({k: v[f] for k, v in columns.items()})
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(values), path, row_group_size=row_group_size)
            paths.append(rel)
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# a PMC-derived image-caption set\n")
    return paths


def write_csv_table(folder, rows: list[tuple[str | None, str]], separator: str = "\t") -> str:
    """A table of (image path relative to it, caption); a None path names an image that is not there."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    name = "train.tsv" if separator == "\t" else "train.csv"
    with open(folder / name, "w", newline="") as out:
        writer = csv.writer(out, delimiter=separator)
        writer.writerow(["filepath", "title"])
        for i, (image, caption) in enumerate(rows):
            if image is None:
                writer.writerow([f"images/missing_{i}.jpg", caption])
                continue
            (folder / image).write_bytes(jpeg(i * 30))
            writer.writerow([image, caption])
    return str(folder / name)
