"""The embedding cache: keys that change when anything that makes a tensor changes, and a second run of a
suite (into another output_dir) that neither runs the encoders nor changes a number."""

from __future__ import annotations

import json
import logging

import open_clip
import pytest
import torch

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.eval import run as eval_run
from bmca_clip.eval.cache import EmbeddingCache, dataset_fingerprint, describe_transform, state_dict_sha256
from bmca_clip.eval.datasets import build_dataset
from bmca_clip.eval.tasks import load_task
from tests.helpers.config import compose_config
from tests.helpers.eval_fixtures import (
    COLOR_TASK_BODY,
    make_color_task_data,
    tiny_clip,
    write_csv,
    write_image,
    write_task_yaml,
)


@pytest.fixture
def encoder_calls(monkeypatch):
    """Counts of CLIP.encode_image and CLIP.encode_text calls (every open_clip CLIP in the process)."""
    calls = {"image": 0, "text": 0}
    for kind in calls:
        original = getattr(open_clip.model.CLIP, f"encode_{kind}")

        def counting(self, *args, _original=original, _kind=kind, **kwargs):
            calls[_kind] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(open_clip.model.CLIP, f"encode_{kind}", counting)
    return calls


def evaluate(corpus, out_dir, *overrides):
    base = ["model=bmca-tiny", f"data_root={corpus.parent}", f"output_dir={out_dir}"]
    return eval_run.run(to_object(compose_config("evaluate", [*base, *overrides]), EvaluateConfig))


def _stored(folder):
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json"))}


def test_second_run_elsewhere_does_not_encode_again_and_gives_the_same_numbers(
    corpus, tmp_path, encoder_calls
):
    cache = f"cache_dir={tmp_path / 'cache'}"
    first = evaluate(corpus, tmp_path / "first", cache)
    assert encoder_calls["image"] > 0 and encoder_calls["text"] > 0
    encoder_calls.update(image=0, text=0)

    second = evaluate(corpus, tmp_path / "second", cache)

    assert encoder_calls == {"image": 0, "text": 0}
    assert [[(r.task, r.status, r.metrics) for r in rs] for rs in first.values()] == [
        [(r.task, r.status, r.metrics) for r in rs] for rs in second.values()
    ]
    one, two = _stored(tmp_path / "first"), _stored(tmp_path / "second")
    assert len(one) == 3 and all(r["status"] == "ok" for r in one.values())
    for name in one:
        assert (one[name]["metrics"], one[name]["ci"]) == (two[name]["metrics"], two[name]["ci"])
        assert one[name]["config_hash"] == two[name]["config_hash"]
    kinds = {p.parent.name for p in (tmp_path / "cache" / "embeddings").glob("*/*.pt")}
    assert kinds == {"images", "classifiers", "texts"}


def test_cache_computes_once_per_key_and_recovers_from_a_broken_file(tmp_path, caplog):
    cache, calls = EmbeddingCache(tmp_path), []

    def compute():
        calls.append(1)
        return torch.arange(6.0).view(2, 3), torch.tensor([0, 1])

    parts = {"model": "m", "dataset": "d"}
    first = cache.get_or_compute("images", parts, compute)
    again = cache.get_or_compute("images", parts, compute)
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    cache.get_or_compute("images", {**parts, "dataset": "other"}, compute)
    assert len(calls) == 2
    cache.path("images", parts).write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="bmca_clip.eval.cache"):
        cache.get_or_compute("images", parts, compute)
    assert len(calls) == 3 and "cannot read" in caplog.text
    assert cache.path("images", parts).parent == tmp_path / "embeddings" / "images"


def test_model_key_follows_every_weight_and_the_name():
    model, preprocess, _ = tiny_clip()
    key = state_dict_sha256(model, "tiny")
    assert state_dict_sha256(tiny_clip()[0], "tiny") == key  # same weights, another object
    assert state_dict_sha256(model, "other") != key
    with torch.no_grad():
        model.visual.proj[0, 0] += 1e-6
    assert state_dict_sha256(model, "tiny") != key
    description = describe_transform(preprocess)
    assert "Normalize" in description and "0x" not in description  # stable across processes


def test_dataset_fingerprint_changes_with_labels_and_files(tmp_path):
    make_color_task_data(tmp_path / "colors")
    task = load_task(write_task_yaml(tmp_path / "tasks", "colors", COLOR_TASK_BODY))
    fingerprint = dataset_fingerprint(build_dataset(task, tmp_path, lambda img: img))
    assert fingerprint == dataset_fingerprint(build_dataset(task, tmp_path, lambda img: img))
    table = (tmp_path / "colors" / "test.csv").read_text()
    write_csv(tmp_path / "colors" / "test.csv", ["image", "label"], [["images/0_0.png", 1]])
    relabelled = dataset_fingerprint(build_dataset(task, tmp_path, lambda img: img))
    (tmp_path / "colors" / "test.csv").write_text(table)
    write_image(tmp_path / "colors" / "images" / "0_0.png", (1, 2, 3), size=48)  # same name, new image
    redrawn = dataset_fingerprint(build_dataset(task, tmp_path, lambda img: img))
    assert len({fingerprint, relabelled, redrawn}) == 3


def test_a_dataset_may_bring_its_own_fingerprint_and_an_unknown_one_is_not_cached():
    class Own(torch.utils.data.Dataset):
        fingerprint = "hub:org/repo@abc123:test"

    assert dataset_fingerprint(Own()) == "hub:org/repo@abc123:test"
    assert dataset_fingerprint(torch.utils.data.TensorDataset(torch.zeros(2))) is None
