"""Loader hf_dataset: a Hugging Face dataset repo's split, its parquet or arrow files found from the card.

The split's files come from the card's `configs:` header, else the hub's naming conventions (no loading
scripts: datasets>=4 refuses them).
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import yaml

from bmca_clip.eval.loaders.arrow import DATA_SUFFIXES, read_arrow_files, where_read
from bmca_clip.eval.loaders.hub import fetch, glob_files, repo_files, revision_of, snapshot_commit
from bmca_clip.eval.loaders.table import Table, fail
from bmca_clip.eval.spec import Task


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
        found = sorted({f for p in patterns for f in glob_files(data, p)})
        if found:
            return found
    if not card_patterns:  # last resort, as datasets does: the split's name as a word in the path
        word = re.compile(rf"(^|[-._ /0-9]){re.escape(task.source.split)}([-._ /0-9]|$)")
        found = [f for f in data if word.search(f)]
        if found:
            return found
    raise fail(
        task,
        f"{task.source.repo_id}@{revision_of(task)}",
        f"no parquet/arrow files for split '{task.source.split}' (config {task.source.config_name!r}); "
        f"data files in the repo: {data[:10]}{' ...' if len(data) > 10 else ''}; "
        "set source.split / config_name, or use loader hf_parquet with data_files",
    )


def read_hf_dataset(task: Task, data_root: str | Path) -> Table:
    split = task.source.split
    card = fetch(task, ["README.md"], command_patterns=["README.md", f"*{split}*"]) / "README.md"
    files = _split_files(task, repo_files(task, card.parent), card)
    folder = fetch(task, [glob.escape(f) for f in files])
    table = read_arrow_files(task, folder, files, where_read(task, folder, files))
    table.notes["hub_commit"] = snapshot_commit(folder)
    return table
