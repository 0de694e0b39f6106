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
from bmca_clip.hf_tower import hf_text_tower, needs_find_unused_parameters
from bmca_clip.model import build_model
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


def _trainable(hub_name, **locks) -> set[str]:
    model = build_model(ModelConfig(name=hub_name, **locks)).model
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lock_text_freezes_the_bert_but_not_its_projection_and_n_unlocks_the_last_layers(tiny):
    name, bundle = tiny
    every = {n for n, _ in bundle.model.named_parameters()}
    bert = {n for n in every if n.startswith("text.transformer.")}
    last_layer = {n for n in bert if n.startswith("text.transformer.encoder.layer.1.")}
    embeddings = {n for n in bert if n.startswith("text.transformer.embeddings.")}
    assert _trainable(name, lock_text=True) == every - bert  # text.proj still trains (open_clip's rule)
    assert _trainable(name, lock_text=True, lock_text_unlocked_layers=1) == every - bert | last_layer
    assert _trainable(name, lock_text=True, lock_text_unlocked_layers=2) == every - embeddings
    assert _trainable(name, lock_text=True, lock_text_unlocked_layers=3) == every
    locked = _trainable(name, lock_text=True, freeze=[r"^text\.proj\."])  # the whole text tower frozen
    assert not {n for n in locked if n.startswith("text.")}


def test_lock_image_freezes_the_timm_trunk_but_not_its_projection(tiny):
    name, bundle = tiny
    every = {n for n, _ in bundle.model.named_parameters()}
    trunk = {n for n in every if n.startswith("visual.trunk.")}
    assert _trainable(name, lock_image=True) == every - trunk  # visual.head.proj trains
    last = {n for n in trunk if n.startswith(("visual.trunk.blocks.5.", "visual.trunk.norm."))}
    assert _trainable(name, lock_image=True, lock_image_unlocked_groups=1) == every - trunk | last


def test_ddp_looks_for_unused_parameters_only_for_an_unread_hf_pooler(tiny):
    from open_clip.hf_model import MeanPooler
    from transformers import BertConfig

    _, bundle = tiny
    assert not needs_find_unused_parameters(bundle.model)  # BiomedCLIP's BERT is built without a pooler
    assert not needs_find_unused_parameters(build_model(ModelConfig(name="bmca-tiny")).model)
    config = BertConfig(**bundle.model.text.transformer.config.to_dict())
    with_pooler = HFTextEncoder("unused", output_dim=8, config=config, pooler_type="mean_pooler")
    assert isinstance(with_pooler.pooler, MeanPooler) and with_pooler.transformer.pooler is not None
    holder = torch.nn.Module()
    holder.text = with_pooler
    assert needs_find_unused_parameters(holder)
    with_pooler.transformer.pooler.requires_grad_(False)
    assert not needs_find_unused_parameters(holder)
