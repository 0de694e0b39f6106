"""slurm/*.sbatch and the submitit sweep launcher, run on a real single-node Slurm cluster (CPU, gloo).

tests/helpers/slurm_cluster.py starts slurmctld and slurmd (Debian's slurm-wlm, installed when missing only with
BMCA_INSTALL_SLURM=1 or BMCA_REQUIRE_SLURM=1) with 2 CPUs and 2 device-less GPUs. Without Slurm these tests skip with the reason, unless BMCA_REQUIRE_SLURM=1 (set by
.ci/run), where they fail instead. Every job writes under the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import slurm_cluster
from tests.helpers.config import REPO, tiny_train_overrides
from tests.helpers.eval_fixtures import (
    COLOR_TASK_BODY,
    RETRIEVAL_TASK_BODY,
    make_color_task_data,
    make_retrieval_data,
    write_task_yaml,
)
from tests.helpers.slurm_cluster import SlurmCluster, SlurmUnavailable

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
STEPS = 60  # long enough (~0.15 s a step) to signal the job mid-run, short enough for CI
# Two torchrun agents (as on two nodes), one process each: the multi-node path of train.sbatch.
TRAIN_ALLOCATION = [
    "--ntasks=2",
    "--ntasks-per-node=2",
    "--cpus-per-task=1",
    "--gpus-per-node=1",
    "--time=10",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    except SlurmUnavailable as exc:
        if os.environ.get("BMCA_REQUIRE_SLURM") == "1":
            pytest.fail(f"BMCA_REQUIRE_SLURM=1 but no Slurm cluster could start: {exc}")
        pytest.skip(f"no Slurm cluster: {exc}")
    cluster.env["PYTHON"] = sys.executable  # the scripts' interpreter: this test's virtual environment
    yield cluster
    cluster.stop()


def sbatch(slurm: SlurmCluster, *args: str) -> str:
    """Submit from the repository root, as users do; returns the job id."""
    result = slurm.run("sbatch", "--parsable", *args, cwd=REPO, check=False)
    assert result.returncode == 0, f"sbatch {' '.join(args)} failed: {result.stderr}"
    return result.stdout.strip().split(";")[0]


def jobs(slurm: SlurmCluster, job: str | None = None) -> list[dict[str, str]]:
    """`scontrol show job -o` as one dict per job (or array task)."""
    result = slurm.run("scontrol", "show", "job", "-o", *([job] if job else []), check=False)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in result.stdout.splitlines() if line.strip()]


def wait(slurm: SlurmCluster, job: str, timeout: float = 300) -> list[dict[str, str]]:
    """Wait until every task of job has finished; requeued tasks are released at once instead of after
    Slurm's requeue delay (they wait about two minutes with reason BeginTime)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = jobs(slurm, job)
        for info in found:
            if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
                slurm.run("scontrol", "update", f"JobId={info['JobId']}", "StartTime=now", check=False)
        if found and all(info.get("JobState") in FINISHED for info in found):
            return found
        time.sleep(0.5)
    raise AssertionError(f"job {job} not finished after {timeout:.0f} s: {jobs(slurm, job)}")


def steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def submit_training(slurm: SlurmCluster, corpus: Path, run: Path) -> str:
    # Two data workers per rank: a preemption signals them too, and they must live through it.
    overrides = tiny_train_overrides(
        corpus, run, **{"train.steps": STEPS, "checkpoint.every_steps": 1000, "data.num_workers": 2}
    )
    return sbatch(slurm, *TRAIN_ALLOCATION, f"--output={run}.out", "slurm/train.sbatch", *overrides)


@pytest.fixture(scope="module")
def uninterrupted(slurm, corpus, tmp_path_factory) -> Path:
    """STEPS steps of bmca-tiny by slurm/train.sbatch with two ranks, never signalled."""
    run = tmp_path_factory.mktemp("train") / "uninterrupted"
    (info,) = wait(slurm, submit_training(slurm, corpus, run))
    log = Path(f"{run}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    return run


def test_train_sbatch_runs_two_ranks_through_srun_and_torchrun(uninterrupted):
    log = Path(f"{uninterrupted}.out").read_text()
    assert "2 x 1 processes, rendezvous" in log  # two agents, one GPU-slot each, c10d on the head node
    assert [r["step"] for r in steps(uninterrupted)] == list(range(1, STEPS + 1))
    final = torch.load(uninterrupted / f"checkpoints/step_{STEPS:08d}.pt", weights_only=True)
    assert len(final["data"]["ranks"]) == 2  # each rank's data position: the group had two ranks
    assert steps(uninterrupted)[-1]["samples_seen"] == STEPS * 2 * 16  # global batch = 2 ranks x 16


# USR1: what --signal=USR1@120 sends before the time limit; TERM: what a preemption sends. Both go to every
# process of the job step: torchrun's agents, the ranks and their data workers. (Not `scancel --full`: srun
# itself turns a SIGTERM it receives into a SIGKILL of all its tasks, see srun(1), so no job survives that.)
@pytest.mark.parametrize("sig", ["USR1", "TERM"])
def test_preempted_job_saves_requeues_and_resumes_without_losing_or_repeating_a_step(
    slurm, corpus, uninterrupted, tmp_path, sig
):
    run = tmp_path / "preempted"
    job = submit_training(slurm, corpus, run)
    deadline = time.monotonic() + 180
    while not ((run / "metrics.jsonl").is_file() and len(steps(run)) >= 5):
        assert time.monotonic() < deadline, Path(f"{run}.out").read_text()[-3000:]
        time.sleep(0.2)
    slurm.run("scancel", f"--signal={sig}", job)
    (info,) = wait(slurm, job)
    log = Path(f"{run}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    assert "killed by signal" not in log
    saved = int(re.search(rf"SIG{sig} received: checkpoint saved at step (\d+)", log)[1])
    assert 5 <= saved < STEPS
    assert "requeued SLURM job" in log and "Slurm restart 1" in log
    assert re.search(rf"resumed from \S+step_{saved:08d}\.pt at step {saved}\b", log)
    logged = steps(run)
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))  # none lost, none repeated
    reference = {r["step"]: r["loss"] for r in steps(uninterrupted)}
    assert [r["loss"] for r in logged] == pytest.approx([reference[s] for s in range(1, STEPS + 1)], rel=1e-6)
    final = f"checkpoints/step_{STEPS:08d}.pt"
    ours = torch.load(run / final, weights_only=True)["model"]
    theirs = torch.load(uninterrupted / final, weights_only=True)["model"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "the final weights differ"


def test_srun_with_one_task_per_rank_forms_the_group_without_torchrun(slurm, corpus, tmp_path):
    """What the submitit launcher runs with tasks_per_node > 1: srun starts the ranks, train.py reads
    SLURM_PROCID / SLURM_STEP_NUM_TASKS (bmca_clip/dist.py)."""
    run = tmp_path / "srun"
    overrides = tiny_train_overrides(corpus, run, **{"train.steps": 4})
    command = " ".join(["srun", sys.executable, "train.py", *overrides])
    job = sbatch(slurm, "--ntasks=2", "--cpus-per-task=1", f"--output={run}.out", "--wrap", command)
    (info,) = wait(slurm, job)
    assert info["JobState"] == "COMPLETED", Path(f"{run}.out").read_text()[-3000:]
    final = torch.load(run / "checkpoints/step_00000004.pt", weights_only=True)
    assert len(final["data"]["ranks"]) == 2
    assert steps(run)[-1]["samples_seen"] == 4 * 2 * 16


# --- evaluation array ------------------------------------------------------------------------------------


def _standin_suite(root: Path) -> tuple[Path, Path, list[str]]:
    """Four stand-in tasks (task YAMLs and data under root) in a suite kept outside the repository."""
    data = root / "data"
    make_color_task_data(data / "colors")
    make_retrieval_data(data / "pairs")
    bodies = {
        "standin_colors": COLOR_TASK_BODY,
        "standin_colors_pathology": COLOR_TASK_BODY.replace("domain: synthetic", "domain: pathology"),
        "standin_colors_radiology": COLOR_TASK_BODY.replace("domain: synthetic", "domain: radiology"),
        "standin_retrieval": RETRIEVAL_TASK_BODY,
    }
    paths = [str(write_task_yaml(root / "tasks", name, body)) for name, body in bodies.items()]
    (root / "conf/suite").mkdir(parents=True)
    (root / "conf/suite/standin4.yaml").write_text(yaml.safe_dump({"name": "standin4", "tasks": paths}))
    return root / "conf", data, list(bodies)


def _merge_jobs(slurm: SlurmCluster) -> list[dict[str, str]]:
    return [j for j in jobs(slurm) if j.get("JobName") == "bmca-eval-merge"]


def _run_eval_array(slurm, root: Path, conf: Path, data: Path, out: Path, cancel: str | None = None):
    """Submit the 4-task array (cancelling array task `cancel` at once), wait for it and its merge job."""
    before = {j["JobId"] for j in _merge_jobs(slurm)}
    overrides = [
        f"hydra.searchpath=[file://{conf}]",
        "suite=standin4",
        "model=bmca-tiny",
        f"data_root={data}",
    ]
    overrides += [f"output_dir={out}", f"cache_dir={root / 'cache'}", "device=cpu", "batch_size=8"]
    array = sbatch(
        slurm,
        "--array=0-3",
        "--cpus-per-task=1",
        f"--output={root}/eval-%A_%a.out",
        "slurm/eval_array.sbatch",
        *overrides,
    )
    if cancel is not None:
        slurm.run("scancel", f"{array}_{cancel}")
    tasks = wait(slurm, array)
    deadline = time.monotonic() + 60
    while not (merge := [j for j in _merge_jobs(slurm) if j["JobId"] not in before]):
        assert time.monotonic() < deadline, "the first array task submitted no merge job"
        time.sleep(0.5)
    (merged,) = wait(slurm, merge[0]["JobId"], timeout=120)
    return array, tasks, merged


def test_eval_array_merges_shows_a_failed_share_and_resubmission_fills_only_the_gap(slurm, tmp_path):
    from bmca_clip.eval.shard import select
    from bmca_clip.eval.tasks import load_task

    conf, data, names = _standin_suite(tmp_path)
    out = tmp_path / "out"
    array, tasks, merged = _run_eval_array(slurm, tmp_path, conf, data, out, cancel="3")
    states = {t["ArrayTaskId"]: t["JobState"] for t in tasks}
    assert [states.get(k) for k in "012"] == ["COMPLETED"] * 3
    assert states.get("3") in (None, "CANCELLED")  # a task cancelled while pending may leave no record
    # The merge still ran (afterany) and wrote the summary, but says with exit 3 that tasks are missing.
    merge_log = (out / f"slurm-merge-{merged['JobId']}.out").read_text()
    assert (merged["JobState"], merged.get("ExitCode")) == ("FAILED", "3:0"), merge_log
    assert "missing" in merge_log.rstrip().splitlines()[-1], merge_log

    suite = [load_task(tmp_path / "tasks" / f"{name}.yaml") for name in names]
    lost = {t.name for t in select(suite, (4, 4))}  # the share of array task 3, as eval.py computes it
    assert lost and len(lost) < len(names)
    summary = (out / "summary.md").read_text()
    missing = summary.split("## Missing tasks")[1]
    assert all(name in missing for name in lost)
    assert not any(name in missing for name in set(names) - lost)
    scored = {p.stem: p.stat().st_mtime_ns for p in out.glob("*/*.json") if p.name != "suite.json"}
    assert set(scored) == set(names) - lost

    # The same command again: only the cancelled share's tasks are scored, the rest come from their JSON.
    _, tasks, merged = _run_eval_array(slurm, tmp_path, conf, data, out)
    assert {t["JobState"] for t in tasks} == {"COMPLETED"} and merged["JobState"] == "COMPLETED"
    summary = (out / "summary.md").read_text()
    assert "## Missing tasks" not in summary and "## Failed tasks" not in summary
    assert all(name in summary for name in names)
    now = {p.stem: p.stat().st_mtime_ns for p in out.glob("*/*.json") if p.name != "suite.json"}
    assert set(now) == set(names)
    assert all(now[name] == scored[name] for name in scored)  # not scored again
    logs = "".join(p.read_text() for p in tmp_path.glob("eval-*.out"))
    assert all(f"task {name}: cached result" in logs for name in scored)
    assert (out / "summary.png").is_file() and (out / "summary.csv").is_file()


# --- sweep through hydra-submitit-launcher -------------------------------------------------------------


def test_hydra_sweep_on_slurm_is_one_job_array(slurm, corpus, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_train_overrides(corpus, tmp_path) if not o.startswith("output_dir=")]
    command = [sys.executable, "train.py", "-m", "optim.lr=1e-3,1e-4", "hydra/launcher=slurm", *overrides]
    command += [f"hydra.sweep.dir={sweep}", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]
    result = subprocess.run(command, cwd=REPO, env=slurm.env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    submitted = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(submitted) == 2 and len({name.split("_")[0] for name in submitted}) == 1  # one array, 2 tasks
    lrs = {}
    for job in ("0", "1"):
        run = sweep / job
        assert (run / "checkpoints/step_00000006.pt").is_file()
        assert [r["step"] for r in steps(run)] == list(range(1, 7))
        lrs[yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"]] = steps(run)[-1]["loss"]
    assert sorted(lrs) == [1e-4, 1e-3]
    assert lrs[1e-4] != lrs[1e-3]


@pytest.mark.parametrize(
    "env, installs",
    [({}, False), ({"BMCA_INSTALL_SLURM": "1"}, True), ({"BMCA_REQUIRE_SLURM": "1"}, True), ({"BMCA_INSTALL_SLURM": "0"}, False)],
)  # fmt: skip
def test_slurm_is_installed_only_when_asked(env, installs, monkeypatch):
    """`make test` promises no network: without the opt-in, a missing Slurm skips instead of apt-get."""
    calls = []
    monkeypatch.setattr(slurm_cluster, "_installed", lambda: bool(calls))
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        slurm_cluster.subprocess,
        "run",
        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0),
    )
    for name in slurm_cluster.INSTALL_OPT_IN:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if installs:
        slurm_cluster.ensure_installed()
        assert calls and calls[0][:2] == ["apt-get", "install"] and "slurm-wlm" in calls[0]
    else:
        with pytest.raises(SlurmUnavailable, match="BMCA_INSTALL_SLURM=1 lets the tests install"):
            slurm_cluster.ensure_installed()
        assert calls == []
