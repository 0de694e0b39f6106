"""The hub side of every hub loader: a task's repo files fetched into huggingface_hub's cache.

Files come through huggingface_hub's `snapshot_download` into its cache (HF_HUB_CACHE), so a second run,
or a run with HF_HUB_OFFLINE=1, reads the cache; when neither the hub nor the cache has them, the
TaskError gives the `hf download` command that fills the cache. HF_ENDPOINT may point at a mirror.
"""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import CachedRepoTreeNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

from bmca_clip.errors import TaskError
from bmca_clip.eval.spec import Task


def revision_of(task: Task) -> str:
    return task.source.revision or "main"


def download_command(task: Task, patterns: Sequence[str]) -> str:
    """The shell command that puts the task's hub files into the cache the loaders read."""
    include = " ".join(f"--include {shlex.quote(p)}" for p in patterns)
    return (
        f"hf download {task.source.repo_id} --repo-type dataset --revision {revision_of(task)} "
        f"{include} --cache-dir {shlex.quote(str(hf_constants.HF_HUB_CACHE))}"
    )


def fetch(task: Task, patterns: Sequence[str], command_patterns: Sequence[str] | None = None) -> Path:
    """The local snapshot folder holding the repo files matching patterns (fnmatch), from the hub or
    from the cache when the hub is unreachable; TaskError with the command to run when neither works."""
    repo, revision = task.source.repo_id, revision_of(task)
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


def snapshot_commit(folder: Path) -> str:
    return folder.name  # snapshot folders are named by commit sha


def repo_files(task: Task, folder: Path) -> list[str]:
    """Every file of the repo at the snapshot's commit: the listing huggingface_hub cached with the
    snapshot, else whatever the local snapshot folder holds."""
    try:
        tree = get_cached_repo_tree(
            task.source.repo_id, repo_type="dataset", revision=snapshot_commit(folder)
        )
        return sorted(f.path for f in tree)
    except CachedRepoTreeNotFoundError:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def glob_files(files: Sequence[str], pattern: str) -> list[str]:
    # fnmatch's `*` also crosses `/`, as in snapshot_download's allow_patterns; `**/x` also matches `x`.
    patterns = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
    return [f for f in files if any(fnmatch.fnmatchcase(f, p) for p in patterns)]
