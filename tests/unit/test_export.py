"""Export to open_clip's hub format: an exact round trip through local-dir:, a model card, a mocked upload."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import yaml
from PIL import Image

import bmca_clip.export as export_module
from bmca_clip.checkpoint import CheckpointError
from bmca_clip.export import export, main
from bmca_clip.model import build_model
from bmca_clip.model_card import model_card
from bmca_clip.wise_ft import trained_model_config

CONFIG = {
    "model": {"name": "bmca-tiny", "pretrained": None, "cache_dir": None, "force_image_size": None},
    "data": {"sources": {"commercial": {"repo_id": "BIOMEDICA/biomedica_webdataset_24M", "weight": 1.0}}},
    "train": {"steps": 6, "batch_size": 16},
}


def write_checkpoint(path: Path, config: dict):
    torch.manual_seed(3)
    bundle = build_model(trained_model_config(config))
    torch.save({"model": bundle.model.state_dict(), "step": 6, "samples_seen": 96, "config": config}, path)
    return path, bundle


@pytest.fixture
def trained(tmp_path):
    """A bmca-tiny checkpoint in our format and the model it holds."""
    return write_checkpoint(tmp_path / "step_00000006.pt", CONFIG)


def write_result(folder: Path, task: str, value: float | None, status: str = "ok") -> None:
    record = {
        "schema_version": 1,
        "task": task,
        "type": "classification",
        "domain": "pathology",
        "status": status,
        "main_metric": "acc1",
        "metrics": {"acc1": value},
        "chance": 0.5,
        "error": None if status == "ok" else "dataset missing",
    }
    (folder / f"{task}.json").write_text(json.dumps(record))


@pytest.mark.parametrize("model_options", [{}, {"force_image_size": 48, "init_logit_bias": -10.0}])
def test_round_trip_through_local_dir_gives_identical_features(model_options, tmp_path):
    config = {**CONFIG, "model": {**CONFIG["model"], **model_options}}
    path, bundle = write_checkpoint(tmp_path / "step_00000006.pt", config)
    out = export(str(path), tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "README.md",
    }
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval(), bundle.model.eval()
    image = Image.fromarray((torch.rand(40, 48, 3) * 255).to(torch.uint8).numpy())
    pixels = preprocess(image).unsqueeze(0)
    assert torch.equal(pixels, bundle.preprocess_eval(image).unsqueeze(0))
    texts = ["an H&E stain of colon adenocarcinoma", "a chest x-ray"]
    tokens = tokenizer(texts)
    assert torch.equal(tokens, bundle.tokenizer(texts))
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), bundle.model.encode_image(pixels))
        assert torch.equal(model.encode_text(tokens), bundle.model.encode_text(tokens))


def test_model_card_holds_metadata_config_and_results(trained, tmp_path):
    path, _ = trained
    results = tmp_path / "results"
    results.mkdir()
    write_result(results, "pcam", 0.61)
    write_result(results, "lc25000_lung", None, status="failed")
    (results / "notes.json").write_text('{"not": "a task result"}')
    card = (export(str(path), tmp_path / "export", results_dir=results) / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "open_clip"
    assert meta["pipeline_tag"] == "zero-shot-image-classification"
    assert meta["tags"] == ["clip", "biomedical", "zero-shot-image-classification"]
    assert meta["datasets"] == ["BIOMEDICA/biomedica_webdataset_24M"] and "license" in meta
    assert "Steps: 6" in body and "Samples seen: 96" in body and "`bmca-tiny`" in body
    assert yaml.safe_load(body.split("```yaml\n")[1].split("```")[0]) == CONFIG
    rows = {line.split("|")[1].strip(): line for line in body.splitlines() if line.startswith("| ")}
    assert "61.00" in rows["pcam"] and "failed" in rows["lc25000_lung"] and "notes" not in rows


def test_push_creates_the_repo_and_uploads_the_folder(trained, tmp_path, monkeypatch):
    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return type("Commit", (), {"commit_url": "https://hub.example/commit/1"})()

    monkeypatch.setattr(export_module, "HfApi", RecordingApi)
    out = export(str(trained[0]), tmp_path / "export", push_to_hub="bmca/tiny-test")
    assert calls[0] == (
        "create_repo",
        "bmca/tiny-test",
        {"repo_type": "model", "private": True, "exist_ok": True},
    )
    assert calls[1][0] == "upload_folder"
    assert calls[1][1]["repo_id"] == "bmca/tiny-test" and Path(calls[1][1]["folder_path"]) == out
    assert 'create_model_and_transforms("hf-hub:bmca/tiny-test")' in (out / "README.md").read_text()


def test_checkpoint_without_config_is_rejected(tmp_path):
    torch.save({"model": {}, "step": 0}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare.pt has no config.model.name"):
        export(str(tmp_path / "bare.pt"), tmp_path / "export")


def test_cli_exports_and_bad_arguments_exit_2(trained, tmp_path, capsys):
    main([f"checkpoint={trained[0]}", f"out={tmp_path / 'cli'}"])
    assert "open_clip_model.safetensors" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([f"checkpoint={trained[0]}", f"out={tmp_path / 'cli'}", f"results={tmp_path / 'none'}"])
    assert exit_info.value.code == 2 and "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([f"checkpoint={trained[0]}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: missing out=; allowed keys: checkpoint, out, results")


def test_model_card_says_which_steps_ran_with_which_settings():
    """A run resumed with a new lr and more steps: the card's config is the final one, so the card also
    lists what changed at each resume (the checkpoint's config_history)."""
    history = [
        {"step": 0, "config": CONFIG, "changed": {}, "resume_data": "exact"},
        {"step": 3, "config": CONFIG, "changed": {}, "resume_data": "exact"},  # a plain requeue: not listed
        {"step": 6, "config": CONFIG, "changed": {"optim.lr": [0.001, 1e-06], "train.steps": [6, 12]}},
        {"step": 9, "config": CONFIG, "changed": {"train.seed": [0, 1]}, "resume_data": "reset"},
    ]
    card = model_card({"config": CONFIG, "step": 12, "config_history": history}, "org/model")
    section = card.split("## Resumed with changed settings")[1].split("##")[0]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert lines == [
        "- from step 6: `optim.lr` 0.001 -> 1e-06, `train.steps` 6 -> 12",
        "- from step 9: `train.seed` 0 -> 1; fresh data stream (resume_data=reset)",
    ]
    assert "Resumed with" not in model_card(
        {"config": CONFIG, "step": 12, "config_history": history[:2]}, "x"
    )


def eval_output(root: Path, labels_and_shas: dict[str, str | None]) -> Path:
    """An eval output_dir as eval.py writes it: <root>/<model label>/<task>.json, each record naming the
    SHA-256 of the checkpoint it scored (config.model.checkpoint_sha256), plus the summary files."""
    for label, sha in labels_and_shas.items():
        (root / label).mkdir(parents=True)
        write_result(root / label, "pcam", 0.61 if sha else 0.37)
        record = json.loads((root / label / "pcam.json").read_text())
        record["config"] = {"task": "pcam", "model": {"name": "bmca-tiny", "checkpoint_sha256": sha}}
        (root / label / "pcam.json").write_text(json.dumps(record))
    (root / "suite.json").write_text(
        json.dumps({"suite": "demo", "tasks": [], "models": list(labels_and_shas)})
    )
    return root


def test_results_may_be_the_eval_folder_its_model_is_found_by_checkpoint_hash(trained, tmp_path):
    path, _ = trained
    from bmca_clip.eval.report import sha256_file

    results = eval_output(tmp_path / "eval" / "demo", {"untrained": None, "runs_demo": sha256_file(path)})
    card = (export(str(path), tmp_path / "export", results_dir=results) / "README.md").read_text()
    assert "61.00" in card and "37.00" not in card


def test_results_eval_folder_with_one_model_or_an_ambiguous_one(trained, tmp_path, capsys):
    path, _ = trained
    one = eval_output(tmp_path / "one", {"some_label": None})
    card = (export(str(path), tmp_path / "export", results_dir=one) / "README.md").read_text()
    assert "37.00" in card
    two = eval_output(tmp_path / "two", {"model_a": "0" * 64, "model_b": None})
    with pytest.raises(SystemExit) as exit_info:
        main([f"checkpoint={path}", f"out={tmp_path / 'cli'}", f"results={two}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"results={two}: none of them scored {path}" in err[0]
    assert "per-model folders with task results: model_a, model_b; pass results=<one of them>" in err[0]
