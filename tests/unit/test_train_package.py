"""The training code is one package, bmca_clip/train/ (issue 13, items 4, 5 and 8): the data loader does
not import the training layer (the signals it shields its workers from live in the leaf bmca_clip.signals),
importing a leaf of the package does not load the run, and each module stays small enough to read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "bmca_clip" / "train"


def _loaded_after(module: str, prefix: str) -> list[str]:
    """The modules under `prefix` in sys.modules after `import module` in a fresh interpreter."""
    code = (
        f"import sys, {module}; print(' '.join(sorted(n for n in sys.modules if n.startswith({prefix!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_data_loader_imports_no_training_module():
    """Before: data/pipeline.py (now data/loader.py) imported bmca_clip.preempt (the preemption handler)."""
    loaded = _loaded_after("bmca_clip.data.loader", "bmca_clip.")
    training = {"bmca_clip.preempt", "bmca_clip.trainer", "bmca_clip.tracking", "bmca_clip.checkpoint"}
    assert not [m for m in loaded if m in training or m.startswith("bmca_clip.train")]
    assert "bmca_clip.signals" in loaded


@pytest.mark.parametrize(
    "leaf", ["bmca_clip.train.rundir", "bmca_clip.train.preemption", "bmca_clip.tracking"]
)
def test_a_leaf_of_the_training_package_does_not_load_the_run(leaf):
    """train/__init__.py re-exports nothing, so the metric logger (which writes through rundir) and the
    preemption handler can be imported without the Trainer, the model or the data pipeline."""
    loaded = _loaded_after(leaf, "bmca_clip.")
    assert not {"bmca_clip.train.run", "bmca_clip.train.trainer", "bmca_clip.model"} & set(loaded)
