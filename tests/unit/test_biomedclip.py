"""BiomedCLIP's shape from the fake hub (tests/helpers/tiny_biomedclip.py): its HF text tower, tokenizer and
preprocessing come through build_model as the real hub id's would; without transformers, one line names
the `biomedclip` extra."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from open_clip.hf_model import ClsLastHiddenStatePooler, HFTextEncoder

from bmca_clip.config import ConfigError, ModelConfig
from bmca_clip.model import build_model, hf_text_tower
from tests.helpers.hub import FakeHub
from tests.helpers.tiny_biomedclip import BERT_REPO, CONTEXT, OPEN_CLIP_CONFIG, serve_tiny_biomedclip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with FakeHub() as hub:
        name = serve_tiny_biomedclip(hub, tmp_path_factory.mktemp("tiny_biomedclip"))
        with hub.use():
            yield name, build_model(ModelConfig(name=name))


def test_the_text_tower_is_the_named_bert_with_biomedclips_projection_and_pooler(tiny):
    name, bundle = tiny
    text = bundle.model.text
    assert isinstance(text, HFTextEncoder) and isinstance(text.pooler, ClsLastHiddenStatePooler)
    assert isinstance(text.proj, torch.nn.Sequential)  # hf_proj_type "mlp"
    assert text.transformer.config.num_hidden_layers == 2
    assert text.transformer.pooler is None  # BERT's own pooler is built only for "cls_pooler"
    assert hf_text_tower(name) == BERT_REPO


def test_its_tokenizer_gives_256_bert_tokens_and_its_preprocessing_the_repos_mean(tiny):
    _, bundle = tiny
    tokens = bundle.tokenizer(["This is an image of lung adenocarcinoma"])
    assert tokens.shape == (1, CONTEXT)
    assert tokens[0, 0].item() == 101 and 102 in tokens[0].tolist()  # [CLS] ... [SEP], then [PAD] = 0
    assert tokens[0, -1].item() == 0
    normalize = bundle.preprocess_eval.transforms[-1]
    assert list(normalize.mean) == OPEN_CLIP_CONFIG["preprocess_cfg"]["mean"]


def test_a_hf_text_tower_without_transformers_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs transformers: pip install 'bmca-clip\[biomedclip\]'"):
        build_model(ModelConfig(name=f"local-dir:{tmp_path}"))


def test_a_native_tower_does_not_need_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert hf_text_tower("bmca-tiny") is None
    assert build_model(ModelConfig(name="bmca-tiny")).model is not None
