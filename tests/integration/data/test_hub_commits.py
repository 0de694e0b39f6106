"""A resume onto a hub repo whose branch has moved: refused naming both commits unless the old commit is
pinned (which continues the stream exactly), and train.py's resume_data=reset passing each move."""

from __future__ import annotations

import open_clip
import pytest

from bmca_clip.checkpoint import list_checkpoints, load_checkpoint
from bmca_clip.config import DataConfig, PretrainConfig, to_object
from bmca_clip.data.decode import PilTransform
from bmca_clip.data.loader import build_train_loader
from bmca_clip.errors import DataError
from bmca_clip.train import run as train_mod
from tests.helpers.biomedica_hub import REPO_ID, write_repo
from tests.helpers.biomedica_hub import hub_source as _source
from tests.helpers.biomedica_hub import stream_config as _cfg
from tests.helpers.config import compose_config


def test_a_resume_onto_another_hub_commit_is_refused_unless_pinned(hub, tmp_path):
    """The checkpoint records each source's commit; when the branch has moved, the resume names both
    commits and the two ways on, and pinning the old commit continues the stream exactly."""
    write_repo(tmp_path / "v1", {f"commercial/{i:06d}.tar": 20 for i in range(2)})
    old = hub.add_dataset(REPO_ID, tmp_path / "v1", revision="v1")
    hub.add_dataset(REPO_ID, tmp_path / "v1")  # main at the same commit
    cfg = _cfg(tmp_path, {"commercial": _source()})
    full, _ = _read_state(cfg, 4)
    first, state = _read_state(cfg, 2)
    assert state["commits"] == {"commercial": old}

    write_repo(tmp_path / "v2", {f"commercial/{i:06d}.tar": 20 for i in range(3)})
    new = hub.add_dataset(REPO_ID, tmp_path / "v2")  # main moves on
    assert new != old
    with pytest.raises(DataError) as err:
        _read_state(cfg, 1, state=state)
    message = str(err.value)
    assert "\n" not in message and "data.sources.commercial" in message and old in message and new in message
    assert "resume_data=reset" in message and f"data.sources.commercial.revision={old}" in message

    pinned = _cfg(tmp_path, {"commercial": _source(revision=old)})
    rest, _ = _read_state(pinned, 2, state=state)
    assert first + rest == full


def _read_state(cfg: DataConfig, n_batches: int, state=None):
    """The keys of n batches of 10, and the loader's state after them."""
    loader = build_train_loader(
        cfg,
        PilTransform(open_clip.image_transform(32, is_train=True)),
        open_clip.get_tokenizer("bmca-tiny"),
        batch_size=10,
        seed=0,
        state=state,
    )
    keys = []
    for batch in loader:
        keys += batch["keys"]
        if len(keys) == n_batches * 10:
            return keys, loader.state_dict()


def test_resume_data_reset_passes_a_moved_commit_each_time_it_is_asked(hub, tmp_path, corpus):
    """train.py: a moved commit refuses a plain resume; resume_data=reset starts a fresh stream on it, and
    the same reset command line (what a requeued job repeats) also passes the next move."""

    def train(steps: int, *extra: str) -> dict:
        values = {
            "data": "biomedica",
            "model": "bmca-tiny",
            "train.steps": steps,
            "train.batch_size": 8,
            "train.device": "cpu",
            "data.num_workers": 0,
            "data.shuffle_buffer": 16,
            "data.shuffle_initial": 4,
            "data.cache_dir": str(tmp_path / "cache"),
            "logger.progress_bar": "false",
            "output_dir": str(tmp_path / "run"),
        }
        overrides = [f"{k}={v}" for k, v in values.items()] + list(extra)
        train_mod.run(to_object(compose_config("pretrain", overrides), PretrainConfig))
        return load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])

    hub.add_dataset(REPO_ID, corpus / "train", commit="1" * 40)
    assert set(train(2)["data"]["ranks"][0]["commits"].values()) == {"1" * 40}
    hub.add_dataset(REPO_ID, corpus / "train", commit="2" * 40)
    with pytest.raises(DataError, match="resume_data=reset"):
        train(4, "resume=latest")
    state = train(4, "resume=latest", "resume_data=reset")
    assert state["step"] == 4 and set(state["data"]["ranks"][0]["commits"].values()) == {"2" * 40}
    hub.add_dataset(REPO_ID, corpus / "train", commit="3" * 40)
    state = train(6, "resume=latest", "resume_data=reset")
    assert state["step"] == 6 and set(state["data"]["ranks"][0]["commits"].values()) == {"3" * 40}
