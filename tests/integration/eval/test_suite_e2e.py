"""End to end: `python eval.py suite=dermatology` on stand-in data served by a FakeHub prints the table and
writes the per-task JSON and the summary (Markdown, CSV, PNG).

The three dermatology tasks read hub repos (loader hf_dataset). Each stand-in repo has exactly the columns and
raw label values its task YAML declares (source.image_column / label_column / label_encoding / label_map),
written by `datasets` as parquet in the layout of the real repo's split, and is served under the YAML's
repo_id and revision. The CLI runs as a subprocess; hub.use() sets HF_ENDPOINT and HF_HOME in os.environ,
which the subprocess inherits.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.config import REPO
from tests.helpers.eval_hub_repos import image_bytes, write_hf_file
from tests.helpers.hub import FakeHub

SUITE = "dermatology"
TASKS = yaml.safe_load((REPO / f"conf/suite/{SUITE}.yaml").read_text())["tasks"]
PER_CLASS = 2  # rows per class in each stand-in test split
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _task(name: str) -> dict:
    return yaml.safe_load((REPO / f"conf/tasks/{name}.yaml").read_text())


def _colour(k: int, n: int) -> tuple[int, int, int]:
    """A distinct colour per class index k of n."""
    step = 255 // max(n, 1)
    return (step * k, 255 - step * k, (97 * k) % 256)


def _images(labels: list[int], n_classes: int) -> list[dict]:
    # Alternate PNG and JPEG, as real repos mix them; {bytes, path} as datasets' Image() stores them.
    return [
        {"bytes": image_bytes(_colour(c, n_classes), fmt="JPEG" if i % 2 else "PNG"), "path": f"{i}.png"}
        for i, c in enumerate(labels)
    ]


def _labels(n_classes: int) -> list[int]:
    return [c for _ in range(PER_CLASS) for c in range(n_classes)]


def _card(split_paths: dict[str, str] | None) -> str:
    """A dataset card; with split_paths, a `configs:` header naming each split's files."""
    if not split_paths:
        return "---\nlicense: cc-by-nc-4.0\n---\n# stand-in\n"
    lines = ["---", "license: cc-by-nc-4.0", "configs:", "- config_name: default", "  data_files:"]
    for split, path in split_paths.items():
        lines += [f"  - split: {split}", f"    path: {path}"]
    return "\n".join([*lines, "---", "# stand-in", ""])


def _ham10000(folder: Path, task: dict) -> None:
    """marmal88/skin_cancer: dx holds the third-party strings that label_map's keys spell."""
    import datasets

    source = task["source"]
    class_of = {name: k for k, name in enumerate(task["classes"])}
    raw_by_class = {class_of[name]: raw for raw, name in source["label_map"].items()}
    assert sorted(raw_by_class) == list(range(len(task["classes"])))
    labels = _labels(len(task["classes"]))
    columns = {
        "image_id": [f"ISIC_{i:07d}" for i in range(len(labels))],
        source["image_column"]: _images(labels, len(task["classes"])),
        source["label_column"]: [raw_by_class[c] for c in labels],
        "age": [float(30 + i) for i in range(len(labels))],
        "localization": ["back"] * len(labels),
    }
    features = {
        "image_id": datasets.Value("string"),
        source["image_column"]: datasets.Image(),
        source["label_column"]: datasets.Value("string"),
        "age": datasets.Value("float64"),
        "localization": datasets.Value("string"),
    }
    # push_to_hub's default layout, a card without configs: found by the naming convention.
    split = source["split"]
    write_hf_file(folder / f"data/{split}-00000-of-00001-5f1a.parquet", columns, features)
    train = {k: v[:3] for k, v in columns.items()}
    write_hf_file(folder / "data/train-00000-of-00001-8c2e.parquet", train, features)
    (folder / "README.md").write_text(_card(None))


def _isic2019(folder: Path, task: dict) -> None:
    """flwrlabs/fed-isic2019: label a ClassLabel whose names are the digits 0..7 (the hub viewer; the codes
    are FLamby's MEL, NV, ... in that order), a center column beside it."""
    import datasets

    source = task["source"]
    n = len(task["classes"])
    labels = _labels(n)
    names = [str(i) for i in range(n)]
    features = {
        source["image_column"]: datasets.Image(),
        source["label_column"]: datasets.ClassLabel(names=names),
        "center": datasets.Value("int64"),
    }
    columns = {
        source["image_column"]: _images(labels, n),
        source["label_column"]: labels,
        "center": [i % 6 for i in range(len(labels))],
    }
    split = source["split"]
    write_hf_file(folder / f"data/{split}-00000-of-00001.parquet", columns, features)
    write_hf_file(
        folder / "data/train-00000-of-00001.parquet", {k: v[:4] for k, v in columns.items()}, features
    )
    (folder / "README.md").write_text(_card({"train": "data/train-*", split: f"data/{split}-*"}))


def _dermamnist(folder: Path, task: dict) -> None:
    """danjacobellis/dermamnist_224: label a sequence<uint8> whose first element is the class."""
    import datasets

    source = task["source"]
    n = len(task["classes"])
    labels = _labels(n)
    features = {
        source["image_column"]: datasets.Image(),
        source["label_column"]: datasets.Sequence(datasets.Value("uint8")),
    }
    columns = {source["image_column"]: _images(labels, n), source["label_column"]: [[c] for c in labels]}
    split = source["split"]
    write_hf_file(folder / f"data/{split}-00000-of-00001.parquet", columns, features)
    write_hf_file(
        folder / "data/validation-00000-of-00001.parquet", {k: v[:2] for k, v in columns.items()}, features
    )
    (folder / "README.md").write_text(_card(None))


WRITERS = {"ham10000_dx7": _ham10000, "isic2019_dx8": _isic2019, "dermamnist7": _dermamnist}


def _serve(hub: FakeHub, root: Path, name: str) -> dict:
    """Write task `name`'s stand-in repo under root and serve it at the YAML's repo_id and revision."""
    task = _task(name)
    source = task["source"]
    assert source["loader"] == "hf_dataset", f"{name}: this test writes hf_dataset repos only"
    folder = root / name
    WRITERS[name](folder, task)
    hub.add_dataset(source["repo_id"], folder, revision=source.get("revision") or "main")
    return task


def _run_eval(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)  # HF_ENDPOINT / HF_HOME from hub.use()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    env["MPLCONFIGDIR"] = str(out.parent / "mpl")
    command = [sys.executable, "eval.py", f"suite={SUITE}", "model=bmca-tiny", f"output_dir={out}"]
    command += [f"cache_dir={out / 'cache'}", "device=cpu", "num_workers=0", *overrides]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_suite_yaml_lists_the_three_stand_in_tasks():
    assert sorted(TASKS) == sorted(WRITERS)


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    """One CLI run of the dermatology suite on stand-in repos: (process, output folder, task YAMLs)."""
    root = tmp_path_factory.mktemp("dermatology")
    with FakeHub() as hub, hub.use():
        assert os.environ["HF_ENDPOINT"] == hub.url  # what the subprocess will see
        tasks = {name: _serve(hub, root / "repos", name) for name in TASKS}
        out = root / "out"
        proc = _run_eval(out)
        requested = {r["path"] for r in hub.requests}
    for name, task in tasks.items():  # the subprocess read each repo from this hub, not from elsewhere
        repo_id = task["source"]["repo_id"]
        assert any(repo_id in path for path in requested), f"{name}: no request for {repo_id}"
    return proc, out, tasks


def _model_folder(out: Path) -> Path:
    folders = [Path(p) for p in glob.glob(str(out / "*")) if list(Path(p).glob("*.json"))]
    folders = [p for p in folders if p.is_dir() and p.name != "cache"]
    assert len(folders) == 1, f"expected one model folder in {out}: {sorted(os.listdir(out))}"
    return folders[0]


def test_cli_prints_the_table_and_writes_every_output(suite_run):
    proc, out, _ = suite_run
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    for name in TASKS:
        assert name in proc.stdout, f"task {name} not in the printed table:\n{proc.stdout}"
    assert "mean over tasks" in proc.stdout

    assert (out / "summary.md").is_file()
    markdown = (out / "summary.md").read_text()
    assert all(name in markdown for name in TASKS) and "mean over tasks" in markdown
    assert (out / "summary.png").read_bytes()[:8] == PNG_MAGIC
    with (out / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["task"] for r in rows) == sorted(TASKS)
    assert all(r["status"] == "ok" for r in rows), rows
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows), rows


@pytest.mark.parametrize("name", TASKS)
def test_task_json_is_ok_with_metrics_in_0_1(suite_run, name):
    proc, out, tasks = suite_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((_model_folder(out) / f"{name}.json").read_text())
    assert record["status"] == "ok", record.get("error")
    assert record["task"] == name and record["error"] is None
    assert record["n"] == PER_CLASS * len(tasks[name]["classes"])
    assert record["main_metric"] == tasks[name]["main_metric"]
    assert record["metrics"][record["main_metric"]] is not None
    for metric, value in record["metrics"].items():
        assert value is None or (math.isfinite(value) and 0.0 <= value <= 1.0), (metric, value)
    source = tasks[name]["source"]
    assert record["source"]["repo_id"] == source["repo_id"]
    assert len(record["notes"]["hub_commit"]) == 40  # read from the FakeHub, at a commit
