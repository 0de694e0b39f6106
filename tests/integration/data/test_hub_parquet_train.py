"""train.py end to end on data=mixed_roco (BIOMEDICA's three subsets mixed with a parquet hub dataset,
both served by the test hub): a run that loses its last checkpoint and resumes ends with the weights and
data position of the uninterrupted run."""

from __future__ import annotations

import torch

from bmca_clip.checkpoint import list_checkpoints, load_checkpoint
from bmca_clip.config import PretrainConfig, to_object
from bmca_clip.train import run as train_mod
from tests.helpers.biomedica_hub import REPO_ID
from tests.helpers.config import compose_config, tiny_train_overrides
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
