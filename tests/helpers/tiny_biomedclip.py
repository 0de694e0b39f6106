"""A tiny model of exactly BiomedCLIP's shape, written by the tests and served by the fake hub as the real one is.

microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 is an open_clip repo (open_clip_config.json and
open_clip_pytorch_model.bin) whose text_cfg names a second, transformers repo by hf_model_name and
hf_tokenizer_name (microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract: config.json, vocab.txt, weights).
Here: the same config keys and values where they set the shape of the computation (a timm ViT with no
pooling override and a linear projection; a BERT text tower with an "mlp" projection and the
"cls_last_hidden_state_pooler"; 256 tokens; the CLIP mean/std), at toy sizes: timm's `test_vit` (160 px,
6 blocks of width 64) and a 2-layer BERT of width 32 with a vocabulary the test writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import string
from pathlib import Path

import torch

OPEN_CLIP_REPO = "test-org/TinyBiomedCLIP-PubMedBERT_256-test_vit"
BERT_REPO = "test-org/TinyPubMedBERT-uncased-abstract"
NAME = f"hf-hub:{OPEN_CLIP_REPO}"
CONTEXT = 256
WORDS = (
    "this is an image of presented in a photo tissue tumor normal lung colon adenocarcinoma benign squamous "
    "cell carcinoma pneumonia chest x ray lymphocytes metastatic patch histopathology ct scan mri figure "
    "shows the with and of stained section"
).split()
BERT_CONFIG = {
    "architectures": ["BertForMaskedLM"],
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,  # BiomedBERT's dropout, so that exact resume must restore the RNG
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 160,
        },
        "text_cfg": {
            "hf_model_name": BERT_REPO,
            "hf_tokenizer_name": BERT_REPO,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": CONTEXT,
        },
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}


def vocabulary() -> list[str]:
    """BERT's special tokens at its ids (0 pad, 100 unk, 101 cls, 102 sep, 103 mask), then words, letters
    and ## pieces so that any lowercase text tokenizes without [UNK]."""
    special = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    vocab = [special.get(i, f"[unused{i}]") for i in range(104)]
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    return vocab + pieces + [f"##{c}" for c in string.ascii_lowercase + string.digits] + WORDS


def write_bert_repo(folder: Path) -> Path:
    """The text tower's transformers repo: config.json, vocab.txt, tokenizer files and weights."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    config = BERT_CONFIG | {"vocab_size": len(vocab)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = {"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special | {"mask_token": "[MASK]"}))
    torch.manual_seed(1)
    BertModel(BertConfig(**config)).save_pretrained(folder)  # model.safetensors
    return folder


def write_open_clip_repo(folder: Path, bert_folder: Path, seed: int = 0) -> Path:
    """The open_clip repo as the hub's: open_clip_config.json and open_clip_pytorch_model.bin (no
    .safetensors: open_clip falls back to the .bin), built from the config, the BERT config read from
    `bert_folder`."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG, indent=2))
    cfg = json.loads(json.dumps(OPEN_CLIP_CONFIG["model_cfg"]))
    cfg["text_cfg"]["hf_model_name"] = str(bert_folder)  # read locally: no hub needed to write the repo
    cfg["text_cfg"]["hf_model_pretrained"] = False
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(**cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    return folder


def serve_tiny_biomedclip(hub, root: Path) -> str:
    """Write both repos under `root` and add them to the FakeHub `hub`; returns the hf-hub: model name."""
    bert = write_bert_repo(root / "bert")
    hub.add_model(BERT_REPO, bert)
    hub.add_model(OPEN_CLIP_REPO, write_open_clip_repo(root / "open_clip", bert))
    return NAME


@contextlib.contextmanager
def hub_with_tiny_biomedclip(root: Path):
    """A FakeHub serving both repos (written under root/repos); `hub.env` is the environment of a
    subprocess that downloads from it (HF_ENDPOINT at it, HF_HOME in root/hf_home, one thread)."""
    from tests.helpers.hub import FakeHub
    from tests.helpers.hub.env import hub_env

    with FakeHub() as hub:
        serve_tiny_biomedclip(hub, root / "repos")
        env = os.environ | {"OMP_NUM_THREADS": "1"} | hub_env(hub.url, root / "hf_home", None)
        hub.env = {k: v for k, v in env.items() if v is not None}
        yield hub


def assert_only_unlocked_layers_moved(trained: dict, start: dict) -> None:
    """After training with model.lock_text and one unlocked BERT layer: of the text transformer only
    encoder layer 1 changed, and the projections and the image trunk trained."""
    changed = {k for k in trained if not torch.equal(trained[k], start[k])}
    bert = {k for k in trained if k.startswith("text.transformer.")}
    assert bert & changed == {k for k in bert if k.startswith("text.transformer.encoder.layer.1.")}
    assert {
        "text.proj.0.weight",
        "visual.head.proj.weight",
        "visual.trunk.blocks.0.attn.qkv.weight",
    } <= changed
