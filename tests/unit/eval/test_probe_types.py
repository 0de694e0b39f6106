"""The linear_probe and k_shot task types end to end: a task YAML with a train_split, scored through the
harness with a tiny CLIP, the train split's features served by the embedding cache on a second run, the
k-shot numbers the same for the same seeds, and a suite's protocols naming each variant apart."""

from __future__ import annotations

import pytest

from bmca_clip.eval.cache import CachingEncoder, EmbeddingCache
from bmca_clip.eval.encoders import ClipEncoder
from bmca_clip.eval.harness import evaluate_suite
from bmca_clip.eval.tasks import TaskError, load_task, suite_from_mapping
from tests.helpers.eval_fixtures import (
    COLOR_TASK_BODY,
    RETRIEVAL_TASK_BODY,
    make_color_task_data,
    tiny_clip,
    write_task_yaml,
)

TRAIN = "train_split: {file: train.csv, split: train}\n"


def _data(tmp_path):
    """colors/test.csv and colors/train.csv: 4 solid colours; the train split holds the same images in
    reverse order (other items for the cache, the same colours for the probe)."""
    make_color_task_data(tmp_path / "colors", per_class=4)
    header, *rows = (tmp_path / "colors" / "test.csv").read_text().splitlines()
    (tmp_path / "colors" / "train.csv").write_text("\n".join([header, *reversed(rows)]) + "\n")


class Counting:
    """An Encoder wrapper that counts image passes."""

    def __init__(self, inner):
        self.inner, self.amp_dtype, self.image_calls = inner, inner.amp_dtype, 0

    def images(self, loader):
        self.image_calls += 1
        return self.inner.images(loader)

    def texts(self, texts):
        return self.inner.texts(texts)

    def classifier(self, classnames, templates):
        return self.inner.classifier(classnames, templates)


def _run(task, tmp_path, cache_dir=None):
    model, preprocess, tokenizer = tiny_clip()
    counting = Counting(ClipEncoder(model, tokenizer, "cpu"))
    encoder = counting
    if cache_dir is not None:
        encoder = CachingEncoder(counting, EmbeddingCache(cache_dir), "tiny", "preprocess")
    (result,) = evaluate_suite(
        [task], model, preprocess, tokenizer, "cpu", tmp_path, batch_size=8, encoder=encoder
    )
    assert result.status == "ok", result.error
    return result, counting.image_calls


def test_a_linear_probe_learns_separable_colours_and_reuses_the_cache(tmp_path):
    _data(tmp_path)
    task = load_task(
        write_task_yaml(
            tmp_path, "colours", COLOR_TASK_BODY.replace("classification", "linear_probe") + TRAIN
        )
    )
    assert task.type == "linear_probe" and task.train_split.file == "train.csv"
    result, calls = _run(task, tmp_path, cache_dir=tmp_path / "cache")
    assert calls == 2  # the train split, then the test split
    assert result.n == 16 and result.chance == 0.25
    assert result.metrics["balanced_accuracy"] == result.metrics["accuracy"] == 1.0
    assert result.ci is not None and "l2=" in result.notes["probe"]
    assert result.items["metric"] == "balanced_accuracy" and result.items["n"] == 16  # for paired comparisons
    assert result.per_class["recall"] == [1.0] * 4 and result.per_class["support"] == [4] * 4  # per class too
    # a stored result is reused only for the same train split too (identity.py)
    assert result.data["train"]["fingerprint"] not in (None, result.data["fingerprint"])
    again, calls = _run(task, tmp_path, cache_dir=tmp_path / "cache")
    assert calls == 0 and again.metrics == result.metrics  # both splits' features came from the cache


def test_k_shot_reports_every_k_with_its_spread_and_repeats_exactly(tmp_path):
    _data(tmp_path)
    body = COLOR_TASK_BODY.replace("classification", "k_shot") + TRAIN + "shots: [2, 1]\ndraws: 3\n"
    task = load_task(write_task_yaml(tmp_path, "colours", body))
    assert task.shots == (1, 2) and task.draws == 3
    result, _ = _run(task, tmp_path)
    for k in (1, 2):
        main = f"balanced_accuracy@{k}shot"
        low, mean, high = (result.metrics[f"{main}{s}"] for s in ("_min", "", "_max"))
        assert 0.0 <= low <= mean <= high <= 1.0 and result.metrics[f"{main}_std"] >= 0.0
        assert f"accuracy@{k}shot" in result.metrics and f"accuracy@{k}shot_std" not in result.metrics
    assert result.metrics["balanced_accuracy"] == result.metrics["balanced_accuracy@2shot"]
    assert "k=2 over 3 draws" in result.notes["k_shot"]
    # the interval of the mean over draws (test items resampled, draws fixed), and the draws' predictions
    assert result.ci["low"] <= result.metrics["balanced_accuracy"] <= result.ci["high"]
    assert result.items["draws"] == 3 and result.items["n"] == 16
    again, _ = _run(task, tmp_path)
    assert again.metrics == result.metrics


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            COLOR_TASK_BODY.replace("classification", "linear_probe"),
            "key 'train_split': 'linear_probe' tasks need",
        ),
        (
            COLOR_TASK_BODY + "train_split: train.csv\n",
            "key 'train_split': expected a mapping of source keys",
        ),
        (COLOR_TASK_BODY + "train_split: {fil: train.csv}\n", "key 'train_split.fil': unknown key"),
        (COLOR_TASK_BODY + TRAIN + "shots: [0, 4]\n", "key 'shots': expected a positive integer, got 0"),
        (COLOR_TASK_BODY + TRAIN + "draws: two\n", "key 'draws': expected a positive integer"),
        (RETRIEVAL_TASK_BODY + TRAIN, "key 'train_split': not used by 'retrieval' tasks; remove it"),
    ],
)
def test_bad_probe_keys_fail_on_load_naming_the_key(tmp_path, body, message):
    with pytest.raises(TaskError, match=message):
        load_task(write_task_yaml(tmp_path, "colours", body))


def test_a_suite_asks_for_each_protocol_of_the_same_tasks(tmp_path):
    protocols = ["zero_shot", "linear_probe", "k_shot"]
    suite = suite_from_mapping(
        {"name": "s", "tasks": ["synthetic_color", "synthetic_retrieval"], "protocols": protocols}, "s"
    )
    assert [(t.name, t.type) for t in suite.tasks] == [
        ("synthetic_color", "classification"),
        ("synthetic_color@linear_probe", "linear_probe"),
        ("synthetic_color@k_shot", "k_shot"),
        ("synthetic_retrieval", "retrieval"),  # no train split: zero-shot only
    ]
    assert suite.protocols == tuple(protocols)
    assert [t.domain for t in suite.tasks[:3]] == ["synthetic", "synthetic@linear_probe", "synthetic@k_shot"]
    with pytest.raises(TaskError, match="key 'protocols': unknown value 'few_shot'"):
        suite_from_mapping({"name": "s", "tasks": ["synthetic_color"], "protocols": ["few_shot"]}, "s")
