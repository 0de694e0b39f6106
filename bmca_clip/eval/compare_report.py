"""The comparison's files (compare.py): comparison.json, comparison.md, and the WiSE-FT alpha sweep plot.

comparison.json   compare()'s dict: baseline, models, method, level, n_resamples, seed;
                  tasks [{name, domain, metric, n, unit, values {model: v}, ci {model: {low, high}},
                  diffs {model: {diff, low, high, p, significant, reason}}}] (diffs: model - baseline);
                  means [{scope (domain | tasks | domains), name, n_compared, n_tasks, values, ci, diffs}];
                  skipped {task: reason}. Fractions, like the task JSON.
comparison.md     one row per task, domain and overall mean: the baseline's value, then per other model
                  its difference to the baseline in points [95% interval], p, and ↑ / ↓ where the
                  interval excludes 0 (· where it does not)
alpha_sweep.png   with two or more points of a WiSE-FT sweep (model.wise_ft_alpha, recorded in each result's
                  config.model.wise_ft_alpha): per domain and over domains, the mean main metric vs alpha
                  with its joint-bootstrap 95% interval as a band, one panel per blended checkpoint. A sweep
                  without alpha 0 takes the base model's result (checkpoint=null) there, and one without
                  alpha 1 the checkpoint's unblended result, when their weights are provably those
                  (sweep_endpoints: weight and checkpoint hashes, never labels)
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

from bmca_clip.eval.summary import _markdown, _pct
from bmca_clip.io import atomic_write

UP, DOWN, SAME = "↑", "↓", "·"


def arrow(diff: dict) -> str:
    """↑ / ↓ for a difference whose interval excludes 0, · otherwise."""
    if not diff["significant"]:
        return SAME
    return UP if diff["low"] > 0 else DOWN


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _show_diff(diff: dict) -> str:
    points = f"{100 * diff['diff']:+.2f}"
    if diff["low"] is None:
        return f"{points} (interval undefined) {SAME}"
    return f"{points} [{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}] {_p(diff['p'])} {arrow(diff)}"


def format_comparison(comparison: dict) -> str:
    """The checkpoint-vs-checkpoint table (Markdown), then the tasks left out and why."""
    base = comparison["baseline"]
    others = [m for m in comparison["models"] if m != base]
    header = ["task", "domain", "metric", base, *(f"{m} − {base}" for m in others)]
    rows = []
    for row in comparison["tasks"]:
        rows.append([row["name"], row["domain"], row["metric"], _pct(row["values"][base])])
        rows[-1] += [_show_diff(row["diffs"][m]) for m in others]
    labels = {"all tasks": "mean over tasks", "all domains": "mean over domains"}
    for row in comparison["means"]:
        flag = "" if row["n_compared"] == row["n_tasks"] else f" ({row['n_compared']}/{row['n_tasks']})"
        name = labels.get(row["name"], f"mean {row['name']}") + flag
        rows.append([name, "", "", _pct(row["values"][base]), *(_show_diff(row["diffs"][m]) for m in others)])
    level = round(100 * comparison["level"])
    lines = [
        f"Differences in points of the main metric (each model − {base}), with the {level}% "
        f"interval of a {comparison['method']} over the same items ({comparison['n_resamples']} resamples, "
        f"seed {comparison['seed']}; means resample every task's items jointly) and a two-sided p-value. "
        f"{UP} / {DOWN}: the interval excludes 0; {SAME}: it does not.",
        "",
        _markdown(header, rows),
    ]
    if comparison["skipped"]:
        lines += ["", "Not compared:", *(f"- {t}: {why}" for t, why in comparison["skipped"].items())]
    return "\n".join(lines)


def titled(comparison: dict, level: str = "#") -> str:
    """The comparison under its heading: comparison.md's (level "#"), summary.md's section ("##")."""
    return f"{level} Paired comparison against {comparison['baseline']}\n\n{format_comparison(comparison)}"


def write_comparison(comparison: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """comparison.json and comparison.md in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "comparison.json", out_dir / "comparison.md"
    atomic_write(json_path, json.dumps(comparison, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
    atomic_write(md_path, titled(comparison) + "\n")
    return json_path, md_path


def wise_alphas(results_by_model: dict[str, list]) -> dict[str, float]:
    """The WiSE-FT alpha of each model whose results record one (config.model.wise_ft_alpha)."""
    out = {}
    for model, items in results_by_model.items():
        for item in items:
            record = item if isinstance(item, dict) else dataclasses.asdict(item)
            config = record.get("config") or {}
            alpha = (config.get("model") or {}).get("wise_ft_alpha")
            alpha = alpha if alpha is not None else (record.get("provenance") or {}).get("wise_ft_alpha")
            if alpha is not None:
                out[model] = float(alpha)
                break
    return out


def model_identities(results_by_model: dict[str, list]) -> dict[str, dict]:
    """What each model's JSON records say its weights are: config.model (name, weights_sha256,
    checkpoint_sha256, wise_ft_alpha), config.precision, and a blend's provenance.wise_ft_base_sha256 (the
    weights_sha256 its alpha 0 has: run.py records it only where blending at 0 gives the base exactly).
    Models without a record that holds a config (TaskResults, old records) are left out."""
    out = {}
    for model, items in results_by_model.items():
        record = next((i for i in items if isinstance(i, dict) and i.get("config")), None)
        if record is not None:
            base = (record.get("provenance") or {}).get("wise_ft_base_sha256")
            config = record["config"]
            out[model] = {**(config.get("model") or {}), "precision": config.get("precision")}
            out[model]["wise_ft_base_sha256"] = base
    return out


def _group(alphas: dict[str, float]) -> dict[str, list[str]]:
    """Blended models grouped by the checkpoint they blend (label without -wise<alpha>), by alpha."""
    groups: dict[str, list[str]] = {}
    for model in sorted(alphas, key=alphas.get):
        groups.setdefault(re.sub(r"-wise[^-]*$", "", model), []).append(model)
    return groups


def _shared(identities: dict[str, dict], models: list[str], key: str):
    """The value of key that every model's identity has (None when one lacks it or they differ)."""
    values = {(identities.get(m) or {}).get(key) for m in models}
    return values.pop() if len(values) == 1 else None


def _holds(identity: dict, alpha: float, base: str | None, tuned: str | None) -> bool:
    """Whether an unblended model's identity is a sweep's alpha-0 (base) or alpha-1 (tuned) weights."""
    if alpha == 0.0:
        return (
            base is not None
            and identity.get("checkpoint_sha256") is None
            and identity.get("weights_sha256") == base
        )
    return tuned is not None and identity.get("checkpoint_sha256") == tuned


def sweep_endpoints(alphas: dict[str, float], identities: dict[str, dict]) -> dict[str, dict[float, str]]:
    """Per sweep (checkpoint label), the unblended models that provably hold its alpha-0 or alpha-1
    weights: alpha 0, a model with no checkpoint (checkpoint=null) whose weights_sha256 is the base every
    blend of the sweep records (wise_ft_base_sha256); alpha 1, an unblended result of the very checkpoint
    file the blends blend (same checkpoint_sha256: blending at 1 gives it exactly). Both need the same
    architecture and precision; the first such model in order wins. Only where the sweep lacks that alpha."""
    out: dict[str, dict[float, str]] = {}
    plain = [m for m, ident in identities.items() if m not in alphas and ident.get("wise_ft_alpha") is None]
    for sweep, blends in _group(alphas).items():
        same = [
            m
            for m in plain
            if all(_shared(identities, [m, *blends], key) is not None for key in ("name", "precision"))
        ]
        base, tuned = (_shared(identities, blends, k) for k in ("wise_ft_base_sha256", "checkpoint_sha256"))
        for alpha in (0.0, 1.0):
            found = next((m for m in same if _holds(identities[m], alpha, base, tuned)), None)
            if found is not None and alpha not in {alphas[b] for b in blends}:
                out.setdefault(sweep, {})[alpha] = found
    return out


def sweep_points(
    alphas: dict[str, float], endpoints: dict[str, dict[float, str]] | None = None
) -> dict[str, list[tuple[float, str]]]:
    """Per blended checkpoint, its (alpha, model) points by alpha: the blends and its endpoints
    (sweep_endpoints); only sweeps of two points or more."""
    out = {}
    for sweep, blends in _group(alphas).items():
        points = [(alphas[m], m) for m in blends] + list((endpoints or {}).get(sweep, {}).items())
        if len(points) >= 2:
            out[sweep] = sorted(points)
    return out


def plot_alpha_sweep(
    comparison: dict, alphas: dict[str, float], path: str | Path, endpoints: dict | None = None
) -> Path | None:
    """alpha_sweep.png (module docstring); None, and no file, without two points of one checkpoint's
    sweep. endpoints: sweep_endpoints, models placed at alpha 0 or 1 of a sweep."""
    models = set(comparison["models"])
    ends = {s: {a: m for a, m in found.items() if m in models} for s, found in (endpoints or {}).items()}
    sweeps = sweep_points({m: a for m, a in alphas.items() if m in models}, ends)
    rows = [r for r in comparison["means"] if r["scope"] == "domain"]
    rows += [
        r for r in comparison["means"] if r["scope"] == "domains" and len(rows) > 1
    ]  # else the same line
    if not sweeps or not rows:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4 * len(sweeps), 4.8), dpi=120)
    FigureCanvasAgg(figure)
    for i, (checkpoint, points) in enumerate(sweeps.items()):
        ax = figure.add_subplot(1, len(sweeps), i + 1)
        x, models = [a for a, _ in points], [m for _, m in points]
        for row in rows:
            y = [100 * row["values"][m] for m in models]
            low = [
                100 * (row["ci"][m]["low"] if row["ci"][m]["low"] is not None else row["values"][m])
                for m in models
            ]
            high = [
                100 * (row["ci"][m]["high"] if row["ci"][m]["high"] is not None else row["values"][m])
                for m in models
            ]
            style = {"linewidth": 2.5, "color": "black"} if row["scope"] == "domains" else {}
            (line,) = ax.plot(x, y, marker="o", label=row["name"], **style)
            ax.fill_between(x, low, high, alpha=0.15, color=line.get_color())
        ax.set_title(f"WiSE-FT sweep of {checkpoint}")
        ax.set_xlabel("alpha (0: base weights, 1: fine-tuned)")
        ax.set_ylabel("main metric, mean over the domain's tasks (%)")
        ax.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write(Path(path), buffer.getvalue())
    return Path(path)


def compare_and_write(
    results_by_model: dict[str, list],
    tasks,
    out_dir: str | Path,
    baseline: str | None = None,
    alphas: dict[str, float] | None = None,
    identities: dict[str, dict] | None = None,
) -> tuple[dict[tuple[str, str], tuple[float, float]], str]:
    """The paired comparison of the models (two or more: comparison.json, .md, printed; WiSE-FT blends:
    alpha_sweep.png); returns the joint intervals of every model's means, for summary.png's whiskers, and
    the comparison as a Markdown section for summary.md ("" with one model).
    alphas: each blend's alpha (default: as the JSON records say, wise_alphas); identities: each model's
    weights (default: as the JSON records say, model_identities), which place unblended models at a
    sweep's alpha 0 or 1 (sweep_endpoints)."""
    from bmca_clip.eval.compare import compare, mean_intervals  # torch: merge.py imports this lazily

    comparison, section = compare(results_by_model, tasks, baseline), ""
    if len(comparison["models"]) > 1 and not comparison["tasks"]:
        reasons = "; ".join(f"{t}: {why}" for t, why in comparison["skipped"].items())
        print(f"\nno paired comparison: no task has per-item results of every model ({reasons})")
    elif len(comparison["models"]) > 1:
        print("\n" + format_comparison(comparison))
        json_path, md_path = write_comparison(comparison, out_dir)
        alphas = alphas or wise_alphas(results_by_model)
        ends = sweep_endpoints(alphas, identities or model_identities(results_by_model))
        sweep = plot_alpha_sweep(comparison, alphas, Path(out_dir) / "alpha_sweep.png", ends)
        print(f"comparison: {md_path}, {json_path}" + (f", {sweep}" if sweep else ""))
        section = titled(comparison, "##")
    return mean_intervals(comparison), section
