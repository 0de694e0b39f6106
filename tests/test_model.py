"""Weights from the places people keep them: our checkpoints, open_clip files, DDP `module.` prefixes,
safetensors; clear messages when they are missing. No network: the files are written here."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from safetensors.torch import save_file

from bmca_clip.config import ModelConfig, PretrainConfig, to_object
from bmca_clip.dist import DistInfo
from bmca_clip.model import ModelLoadError, build_model
from bmca_clip.trainer import Trainer


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
    state = Trainer(cfg, DistInfo(), ref, tmp_path).state_dict()
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
    with pytest.raises(ModelLoadError, match="do not fit this architecture"):
        build_model(ModelConfig(name="bmca-tiny", pretrained=str(path)))


def test_truncated_checkpoint_is_reported_not_crashed(tmp_path):
    path = tmp_path / "half.pt"
    torch.save(_reference().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="could not be read"):
        build_model(ModelConfig(name="bmca-tiny", pretrained=str(path)))
