"""eval.py's runner: several checkpoints in one comparison, WiSE-FT blends at several alphas, stored
results reused when their config is the same."""

from __future__ import annotations

import hashlib
import json
import logging
import re

import open_clip
import torch
from huggingface_hub.utils import _http

from bmca_clip.config import EvaluateConfig, to_object
from bmca_clip.eval import run as eval_run
from bmca_clip.model import ModelConfig, build_model
from tests.helpers.config import compose_config
from tests.helpers.eval_fixtures import (
    COLOR_NAMES,
    COLOR_TASK_BODY,
    make_color_task_data,
    write_csv,
    write_task_yaml,
)
from tests.helpers.eval_hub_repos import make_hub_repos
from tests.helpers.hub import FakeHub


def _evaluate(corpus, tmp_path, *overrides, cache_dir="cache"):
    base = ["model=bmca-tiny", f"data_root={corpus.parent}", f"output_dir={tmp_path / 'eval'}"]
    base.append(f"cache_dir={tmp_path / cache_dir}" if cache_dir else "cache_dir=null")
    return eval_run.run(to_object(compose_config("evaluate", [*base, *overrides]), EvaluateConfig))


def test_wise_ft_alphas_0_and_1_reproduce_base_and_tuned(corpus, tmp_path):
    torch.manual_seed(7)
    base = build_model(ModelConfig(name="bmca-tiny")).model.state_dict()
    torch.save(base, tmp_path / "base.pt")
    tuned = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
    torch.save({"model": tuned, "step": 5}, tmp_path / "tuned.pt")

    blended = _evaluate(
        corpus,
        tmp_path,
        f"model.pretrained={tmp_path / 'base.pt'}",
        f"checkpoint={tmp_path / 'tuned.pt'}",
        "model.wise_ft_alpha=[0.0,0.5,1.0]",
    )
    assert (tmp_path / "eval" / "summary.md").read_text().count("tuned-wise") >= 3
    plain = _evaluate(
        corpus,
        tmp_path,
        f"model.pretrained={tmp_path / 'base.pt'}",
        f"checkpoint=[null,{tmp_path / 'tuned.pt'}]",
    )
    labels = list(blended)
    assert labels == ["tuned-wise0", "tuned-wise0.5", "tuned-wise1"]
    (base_label, tuned_label) = plain
    metrics = {label: [r.metrics for r in results] for label, results in {**blended, **plain}.items()}
    assert metrics[labels[0]] == metrics[base_label]  # alpha 0 is the base model
    assert metrics[labels[2]] == metrics[tuned_label]  # alpha 1 is the tuned checkpoint


def test_a_rerun_reuses_stored_results_with_the_same_config(corpus, tmp_path, caplog, monkeypatch):
    calls = []
    original = open_clip.model.CLIP.encode_image
    monkeypatch.setattr(
        open_clip.model.CLIP, "encode_image", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    first = _evaluate(corpus, tmp_path, cache_dir=None)  # no embedding cache: only stored JSON can help
    stored = {p: p.read_text() for p in (tmp_path / "eval").glob("*/*.json")}
    assert len(stored) == 3 and calls
    calls.clear()

    with caplog.at_level(logging.INFO, logger="bmca_clip.eval.run"):
        second = _evaluate(corpus, tmp_path, cache_dir=None)

    assert calls == []
    assert caplog.text.count("cached result") == 3
    assert {p: p.read_text() for p in stored} == stored  # not rewritten
    assert [[(r.task, r.metrics, r.n) for r in rs] for rs in first.values()] == [
        [(r.task, r.metrics, r.n) for r in rs] for rs in second.values()
    ]
    assert (tmp_path / "eval" / "summary.png").is_file()

    # rerun=true scores every task again, whatever is stored.
    _evaluate(corpus, tmp_path, "rerun=true", cache_dir=None)
    assert calls


# --- stored results follow the data, not only the config (issue 10, item 1) ---


def _evaluate_suite_of(task_yaml, data_root, *overrides):
    """eval.py's run() on a suite of one task YAML (by path), without the embedding cache."""
    cfg = compose_config(
        "evaluate",
        ["model=bmca-tiny", f"data_root={data_root}", f"output_dir={data_root / 'eval'}", "cache_dir=null"]
        + list(overrides),
    )
    cfg = to_object(cfg, EvaluateConfig)
    cfg.suite = {"name": "stale", "tasks": [str(task_yaml)]}
    (results,) = eval_run.run(cfg).values()
    return results[0]


def _run_logged(caplog, data_root, task_yaml, *overrides):
    """(whether the task was scored rather than served from its stored JSON, the result)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bmca_clip.eval"):
        result = _evaluate_suite_of(task_yaml, data_root, *overrides)
    return "cached result" not in caplog.text, result


def _stored_record(data_root) -> dict:
    (path,) = (data_root / "eval").glob("*/*.json")
    return json.loads(path.read_text())


def test_a_relabelled_csv_is_scored_again_not_served_from_the_stored_json(tmp_path, caplog):
    make_color_task_data(tmp_path / "colors")
    path = write_task_yaml(tmp_path / "tasks", "colors", COLOR_TASK_BODY)
    assert _run_logged(caplog, tmp_path, path)[0]
    assert not _run_logged(caplog, tmp_path, path)[0]  # unchanged data: "cached result"
    before = _stored_record(tmp_path)

    # Relabel: the same image files under the same names, every label moved to the next class.
    table = tmp_path / "colors/test.csv"
    rows = [line.split(",") for line in table.read_text().split()[1:]]
    write_csv(table, ["image", "label"], [[image, (int(label) + 1) % 4] for image, label in rows])
    scored, relabelled = _run_logged(caplog, tmp_path, path)
    assert scored, caplog.text
    after = _stored_record(tmp_path)
    assert after["provenance"]["data"]["fingerprint"] != before["provenance"]["data"]["fingerprint"]
    assert after["config"]["data"] == after["provenance"]["data"]
    _, fresh = _run_logged(caplog, tmp_path, path, "rerun=true")
    assert (relabelled.metrics, relabelled.n) == (fresh.metrics, fresh.n)
    assert not _run_logged(caplog, tmp_path, path)[0]  # and now the relabelled result is the stored one


def test_a_hub_repo_whose_commit_moved_is_scored_again(tmp_path, caplog):
    repos = make_hub_repos(tmp_path / "repos")
    source = "  loader: hf_dataset\n  repo_id: org/skin\n  label_column: label\n  label_encoding: int\n"
    body = COLOR_TASK_BODY.split("source:")[0] + "source:\n" + source
    body += f"classes: {COLOR_NAMES}\n" + 'templates: ["a {} image."]\n'
    path = write_task_yaml(tmp_path / "tasks", "skin", body)
    with FakeHub() as hub, hub.use():
        first = hub.add_dataset("org/skin", repos["org/skin"][0])
        assert _run_logged(caplog, tmp_path, path)[0]
        assert not _run_logged(caplog, tmp_path, path)[0]  # same commit: "cached result"

        moved = hub.add_dataset("org/skin", repos["org/skin@refs/convert/parquet"][0])  # main moves on
        assert moved != first
        scored, result = _run_logged(caplog, tmp_path, path)
        assert scored and result.n == 3, caplog.text
        assert _stored_record(tmp_path)["provenance"]["data"]["hub_commit"] != first
        assert _stored_record(tmp_path)["provenance"]["data"]["hub_commit"] == moved
        assert _stored_record(tmp_path)["config"]["data"]["hub_commit"] == moved

        # The hub unreachable, the data in the local cache: which commit "main" is now is unknown, so the
        # stored result is not trusted; the task is scored again from the cache and the log says why.
        hub.stop()
        _http.close_session()
        scored, offline = _run_logged(caplog, tmp_path, path)
        assert scored and offline.status == "ok" and offline.n == 3
        assert "could not confirm" in caplog.text and "org/skin" in caplog.text
        assert "hub_commit" in offline.notes and "not confirmed" in offline.notes["data_identity"]


def test_results_stored_under_another_metrics_version_are_scored_again(tmp_path, caplog, monkeypatch):
    """A change to what a metric means (METRICS_VERSION) must not serve numbers computed the old way."""
    make_color_task_data(tmp_path / "colors")
    path = write_task_yaml(tmp_path / "tasks", "colors", COLOR_TASK_BODY)
    assert _run_logged(caplog, tmp_path, path)[0]
    assert not _run_logged(caplog, tmp_path, path)[0]
    monkeypatch.setattr(eval_run, "METRICS_VERSION", eval_run.METRICS_VERSION + 1)
    assert _run_logged(caplog, tmp_path, path)[0]
    assert _stored_record(tmp_path)["config"]["metrics_version"] == eval_run.METRICS_VERSION


# --- short, readable output folders per checkpoint (issue 12) ---


def _step_file(run_dir, state, step=300):
    path = run_dir / "checkpoints" / f"step_{step:08d}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": state, "step": step}, path)
    return path


def test_each_checkpoint_gets_a_short_stable_folder_and_the_records_keep_its_path(corpus, tmp_path, caplog):
    torch.manual_seed(7)
    base = build_model(ModelConfig(name="bmca-tiny")).model.state_dict()
    torch.save(base, tmp_path / "base.pt")
    tuned = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
    torch.save({"model": tuned, "step": 5}, tmp_path / "tuned.pt")
    one = _step_file(tmp_path / "a" / "demo", tuned)
    _step_file(tmp_path / "b" / "demo", tuned)  # same run name elsewhere: must not share a folder
    checkpoints = (
        f"checkpoint=[null,{tmp_path / 'a' / 'demo'},{tmp_path / 'b' / 'demo'},{tmp_path / 'tuned.pt'}]"
    )

    first = _evaluate(corpus, tmp_path, checkpoints, cache_dir=None)
    labels = list(first)
    assert labels[0] == "untrained" and labels[3] == "tuned", labels
    assert all(re.fullmatch(r"demo-step300-[0-9a-f]{8}", label) for label in labels[1:3]), labels
    assert labels[1] != labels[2]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir() if p.is_dir()) == sorted(labels)
    record = json.loads((tmp_path / "eval" / labels[1] / "synthetic_color.json").read_text())
    assert record["model_label"] == labels[1]
    assert record["provenance"]["checkpoint"] == str(one)  # the whole path and its hash stay in the record
    assert record["provenance"]["checkpoint_sha256"] == hashlib.sha256(one.read_bytes()).hexdigest()
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert all(label in summary for label in labels) and str(tmp_path) not in summary

    # The same checkpoint alone: no collision, so the run name and step; again: the same folder, reused.
    alone = _evaluate(corpus, tmp_path, f"checkpoint={one}", "model.pretrained=" + str(tmp_path / "base.pt"))
    assert list(alone) == ["demo-step300"]
    with caplog.at_level(logging.INFO, logger="bmca_clip.eval.run"):
        again = _evaluate(corpus, tmp_path, f"checkpoint={one}", f"model.pretrained={tmp_path / 'base.pt'}")
    assert list(again) == ["demo-step300"] and caplog.text.count("cached result") == 3
    # Another run named demo, evaluated on its own into the same output_dir, does not overwrite those.
    stored = {p: p.read_bytes() for p in (tmp_path / "eval" / "demo-step300").glob("*.json")}
    other = _evaluate(corpus, tmp_path, f"checkpoint={tmp_path / 'b' / 'demo'}")
    assert list(other) == [labels[2]]  # the name it had beside the first one: its path's hash
    assert {p: p.read_bytes() for p in stored} == stored

    blended = _evaluate(
        corpus,
        tmp_path,
        f"model.pretrained={tmp_path / 'base.pt'}",
        f"checkpoint=[null,{tmp_path / 'a' / 'demo'}]",
        "model.wise_ft_alpha=[0.5,1.0]",
        "model.wise_ft_any_base=true",
    )
    assert list(blended) == ["pretrained-base", "demo-step300-wise0.5", "demo-step300-wise1"]


def test_short_names_of_every_kind_of_model(tmp_path):
    from bmca_clip.eval.labels import model_labels

    def names(*checkpoints, pretrained=None):
        return model_labels([c and tmp_path / c for c in checkpoints], "ViT-B-16", pretrained)

    assert names(None, pretrained="hf-hub:org/BiomedCLIP") == ["pretrained-BiomedCLIP"]
    assert names(None, pretrained="laion2b_s34b_b88k") == ["pretrained-laion2b_s34b_b88k"]
    assert names(None, pretrained="/weights/BMC CLIP.pt") == ["pretrained-BMC_CLIP"]
    # A step file inside checkpoints/ or in the run folder itself; a file of any other name: its stem.
    assert names("runs/x/checkpoints/step_00000000.pt", "runs/y/step_00012000.pt", "out/model.pt") == [
        "x-step0",
        "y-step12000",
        "model",
    ]
    twice = names("a/model.pt", "b/model.pt", "a/model.pt")
    assert twice[0] == twice[2] != twice[1] and all(n.startswith("model-") for n in twice)
    assert names("b/model.pt", "a/model.pt") == twice[1::-1]  # the order of the list does not matter
