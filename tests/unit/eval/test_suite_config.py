"""The suite is read once: what Hydra composed for eval.py (overrides included) is what runs, and training's
eval.suite is looked up and built the same way (eval/suite.py). Also the typed EvaluateConfig.suite and
checkpoint, and train.py's schema without the eval-only WiSE-FT keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

import bmca_clip.train.evaluation as train_eval
from bmca_clip.config import (
    CHECKPOINT_FORMS,
    EvaluateConfig,
    PretrainConfig,
    SuiteConfig,
    TrainEvalConfig,
    register_configs,
    to_object,
)
from bmca_clip.errors import ConfigError, TaskError
from bmca_clip.eval.run import run
from bmca_clip.eval.suite import suite_config, suite_from_config
from tests.helpers.config import compose_config
from tests.helpers.eval_fixtures import COLOR_TASK_BODY, make_color_task_data, write_task_yaml

REPO = Path(__file__).resolve().parents[3]
SUITE_FILES = sorted((REPO / "conf/suite").glob("*.yaml"))


def _evaluate(overrides: list[str]) -> EvaluateConfig:
    return to_object(compose_config("evaluate", overrides), EvaluateConfig)


def test_a_suite_tasks_override_changes_what_eval_py_scores(tmp_path):
    # On the base run.py read conf/suite/demo.yaml again: all three demo tasks ran (two without data).
    make_color_task_data(tmp_path / "data/synthetic/eval/synthetic_color")
    cfg = _evaluate(
        [
            "suite=demo",
            "suite.tasks=[synthetic_color]",
            "model=bmca-tiny",
            f"data_root={tmp_path / 'data'}",
            f"output_dir={tmp_path / 'out'}",
            "cache_dir=null",
            "device=cpu",
            "progress_bar=false",
        ]
    )
    results = run(cfg)
    assert [[(r.task, r.status) for r in rs] for rs in results.values()] == [[("synthetic_color", "ok")]]
    assert sorted(p.name for p in (tmp_path / "out").glob("*/*.json")) == ["synthetic_color.json"]


@pytest.mark.parametrize("file", SUITE_FILES, ids=lambda f: f.stem)
def test_every_suite_file_composes_into_the_typed_suite_config_and_loads(file):
    cfg = _evaluate([f"suite={file.stem}"])
    raw = yaml.safe_load(file.read_text())
    assert isinstance(cfg.suite, SuiteConfig)
    assert (cfg.suite.name, cfg.suite.tasks, cfg.suite.expect_tasks) == (
        file.stem,
        raw["tasks"],
        raw.get("expect_tasks"),
    )
    suite = suite_from_config(cfg.suite)
    assert [t.name for t in suite.tasks] == raw["tasks"]
    assert suite.description == (raw.get("description") or "")
    assert suite_config(file.stem) == cfg.suite  # training's eval.suite=<name> reads the same suite


def test_overriding_the_tasks_of_a_suite_with_expect_tasks_says_how_to_drop_the_check():
    cfg = _evaluate(["suite=pathology", "suite.tasks=[pcam]"])
    with pytest.raises(TaskError, match=r"says 7 tasks, but the suite lists 1.*suite.expect_tasks=null"):
        suite_from_config(cfg.suite)
    cfg = _evaluate(["suite=pathology", "suite.tasks=[pcam]", "suite.expect_tasks=null"])
    assert [t.name for t in suite_from_config(cfg.suite).tasks] == ["pcam"]


def test_a_misspelt_task_in_a_suite_override_names_the_suite_file_and_the_key():
    cfg = _evaluate(["suite=demo", "suite.tasks=[synthetic_colour]"])
    with pytest.raises(
        TaskError, match=r"^suite=demo \(.*demo.yaml\): key 'tasks': unknown task 'synthetic_colour'"
    ):
        suite_from_config(cfg.suite)


def test_training_time_eval_builds_its_suite_through_suite_from_config(monkeypatch):
    seen = []

    def spy(composed, tasks_dir=None):
        seen.append(composed)
        return suite_from_config(composed, tasks_dir)

    monkeypatch.setattr(train_eval, "suite_from_config", spy)
    tasks = train_eval.load_eval_tasks(TrainEvalConfig(suite="demo"))
    assert [t.name for t in tasks] == list(_evaluate(["suite=demo"]).suite.tasks)
    assert seen == [_evaluate(["suite=demo"]).suite]
    assert train_eval.load_eval_tasks(TrainEvalConfig(suite=None)) is None
    with pytest.raises(
        TaskError, match=r"^eval.suite=demo_typo: unknown suite 'demo_typo'.*did you mean eval.suite=demo "
    ):
        train_eval.load_eval_tasks(TrainEvalConfig(suite="demo_typo"))


def _private_suite(root: Path, body: dict) -> Path:
    """<root>/mine laid out like conf/: suite/mine.yaml (body) and the task it lists."""
    mine = root / "mine"
    write_task_yaml(mine / "tasks", "my_colors", COLOR_TASK_BODY)
    (mine / "suite").mkdir()
    (mine / "suite/mine.yaml").write_text(yaml.safe_dump(body))
    return mine


def _while_hydra_runs(searchpath: Path):
    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", [f"hydra.searchpath=[file://{searchpath}]"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)


def test_training_finds_a_private_suite_where_eval_py_does_and_refuses_its_typos_in_one_line(tmp_path):
    good = _private_suite(tmp_path / "good", {"name": "mine", "tasks": ["my_colors", "synthetic_color"]})
    bad = _private_suite(tmp_path / "bad", {"name": "mine", "taks": ["my_colors"]})
    try:
        _while_hydra_runs(good)
        assert [t.name for t in train_eval.load_eval_tasks(TrainEvalConfig(suite="mine"))] == [
            "my_colors",
            "synthetic_color",
        ]
        _while_hydra_runs(bad)
        with pytest.raises(TaskError) as info:
            train_eval.load_eval_tasks(TrainEvalConfig(suite="mine"))
    finally:
        HydraConfig.instance().cfg = None
    message = str(info.value)
    assert message.startswith(f"{bad / 'suite/mine.yaml'}: key 'taks' is not a suite key; did you mean tasks")
    assert "\n" not in message


@pytest.mark.parametrize("value", [None, "runs/a/checkpoints/step_1.pt", ["a.pt", "b.pt"], [None, "a.pt"]])
def test_checkpoint_accepts_a_path_a_list_of_paths_or_null(value):
    cfg = EvaluateConfig(suite=SuiteConfig(name="demo", tasks=["synthetic_color"]), checkpoint=value)
    assert cfg.checkpoints == (value if isinstance(value, list) else [value])


@pytest.mark.parametrize(
    "override",
    ["checkpoint=5", "checkpoint=[a.pt,5]", "checkpoint={a: b.pt}", "checkpoint=''", "checkpoint=[]"],
)
def test_checkpoint_of_another_form_is_one_line_naming_the_allowed_forms(override):
    with pytest.raises(ConfigError) as info:
        _evaluate([override])
    message = str(info.value)
    assert message.startswith("checkpoint=") and "\n" not in message
    assert message.endswith(CHECKPOINT_FORMS)


def test_the_wise_ft_keys_are_eval_py_keys_only():
    train_model = to_object(compose_config("pretrain"), PretrainConfig).model
    assert not hasattr(train_model, "wise_ft_alpha") and not hasattr(train_model, "wise_ft_any_base")
    model = _evaluate(["model.wise_ft_alpha=[0.5,1.0]", "model.wise_ft_any_base=true"]).model
    assert (model.wise_ft_alpha, model.wise_ft_any_base) == ([0.5, 1.0], True)
