"""Evaluation outputs: one JSON file per task and model, and a summary across models.

Where they are made: records.py builds, writes and reads the per-task JSON and suite.json (and the
config hash); summary.py the tables, CSVs and PNG. Neither imports torch nor pyarrow, so merge.py
stays light. This module holds what needs torch or the harness: provenance and the result config
(library versions), and a stored record turned back into a TaskResult (cached_result).

Per-task JSON (`<out_dir>/<model folder>/<task>.json`, written atomically), schema_version 2:
    schema_version   int      2; bumped when a key changes meaning or goes away (1 lacked the keys
                              marked v2; readers accept both)
    model_label      str      the model's column name in summaries and its folder (eval/labels.py) (v2)
    task             str      task name (conf/tasks/<task>.yaml)
    type             str      classification | multiple_choice | multilabel | retrieval
    domain           str      e.g. pathology, radiology, synthetic
    status           str      "ok" | "failed"
    main_metric      str      name of the headline metric, a key of metrics
    metrics          {str: float | null}  fractions in [0, 1]; null when undefined (see notes); never NaN
    ci               {low, high, level, method, unit, n_resamples, seed, reason} | null  (v2)
                              the main metric's 95% percentile-bootstrap interval over resampled test
                              items (unit "item"), retrieval queries ("query"), or clusters of items
                              ("cluster (image)", "cluster (<group_column>)"); low and high are null
                              with a reason when undefined; null when not computed
    notes            {str: str}  for each null metric, the reason; what data loading noticed
    per_class        {classes, support, recall, precision, [specificity], *_ci, ci, confusion_matrix,
                      [predicted_columns]} | {classes, support, average_precision} | null
                     per class (per_class.py's docstring): classification and multiple choice (classes:
                     the distinct answers); multilabel per label; null for retrieval, a failed task,
                     and in records written before metrics_version 3 (readers must not require it)
    n                int | null  number of items scored (null when failed)
    chance           float | null  main metric of random guessing: 1/K for classification, a random
                                   ranking's expected recall for retrieval
    classes          [str]    class names in label order, as filled into the templates
    templates        [str]    prompt templates, positional {}
    source           {...}    the task's source block: loader, repo_id, revision, path, split, ...
    licence          str | null  the data's licence
    error            str | null  why the task failed
    seconds          float    wall time of the task
    task_yaml_sha256 str | null  sha256 of the task YAML file's bytes (v2)
    dataset_revision str | null  source.revision as declared (the resolved commit is in notes) (v2)
    config           {task, task_yaml_sha256, model {name, weights_sha256, checkpoint_sha256,
                      wise_ft_alpha}, precision, seed, preprocess, bootstrap {n_resamples, seed},
                      code {bmca_clip, open_clip, torch, schema_version}, data {hub_commit,
                      fingerprint} | null} | null  (v2)
                     everything that determines the numbers; weights_sha256 (cache.state_dict_sha256)
                     identifies the weights whatever their source, so no file path enters it; the
                     device and batch size do not either (they move numbers by float rounding only);
                     data (identity.py) is the hub commit the revision resolved to (null for local
                     files, or when the hub could not confirm it: see notes.data_identity) and the
                     dataset's content fingerprint; null when the task failed before its data loaded
    config_hash      str | null  sha256 of config as canonical JSON; a re-run skips a task whose stored
                                 JSON has status ok and the same config_hash (v2)
    items            {metric, n, unit, [draws], arrays} | null  the main metric's per-item inputs (labels
                     and predictions, AUROC scores, hits, multilabel targets and score ranks, k-shot draws;
                     cluster ids), each array zlib + base64 (paired.py), for the paired comparison of
                     models (compare.py); null when the main metric is undefined or not stored
    provenance       {model, pretrained, checkpoint, checkpoint_sha256, versions {python, torch,
                      open_clip, bmca_clip}, device, dtype, created, [wise_ft_alpha,
                      wise_ft_base_sha256], data}
                     data: as config.data, the identity of the data scored; wise_ft_base_sha256: a blend's
                     weights at alpha 0 (the base's weights_sha256; absent where not exactly the base)

Summary (`write_summary`), from results in memory or JSON records (merge.py):
    summary.md          per-domain table (mean of the main metric over the domain's tasks, then the
                        mean over tasks and the mean over domains), per-task table (value [CI low, CI
                        high]), chance beside each, then failed and missing tasks; in percent; with
                        two models or more, the paired comparison's table (comparison.md's, ↑ / ↓)
    summary.csv         tidy, one row per (model, task): model, task, type, domain, status (ok | failed
                        | missing), main_metric, value, ci_low, ci_high, chance; fractions like the JSON
    summary_domains.csv one row per (model, scope, name): scope "domain" (name = the domain), "tasks"
                        or "domains" (the overall means); value, chance, n_values, n_tasks
    summary.png         per-domain bars, models side by side, each mean's 95% interval as a whisker (the
                        joint bootstrap of compare.py; a domain of one task: its CI), chance as a dashed line
    per_class.md        each task's per-class numbers as tables (per_class_report.py), one per model
    comparison.md/.json with two models or more: the paired comparison (compare_report.py), and
    alpha_sweep.png     with two WiSE-FT blends of a checkpoint or more: metric vs alpha per domain
    suite.json          {suite, tasks [{name, type, domain, main_metric}], models, compare_baseline}: what
                        a run was asked to do, so that merge.py can mark what never arrived as missing and
                        compare against the same baseline
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

from bmca_clip.eval.harness import TaskResult

# config_hash, task_info, write_* and format_*: re-exported for eval/run.py and export.py, which import
# the output side from here.
from bmca_clip.eval.records import (  # noqa: F401
    SCHEMA_VERSION,
    config_hash,
    read_task_json,
    task_info,
    write_suite_file,
    write_task_json,
)
from bmca_clip.eval.summary import format_domain_table, format_table, write_summary  # noqa: F401
from bmca_clip.io import library_versions, sha256_json


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints are GBs); memoised per size and mtime."""
    stat = os.stat(path)
    return _sha256_file(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, chunk)


@functools.lru_cache(maxsize=64)
def _sha256_file(path: str, size: int, mtime_ns: int, chunk: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def make_provenance(
    model_name: str,
    device: str | torch.device,
    dtype: str = "float32",
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
) -> dict:
    """Where the numbers came from: model, weights (hashed when a checkpoint file is given), versions."""
    return {
        "model": model_name,
        "pretrained": pretrained,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "versions": {"python": platform.python_version(), **library_versions()},
        "device": str(device),
        "dtype": dtype,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def task_yaml_sha256(task) -> str:
    """sha256 of the task's YAML file; of its fields when it was built in code (no yaml_path)."""
    if task.yaml_path is not None:
        return hashlib.sha256(Path(task.yaml_path).read_bytes()).hexdigest()
    return sha256_json(dataclasses.asdict(task))


def result_config(task, model: dict, settings: dict) -> dict:
    """The `config` of a task's result: the task file's hash, the model identity (run.py: name,
    weights_sha256, checkpoint_sha256, wise_ft_alpha), the run settings and the code versions."""
    code = {**library_versions(), "schema_version": SCHEMA_VERSION}
    return {
        "task": task.name,
        "task_yaml_sha256": task_yaml_sha256(task),
        "model": model,
        **settings,
        "code": code,
    }


def result_from_record(record: dict) -> TaskResult:
    """The TaskResult a record was written from (ci kept as an attribute)."""
    names = {f.name for f in dataclasses.fields(TaskResult)}
    result = TaskResult(**{k: v for k, v in record.items() if k in names and k != "data"})
    result.ci, result.data = record.get("ci"), (record.get("provenance") or {}).get("data")
    return result


def cached_result(path: Path, expected_hash: str) -> TaskResult | None:
    """The stored result at path when it is ok and has config_hash expected_hash, else None. A record
    written before results kept their per-item inputs (no `items` key) is scored again, so that it can be
    compared (compare.py); the embedding cache makes that cheap."""
    try:
        record = read_task_json(path) if path.is_file() else None
    except ValueError:
        return None
    if record is None or record["status"] != "ok" or record.get("config_hash") != expected_hash:
        return None
    if "items" not in record:
        return None
    return result_from_record(record)
