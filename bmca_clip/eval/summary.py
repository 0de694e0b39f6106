"""Summaries across models: per-domain and per-task tables (Markdown), CSVs and a PNG, from results in
memory or JSON records (merge.py). The files are described in report.py's docstring.

Imports neither torch nor pyarrow (a test checks): merge.py builds summaries from JSON alone.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bmca_clip.io import atomic_write

if TYPE_CHECKING:
    from bmca_clip.eval.harness import TaskResult

CSV_COLUMNS = "model task type domain status main_metric value ci_low ci_high chance".split()
CI_NOTE = (
    "in percent, with the 95% confidence interval [low, high] of a percentile bootstrap over the test "
    "items (retrieval: the queries), 1000 resamples, seed 0"
)


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
        covered = overall_tasks([t["name"] for t in self.tasks])  # zero-shot only when probes are scored too
        overall = set(covered)
        for model in self.models:
            by_domain = []
            for domain in self.domains():
                names = [t["name"] for t in self.tasks if t["domain"] == domain]
                by_domain.append(self._mean(model, "domain", domain, names))
            out += by_domain
            out.append(self._mean(model, "tasks", "all tasks", covered))
            members = [(m.value, m.chance) for m in by_domain if set(_names(self.tasks, m.name)) <= overall]
            out.append(_mean_of(model, "domains", "all domains", members))
        return out

    def _mean(self, model: str, scope: str, name: str, tasks: list[str]) -> Mean:
        return _mean_of(model, scope, name, [(self.cells[model, t].value, self.chance(t)) for t in tasks])


def overall_tasks(names: Sequence[str]) -> list[str]:
    """The tasks the means over all tasks and over all domains cover: the zero-shot ones when a suite also
    scores probes (`<task>@<protocol>`, eval/protocols.py; each protocol keeps its own domain rows, so
    zero-shot and probe scores are never averaged together), else every task."""
    zero_shot = [n for n in names if "@" not in n]
    return zero_shot or list(names)


def _names(tasks: Sequence[dict], domain: str) -> list[str]:
    return [t["name"] for t in tasks if t["domain"] == domain]


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
    results_by_model: dict[str, list],
    out_dir: str | Path,
    tasks: Sequence[dict] | None = None,
    intervals: dict[tuple[str, str], tuple[float, float]] | None = None,
    sections: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write summary.md, summary.csv, summary_domains.csv and summary.png to out_dir (see the module
    docstring); returns the paths of summary.md and summary.csv. intervals: (model, domain or "all
    domains") -> the mean's 95% interval (compare.mean_intervals), the PNG's whiskers; sections: more
    Markdown for summary.md's end (the paired comparison, with its ↑ / ↓)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results_by_model, tasks)
    intro = f"Main metric {CI_NOTE}. Means are unweighted; (k/n) marks a mean over k of n, not comparable."
    markdown = ["# Zero-shot evaluation", "", intro, "", "## Per domain", "", format_domain_table(summary)]
    markdown += ["", "## Per task", "", format_table(summary), *_problems(summary)]
    markdown += [text for section in sections for text in ("", section)]
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
    plot_summary(summary, out_dir / "summary.png", intervals)
    return md_path, csv_path


def _whisker(summary: Summary, intervals: dict, model: str, group: str, mean: Mean) -> tuple[float, float]:
    """(below, above) the bar in percent: the mean's interval, or a lone task's own; NaN without one."""
    names = [t["name"] for t in summary.tasks if t["domain"] == group]
    cell = summary.cells[model, names[0]] if len(names) == 1 else None
    low, high = intervals.get((model, group)) or ((cell.ci_low, cell.ci_high) if cell else (None, None))
    if mean.value is None or low is None or high is None:
        return math.nan, math.nan
    return 100 * max(mean.value - low, 0.0), 100 * max(high - mean.value, 0.0)


def plot_summary(summary: Summary, path: str | Path, intervals: dict | None = None) -> Path:
    """A PNG of per-domain mean main metric (and the mean over domains), one bar per model with its 95%
    interval as a whisker (intervals: (model, group) -> (low, high); a domain of one task: that task's
    CI), chance as a dashed line over each group. Drawn with the Agg canvas: no display, no pyplot state."""
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
        whiskers = [_whisker(summary, intervals or {}, model, g, means[model, g]) for g in groups]
        ax.bar(
            [i + (j - (n_models - 1) / 2) * width for i in range(len(groups))],
            heights,
            width,
            yerr=[[w[0] for w in whiskers], [w[1] for w in whiskers]],
            capsize=3,
            label=model,
        )
    for i, group in enumerate(groups):
        chance = means[summary.models[0], group].chance if summary.models else None
        if chance is not None:
            label = "chance" if i == 0 else None
            ax.hlines(100 * chance, i - 0.45, i + 0.45, colors="black", linestyles="dashed", label=label)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("main metric, mean over tasks (%), 95% interval")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize="small", frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write(Path(path), buffer.getvalue())
    return Path(path)
