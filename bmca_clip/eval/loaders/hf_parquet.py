"""Loader hf_parquet: the parquet or arrow files that explicit `data_files` globs match inside a hub repo."""

from __future__ import annotations

from pathlib import Path

from bmca_clip.eval.loaders.arrow import read_arrow_files, where_read
from bmca_clip.eval.loaders.hub import fetch, glob_files, repo_files, revision_of, snapshot_commit
from bmca_clip.eval.loaders.table import Table, fail
from bmca_clip.eval.spec import Task


def read_hf_parquet(task: Task, data_root: str | Path) -> Table:
    folder = fetch(task, task.source.data_files)
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = []
    for pattern in task.source.data_files:
        found = glob_files(local, pattern)
        if not found:
            listing = repo_files(task, folder)
            raise fail(
                task,
                f"{task.source.repo_id}@{revision_of(task)}",
                f"data_files '{pattern}' matches no file; files: {listing[:10]}",
            )
        files += [f for f in found if f not in files]
    table = read_arrow_files(task, folder, files, where_read(task, folder, files))
    table.notes["hub_commit"] = snapshot_commit(folder)
    return table
