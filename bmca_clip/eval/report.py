"""Evaluation outputs: one JSON file per task and model, and a summary across models.

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
    provenance       {model, pretrained, checkpoint, checkpoint_sha256, versions {python, torch,
                      open_clip, bmca_clip}, device, dtype, created, [wise_ft_alpha], data}
                     data: as config.data, the identity of the data scored

Summary (`write_summary`), from results in memory or JSON records (merge.py):
    summary.md          per-domain table (mean of the main metric over the domain's tasks, then the
                        mean over tasks and the mean over domains), per-task table (value [CI low, CI
                        high]), chance beside each, then failed and missing tasks; in percent
    summary.csv         tidy, one row per (model, task): model, task, type, domain, status (ok | failed
                        | missing), main_metric, value, ci_low, ci_high, chance; fractions like the JSON
    summary_domains.csv one row per (model, scope, name): scope "domain" (name = the domain), "tasks"
                        or "domains" (the overall means); value, chance, n_values, n_tasks
    summary.png         per-domain bars, models side by side, chance as a dashed line over each group
    suite.json          {suite, tasks [{name, type, domain, main_metric}], models}: what a run was asked
                        to do, so that merge.py can mark what never arrived as missing
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import hashlib
import io
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import torch

from bmca_clip.eval.harness import TaskResult
from bmca_clip.io import atomic_write, library_versions, sha256_json

SCHEMA_VERSION = 2
SUITE_FILE = "suite.json"
CSV_COLUMNS = "model task type domain status main_metric value ci_low ci_high chance".split()
CI_NOTE = (
    "in percent, with the 95% confidence interval [low, high] of a percentile bootstrap over the test "
    "items (retrieval: the queries), 1000 resamples, seed 0"
)


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


def config_hash(config: dict) -> str:
    """sha256 of a result config as canonical JSON (sorted keys, no spaces)."""
    return sha256_json(config)


def task_record(
    result: TaskResult, provenance: dict, config: dict | None = None, model_label: str | None = None
) -> dict:
    """The JSON object for one result (schema in the module docstring)."""
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


def result_from_record(record: dict) -> TaskResult:
    """The TaskResult a record was written from (ci kept as an attribute)."""
    names = {f.name for f in dataclasses.fields(TaskResult)}
    result = TaskResult(**{k: v for k, v in record.items() if k in names and k != "data"})
    result.ci, result.data = record.get("ci"), (record.get("provenance") or {}).get("data")
    return result


def cached_result(path: Path, expected_hash: str) -> TaskResult | None:
    """The stored result at path when it is ok and has config_hash expected_hash, else None."""
    try:
        record = read_task_json(path) if path.is_file() else None
    except ValueError:
        return None
    if record is None or record["status"] != "ok" or record.get("config_hash") != expected_hash:
        return None
    return result_from_record(record)


def task_info(task) -> dict:
    """What the summary needs of a task before any result exists (suite.json, missing rows)."""
    return {"name": task.name, "type": task.type, "domain": task.domain, "main_metric": task.main_metric}


def write_suite_file(
    out_dir: str | Path, suite_name: str, tasks: Sequence[dict], models: Sequence[str]
) -> Path:
    """out_dir/suite.json: the suite's tasks (all of them, also when sharded) and the model labels."""
    path = Path(out_dir) / SUITE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"suite": suite_name, "tasks": list(tasks), "models": list(models)}
    atomic_write(path, json.dumps(body, indent=2) + "\n")
    return path


# ---- Summary -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (model, task) entry of a summary."""

    status: str  # ok | failed | missing
    value: float | None = None  # the main metric
    ci_low: float | None = None
    ci_high: float | None = None
    chance: float | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Mean:
    """An unweighted mean of main metrics for one model: over a domain's tasks, all tasks or domains."""

    model: str
    scope: str  # "domain" | "tasks" | "domains"
    name: str  # the domain, "all tasks" or "all domains"
    value: float | None  # None when no member has a value
    chance: float | None  # the same mean of the members' chance levels
    n_values: int  # members with a value
    n_tasks: int  # members in all


@dataclasses.dataclass
class Summary:
    """Results of several models on a list of tasks: cells by (model, task name), means on demand."""

    models: list[str]
    tasks: list[dict]  # task_info dicts, in table order
    cells: dict[tuple[str, str], Cell]

    def chance(self, task: str) -> float | None:
        return next((c.chance for m in self.models if (c := self.cells[m, task]).chance is not None), None)

    def domains(self) -> list[str]:
        return list(dict.fromkeys(t["domain"] for t in self.tasks))

    def means(self) -> list[Mean]:
        out = []
        for model in self.models:
            by_domain = []
            for domain in self.domains():
                names = [t["name"] for t in self.tasks if t["domain"] == domain]
                by_domain.append(self._mean(model, "domain", domain, names))
            out += by_domain
            out.append(self._mean(model, "tasks", "all tasks", [t["name"] for t in self.tasks]))
            out.append(_mean_of(model, "domains", "all domains", [(m.value, m.chance) for m in by_domain]))
        return out

    def _mean(self, model: str, scope: str, name: str, tasks: list[str]) -> Mean:
        return _mean_of(model, scope, name, [(self.cells[model, t].value, self.chance(t)) for t in tasks])


def _mean_of(model: str, scope: str, name: str, members: list[tuple[float | None, float | None]]) -> Mean:
    values = [v for v, _ in members if v is not None]
    chances = [c for _, c in members if c is not None]
    value = sum(values) / len(values) if values else None
    chance = sum(chances) / len(chances) if chances else None
    return Mean(model, scope, name, value, chance, len(values), len(members))


def _cell(item: TaskResult | dict) -> tuple[dict, Cell]:
    record = item if isinstance(item, dict) else {**dataclasses.asdict(item), "ci": getattr(item, "ci", None)}
    ok = record["status"] == "ok"
    ci = record.get("ci") or {}
    cell = Cell(
        record["status"],
        record["metrics"].get(record["main_metric"]) if ok else None,
        ci.get("low"),
        ci.get("high"),
        record.get("chance"),
        record.get("error"),
    )
    info = {"name": record["task"], **{k: record[k] for k in ("type", "domain", "main_metric")}}
    return info, cell


def summarize(results_by_model: dict[str, list], tasks: Sequence[dict] | None = None) -> Summary:
    """A Summary of TaskResults or JSON records per model label; tasks (task_info dicts) fixes the rows
    and their order, and any of them a model lacks is "missing" (default: every task seen)."""
    infos = {t["name"]: dict(t) for t in tasks or []}
    cells = {}
    for model, items in results_by_model.items():
        for info, cell in map(_cell, items):
            infos.setdefault(info["name"], info)
            cells[model, info["name"]] = cell
    models = list(results_by_model)
    for model in models:
        for name in infos:
            cells.setdefault((model, name), Cell("missing"))
    return Summary(models, list(infos.values()), cells)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _show(cell: Cell) -> str:
    if cell.status != "ok":
        return cell.status
    if cell.value is None or cell.ci_low is None or cell.ci_high is None:
        return _pct(cell.value)
    return f"{_pct(cell.value)} [{_pct(cell.ci_low)}, {_pct(cell.ci_high)}]"


def _show_mean(mean: Mean) -> str:
    # A mean over fewer members than the row holds is not comparable across models: flag it.
    flag = "" if mean.n_values == mean.n_tasks else f" ({mean.n_values}/{mean.n_tasks})"
    return _pct(mean.value) + ("" if mean.value is None else flag)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _as_summary(results, tasks) -> Summary:
    return results if isinstance(results, Summary) else summarize(results, tasks)


def format_table(results_by_model: dict[str, list] | Summary, tasks: Sequence[dict] | None = None) -> str:
    """Markdown table: one row per task, one column per model with the main metric in percent (2
    decimals) and its CI, the chance level, and a last row with the unweighted mean over tasks."""
    summary = _as_summary(results_by_model, tasks)
    rows = [
        [t["name"], t["domain"], t["main_metric"], _pct(summary.chance(t["name"]))]
        + [_show(summary.cells[m, t["name"]]) for m in summary.models]
        for t in summary.tasks
    ]
    overall = [m for m in summary.means() if m.scope == "tasks"]
    rows.append(["mean over tasks", "", "", _pct(overall[0].chance if overall else None)])
    rows[-1] += [_show_mean(m) for m in overall]
    return _markdown(["task", "domain", "metric", "chance", *summary.models], rows)


def format_domain_table(
    results_by_model: dict[str, list] | Summary, tasks: Sequence[dict] | None = None
) -> str:
    """Markdown table: per domain the mean main metric over its tasks, then the mean over all tasks and
    the mean over domains; chance beside each; (k/n) marks a mean over k of n members."""
    summary = _as_summary(results_by_model, tasks)
    means = summary.means()
    rows = []
    for name in [*summary.domains(), "all tasks", "all domains"]:
        row = [m for m in means if m.name == name]
        label = {"all tasks": "mean over tasks", "all domains": "mean over domains"}.get(name, name)
        rows.append([label, str(row[0].n_tasks), _pct(row[0].chance), *map(_show_mean, row)])
    return _markdown(["domain", "tasks", "chance", *summary.models], rows)


def _problems(summary: Summary) -> list[str]:
    lines = []
    for status, title in (("failed", "Failed tasks"), ("missing", "Missing tasks")):
        found = [
            (m, t["name"])
            for m in summary.models
            for t in summary.tasks
            if summary.cells[m, t["name"]].status == status
        ]
        if found:
            lines += ["", f"## {title}", ""]
            lines += [
                f"- {m} / {t}" + (f": {summary.cells[m, t].error}" if status == "failed" else "")
                for m, t in found
            ]
    if lines:
        lines += [
            "",
            "No result means the job (or Slurm array task) that had the task failed or has not run; "
            "run the same command again: tasks already scored with the same config are skipped.",
        ]
    return lines


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([header, *rows])
    return buffer.getvalue()


def write_summary(
    results_by_model: dict[str, list], out_dir: str | Path, tasks: Sequence[dict] | None = None
) -> tuple[Path, Path]:
    """Write summary.md, summary.csv, summary_domains.csv and summary.png to out_dir (see the module
    docstring); returns the paths of summary.md and summary.csv."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results_by_model, tasks)
    intro = f"Main metric {CI_NOTE}. Means are unweighted; (k/n) marks a mean over k of n, not comparable."
    markdown = ["# Zero-shot evaluation", "", intro, "", "## Per domain", "", format_domain_table(summary)]
    markdown += ["", "## Per task", "", format_table(summary), *_problems(summary)]
    md_path, csv_path = out_dir / "summary.md", out_dir / "summary.csv"
    atomic_write(md_path, "\n".join(markdown) + "\n")
    rows = []
    for model in summary.models:
        for t in summary.tasks:
            c, name = summary.cells[model, t["name"]], t["name"]
            rows.append([model, name, t["type"], t["domain"], c.status, t["main_metric"]])
            rows[-1] += [c.value, c.ci_low, c.ci_high, summary.chance(name)]
    atomic_write(csv_path, _csv(CSV_COLUMNS, rows))
    means = [[m.model, m.scope, m.name, m.value, m.chance, m.n_values, m.n_tasks] for m in summary.means()]
    header = ["model", "scope", "name", "value", "chance", "n_values", "n_tasks"]
    atomic_write(out_dir / "summary_domains.csv", _csv(header, means))
    plot_summary(summary, out_dir / "summary.png")
    return md_path, csv_path


def plot_summary(summary: Summary, path: str | Path) -> Path:
    """A PNG of per-domain mean main metric (and the mean over domains), one bar per model, chance as a
    dashed line over each group. Drawn with the Agg canvas, so no display or pyplot state is involved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [*summary.domains(), "all domains"]
    means = {(m.model, m.name): m for m in summary.means()}
    n_models = max(len(summary.models), 1)
    figure = Figure(figsize=(max(6.0, 0.35 * len(groups) * (n_models + 1) + 2), 4.8), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    width = 0.8 / n_models
    for j, model in enumerate(summary.models):
        heights = [100 * v if (v := means[model, g].value) is not None else math.nan for g in groups]
        ax.bar(
            [i + (j - (n_models - 1) / 2) * width for i in range(len(groups))], heights, width, label=model
        )
    for i, group in enumerate(groups):
        chance = means[summary.models[0], group].chance if summary.models else None
        if chance is not None:
            label = "chance" if i == 0 else None
            ax.hlines(100 * chance, i - 0.45, i + 0.45, colors="black", linestyles="dashed", label=label)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("main metric, mean over tasks (%)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize="small", frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write(Path(path), buffer.getvalue())
    return Path(path)
