"""Exit codes and messages of the real command lines (issue 11, items 12-14).

0: done; 2: refused (bad input, an unusable environment, a full disk): one `error: ...` line on stderr, no
traceback; 3: eval.py / merge ran and wrote the summary, but some tasks failed or are missing. Each case runs
`python train.py ...` / `python eval.py ...` in a subprocess, as a user or a Slurm script would (each
costs an interpreter start, ~5 s); eval's exit 0 with every task ok is tests/test_eval_suite_e2e.py's.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bmca_clip.cli import disk_full_message, failed_tasks_line
from bmca_clip.eval import merge
from tests.helpers.config import REPO

# Fault injection for the full-disk cases, loaded by every interpreter that has this folder on its path.
# Checkpoints: torch.save fails as it does on a real full disk (an OSError ENOSPC inside the zip writer,
# re-raised by its __exit__ as a RuntimeError). Eval results: their temporary files are opened on
# /dev/full, so the kernel itself answers ENOSPC.
SITECUSTOMIZE = """
import errno, os, tempfile
_where = os.environ.get("BMCA_TEST_FULL_DISK")
if _where:
    import torch
    _save, _mkstemp = torch.save, tempfile.mkstemp

    def _full_save(obj, f, *args, **kwargs):
        if _where in str(getattr(f, "name", f)):
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 62528 vs 62480")
        return _save(obj, f, *args, **kwargs)

    def _full_mkstemp(suffix=None, prefix=None, dir=None, text=False):
        fd, name = _mkstemp(suffix, prefix, dir, text)
        if dir is not None and _where in str(dir):
            os.close(fd)
            os.unlink(name)
            return os.open("/dev/full", os.O_WRONLY), name
        return fd, name

    torch.save, tempfile.mkstemp = _full_save, _full_mkstemp
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A tiny corpus (folder `synthetic`: train shards + the demo suite's eval sets) and a bmca-tiny
    checkpoint of ours (ckpt.pt) next to it."""
    from bmca_clip.config import ModelConfig
    from bmca_clip.data.synthetic import write_corpus
    from bmca_clip.model import build_model

    root = tmp_path_factory.mktemp("exit_codes")
    write_corpus(
        root / "synthetic",
        train_samples=64,
        samples_per_shard=32,
        eval_samples=24,
        seed=0,
        min_size=32,
        max_size=48,
    )
    model = build_model(ModelConfig(name="bmca-tiny")).model
    config = {"model": {"name": "bmca-tiny"}}
    torch.save({"model": model.state_dict(), "step": 1, "config": config}, root / "ckpt.pt")
    (root / "inject").mkdir()
    (root / "inject" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return root


def _run(script: str, args: list[str], root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", **(env or {})}
    paths = [str(root / "inject"), str(REPO), environ.get("PYTHONPATH")]
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return subprocess.run(
        [sys.executable, *script.split(), *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _train(root: Path, out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = ["model=bmca-tiny", "data=local", f"data.train_shards={root / 'synthetic' / 'train'}"]
    base += ["data.num_workers=0", "data.shuffle_buffer=8", "data.shuffle_initial=4", "train.batch_size=8"]
    base += ["train.steps=1", "train.device=cpu", "logger.progress_bar=false", f"output_dir={out}"]
    return _run("train.py", [*base, *overrides], root, env)


def _eval(root: Path, out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = ["suite=demo", "model=bmca-tiny", f"data_root={root}", "device=cpu", "num_workers=0"]
    base += [f"output_dir={out}", "cache_dir=null", "batch_size=16"]
    return _run("eval.py", [*base, *overrides], root, env)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The refusal: exit 2, no traceback, and exactly one `error:` line, the last one on stderr."""
    detail = f"exit {proc.returncode}; stderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr, detail
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().splitlines()[-1] == errors[0], detail
    return errors[0]


def test_a_misspelled_experiment_is_refused_with_the_available_ones(small, tmp_path):
    line = _one_error_line(_train(small, tmp_path / "run", "experiment=demoo"))
    assert "experiment=demoo" in line
    assert all(name in line for name in ("demo", "bmca_clip", "bmca_clip_1gpu", "bmca_clip_8gpu"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


CUDA = torch.cuda.is_available()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        pytest.param(
            ["train.device=cuda"],
            "train.device=cuda but no CUDA device is visible",
            marks=pytest.mark.skipif(CUDA, reason="a GPU is visible"),
        ),
        (["train.precision=amp_fp16"], "train.precision=amp_fp16 needs a CUDA device"),
        (["train.seed=-1"], "train.seed=-1 is invalid"),
        (["data.timeout_s=0"], "data.timeout_s=0"),
        (["data.max_empty_shards=0"], "data.max_empty_shards=0"),
    ],
)
def test_train_refuses_settings_that_cannot_work_in_one_line(small, tmp_path, overrides, expected):
    line = _one_error_line(_train(small, tmp_path / "run", *overrides))
    assert expected in line, line


def test_weights_of_another_architecture_are_refused_naming_both(small, tmp_path):
    ckpt = small / "ckpt.pt"
    for proc in (
        _train(small, tmp_path / "run", "model=bmca-small", f"model.pretrained={ckpt}"),
        _eval(small, tmp_path / "eval", "model=bmca-small", f"checkpoint={ckpt}"),
    ):
        line = _one_error_line(proc)
        assert str(ckpt) in line and "bmca-small" in line and "model=bmca-tiny" in line, line
        assert len(line) < 600, line  # a summary of the mismatch, not every key of the state dict


def test_a_bad_task_yaml_is_one_line_naming_the_file(small, tmp_path):
    task = tmp_path / "mine.yaml"
    task.write_text("name: mine\ntype: classification\n")  # no domain, classes, source...
    (tmp_path / "conf" / "suite").mkdir(parents=True)
    (tmp_path / "conf" / "suite" / "mine.yaml").write_text(f"name: mine\ntasks: [{task}]\n")
    proc = _eval(small, tmp_path / "eval", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "suite=mine")
    line = _one_error_line(proc)
    assert str(task) in line and "domain" in line, line


def test_a_full_disk_names_the_file_and_what_to_do(small, tmp_path):
    ckpt_dir = tmp_path / "full_checkpoints"
    proc = _train(
        small, tmp_path / "run", f"checkpoint.dir={ckpt_dir}", env={"BMCA_TEST_FULL_DISK": str(ckpt_dir)}
    )
    line = _one_error_line(proc)
    assert f"{ckpt_dir}/.step_00000001.pt.tmp" in line and "No space left on device" in line, line
    assert "free space or set checkpoint.dir" in line, line

    out = tmp_path / "full_eval"
    line = _one_error_line(_eval(small, out, env={"BMCA_TEST_FULL_DISK": str(out)}))
    assert str(out) in line and "No space left on device" in line and "free space or set output_dir" in line


@pytest.fixture(scope="module")
def failed_eval(small, tmp_path_factory):
    """eval.py on the demo suite with data_root pointing at an empty folder: every task fails."""
    out = tmp_path_factory.mktemp("failed_eval")
    empty = out / "no_data"
    empty.mkdir()
    return _eval(small, out / "out", f"data_root={empty}"), out / "out"


def test_eval_exits_3_when_tasks_failed_after_writing_the_summary(failed_eval):
    proc, out = failed_eval
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (out / "summary.md").is_file() and (out / "summary.csv").is_file()
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: 3 of 3 task results are not ok (3 failed, 0 missing)"), last
    assert all(name in last for name in ("synthetic_modality", "synthetic_color", "synthetic_retrieval"))


def test_merge_writes_the_summary_and_exits_3_for_failed_or_missing_tasks(failed_eval, tmp_path, capsys):
    _, out = failed_eval
    with pytest.raises(SystemExit) as exit_info:
        merge.main([str(out), "--out", str(tmp_path / "merged")])
    assert exit_info.value.code == 3
    assert (tmp_path / "merged" / "summary.md").is_file()
    last = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert last.startswith("error: 3 of 3 task results are not ok (3 failed, 0 missing)"), last


def test_the_failed_tasks_line_lists_failed_and_missing_results_per_model():
    records = {"base": [{"task": "a", "status": "ok"}, {"task": "b", "status": "failed"}], "tuned": []}
    line = failed_tasks_line(records, ["a", "b"])
    assert line == (
        "error: 3 of 4 task results are not ok (1 failed, 2 missing): base: b (failed); tuned: a (missing); "
        "tuned: b (missing)"
    )
    assert failed_tasks_line({"base": [{"task": "a", "status": "ok"}]}, ["a"]) is None


def test_a_full_disk_is_found_behind_the_error_that_reports_it(tmp_path):
    def write_through(path):
        with open(path, "wb") as f:  # noqa: F841  the open file names the path in the message
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what f.write raises: no filename
            except OSError:
                raise RuntimeError("unexpected pos 62528 vs 62480") from None

    with pytest.raises(RuntimeError) as info:
        write_through(tmp_path / "step.pt.tmp1")
    message = disk_full_message(info.value, "run/checkpoints", "checkpoint.dir")
    assert (
        message
        == f"No space left on device while writing {tmp_path}/step.pt.tmp1: free space or set checkpoint.dir"
    )
    named = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/scratch/x.json")
    assert "/scratch/x.json" in disk_full_message(named, "out", "output_dir")
    assert disk_full_message(RuntimeError("a bug"), "out", "output_dir") is None
