"""BiomedCLIP end to end, offline: a tiny model of its exact shape (tests/helpers/tiny_biomedclip.py) served
by the fake hub as the open_clip repo and the BERT repo it names, through the public entry points as
subprocesses (HF_ENDPOINT at the fake hub, HF_HOME in tmp): train -> stop and resume (equal to the
uninterrupted run: the BERT tower's dropout draws from the restored RNG) -> eval with its own tokenizer and
preprocessing -> WiSE-FT with the BiomedCLIP weights as the base -> export -> reload through local-dir: and
hf-hub: with the same tokens and embeddings."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bmca_clip.checkpoint import load_checkpoint
from bmca_clip.config import ModelConfig
from bmca_clip.model import build_model
from tests.helpers.config import REPO, tiny_train_overrides
from tests.helpers.numeric import assert_close_scaled
from tests.helpers.tiny_biomedclip import BERT_REPO, CONTEXT, NAME, OPEN_CLIP_REPO, hub_with_tiny_biomedclip

pytestmark = pytest.mark.slow
CAPTIONS = ["this is an image of lung adenocarcinoma", "a photo of benign colon tissue", "chest x ray"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with hub_with_tiny_biomedclip(tmp_path_factory.mktemp("hub")) as hub:
        yield hub


def _run(hub, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=hub.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _train(hub, corpus, out, **extra) -> None:
    # A constant schedule: the stopped run's nominal length does not change its learning rates.
    values = {
        "model.name": NAME,
        "train.batch_size": 8,
        "optim.schedule": "constant",
        "checkpoint.every_steps": 2,
    }
    overrides = tiny_train_overrides(corpus, out, **values, **extra)
    _run(hub, "train.py", "model=biomedclip", *overrides[1:])  # [0] is model=bmca-tiny


@pytest.fixture(scope="module")
def runs(hub, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _train(hub, corpus, root / "straight", **{"train.steps": 4})
    _train(hub, corpus, root / "stopped", **{"train.steps": 2})
    _train(hub, corpus, root / "stopped", **{"train.steps": 4, "resume": "latest"})
    return root


def test_resumed_run_equals_the_uninterrupted_one(runs):
    a = load_checkpoint(runs / "stopped" / "checkpoints" / "step_00000004.pt")
    b = load_checkpoint(runs / "straight" / "checkpoints" / "step_00000004.pt")
    assert b["config"]["model"]["name"] == NAME
    assert any(k.startswith("text.transformer.encoder.layer.") for k in b["model"])  # the BERT tower trained
    start = load_checkpoint(runs / "straight" / "checkpoints" / "step_00000002.pt")["model"]
    assert not torch.equal(start["text.proj.0.weight"], b["model"]["text.proj.0.weight"])
    different = [k for k in b["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def test_eval_scores_biomedclip_and_the_trained_run(hub, runs, corpus, tmp_path):
    out = tmp_path / "eval"
    args = [
        "suite=demo",
        "model=biomedclip",
        f"model.name={NAME}",
        f"data_root={corpus.parent}",
        "device=cpu",
    ]
    args += ["num_workers=0", "cache_dir=null", "batch_size=16", f"output_dir={out}"]
    _run(hub, "eval.py", *args, f"checkpoint=[null,{runs / 'straight'}]")
    assert (out / "summary.md").exists()
    assert len(list(out.rglob("*.json"))) >= 6  # three tasks for each of the two models


def test_wise_ft_with_biomedclip_as_the_base(hub, runs, tmp_path):
    tuned = runs / "straight" / "checkpoints" / "step_00000004.pt"
    merged = tmp_path / "wise.pt"
    _run(hub, "-m", "bmca_clip.wise_ft", f"base={NAME}", f"tuned={tuned}", "alpha=0.5", f"out={merged}")
    with hub.use():  # the base's weights, as the hub serves them
        base = build_model(ModelConfig(name=NAME)).model.state_dict()
    tuned_state, out = load_checkpoint(tuned)["model"], load_checkpoint(merged)["model"]
    key = "text.transformer.encoder.layer.1.output.dense.weight"
    assert_close_scaled(out[key], (base[key] + tuned_state[key]) / 2)


def test_export_reloads_through_local_dir_and_hf_hub_with_the_same_tokens_and_embeddings(hub, runs, tmp_path):
    folder = tmp_path / "exported"
    _run(hub, "-m", "bmca_clip.export", f"checkpoint={runs / 'straight'}", f"out={folder}")
    assert (folder / "tokenizer.json").exists()  # the tokenizer travels with the export
    with hub.use():
        trained = build_model(
            ModelConfig(name=NAME, pretrained=str(runs / "straight" / "checkpoints" / "step_00000004.pt"))
        )
        hub.add_model("test-org/exported", folder)
        reloads = [
            build_model(ModelConfig(name=f"local-dir:{folder}")),
            build_model(ModelConfig(name="hf-hub:test-org/exported")),
        ]
    tokens = trained.tokenizer(CAPTIONS)
    assert tokens.shape == (len(CAPTIONS), CONTEXT)
    images = torch.stack([trained.preprocess_eval(_image(i)) for i in range(2)])
    with torch.no_grad():
        want_text = trained.model.eval().encode_text(tokens)
        want_image = trained.model.encode_image(images)
        for bundle in reloads:
            assert torch.equal(bundle.tokenizer(CAPTIONS), tokens)
            got_images = torch.stack([bundle.preprocess_eval(_image(i)) for i in range(2)])
            assert torch.equal(got_images, images)
            assert_close_scaled(bundle.model.eval().encode_text(tokens), want_text)
            assert_close_scaled(bundle.model.encode_image(images), want_image)
    assert BERT_REPO in (folder / "open_clip_config.json").read_text()  # hf_tokenizer_name kept
    assert OPEN_CLIP_REPO not in (folder / "open_clip_config.json").read_text()


def _image(seed: int):
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (96, 80, 3), generator=gen, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())
