"""Loader zip_split_json (BiomedCoOp): a zip of images plus a JSON `{split: [[relpath, label, classname]]}`."""

from __future__ import annotations

import glob
import json
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bmca_clip.eval.loaders.hub import fetch, snapshot_commit
from bmca_clip.eval.loaders.table import SHOW, ImageSource, Table, fail
from bmca_clip.eval.spec import Task


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


def _names_by_label(task: Task, where: str, splits: dict) -> dict[int, str]:
    """Each label's class name, from every split: a class absent from one split still has its name from
    another (verify.py checks them). A label named two ways (say a train entry [path, 1, <class 0's name>])
    is refused: which is right cannot be told, and keeping either would mislabel the other's items."""
    seen: dict[int, dict[str, Counter]] = {}  # label -> name -> entries per split
    for split, entries in splits.items():
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, list) and len(e) == 3 and type(e[1]) is int and isinstance(e[2], str):
                seen.setdefault(e[1], {}).setdefault(e[2], Counter())[split] += 1
    for label, by_name in sorted(seen.items()):
        if len(by_name) > 1:
            ranked = sorted(by_name.items(), key=lambda item: -item[1].total())
            shown = ", ".join(
                f"{name!r} ({', '.join(f'{split} {n}' for split, n in sorted(counts.items()))})"
                for name, counts in ranked[:SHOW]
            )
            raise fail(
                task,
                where,
                f"label {label} has {len(by_name)} class names: {shown}; each label needs one name in "
                "every split (fix the split JSON, or point split_file at a consistent one)",
            )
    return {label: next(iter(by_name)) for label, by_name in seen.items()}


def read_zip_split_json(task: Task, data_root: str | Path) -> Table:
    source = task.source
    folder = fetch(task, [glob.escape(source.archive), glob.escape(source.split_file)])
    where = f"{source.repo_id}@{snapshot_commit(folder)[:10]}:{source.split_file}"
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
    names_by_label = _names_by_label(task, where, splits)
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
    table.notes["hub_commit"] = snapshot_commit(folder)
    return table
