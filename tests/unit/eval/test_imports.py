"""What importing a tool loads: the JSON-to-table merge needs neither torch nor pyarrow, and the eval
runner does not load the training run (issue 13). Each check runs in a fresh interpreter, since this
test process has imported everything already."""

import subprocess
import sys

import pytest

from tests.helpers.config import REPO


def _loaded_after(module: str, names: list[str]) -> list[str]:
    """Which of names are in sys.modules after `import module` in a fresh interpreter run from the repo."""
    code = f"import sys, {module}; print(' '.join(n for n in {names!r} if n in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.parametrize(
    # bmca_clip.cli: merge's main() imports it, and it catches errors.BmcaError instead of importing the
    # trainer, the checkpoint code and the data pipeline for their error classes
    "module",
    ["bmca_clip.eval.merge", "bmca_clip.eval.records", "bmca_clip.eval.summary", "bmca_clip.cli"],
)
def test_merge_and_the_result_files_import_neither_torch_nor_pyarrow(module):
    assert _loaded_after(module, ["torch", "pyarrow", "open_clip"]) == []


@pytest.mark.parametrize("module", ["bmca_clip.eval.run", "bmca_clip.wise_ft"])
def test_the_eval_runner_does_not_import_the_training_run(module):
    assert (
        _loaded_after(
            module,
            ["bmca_clip.train", "bmca_clip.train.trainer", "bmca_clip.data.loader", "bmca_clip.data.stream"],
        )
        == []
    )
