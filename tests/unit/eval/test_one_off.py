"""One-off tasks (eval/one_off.py): `eval.py task=<task YAML or folder>` scores those tasks without a suite
file; a bad path, task= twice or beside suite= is one line."""

from __future__ import annotations

import json

import pytest

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.errors import ArgvError, TaskError
from bmca_clip.eval import run as eval_run
from bmca_clip.eval.one_off import one_off_argv
from bmca_clip.eval.suite import suite_from_config
from tests.helpers.config import REPO, compose_config
from tests.helpers.eval_fixtures import COLOR_TASK_BODY, make_color_task_data, write_task_yaml

SHIPPED = str(REPO / "conf/tasks/synthetic_color.yaml")


def _suite(argv):
    return to_object(compose_config("evaluate", one_off_argv(["eval.py", *argv])[1:]), EvaluateConfig)


def test_a_task_yaml_becomes_a_suite_of_that_task_named_after_it():
    cfg = _suite([f"task={SHIPPED}", "model=bmca-tiny"])
    assert cfg.suite.name == "synthetic_color" and cfg.suite.tasks == [SHIPPED]
    assert cfg.output_dir == "runs/eval/synthetic_color" and cfg.model.name == "bmca-tiny"
    (task,) = suite_from_config(cfg.suite).tasks
    assert task.name == "synthetic_color" and task.classes == ("red", "green", "blue", "yellow")
    assert one_off_argv(["eval.py", "suite=demo"]) == ["eval.py", "suite=demo"]  # no task=: untouched


def test_a_bare_name_is_a_shipped_task_and_an_unknown_one_lists_the_available():
    cfg = _suite(["task=synthetic_color"])
    assert cfg.suite.name == "synthetic_color" and cfg.suite.tasks == ["synthetic_color"]
    assert suite_from_config(cfg.suite).tasks[0].yaml_path == REPO / "conf/tasks/synthetic_color.yaml"
    with pytest.raises(TaskError, match="unknown task 'synthetic_colour'.*synthetic_color"):
        suite_from_config(_suite(["task=synthetic_colour"]).suite)


def test_a_folder_gives_every_yaml_in_it_in_name_order(tmp_path):
    folder = tmp_path / "my tasks"
    write_task_yaml(folder, "b_colors", COLOR_TASK_BODY)
    write_task_yaml(folder, "a_colors", COLOR_TASK_BODY)
    (folder / "README.md").write_text("not a task")
    cfg = _suite([f"task={folder}"])
    assert cfg.suite.name == "my tasks"
    assert cfg.suite.tasks == [str(folder / "a_colors.yaml"), str(folder / "b_colors.yaml")]
    assert [t.name for t in suite_from_config(cfg.suite).tasks] == ["a_colors", "b_colors"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["task=nowhere/x.yaml"], "task=nowhere/x.yaml: no such file or folder"),
        (["task="], "task= is empty"),
        ([f"task={SHIPPED}", "suite=demo"], "and suite=demo: give one"),
        ([f"task={SHIPPED}", "suite.tasks=[pcam]"], "and suite.tasks=[pcam]: give one"),
        ([f"task={SHIPPED}", "suite.expect_tasks=1"], "only suite.protocols=[...] may be set"),
        ([f"task={SHIPPED}", "+suite.protocols=[k_shot]"], "and +suite.protocols=[k_shot]: give one"),
        ([f"task={SHIPPED}", f"task={SHIPPED}"], "task= given 2 times"),
    ],
)
def test_bad_task_arguments_are_one_line(args, says):
    with pytest.raises(ArgvError) as err:
        one_off_argv(["eval.py", *args])
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_one_off_task_takes_the_suite_protocols(tmp_path):
    modality = str(REPO / "conf/tasks/synthetic_modality.yaml")
    cfg = _suite([f"task={modality}", "suite.protocols=[zero_shot,linear_probe,k_shot]"])
    assert cfg.suite.name == "synthetic_modality" and cfg.suite.protocols == [
        "zero_shot",
        "linear_probe",
        "k_shot",
    ]
    tasks = suite_from_config(cfg.suite).tasks
    assert [(t.name, t.type) for t in tasks] == [
        ("synthetic_modality", "classification"),
        ("synthetic_modality@linear_probe", "linear_probe"),
        ("synthetic_modality@k_shot", "k_shot"),
    ]
    # A task without a train_split keeps its zero-shot score; a protocol not known is the suite's one line.
    no_train = write_task_yaml(tmp_path, "colors", COLOR_TASK_BODY)
    cfg = _suite([f"task={no_train}", "suite.protocols=[zero_shot,linear_probe]"])
    assert [t.name for t in suite_from_config(cfg.suite).tasks] == ["colors"]
    with pytest.raises(TaskError, match="linear_prob"):
        suite_from_config(_suite([f"task={modality}", "suite.protocols=[linear_prob]"]).suite)


def test_not_a_yaml_an_empty_folder_and_a_quote_in_the_path(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    quoted = write_task_yaml(tmp_path / "it's", "colors", COLOR_TASK_BODY)
    for path, says in [
        (tmp_path / "notes.txt", "not a task YAML"),
        (tmp_path / "empty", "holds no task YAML"),
        (quoted, "quote or backslash"),
    ]:
        with pytest.raises(ArgvError, match=says):
            one_off_argv(["eval.py", f"task={path}"])


def test_bad_yaml_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\n type: [\n")
    with pytest.raises(TaskError, match="bad.yaml: not valid YAML"):
        suite_from_config(_suite([f"task={bad}"]).suite)


def test_a_one_off_task_runs_and_writes_its_summary(tmp_path):
    make_color_task_data(tmp_path / "colors")
    task_yaml = write_task_yaml(tmp_path / "tasks", "colors", COLOR_TASK_BODY)
    out = tmp_path / "eval"
    cfg = _suite(
        [
            f"task={task_yaml}",
            "model=bmca-tiny",
            f"data_root={tmp_path}",
            f"output_dir={out}",
            "cache_dir=null",
        ]
    )
    (results,) = eval_run.run(cfg).values()
    assert [r.task for r in results] == ["colors"] and results[0].status == "ok"
    suite = json.loads((out / "suite.json").read_text())
    assert suite["suite"] == "colors" and [t["name"] for t in suite["tasks"]] == ["colors"]
    assert (out / "summary.md").is_file()
