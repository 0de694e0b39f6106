"""What identifies the data a task was scored on, so that a stored result is reused only for the same data.

`data_identity(task, dataset)` gives {"hub_commit", "fingerprint"}:
- fingerprint: the dataset's content fingerprint, the one the embedding cache keys image features by
  (cache.dataset_fingerprint): for local files their paths, sizes and modification times plus the labels,
  captions or options; for hub data the rows' places in the files of the commit read.
- hub_commit: for hub sources, the commit the revision resolves to on the hub (HfApi.dataset_info, against
  HF_ENDPOINT), never a branch name; a 40-hex revision is its own commit and needs no hub. None for csv.

When the identity cannot be confirmed (the hub unreachable while the data came from the local cache, a
branch that resolves to another commit than the one read, a dataset without a fingerprint) the second value
says why, and the caller must not reuse a stored result: it scores again and says so (run.py, harness.py).
"""

from __future__ import annotations

import re
from dataclasses import replace

from huggingface_hub import HfApi

from bmca_clip.eval.cache import dataset_fingerprint
from bmca_clip.eval.spec import Task

_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_commit(task: Task, loaded: str | None) -> tuple[str | None, str | None]:
    """(the commit task.source.revision names on the hub, None) or (None, why it cannot be told).

    loaded is the commit whose files were read (the snapshot folder's name, loaders/hub.py)."""
    repo, revision = task.source.repo_id, task.source.revision or "main"
    if _COMMIT.fullmatch(revision):
        return revision, None
    try:
        sha = HfApi().dataset_info(repo, revision=revision).sha
    except Exception as exc:  # noqa: BLE001 - whatever stops the hub from answering, the commit is unknown
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        read = f"; the data was read at {loaded[:10]} (the local cache)" if loaded else ""
        return (
            None,
            f"could not confirm the hub commit of {repo}@{revision} ({type(exc).__name__}: {first}){read}",
        )
    if loaded is not None and sha != loaded:
        return None, f"{repo}@{revision} is at {sha[:10]} on the hub but {loaded[:10]} was read"
    return sha, None


def data_identity(task: Task, dataset) -> tuple[dict, str | None]:
    """({hub_commit, fingerprint}, None) when the data is identified; (what is known, why not) else. A
    probe type's dataset carries its train split (datasets.py): its identity is added under "train"."""
    identity, reason = _identity(task, dataset)
    train = getattr(dataset, "train", None)
    if train is not None and task.train_split is not None:
        identity["train"], train_reason = _identity(replace(task, source=task.train_split), train)
        reason = reason or (train_reason and f"train split: {train_reason}")
    return identity, reason


def _identity(task: Task, dataset) -> tuple[dict, str | None]:
    identity = {"hub_commit": None, "fingerprint": dataset_fingerprint(dataset)}
    if identity["fingerprint"] is None:
        return identity, f"the {type(dataset).__name__} has no content fingerprint"
    if task.source.repo_id is None:  # local files: the fingerprint covers them
        return identity, None
    identity["hub_commit"], reason = hub_commit(task, getattr(dataset, "notes", {}).get("hub_commit"))
    return identity, reason
