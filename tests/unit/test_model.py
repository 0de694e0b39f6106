"""Weights from the places people keep them: our checkpoints, open_clip files, DDP `module.` prefixes,
safetensors; clear messages when they are missing. No network: the files are written here."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from bmca_clip.config import ConfigError, ModelConfig, PretrainConfig, to_object
from bmca_clip.dist import DistInfo
from bmca_clip.model import ModelLoadError, build_model
from bmca_clip.train.trainer import Trainer
from tests.helpers.batch import global_batch
from tests.helpers.config import compose_config


def _reference():
    torch.manual_seed(123)
    return build_model(ModelConfig(name="bmca-tiny")).model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_module_prefixed_state_dict_like_bmc_clip_cf(tmp_path):
    ref = _reference()
    path = tmp_path / "BMC_CLIP_CF.pt"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)
    loaded = build_model(ModelConfig(name="bmca-tiny", pretrained=str(path))).model
    assert _same_weights(loaded, ref)


def test_safetensors_file(tmp_path):
    ref = _reference()
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    assert _same_weights(build_model(ModelConfig(name="bmca-tiny", pretrained=str(path))).model, ref)


def test_our_training_checkpoint_as_a_start(tmp_path):
    ref = _reference()
    cfg = to_object(compose_config("pretrain", ["model=bmca-tiny"]), PretrainConfig)
    state = Trainer(cfg, DistInfo(), ref).state_dict()
    path = tmp_path / "step_00000010.pt"
    torch.save(state | {"step": 10}, path)
    assert _same_weights(build_model(ModelConfig(name="bmca-tiny", pretrained=str(path))).model, ref)


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (ModelConfig(name="ViT-Q-99"), "is not an open_clip architecture"),
        (ModelConfig(name="bmca-tiny", pretrained="/nowhere/BMC_CLIP_CF.pt"), "no such file"),
        (ModelConfig(name="ViT-B-16", pretrained="not_a_tag"), "Known tags: "),
    ],
)
def test_missing_weights_or_unknown_names_say_what_to_do(cfg, expected):
    with pytest.raises(ModelLoadError, match=expected):
        build_model(cfg)


def test_weights_of_another_architecture_are_refused_clearly(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ModelLoadError, match="does not fit model.name=bmca-tiny: .*pass the model="):
        build_model(ModelConfig(name="bmca-tiny", pretrained=str(path)))


def test_truncated_checkpoint_is_reported_not_crashed(tmp_path):
    path = tmp_path / "half.pt"
    torch.save(_reference().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="could not be read"):
        build_model(ModelConfig(name="bmca-tiny", pretrained=str(path)))


def _step_and_compare(tmp_path, **model_kw) -> tuple[dict, dict]:
    """Parameters before and after two training steps with the model config given."""
    cfg = to_object(compose_config("pretrain", ["model=bmca-tiny"]), PretrainConfig)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="bmca-tiny", **model_kw)).model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(cfg, DistInfo(), model)
    for seed in (1, 2):
        trainer.train_step([global_batch(8, seed)])
    return before, dict(model.named_parameters())


def test_lock_image_tower_leaves_it_bit_identical(tmp_path):
    before, after = _step_and_compare(tmp_path, lock_image=True)
    for name, value in after.items():
        same = torch.equal(before[name], value)
        assert same if name.startswith("visual.") else True, name
    assert not torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])


def test_lock_text_tower_with_the_last_layer_unlocked(tmp_path):
    # open_clip counts groups from the end: text_projection, then the last block with ln_final, ...
    before, after = _step_and_compare(tmp_path, lock_text=True, lock_text_unlocked_layers=2)
    assert torch.equal(
        before["transformer.resblocks.0.mlp.c_fc.weight"], after["transformer.resblocks.0.mlp.c_fc.weight"]
    )
    assert torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])
    assert not torch.equal(
        before["transformer.resblocks.1.mlp.c_fc.weight"], after["transformer.resblocks.1.mlp.c_fc.weight"]
    )
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])


def test_freeze_by_regex(tmp_path):
    before, after = _step_and_compare(
        tmp_path, freeze=[r"^visual\.transformer\.resblocks\.0\.", "logit_scale"]
    )
    frozen = [n for n in after if n.startswith("visual.transformer.resblocks.0.") or n == "logit_scale"]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert not torch.equal(
        before["visual.transformer.resblocks.1.attn.in_proj_weight"],
        after["visual.transformer.resblocks.1.attn.in_proj_weight"],
    )


def test_bad_freeze_regex_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.freeze: '\[unclosed' is not a valid regular expression"):
        to_object(compose_config("pretrain", ["model.freeze=[\\[unclosed]"]), PretrainConfig)


def test_siglip_preset_adds_the_logit_bias_it_needs():
    cfg = to_object(compose_config("pretrain", ["loss=siglip"]), PretrainConfig)
    assert cfg.loss.name == "siglip" and cfg.model.init_logit_bias == -10.0
    with pytest.raises(ConfigError, match="siglip needs a logit bias"):
        to_object(compose_config("pretrain", ["loss.name=siglip"]), PretrainConfig)


def write_hub_cache(cache: Path, repo_id: str, model: torch.nn.Module, mean=(0.25, 0.5, 0.75)) -> None:
    """repo_id in huggingface_hub's cache layout, as `hf download` leaves it: refs/main -> a snapshot
    holding open_clip's hub files (open_clip_config.json, open_clip_model.safetensors)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    config = {
        "model_cfg": open_clip.get_model_config("bmca-tiny"),
        "preprocess_cfg": {"mean": list(mean), "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"},
    }
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(snapshot / "open_clip_model.safetensors"),
    )


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A hub cache folder and huggingface_hub offline: an hf-hub: id resolves from that cache only."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_pretrained_hf_hub_id_starts_the_architecture_from_the_hub_weights(offline_hub):
    ref = _reference()
    write_hub_cache(offline_hub, "test-org/tiny-clip", ref)
    cfg = compose_config(
        "pretrain",
        ["model=bmca-tiny", "model.pretrained=hf-hub:test-org/tiny-clip", f"model.cache_dir={offline_hub}"],
    )
    bundle = build_model(to_object(cfg, PretrainConfig).model)
    assert _same_weights(bundle.model, ref)
    # the repo's preprocessing comes with its weights, as open_clip gives it to model.name=hf-hub:...
    assert tuple(bundle.model.visual.image_mean) == (0.25, 0.5, 0.75)
    normalize = bundle.preprocess_eval.transforms[-1]
    assert tuple(normalize.mean) == (0.25, 0.5, 0.75)


def test_pretrained_hf_hub_id_offline_and_not_cached_says_what_to_download(offline_hub):
    with pytest.raises(ModelLoadError) as err:
        build_model(
            ModelConfig(name="bmca-tiny", pretrained="hf-hub:test-org/absent", cache_dir=str(offline_hub))
        )
    message = str(err.value)
    assert "\n" not in message
    assert "model.pretrained=hf-hub:test-org/absent" in message
    assert "hf download test-org/absent" in message and f"model.cache_dir={offline_hub}" in message


def test_pretrained_hf_hub_id_of_another_architecture_is_refused_clearly(offline_hub):
    torch.manual_seed(0)
    small = build_model(ModelConfig(name="bmca-small")).model
    write_hub_cache(offline_hub, "test-org/small-clip", small)
    with pytest.raises(ModelLoadError, match="does not fit model.name=bmca-tiny"):
        build_model(
            ModelConfig(name="bmca-tiny", pretrained="hf-hub:test-org/small-clip", cache_dir=str(offline_hub))
        )
