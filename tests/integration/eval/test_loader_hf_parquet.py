"""The hf_parquet loader (bmca_clip/eval/loaders/hf_parquet.py) reads only the shards its data_files globs
name, from a stand-in repo served by FakeHub."""

from __future__ import annotations

from bmca_clip.eval.datasets import build_dataset
from tests.helpers.eval_loaders import PROMPTS, task, to_tensor


def test_hf_parquet_reads_only_the_data_files_globs(hub, tmp_path):
    source = '  loader: hf_parquet\n  repo_id: org/nct\n  data_files: ["data/CRC_VAL_HE_7K-*.parquet"]\n'
    source += "  label_column: label\n"
    rest = f"classes: {[f'c{i}' for i in range(9)]}\n" + PROMPTS  # the stand-in's ClassLabel names
    dataset = build_dataset(task(tmp_path, "nct", source, rest), tmp_path, to_tensor)
    assert dataset.labels == [0, 8, 4, 5, 1]  # both shards in order, not the 100K subset nor the script
