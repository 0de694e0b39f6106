"""Per-task result records and suite.json: build, write (atomically) and read them, and the config hash.
The schema of both files is in report.py's docstring.

Imports neither torch nor pyarrow (a test checks), so that `python -m bmca_clip.eval.merge`, which only
reads JSON and writes tables, starts in a blink; what needs torch (provenance, result configs, cached
results as TaskResults) is in report.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bmca_clip.io import atomic_write, sha256_json

if TYPE_CHECKING:
    from bmca_clip.eval.harness import TaskResult

SCHEMA_VERSION = 2
SUITE_FILE = "suite.json"


def config_hash(config: dict) -> str:
    """sha256 of a result config as canonical JSON (sorted keys, no spaces)."""
    return sha256_json(config)


def task_record(
    result: TaskResult, provenance: dict, config: dict | None = None, model_label: str | None = None
) -> dict:
    """The JSON object for one result (schema in report.py's docstring)."""
    record = {"schema_version": SCHEMA_VERSION, "model_label": model_label, **dataclasses.asdict(result)}
    record["ci"] = getattr(result, "ci", None)  # a TaskResult field once harness.py records it
    record["task_yaml_sha256"] = (config or {}).get("task_yaml_sha256")
    record["dataset_revision"] = result.source.get("revision")
    record["config"], record["config_hash"] = config, config_hash(config) if config else None
    record["provenance"] = {**provenance, "data": record.pop("data")}
    return record


def write_task_json(
    result: TaskResult,
    out_dir: str | Path,
    provenance: dict,
    config: dict | None = None,
    model_label: str | None = None,
) -> Path:
    """Write out_dir/<task>.json atomically and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.task}.json"
    record = task_record(result, provenance, config, model_label)
    # allow_nan=False: a NaN slipping through is a bug to surface, not to write as invalid JSON.
    atomic_write(path, json.dumps(record, indent=2, allow_nan=False) + "\n")
    return path


def read_task_json(path: str | Path) -> dict:
    """A per-task record; ValueError naming the file when it is not one this code can read."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable result JSON ({exc})") from exc
    missing = {"schema_version", "task", "status", "main_metric", "metrics"} - set(record)
    if missing:
        raise ValueError(f"{path}: not a per-task result (no {sorted(missing)})")
    if record["schema_version"] > SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {record['schema_version']} is newer than this code reads "
            f"({SCHEMA_VERSION}); update bmca_clip"
        )
    return record


def task_info(task) -> dict:
    """What the summary needs of a task before any result exists (suite.json, missing rows)."""
    return {"name": task.name, "type": task.type, "domain": task.domain, "main_metric": task.main_metric}


def write_suite_file(
    out_dir: str | Path,
    suite_name: str,
    tasks: Sequence[dict],
    models: Sequence[str],
    compare_baseline: str | None = None,
) -> Path:
    """out_dir/suite.json: the suite's tasks (all of them, also when sharded), the model labels and the
    run's compare_baseline (null: the first model), which eval.merge's comparison takes too."""
    path = Path(out_dir) / SUITE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"suite": suite_name, "tasks": list(tasks), "models": list(models)}
    body["compare_baseline"] = compare_baseline
    atomic_write(path, json.dumps(body, indent=2) + "\n")
    return path
