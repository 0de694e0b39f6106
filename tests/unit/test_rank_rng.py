"""Every rank's RNG state is saved, and each rank resumes with its own (one process plays both ranks of a
2-rank run through a fake all_gather_object; tests/integration/test_distributed.py covers the real collective)."""

from __future__ import annotations

import logging

import open_clip
import torch

from bmca_clip.checkpoint import Checkpointer, load_checkpoint, restore_rank_rng, rng_state, save_checkpoint
from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.dist import DistInfo
from bmca_clip.train.components import Components
from bmca_clip.train.trainer import Trainer
from tests.helpers.config import compose_config


class _Loader:
    """Stands in for a TrainLoader: only its position is saved."""

    def __init__(self, rank: int):
        self.rank = rank

    def state_dict(self) -> dict:
        return {"rank": self.rank}


class _TwoRankGather:
    """all_gather_object of 2 ranks in one process: rank 1's contributions are recorded when it calls, and
    rank 0's calls (in the same order) receive them next to their own."""

    def __init__(self):
        self.rank1: list = []
        self.rank = 1

    def __call__(self, out: list, obj) -> None:
        if self.rank == 1:
            self.rank1.append(obj)
            out[:] = [None, obj]  # rank 1 writes nothing; what it would see of rank 0 does not matter
        else:
            out[:] = [obj, self.rank1.pop(0)]


def _trainer(tmp_path) -> Trainer:
    cfg = to_object(compose_config("pretrain", ["model=bmca-tiny"]), PretrainConfig)
    checkpointer = Checkpointer(tmp_path, every_steps=1, keep_last=2)
    model = open_clip.create_model("bmca-tiny", output_dict=True)
    return Trainer(cfg, DistInfo(), model, components=Components(checkpointer=checkpointer))


def test_rank_1_resumes_with_its_own_rng_not_rank_0s(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    gather = _TwoRankGather()
    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    # The ranks' random streams differ (each scores its own share of the eval tasks, say).
    torch.manual_seed(11)
    rank1 = torch.get_rng_state()
    trainer.dist = DistInfo(rank=1, world_size=2)
    assert trainer.save(_Loader(1)) is None  # only rank 0 writes
    torch.manual_seed(10)
    trainer.dist, gather.rank = DistInfo(rank=0, world_size=2), 0
    state = load_checkpoint(trainer.save(_Loader(0)))
    assert state["data"]["ranks"] == [{"rank": 0}, {"rank": 1}]

    torch.manual_seed(99)  # a fresh process of rank 1 after the restart
    restore_rank_rng(state["rng"], rank=1, world_size=2)
    assert torch.equal(torch.get_rng_state(), rank1)
    uninterrupted = torch.rand(8, generator=torch.Generator().set_state(rank1))
    assert torch.equal(torch.rand(8), uninterrupted)  # the dropout masks rank 1 would have drawn


def test_a_checkpoint_with_one_rng_state_still_loads_on_every_rank_with_a_warning(tmp_path, caplog):
    torch.manual_seed(5)
    old = rng_state()  # what checkpoints held before per-rank states
    path = save_checkpoint({"model": {}, "step": 3, "rng": old}, tmp_path, 3, keep_last=1)
    for rank in (0, 1):
        torch.manual_seed(99)
        restore_rank_rng(load_checkpoint(path)["rng"], rank=rank, world_size=2)
        assert torch.equal(torch.get_rng_state(), old["torch"])
    assert caplog.records[-1].levelno == logging.WARNING and "one RNG state" in caplog.text
