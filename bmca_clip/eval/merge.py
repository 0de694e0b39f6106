"""Combine per-task results into one summary: `python -m bmca_clip.eval.merge DIR [DIR ...] [--out DIR]
[--baseline LABEL]`.

Each DIR is an eval output_dir holding `<model>/<task>.json` records and `suite.json` (records.py), from a
whole run or from any number of shards (shards may share one output_dir or each have their own). The
summary is the one a single run writes (summary.write_summary: summary.md, summary.csv,
summary_domains.csv, summary.png; per_class_report: per_class.md; with two models or more the paired
comparison, against --baseline, else the compare_baseline the run recorded in suite.json, else the first
model), in --out (default: the first DIR). A task of the suite with no JSON for a model is listed as
missing, a failed one as failed. When two records hold the same model and task, an ok one wins over a
failed one; two ok ones must have the same config_hash, else merging stops and names both files.

Exit status: 0 every task of the suite has an ok result for every model; 3 the summary is written but
some results are failed or missing (the last line on stderr names them: run the same eval again, ok
results are reused, then merge again); 2 nothing could be merged (one `error:` line).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bmca_clip.errors import ResultsMergeError
from bmca_clip.eval.per_class_report import write_per_class_report
from bmca_clip.eval.records import SUITE_FILE, read_task_json
from bmca_clip.eval.summary import format_domain_table, format_table, write_summary

log = logging.getLogger(__name__)


MergeError = ResultsMergeError  # the old name, kept for code that imports it


def _suite(dirs: Sequence[Path]) -> tuple[list[dict] | None, list[str]]:
    """The suite's tasks (None without any suite.json) and the model labels in run order."""
    tasks, models, source = None, [], None
    for folder in dirs:
        path = folder / SUITE_FILE
        if not path.is_file():
            continue
        body = json.loads(path.read_text())
        if tasks is not None and [t["name"] for t in body["tasks"]] != [t["name"] for t in tasks]:
            raise ResultsMergeError(f"{path} and {source} list different suites; merge each suite on its own")
        tasks, source = body["tasks"], path
        models += [m for m in body["models"] if m not in models]
    return tasks, models


def _better(old: tuple[dict, Path], new: tuple[dict, Path]) -> tuple[dict, Path]:
    (a, a_path), (b, b_path) = old, new
    if a["status"] != "ok" or b["status"] != "ok":
        return new if b["status"] == "ok" and a["status"] != "ok" else old
    if a.get("config_hash") != b.get("config_hash"):
        raise ResultsMergeError(
            f"{a_path} and {b_path} both hold task '{a['task']}' of the same model with different "
            "configs (config_hash); remove the stale one or merge them separately"
        )
    return old


def collect(dirs: Sequence[str | Path]) -> tuple[dict[str, list[dict]], list[dict] | None]:
    """Records per model label (suite order of models first) and the suite's task list, from dirs."""
    dirs = [Path(d) for d in dirs]
    for folder in dirs:
        if not folder.is_dir():
            raise ResultsMergeError(f"{folder} is not a folder; pass eval output_dir folders")
    tasks, models = _suite(dirs)
    found: dict[tuple[str, str], tuple[dict, Path]] = {}
    for folder in dirs:
        for path in sorted(folder.glob("*/*.json")):
            try:
                record = read_task_json(path)
            except ValueError as exc:
                log.warning("skipping %s", exc)
                continue
            key = (record.get("model_label") or path.parent.name, record["task"])
            found[key] = _better(found[key], (record, path)) if key in found else (record, path)
    if not found and tasks is None:
        raise ResultsMergeError(f"no per-task results (<model>/<task>.json) in {', '.join(map(str, dirs))}")
    models += sorted({model for model, _ in found} - set(models))
    records = {m: [r for (model, _), (r, _) in found.items() if model == m] for m in models}
    return records, tasks


def recorded_baseline(dirs: Sequence[str | Path]) -> str | None:
    """The compare_baseline the runs recorded in their suite.json (the first that names one), or None."""
    for folder in map(Path, dirs):
        path = folder / SUITE_FILE
        if path.is_file() and (baseline := json.loads(path.read_text()).get("compare_baseline")):
            return baseline
    return None


def merge(
    dirs: Sequence[str | Path], out_dir: str | Path | None = None, baseline: str | None = None
) -> tuple[Path, Path]:
    """Write the summary of everything in dirs to out_dir (default dirs[0]); returns (md, csv) paths.
    baseline: the comparison's (default: the runs' compare_baseline, else the first model)."""
    records, tasks = collect(dirs)
    return _write(records, tasks, dirs, out_dir or dirs[0], baseline)


def _write(
    records: dict[str, list[dict]],
    tasks: list[dict] | None,
    dirs: Sequence[str | Path],
    out_dir: str | Path,
    baseline: str | None,
) -> tuple[Path, Path]:
    """Every summary file in out_dir; the comparison against baseline, else the one dirs recorded."""
    from bmca_clip.eval.compare_report import compare_and_write  # torch, for the paired bootstrap only

    print(format_domain_table(records, tasks) + "\n\n" + format_table(records, tasks))
    write_per_class_report(records, out_dir, tasks)
    intervals, compared = compare_and_write(records, tasks, out_dir, baseline or recorded_baseline(dirs))
    return write_summary(records, out_dir, tasks, intervals, [compared] if compared else [])


def main(argv: Sequence[str] | None = None) -> None:
    from bmca_clip.cli import EXIT_TASKS_FAILED, exit_on_user_error, failed_tasks_line

    parser = argparse.ArgumentParser(
        prog="python -m bmca_clip.eval.merge", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "dirs", nargs="+", type=Path, help="eval output_dir folders (one per shard, or shared)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the summary (default: first dir)"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="model label the paired comparison is against (default: the eval run's compare_baseline, "
        "else the first model)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or args.dirs[0]
    with exit_on_user_error(where=str(out), disk_hint="--out"):
        records, tasks = collect(args.dirs)
        md, csv = _write(records, tasks, args.dirs, out, args.baseline)
    print(f"\nsummary: {md}, {csv}, summary_domains.csv, summary.png, per_class.md")
    # After the summary: a Slurm merge job (or a script) that ends 0 means every number is there.
    if line := failed_tasks_line(records, None if tasks is None else [t["name"] for t in tasks]):
        sys.stdout.flush()  # the tables first: in a Slurm log (one file, stdout buffered) this stays last
        print(
            f"{line}; run the same eval command again (ok results are reused) and merge again",
            file=sys.stderr,
        )
        sys.exit(EXIT_TASKS_FAILED)


if __name__ == "__main__":
    main()
