"""The hub side every loader shares (bmca_clip/eval/loaders/hub.py) and the harness over all of them: every
task type end to end on stand-in repos, a broken task that does not stop the suite, and offline runs whose
error prints the `hf download` command that fills the cache."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http

from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.harness import evaluate_suite, evaluate_task
from bmca_clip.eval.tasks import TaskError
from tests.helpers.eval_hub_repos import (
    CHOLEC_MAP,
    UBENCH_ROWS,
    make_hub_repos,
)
from tests.helpers.eval_loaders import COLOR_CLASSES, PROMPTS, SKIN, UBENCH, task, to_tensor
from tests.helpers.hub import FakeHub


def test_every_type_end_to_end_and_a_broken_task_does_not_stop_the_suite(hub, tmp_path, clip):
    model, preprocess, tokenizer = clip
    mask = "  loader: hf_dataset\n  repo_id: org/cholec\n  label_column: label\n"
    mask += f"  label_map: {CHOLEC_MAP}\n"
    tasks = [
        task(tmp_path, "broken", SKIN + "  label_column: diagnosis\n"),
        task(tmp_path, "skin", SKIN + "  label_column: label\n", COLOR_CLASSES + "n_expected: 100\n"),
        task(
            tmp_path,
            "mc",
            UBENCH + "  questions_column: questions\n  question: modality\n",
            "",
            "multiple_choice",
        ),
        task(tmp_path, "ml", mask, f"classes: {list(CHOLEC_MAP.values())}\n" + PROMPTS, "multilabel"),
        task(tmp_path, "pairs", SKIN + "  caption_column: dx\n", "", "retrieval"),
    ]
    results = evaluate_suite(tasks, model, preprocess, tokenizer, "cpu", tmp_path, batch_size=4)
    broken, *rest = results
    assert broken.status == "failed" and "task 'broken'" in broken.error
    assert (
        "org/skin@" in broken.error
        and "no column(s) ['diagnosis']" in broken.error
        and "'dx'" in broken.error
    )
    for result in rest:
        assert result.status == "ok", result.error
        values = [v for v in result.metrics.values() if v is not None]
        assert values and all(0.0 <= v <= 1.0 for v in values)
    skin, mc, ml, pairs = rest
    assert skin.notes["n_expected"] == "loaded 8 items; the task expects 100"
    assert (
        mc.n == 6
        and set(mc.metrics) == {"accuracy", "balanced_accuracy"}
        and mc.chance == pytest.approx(0.25)
    )
    assert set(ml.metrics) == {"mAP"} and "blood" in ml.notes["mAP"]
    assert pairs.n == 8


def test_offline_without_a_cache_gives_the_download_command(tmp_path, clip, monkeypatch):
    model, preprocess, tokenizer = clip
    nct = '  loader: hf_parquet\n  repo_id: org/nct\n  data_files: ["data/CRC_VAL_HE_7K-*.parquet"]\n'
    nct += "  label_column: label\n"
    nct_task = task(tmp_path, "nct", nct, f"classes: {[f'c{i}' for i in range(9)]}\n" + PROMPTS)
    repos = make_hub_repos(tmp_path / "repos")
    with FakeHub() as server, server.use():
        server.add_dataset("org/nct", repos["org/nct"][0])
        assert build_dataset(nct_task, tmp_path, to_tensor).labels == [0, 8, 4, 5, 1]
        server.stop()
        _http.close_session()  # no kept-alive connection to the stopped server
        assert build_dataset(nct_task, tmp_path, to_tensor).labels == [0, 8, 4, 5, 1]  # from the cache
        skin = task(tmp_path, "skin", SKIN + "  label_column: label\n")
        result = evaluate_task(skin, model, preprocess, tokenizer, "cpu", tmp_path)
        cache = hf_constants.HF_HUB_CACHE
        assert result.status == "failed" and "task 'skin'" in result.error
        assert "hf download org/skin --repo-type dataset --revision main" in result.error
        assert f"--cache-dir {cache}" in result.error and "not in the cache" in result.error
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        result = evaluate_task(skin, model, preprocess, tokenizer, "cpu", tmp_path)
        assert result.status == "failed" and "hf download org/skin" in result.error


def test_the_printed_command_fills_the_cache_for_an_offline_run(hub, tmp_path, monkeypatch):
    ubench = task(
        tmp_path,
        "mc",
        UBENCH + "  questions_column: questions\n  question: modality\n",
        "",
        "multiple_choice",
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskError) as info:
        build_dataset(ubench, tmp_path, to_tensor)
    command = next(
        line.strip() for line in str(info.value).splitlines() if line.strip().startswith("hf download")
    )
    hf = Path(sys.executable).with_name("hf")  # the CLI huggingface_hub installs beside this python
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}  # HF_ENDPOINT points at the FakeHub (hub.use())
    subprocess.run([str(hf), *shlex.split(command)[1:]], env=env, check=True, capture_output=True)
    dataset = build_dataset(ubench, tmp_path, to_tensor)  # still offline: read from the cache
    assert dataset.answers == [row[3] for row in UBENCH_ROWS]
