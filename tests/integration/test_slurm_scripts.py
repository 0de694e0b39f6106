"""The Slurm-facing pieces that need no cluster: the process group from srun's variables, the restart
count, resuming a requeued job by itself, refusing to overwrite an earlier run, and suites kept outside the
repository (tests/cluster/test_slurm.py runs the whole scripts on a real cluster)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from bmca_clip.checkpoint import list_checkpoints
from bmca_clip.dist import slurm_rendezvous_port, torch_env_from_slurm
from bmca_clip.eval.tasks import TaskError, suite_from_mapping
from bmca_clip.train.preemption import slurm_restart
from tests.helpers.config import REPO, tiny_train_overrides
from tests.helpers.eval_fixtures import COLOR_TASK_BODY, write_task_yaml

STEP = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4"}


def test_srun_tasks_become_ranks_with_rank_0_on_the_first_node():
    env = torch_env_from_slurm({**STEP, "SLURM_STEP_NODELIST": "gpu17"})
    assert env == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu17",
        "MASTER_PORT": str(slurm_rendezvous_port(4242)),
    }
    assert slurm_rendezvous_port(4242) == 20000 + 4242 % 20000  # the same port slurm/train.sbatch uses
    given = torch_env_from_slurm({**STEP, "SLURM_JOB_NODELIST": "n1", "MASTER_PORT": "29500"})
    assert given["MASTER_PORT"] == "29500" and given["MASTER_ADDR"] == "n1"


@pytest.mark.parametrize(
    "environ",
    [
        {},  # not under Slurm
        {**STEP, "SLURM_STEP_NODELIST": "n1", "RANK": "0"},  # torchrun already set the group up
        {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"},  # a lone process in a batch script
        {**STEP, "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_NODELIST": "n1"},  # a one-task step
    ],
)
def test_no_process_group_is_made_up_where_srun_did_not_start_several_tasks(environ):
    assert torch_env_from_slurm(environ) == {}


def test_compressed_node_lists_are_expanded_by_slurm(monkeypatch):
    calls = []

    def fake_run(cmd, **_):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="node01\nnode02\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    env = torch_env_from_slurm({**STEP, "SLURM_STEP_NODELIST": "node[01-02]"})
    assert env["MASTER_ADDR"] == "node01"
    assert calls == [["scontrol", "show", "hostnames", "node[01-02]"]]


@pytest.mark.parametrize("value, count", [(None, 0), ("0", 0), ("2", 2), ("", 0), ("x", 0)])
def test_restart_count(value, count):
    assert slurm_restart({} if value is None else {"SLURM_RESTART_COUNT": value}) == count


def _train(corpus, out, steps, env=None, **extra) -> subprocess.CompletedProcess:
    overrides = tiny_train_overrides(corpus, out, **{"train.steps": steps, **extra})
    return subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_new_run_never_overwrites_checkpoints_and_a_requeued_job_resumes_by_itself(corpus, tmp_path):
    import os

    # 3 steps stand in for a job preempted at step 3 of 6. A constant lr: a finished 3-step cosine ends at
    # lr 0, and a resume refuses to extend it (bmca_clip/train/resume.py).
    flat = {"optim.schedule": "constant"}
    first = _train(corpus, tmp_path, 3, **flat)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.stat().st_mtime_ns for p in list_checkpoints(tmp_path / "checkpoints")}

    # The same command: it would restart from step 0 over the old run.
    again = _train(corpus, tmp_path, 6, **flat)
    assert again.returncode == 2
    assert "already holds checkpoints of an earlier run (newest: step_00000003.pt)" in again.stderr
    assert "resume=latest" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in list_checkpoints(tmp_path / "checkpoints")} == before

    requeued = _train(
        corpus, tmp_path, 6, env={**os.environ, "SLURM_RESTART_COUNT": "1", "SLURM_JOB_ID": "7"}, **flat
    )
    assert requeued.returncode == 0, requeued.stderr[-2000:]
    assert "Slurm restart 1 of job 7: resume=latest" in requeued.stderr
    assert "at step 3" in requeued.stderr
    assert list_checkpoints(tmp_path / "checkpoints")[-1].name == "step_00000006.pt"


def test_a_suite_outside_the_repository_lists_task_yaml_paths(tmp_path):
    path = write_task_yaml(tmp_path / "tasks", "my_colors", COLOR_TASK_BODY)
    suite = suite_from_mapping({"name": "mine", "tasks": [str(path), "synthetic_color"]}, "mine.yaml")
    assert [t.name for t in suite.tasks] == ["my_colors", "synthetic_color"]
    with pytest.raises(TaskError, match=r"mine.yaml: key 'tasks': unknown task 'nope'.*or give the path"):
        suite_from_mapping({"name": "mine", "tasks": ["nope"]}, "mine.yaml")
    with pytest.raises(TaskError, match=r"task file .*missing.yaml does not exist"):
        suite_from_mapping({"name": "mine", "tasks": [str(tmp_path / "missing.yaml")]}, "mine.yaml")


def test_eval_finds_a_suite_through_hydra_searchpath(tmp_path):
    path = write_task_yaml(tmp_path / "tasks", "my_colors", COLOR_TASK_BODY)
    (tmp_path / "conf/suite").mkdir(parents=True)
    (tmp_path / "conf/suite/mine.yaml").write_text(yaml.safe_dump({"name": "mine", "tasks": [str(path)]}))
    result = subprocess.run(
        [sys.executable, "eval.py", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "suite=mine"]
        + ["--cfg", "job", "--resolve"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    composed = yaml.safe_load(result.stdout)
    # typed by SuiteConfig now: the keys the file leaves out compose to their defaults
    assert composed["suite"] == {
        "name": "mine",
        "tasks": [str(path)],
        "description": "",
        "expect_tasks": None,
        "protocols": ["zero_shot"],
    }
    assert composed["output_dir"] == "runs/eval/mine"
