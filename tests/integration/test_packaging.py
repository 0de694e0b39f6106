"""bmca-clip as an installed library: the wheel carries conf/ (every config, task and suite YAML) and the
model JSONs; its console scripts train, evaluate, merge, WiSE-FT and export from an empty folder outside
the repository; a folder on hydra.searchpath adds experiments, suites and tasks of the user's own.

The wheel is built without network (`pip wheel --no-build-isolation`) from a copy of the source tree, and
installed with --no-deps into a fresh venv whose only other path is the test interpreter's site-packages
(a .pth file), so no dependency is downloaded and the wheel's bmca_clip is the one imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from bmca_clip.config import ConfigError, LoggerConfig, WandbConfig, register_configs
from bmca_clip.eval.tasks import TaskError, load_suite
from bmca_clip.tracking import MetricLogger
from tests.helpers.config import REPO, tiny_train_overrides
from tests.helpers.eval_fixtures import COLOR_TASK_BODY, make_color_task_data, write_task_yaml

SCRIPTS = ("bmca-train", "bmca-eval", "bmca-merge", "bmca-wise-ft", "bmca-export", "bmca-synthetic")


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The bmca-clip wheel, built from a copy of what pyproject.toml reads (an in-tree build would leave
    build/ and *.egg-info in the checkout)."""
    root = tmp_path_factory.mktemp("build")
    src = root / "src"
    for name in ("bmca_clip", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(root / "dist"),
    ]
    _run(cmd + [str(src)], cwd=root)
    (found,) = (root / "dist").glob("bmca_clip-*.whl")
    return found


def test_the_wheel_carries_every_config_task_suite_and_model_json_and_the_console_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    assert len(yamls) > 80 and any(y.startswith("hydra/launcher/") for y in yamls)
    missing = [y for y in yamls if f"bmca_clip/conf/{y}" not in names]
    assert not missing, f"conf YAMLs missing from the wheel: {missing}"
    for required in ("tasks/dermamnist7.yaml", "suite/dermatology.yaml", "experiment/demo.yaml"):
        assert f"bmca_clip/conf/{required}" in names
    assert {"bmca_clip/model_configs/bmca-tiny.json", "bmca_clip/model_configs/bmca-small.json"} <= names
    modules = [p.relative_to(REPO).as_posix() for p in (REPO / "bmca_clip").rglob("*.py")]
    assert not [m for m in modules if m not in names], "a package is missing from pyproject's packages list"
    (entry_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points = zipfile.ZipFile(wheel).read(entry_file).decode()
    for script in SCRIPTS:
        assert f"{script} = " in entry_points


def _venv_with_wheel(root: Path, wheel: Path) -> Path:
    """A fresh venv holding only the wheel; the test interpreter's site-packages comes after it, through a
    .pth file (its lines are plain paths: the editable install's finder there is not activated)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root))
    (Path(str(site).strip()) / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    _run(install + ["--quiet", str(wheel)], cwd=root)
    return venv


@pytest.mark.slow
def test_an_installed_wheel_trains_evaluates_merges_and_exports_from_an_empty_folder(wheel, tmp_path):
    venv = _venv_with_wheel(tmp_path, wheel)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", OMP_NUM_THREADS="1")
    python = str(venv / "bin" / "python")

    probe = "import bmca_clip; from bmca_clip.eval.tasks import load_suite; "
    probe += "print(bmca_clip.__file__); print(len(load_suite('dermatology').tasks))"
    where, n_tasks = _run([python, "-c", probe], work, env).split()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    assert int(n_tasks) >= 2

    synthetic = ["--train-samples", "64", "--samples-per-shard", "32", "--eval-samples", "16"]
    _run(
        ["bmca-synthetic", "--out", "data/synthetic", *synthetic, "--min-size", "32", "--max-size", "48"],
        work,
        env,
    )
    train = ["model=bmca-tiny", "data=synthetic", "data.num_workers=0", "data.shuffle_buffer=20"]
    train += ["data.shuffle_initial=4", "train.batch_size=8", "train.steps=2", "train.device=cpu"]
    train += [
        "optim.warmup_steps=1",
        "checkpoint.every_steps=1",
        "logger.progress_bar=false",
        "output_dir=runs/tiny",
    ]
    _run(["bmca-train", *train], work, env)
    first, last = sorted((work / "runs/tiny/checkpoints").glob("step_*.pt"))

    evaluate = ["suite=demo", "model=bmca-tiny", "checkpoint=runs/tiny", "cache_dir=null", "device=cpu"]
    _run(["bmca-eval", *evaluate, "output_dir=runs/eval"], work, env)
    results = [p.parent for p in (work / "runs/eval").glob("*/synthetic_color.json")]
    assert len(results) == 1
    assert json.loads((results[0] / "synthetic_color.json").read_text())["task"] == "synthetic_color"

    _run(["bmca-merge", "runs/eval", "--out", "runs/merged"], work, env)
    assert (work / "runs/merged/summary.csv").is_file()

    wise = [f"base={first}", f"tuned={last}", "alpha=0.5", "out=runs/merged.pt", "any_base=true"]
    _run(["bmca-wise-ft", *wise, "model=bmca-tiny"], work, env)
    assert (work / "runs/merged.pt").is_file()

    _run(["bmca-export", "checkpoint=runs/tiny", "out=exported", f"results={results[0]}"], work, env)
    load = "import open_clip; m, _, p = open_clip.create_model_and_transforms('local-dir:exported'); "
    load += "print(type(m).__name__, sum(t.numel() for t in m.parameters()))"
    name, n_params = _run([python, "-c", load], work, env).split()
    assert name.endswith("CLIP") and int(n_params) > 0


def _private_configs(root: Path) -> Path:
    """A folder laid out like conf/: an experiment, a suite and a task of the user's own."""
    mine = root / "mine"
    (mine / "experiment").mkdir(parents=True)
    experiment = {"name": "mine", "train": {"steps": 7, "batch_size": 4}, "optim": {"lr": 2.5e-4}}
    (mine / "experiment/mine.yaml").write_text("# @package _global_\n" + yaml.safe_dump(experiment))
    write_task_yaml(mine / "tasks", "my_colors", COLOR_TASK_BODY)
    (mine / "suite").mkdir()
    (mine / "suite/mine.yaml").write_text(
        yaml.safe_dump({"name": "mine", "tasks": ["my_colors", "synthetic_color"]})
    )
    return mine


def test_an_experiment_from_a_folder_on_hydra_searchpath_trains(corpus, tmp_path):
    mine = _private_configs(tmp_path)
    overrides = [o for o in tiny_train_overrides(corpus, tmp_path / "run") if not o.startswith("train.steps")]
    overrides = [o for o in overrides if not o.startswith("train.batch_size")]
    cmd = [sys.executable, "train.py", f"hydra.searchpath=[file://{mine}]", "experiment=mine", *overrides]
    _run(cmd, REPO)
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("*.pt"))[-1] == "step_00000007.pt"
    used = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert (used["name"], used["train"]["batch_size"], used["optim"]["lr"]) == ("mine", 4, 2.5e-4)


def test_a_suite_on_hydra_searchpath_names_its_own_tasks_from_the_tasks_folder_beside_it(tmp_path):
    mine = _private_configs(tmp_path)
    make_color_task_data(tmp_path / "data/colors")
    shutil.copytree(tmp_path / "data/colors", tmp_path / "data/synthetic/eval/synthetic_color")
    cmd = [sys.executable, "eval.py", f"hydra.searchpath=[file://{mine}]", "suite=mine", "model=bmca-tiny"]
    cmd += [
        f"data_root={tmp_path / 'data'}",
        f"output_dir={tmp_path / 'out'}",
        "cache_dir=null",
        "device=cpu",
    ]
    _run(cmd, REPO)
    (found,) = (tmp_path / "out").glob("*/my_colors.json")
    result, model_dir = json.loads(found.read_text()), found.parent
    assert result["task"] == "my_colors" and (model_dir / "synthetic_color.json").is_file()


def test_wandb_logging_without_wandb_installed_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
    cfg = LoggerConfig(wandb=WandbConfig(mode="online"))
    expected = "logger.wandb.mode=online needs wandb: pip install 'bmca-clip[wandb]'"
    with pytest.raises(ConfigError) as info:
        MetricLogger(cfg, tmp_path, total_steps=1, start_step=0, run_name="x", config={})
    assert str(info.value) == expected
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_the_slurm_launcher_without_its_plugin_names_the_extra(script, tmp_path):
    # A regular package named hydra_plugins ahead of site-packages hides every installed Hydra plugin.
    (tmp_path / "hydra_plugins").mkdir()
    (tmp_path / "hydra_plugins/__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    cmd = [sys.executable, script, "-m", "hydra/launcher=slurm", f"output_dir={tmp_path / 'out'}"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "error: hydra/launcher=slurm needs hydra-submitit-launcher: pip install 'bmca-clip[slurm]'",
    )


def test_training_time_eval_loads_a_private_suite_by_name_while_hydra_runs(tmp_path):
    """eval.suite=mine during training: load_suite(name) looks in the searchpath folders Hydra was given."""
    mine = _private_configs(tmp_path)
    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", [f"hydra.searchpath=[file://{mine}]"], return_hydra_config=True)
    with pytest.raises(TaskError, match="unknown suite 'mine'"):
        load_suite("mine")  # no Hydra run: the package's suites only
    HydraConfig.instance().set_config(cfg)
    try:
        suite = load_suite("mine")
    finally:
        HydraConfig.instance().cfg = None
    assert [t.name for t in suite.tasks] == ["my_colors", "synthetic_color"]
    assert suite.tasks[0].yaml_path == mine / "tasks/my_colors.yaml"
