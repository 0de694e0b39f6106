"""`python eval.py task=...` as a user types it: a wrong one-off task ends in exit status 2 and exactly one
`error:` line naming the input, before any model is built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.config import REPO


def _eval(tmp_path, *args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    base = ["model=bmca-tiny", "device=cpu", f"output_dir={tmp_path / 'eval'}", "cache_dir=null"]
    return subprocess.run(
        [sys.executable, "eval.py", *args, *base],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "kind, says",
    [
        ("missing", "no such file or folder"),
        ("with_suite", "and suite=demo: give one"),
        ("bad_yaml", "bad.yaml: not valid YAML"),
    ],
)
def test_a_wrong_one_off_task_is_one_error_line(tmp_path, kind, says):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\n type: [\n")
    args = {
        "missing": [f"task={tmp_path / 'nowhere.yaml'}"],
        "with_suite": ["task=conf/tasks/synthetic_color.yaml", "suite=demo"],
        "bad_yaml": [f"task={bad}"],
    }[kind]
    proc = _eval(tmp_path, *args)
    detail = f"exit {proc.returncode}; stderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, detail
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().splitlines()[-1] == errors[0], detail
    assert says in errors[0], errors[0]
    assert not (tmp_path / "eval" / "suite.json").exists()
