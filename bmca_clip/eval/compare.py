"""Is B really better than A? A paired bootstrap over the items that several models were scored on.

For each task where every model stored its main metric's per-item inputs (paired.py, the result's
`items`), the items are resampled with replacement (or their clusters, as for the task's own interval),
n_resamples times, and every model's metric is computed on the SAME resample by the same function that
made its point value (metrics.py / weighted.py). So each replicate gives a difference B - A per task (A:
the baseline, the first model unless `compare_baseline` names another), and its 2.5 and 97.5 percentiles
are the 95% interval. The two-sided p-value is 2 x the smaller share of replicates on either side of 0,
counted as (k + 1) / (R + 1) so that it is never 0 with finitely many resamples, capped at 1: a model
against itself gives a difference of exactly 0 in every replicate, the interval [0, 0] and p = 1.

Domain means, the mean over tasks and the mean over domains (unweighted, as in the summary) are compared
on replicates that resample every task's items jointly: replicate r of a mean is the mean of replicate r
of each member task, each task drawing with its own seed (seed + crc32 of its name, so adding a task
changes no other's draws). A difference is significant when its interval excludes 0 (↑ / ↓ in the table).

Items must be the same: the same number, labels, clusters and data fingerprint in every model's record of
a task, else `ComparisonError` names the task. A task some model failed, or whose record has no `items`
(an older result, or a main metric whose inputs are not stored), is left out of the means and
listed under `skipped` with the reason.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

from bmca_clip.errors import ComparisonError
from bmca_clip.eval.bootstrap import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CI_LEVEL,
    UndefinedInterval,
    cluster_counts,
    percentile_interval,
)
from bmca_clip.eval.paired import arrays_of, categories, category_keys, metric_of
from bmca_clip.eval.summary import overall_tasks

METHOD = "paired percentile bootstrap"


def _record(item) -> dict:
    return item if isinstance(item, dict) else dataclasses.asdict(item)


def _fingerprint(record: dict) -> str | None:
    data = record.get("data") or (record.get("provenance") or {}).get("data") or {}
    return data.get("fingerprint")


def _same_items(task: str, models: Sequence[str], records: dict[str, dict], arrays: dict[str, dict]) -> None:
    """ComparisonError naming the task unless every model scored the same items."""
    first = models[0]
    for model in models[1:]:
        a, b = records[first], records[model]
        why = None
        if a["items"]["n"] != b["items"]["n"]:
            why = f"{a['items']['n']} vs {b['items']['n']} items"
        elif a["items"]["metric"] != b["items"]["metric"]:
            why = f"main metric {a['items']['metric']} vs {b['items']['metric']}"
        elif a["items"].get("draws") != b["items"].get("draws"):
            why = f"{a['items'].get('draws')} vs {b['items'].get('draws')} k-shot draws"
        elif None not in (_fingerprint(a), _fingerprint(b)) and _fingerprint(a) != _fingerprint(b):
            why = "different data fingerprints"
        else:
            for name in ("labels", "targets", "groups"):
                if (name in arrays[first]) != (name in arrays[model]) or (
                    name in arrays[first] and not torch.equal(arrays[first][name], arrays[model][name])
                ):
                    why = f"different {name}"
        if why:
            raise ComparisonError(
                f"task '{task}': {first} and {model} were not scored on the same items ({why}); compare "
                "results of one suite on the same data, or leave the task out"
            )


def task_seed(task: str, seed: int) -> int:
    """The task's own bootstrap seed: the same task always draws the same resamples."""
    return seed + zlib.crc32(task.encode())


def task_replicates(
    task: str, models: Sequence[str], records: dict[str, dict], n_resamples: int, seed: int
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """(point value, replicate values [R]) of each model's main metric, all on the same resamples."""
    arrays = {m: arrays_of(records[m]["items"]) for m in models}
    _same_items(task, models, records, arrays)
    # Items alike in every model's keys are interchangeable: resample these categories (bootstrap.py).
    reps, category = categories([key for m in models for key in category_keys(arrays[m])])
    groups = arrays[models[0]].get("groups")
    points, chunks = {}, {m: [] for m in models}
    metrics = {}
    for m in models:
        metrics[m] = metric_of(
            records[m]["items"], {k: v[reps] for k, v in arrays[m].items() if k != "groups"}
        )
        points[m] = float(metric_of(records[m]["items"], arrays[m])(None))
    for counts in cluster_counts(category, groups, n_resamples, task_seed(task, seed)):
        for m in models:
            chunks[m].append(metrics[m](counts))
    return points, {m: torch.cat(chunks[m]).double() for m in models}


def p_value(diffs: Tensor) -> float:
    """Two-sided bootstrap p-value of a difference's replicates (module docstring)."""
    defined = diffs[~diffs.isnan()]
    below, above = int((defined <= 0).sum()), int((defined >= 0).sum())
    return min(1.0, 2 * (min(below, above) + 1) / (len(defined) + 1))


def _interval(values: Tensor) -> tuple[float | None, float | None, str | None]:
    try:
        low, high = percentile_interval(values)
    except UndefinedInterval as exc:
        return None, None, str(exc)
    return low, high, None


def _entry(points: dict[str, float], values: dict[str, Tensor], baseline: str) -> dict:
    """One row of the comparison: each model's value and interval, and each difference to the baseline."""
    row = {"values": points, "ci": {}, "diffs": {}}
    for model, reps in values.items():
        low, high, _ = _interval(reps)
        row["ci"][model] = {"low": low, "high": high}
    for model in values:
        if model == baseline:
            continue
        diffs = values[model] - values[baseline]
        low, high, reason = _interval(diffs)
        significant = low is not None and (low > 0 or high < 0)
        row["diffs"][model] = {
            "diff": points[model] - points[baseline],
            "low": low,
            "high": high,
            "p": p_value(diffs),
            "significant": significant,
            "reason": reason,
        }
    return row


def _mean(members: list[tuple[dict[str, float], dict[str, Tensor]]], models: Sequence[str]):
    points = {m: sum(p[m] for p, _ in members) / len(members) for m in models}
    values = {m: torch.stack([v[m] for _, v in members]).mean(dim=0) for m in models}
    return points, values


def _choose_baseline(models: Sequence[str], baseline: str | None) -> str:
    if baseline is None:
        return models[0]
    if baseline not in models:
        raise ComparisonError(
            f"compare_baseline={baseline} (eval.merge: --baseline) is not one of the evaluated models "
            f"({', '.join(models)}); pass one of these labels"
        )
    return baseline


def _info(record: dict) -> dict:
    return {"name": record["task"], "domain": record["domain"], "main_metric": record["main_metric"]}


def _skip_reason(records: dict[str, dict | None]) -> str | None:
    for model, record in records.items():
        if record is None or record["status"] != "ok":
            return f"{model}: no ok result"
        if not record.get("items"):
            return f"{model}: no per-item data (a main metric not stored, or an older result: rerun=true)"
    return None


def compare(
    results_by_model: dict[str, list],
    tasks: Sequence[dict] | None = None,
    baseline: str | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """The comparison (comparison.json's body) of the models in results_by_model (TaskResults or JSON
    records per model label), in task order (tasks: task_info dicts; default: every task seen)."""
    models = list(results_by_model)  # one model alone: its values and joint intervals, no diffs
    if not models:
        raise ComparisonError("nothing to compare: no model's results")
    base = _choose_baseline(models, baseline)
    by_task = {m: {r["task"]: r for r in map(_record, items)} for m, items in results_by_model.items()}
    seen = [r for m in models for r in by_task[m].values()]
    infos = list(tasks) if tasks else list({r["task"]: _info(r) for r in seen}.values())
    out = {"baseline": base, "models": models, "method": METHOD, "level": CI_LEVEL}
    out |= {"n_resamples": n_resamples, "seed": seed, "tasks": [], "means": [], "skipped": {}}
    done: dict[str, tuple[dict, dict]] = {}
    for info in infos:
        name = info["name"]
        records = {m: by_task[m].get(name) for m in models}
        if (reason := _skip_reason(records)) is not None:
            out["skipped"][name] = reason
            continue
        done[name] = task_replicates(name, models, records, n_resamples, seed)
        row = {"name": name, "domain": info["domain"], "metric": info["main_metric"]}
        out["tasks"].append(row | {"n": records[base]["items"]["n"], "unit": records[base]["items"]["unit"]})
        out["tasks"][-1] |= _entry(*done[name], base)
    out["means"] = _means(infos, done, models, base)
    return out


def _means(infos: Sequence[dict], done: dict, models: Sequence[str], base: str) -> list[dict]:
    """Rows of the domain means, the mean over tasks and the mean over domains, resampled jointly."""
    rows, domain_means = [], []
    overall = set(overall_tasks([i["name"] for i in infos]))  # zero-shot only when probes are scored too
    for domain in dict.fromkeys(i["domain"] for i in infos):
        names = [i["name"] for i in infos if i["domain"] == domain]
        members = [done[n] for n in names if n in done]
        if not members:
            continue
        rows.append({"scope": "domain", "name": domain, "n_compared": len(members), "n_tasks": len(names)})
        rows[-1] |= _entry(*_mean(members, models), base)
        if set(names) <= overall:
            domain_means.append(_mean(members, models))
    covered = {n: v for n, v in done.items() if n in overall}
    if covered:
        rows.append(
            {"scope": "tasks", "name": "all tasks", "n_compared": len(covered), "n_tasks": len(overall)}
        )
        rows[-1] |= _entry(*_mean(list(covered.values()), models), base)
        n_domains = len(dict.fromkeys(i["domain"] for i in infos if i["name"] in overall))
        rows.append({"scope": "domains", "name": "all domains", "n_compared": len(domain_means)})
        rows[-1] |= {"n_tasks": n_domains} | _entry(*_mean(domain_means, models), base)
    return rows


def mean_intervals(comparison: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """(model, domain or "all domains") -> the joint-bootstrap 95% interval of that mean, where defined."""
    out = {}
    for row in comparison["means"]:
        for model, ci in row["ci"].items():
            if ci["low"] is not None and row["n_compared"] == row["n_tasks"]:
                out[model, row["name"]] = (ci["low"], ci["high"])
    return out
