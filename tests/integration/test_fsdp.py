"""train.strategy=fsdp under real torchrun with two gloo ranks: FSDP2's step equals DDP's, and train.py trains,
writes sharded (DCP) checkpoints, resumes exactly, and converts them into files export and WiSE-FT read."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from bmca_clip.checkpoint import list_checkpoints, load_checkpoint
from bmca_clip.dcp_convert import convert
from bmca_clip.export import export
from bmca_clip.model import ModelConfig, build_model
from bmca_clip.train.preemption import REQUEUE_EXIT_CODE
from bmca_clip.wise_ft import wise_ft
from tests.helpers.config import REPO, tiny_train_overrides
from tests.helpers.numeric import assert_close_scaled, max_abs
from tests.helpers.tiny_biomedclip import NAME, assert_only_unlocked_layers_moved, hub_with_tiny_biomedclip
from tests.helpers.torchrun import torchrun


def test_fsdp_step_equals_ddp_step_with_and_without_accumulation(tmp_path):
    """Same model, same global batch, gradient checkpointing and clipping on: loss, gradient norm, the
    clipped gradients (FSDP's gathered whole) and the updated weights agree with DDP's (fp32, scaled)."""
    proc = torchrun(REPO / "tests/helpers/fsdp_worker.py", tmp_path, 1, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = torch.load(tmp_path / "steps.pt", weights_only=True)
    for accum in (1, 2):
        ddp, fsdp = steps[f"ddp-{accum}"], steps[f"fsdp-{accum}"]
        for key in ("loss", "grad_norm", "logit_scale"):
            assert fsdp[key] == pytest.approx(ddp[key], rel=1e-5), (accum, key)
        assert fsdp["grads"].keys() == ddp["grads"].keys()
        grad_scale = max_abs(ddp["grads"].values())
        for name, grad in ddp["grads"].items():
            assert_close_scaled(fsdp["grads"][name], grad, rel=1e-5, scale=grad_scale, msg=f"{accum} {name}")
        weight_scale = max_abs(ddp["weights"].values())
        for name, weight in ddp["weights"].items():
            assert_close_scaled(fsdp["weights"][name], weight, rel=1e-6, scale=weight_scale, msg=name)
    # A step with accumulation is the same step: its features span the same contrastive batch.
    assert steps["fsdp-2"]["loss"] == pytest.approx(steps["fsdp-1"]["loss"], rel=1e-5)
    # amp_fp16's GradScaler on sharded gradients: an inf in one rank's shard is found on both ranks, which
    # skip the step and halve the scale alike (so torch.amp.GradScaler serves fsdp, no sharded scaler).
    assert steps["scaler"] == [{"found_inf": 1.0, "scale": 512.0, "stepped": False}] * 2


def _overrides(corpus, out, **extra):
    """fsdp with accumulation from train.global_batch, gradient checkpointing and a frozen image tower."""
    values = {
        "train.strategy": "fsdp",
        "train.batch_size": 8,
        "train.global_batch": 32,  # 8 x 2 ranks x accumulation 2
        "train.steps": 4,
        "checkpoint.every_steps": 2,
        "model.grad_checkpointing": "true",
        "model.lock_image": "true",
    }
    return tiny_train_overrides(corpus, out, **(values | extra))


@pytest.fixture(scope="module")
def fsdp_run(corpus, tmp_path_factory):
    """A 4-step fsdp run with DCP checkpoints at steps 2 and 4, and the demo suite scored at step 4."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    scored = {"eval.suite": "demo", "eval.every_steps": 4, "eval.data_root": corpus.parent}
    proc = torchrun("train.py", *_overrides(corpus, out, **scored))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_periodic_eval_scores_an_unsharded_copy_on_every_rank(fsdp_run):
    """Each rank scores its own tasks, so it evaluates a gathered copy, not the sharded model (which would
    need every rank's forward in step): every task of the suite is logged."""
    rows = [json.loads(line) for line in (fsdp_run / "metrics.jsonl").read_text().splitlines()]
    scores = next(row for row in rows if "eval/mean" in row)
    tasks = {"synthetic_modality", "synthetic_color", "synthetic_retrieval"}
    assert {k.removeprefix("eval/") for k in scores if k.startswith("eval/") and k != "eval/mean"} == tasks
    assert all(0.0 <= scores[f"eval/{t}"] <= 1.0 for t in tasks)


def _train_py(*overrides) -> subprocess.CompletedProcess:
    """`python train.py ...` in one process, without torchrun."""
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", *map(str, overrides)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_refusals_are_one_line_and_write_nothing(corpus, fsdp_run, tmp_path):
    """fsdp without a process group, and a ddp resume of a sharded checkpoint, exit 2 with one line."""
    proc = _train_py(*_overrides(corpus, tmp_path / "alone"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("error: train.strategy=fsdp needs a process group") and "--nproc_per_node=1" in line
    )
    assert not (tmp_path / "alone" / "config.yaml").exists()

    copy = tmp_path / "copy"
    shutil.copytree(fsdp_run, copy)
    before = (copy / "config.yaml").read_text()
    proc = _train_py(
        *_overrides(corpus, copy, resume="latest", **{"train.strategy": "ddp", "train.steps": 6})
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "train.strategy fsdp -> ddp cannot change" in line and "bmca-dcp-convert" in line
    assert (copy / "config.yaml").read_text() == before


def _weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_train_py_writes_sharded_checkpoints_with_the_trainers_state(fsdp_run):
    ckpts = list_checkpoints(fsdp_run / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000002.dcp", "step_00000004.dcp"]
    assert {p.name for p in ckpts[-1].iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"}
    state = load_checkpoint(ckpts[-1])
    assert state["step"] == 4 and state["samples_seen"] == 4 * 32
    assert state["sharded"] == {"format": "dcp", "world_size": 2}
    assert len(state["data"]["ranks"]) == 2 and len(state["rng"]["ranks"]) == 2
    assert state["config"]["train"]["strategy"] == "fsdp" and state["config"]["train"]["accum_freq"] == 2
    assert not any(p.name.startswith(".step_") for p in (fsdp_run / "checkpoints").iterdir())  # no tmp left


def test_resume_continues_exactly_and_the_converted_file_exports(corpus, fsdp_run, tmp_path):
    """Resumed at step 2, step 4's weights equal the uninterrupted run's; the converted file is a plain
    checkpoint export, WiSE-FT and a ddp resume read."""
    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp_run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004.dcp")
    proc = torchrun("train.py", *_overrides(corpus, resumed, resume="latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    whole = convert(fsdp_run / "checkpoints" / "step_00000004.dcp")
    again = convert(resumed / "checkpoints" / "step_00000004.dcp", tmp_path / "again.pt")
    assert whole == fsdp_run / "checkpoints" / "converted" / "step_00000004.pt"
    expected, actual = _weights(whole), _weights(again)
    scale = max_abs(expected.values())
    for name, weight in expected.items():
        assert_close_scaled(actual[name], weight, rel=1e-6, scale=scale, msg=name)

    state = torch.load(whole, weights_only=True)
    assert state["model"]["logit_scale"].shape == () and "sharded" not in state
    assert state["config"]["train"]["strategy"] == "ddp"
    assert "bmca-dcp-convert" in state["config_history"][-1]["note"]
    exported = export(str(whole), tmp_path / "export")
    assert (exported / "open_clip_model.safetensors").is_file()
    early = convert(fsdp_run / "checkpoints" / "step_00000002.dcp", tmp_path / "early.pt")
    blended = torch.load(
        wise_ft(str(early), str(whole), 0.5, tmp_path / "wise.pt", any_base=True), weights_only=True
    )["model"]
    half = (_weights(early)["visual.proj"] + expected["visual.proj"]) / 2
    assert_close_scaled(blended["visual.proj"], half, rel=1e-6)

    # A converted file is a ddp checkpoint: a ddp run resumed from step 2 reaches fsdp's step 4 weights.
    ddp = _overrides(corpus, tmp_path / "ddp", resume=early, **{"train.strategy": "ddp"})
    proc = torchrun("train.py", *ddp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_ddp = _weights(tmp_path / "ddp" / "checkpoints" / "step_00000004.pt")
    for name, weight in expected.items():
        assert_close_scaled(by_ddp[name], weight, rel=1e-5, scale=scale, msg=name)


def _logged_steps(out) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_saves_every_ranks_shards_of_the_last_step_and_resumes(corpus, tmp_path):
    """Preempted, both ranks write their shards of the step they finished into one DCP checkpoint, exit
    for a requeue (train/preemption.py), and the run resumes from it without losing a step."""
    run = tmp_path / "run"
    overrides = _overrides(corpus, run, **{"train.steps": 10_000, "checkpoint.every_steps": 10_000})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # killpg reaches torchrun and its ranks, and only them
    )
    deadline = time.monotonic() + 180
    while len(_logged_steps(run)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        stderr = proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    stopped = _logged_steps(run)[-1]
    # torchrun's agent itself exits 1 on the signal; each rank says it saved and exits for a requeue
    message = f"checkpoint saved at step {stopped}; exiting with {REQUEUE_EXIT_CODE}"
    assert stderr.count(message) == 2, stderr[-3000:]
    folder = run / "checkpoints" / f"step_{stopped:08d}.dcp"
    assert {"__0_0.distcp", "__1_0.distcp", "state.pt"} <= {p.name for p in folder.iterdir()}
    assert load_checkpoint(folder)["step"] == stopped

    # resumed with a new peak lr: the optimizer takes it (its param groups are not the checkpoint's)
    more = _overrides(corpus, run, **{"train.steps": stopped + 1, "resume": "latest", "optim.lr": 1e-3})
    proc = torchrun("train.py", *more)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _logged_steps(run) == list(range(1, stopped + 2))
    groups = load_checkpoint(run / "checkpoints" / f"step_{stopped + 1:08d}.dcp")["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [1e-3] * len(groups)


@pytest.mark.slow
def test_biomedclip_shards_its_timm_and_bert_blocks_and_trains_what_lock_text_leaves(corpus, tmp_path):
    """BiomedCLIP's shape (timm ViT, HF BERT): two fsdp ranks at amp_bf16 with lock_text and one unlocked
    BERT layer (frozen and trained parameters in the same sharded groups) train exactly the unfrozen ones."""
    out = tmp_path / "biomedclip"
    values = {"model.name": NAME, "train.batch_size": 4, "train.global_batch": 8, "train.steps": 2}
    values["model.lock_image"] = "false"  # _overrides freezes it
    locks = {"model.lock_text": True, "model.lock_text_unlocked_layers": 1, "train.precision": "amp_bf16"}
    args = ["model=biomedclip", *_overrides(corpus, out, **values, **locks)[1:]]
    with hub_with_tiny_biomedclip(tmp_path / "hub") as hub:
        done = torchrun("train.py", *args, env=hub.env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        with hub.use():
            start = build_model(ModelConfig(name=NAME)).model.state_dict()
    assert "8 transformer blocks and the root sharded over 2 ranks" in done.stderr  # 6 timm + 2 BERT
    trained = _weights(convert(out / "checkpoints" / "step_00000002.dcp"))
    assert_only_unlocked_layers_moved(trained, start)
