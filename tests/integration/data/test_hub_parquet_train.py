"""train.py end to end on data=mixed_roco (BIOMEDICA's three subsets mixed with a parquet hub dataset,
both served by the test hub): a run that loses its last checkpoint, and a train.py killed with SIGKILL,
resume to the weights and data position of the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from bmca_clip.checkpoint import list_checkpoints, load_checkpoint
from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.train import run as train_mod
from tests.helpers.biomedica_hub import REPO_ID
from tests.helpers.config import REPO, compose_config, tiny_train_overrides
from tests.helpers.parquet_hub import write_parquet_repo


def test_train_py_on_biomedica_and_parquet_resumes_to_the_same_weights(hub, tmp_path, corpus):
    hub.add_dataset(REPO_ID, corpus / "train")
    write_parquet_repo(tmp_path / "roco", [30, 25], row_group_size=10)
    hub.add_dataset("eltorio/ROCO-radiology", tmp_path / "roco")
    extra = {
        "data": "mixed_roco",
        "data.train_shards": "null",
        "data.sources.roco.weight": 20_000_000,  # about half of the draws: both sources in every batch
        "data.shuffle_buffer": 16,
        "data.shuffle_initial": 4,
        "data.cache_dir": str(tmp_path / "cache"),
    }

    def run(**more):
        overrides = tiny_train_overrides(corpus, tmp_path / "run", **extra, **more)
        train_mod.run(to_object(compose_config("pretrain", overrides), PretrainConfig))

    run()
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    uninterrupted = load_checkpoint(ckpts[-1])
    ckpts[-1].unlink()  # killed between its checkpoints at steps 3 and 6
    run(resume="latest")
    resumed = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert resumed["step"] == uninterrupted["step"] == 6
    assert resumed["data"] == uninterrupted["data"]
    rank = uninterrupted["data"]["ranks"][0]
    assert rank["sources"] == ["commercial", "noncommercial", "other", "roco"]
    assert rank["positions"]["0"]["mixing"][3][1] > 0  # parquet rows were trained on
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name


def _train_py(corpus, out, extra: dict, **more) -> subprocess.Popen:
    """train.py in a session of its own (so a kill reaches its data workers), one thread as every run
    compared here: fp32 sums in another order differ."""
    overrides = tiny_train_overrides(corpus, out, **extra, **more)
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finished(proc: subprocess.Popen) -> None:
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]


def test_train_py_killed_with_sigkill_on_biomedica_and_parquet_resumes_exactly(hub, tmp_path, corpus):
    """A real kill -9 (two data workers reading the test hub's tar and parquet files) after the step-4
    checkpoint; resume=latest to step 8 equals an uninterrupted run to step 8."""
    hub.add_dataset(REPO_ID, corpus / "train")
    write_parquet_repo(tmp_path / "roco", [30, 25, 20], row_group_size=10)
    hub.add_dataset("eltorio/ROCO-radiology", tmp_path / "roco")
    extra = {
        "data": "mixed_roco",
        "data.train_shards": "null",
        "data.sources.roco.weight": 20_000_000,
        "data.num_workers": 2,
        "data.shuffle_buffer": 16,
        "data.shuffle_initial": 4,
        "data.cache_dir": str(tmp_path / "cache"),
        "checkpoint.every_steps": 2,
        "optim.schedule": "constant",  # the killed run's nominal length does not change its learning rates
    }
    killed = tmp_path / "killed"
    proc = _train_py(corpus, killed, extra, **{"train.steps": 10_000})
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "step_00000004.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no step-4 checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    resumed_from = load_checkpoint(list_checkpoints(killed / "checkpoints")[-1])["step"]
    _finished(_train_py(corpus, killed, extra, **{"train.steps": 8, "resume": "latest"}))
    _finished(_train_py(corpus, tmp_path / "straight", extra, **{"train.steps": 8}))
    a = load_checkpoint(killed / "checkpoints" / "step_00000008.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000008.pt")
    assert a["data"] == b["data"]
    if resumed_from < 8:  # the kill came before the end: the resumed weights equal the uninterrupted ones
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
