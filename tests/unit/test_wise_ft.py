"""WiSE-FT merging: exact endpoints, the hand-computed average, clear failures, and a loadable CLI output."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from bmca_clip.config import ConfigError, ModelConfig
from bmca_clip.model import build_model, load_model_weights
from bmca_clip.wise_ft import MergeError, blend, blended_models, main, wise_ft
from tests.helpers.config import REPO
from tests.helpers.numeric import assert_close_scaled


def tiny_state(seed: int, name: str = "bmca-tiny") -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name)).model.state_dict()


def write_ours(path, state, step=12, samples_seen=192, pretrained="base.pt"):
    config = {"model": {"name": "bmca-tiny", "pretrained": pretrained}, "train": {"steps": step}}
    torch.save({"model": state, "step": step, "samples_seen": samples_seen, "config": config}, path)
    return path


def test_alpha_zero_and_one_give_back_the_inputs_bit_identically():
    base, tuned = tiny_state(0), tiny_state(1)
    for alpha, expected in ((0.0, base), (1.0, tuned)):
        merged = blend(base, tuned, alpha)
        assert merged.keys() == expected.keys()
        for key, value in merged.items():
            assert value.dtype == expected[key].dtype
            assert torch.equal(value, expected[key]), (alpha, key)


def test_half_is_the_average_computed_by_hand():
    base = {"w": torch.tensor([0.0, 2.0, -4.0]), "steps": torch.tensor([3])}
    tuned = {"w": torch.tensor([2.0, 4.0, 4.0]), "steps": torch.tensor([3])}
    assert torch.equal(blend(base, tuned, 0.5)["w"], torch.tensor([1.0, 3.0, 0.0]))
    assert torch.equal(blend(base, tuned, 0.25)["w"], torch.tensor([0.5, 2.5, -2.0]))
    assert torch.equal(blend(base, tuned, 0.5)["steps"], torch.tensor([3]))
    # On real weights: the float32 average, to the last bit or two.
    base, tuned = tiny_state(0), tiny_state(1)
    merged = blend(base, tuned, 0.5)
    for key in base:
        assert_close_scaled(merged[key], (base[key] + tuned[key]) / 2, rel=1e-6)


def test_interpolates_in_float32_and_keeps_the_tuned_dtype():
    base = {"w": torch.tensor([1.0, 3.0], dtype=torch.float16)}
    tuned = {"w": torch.tensor([3.0, 5.0], dtype=torch.bfloat16)}
    merged = blend(base, tuned, 0.5)["w"]
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, torch.tensor([2.0, 4.0], dtype=torch.bfloat16))


def test_different_architectures_fail_naming_the_key():
    with pytest.raises(MergeError, match=r"key '.+'.*same architecture"):
        blend(tiny_state(0), tiny_state(0, "bmca-small"), 0.5)
    base = tiny_state(0)
    tuned = dict(base)
    del tuned["logit_scale"]
    with pytest.raises(MergeError, match=r"'logit_scale' is in base but not in tuned"):
        blend(base, tuned, 0.5)


def test_integer_buffers_must_agree():
    base, tuned = {"ids": torch.tensor([1, 2])}, {"ids": torch.tensor([1, 3])}
    with pytest.raises(MergeError, match=r"'ids' differs"):
        blend(base, tuned, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_alpha_outside_zero_one_is_rejected(alpha):
    w = {"w": torch.zeros(2)}
    with pytest.raises(ConfigError, match=r"alpha=.*\[0, 1\]"):
        blend(w, w, alpha)


def test_blended_models_yields_each_alpha(tmp_path):
    base, tuned = tiny_state(0), tiny_state(1)
    torch.save({f"module.{k}": v for k, v in base.items()}, tmp_path / "base.pt")  # a DDP-saved file
    write_ours(tmp_path / "tuned.pt", tuned)
    cfg = ModelConfig(name="bmca-tiny")
    merges = list(blended_models(cfg, str(tmp_path / "base.pt"), str(tmp_path / "tuned.pt"), [0.0, 1.0]))
    assert [alpha for alpha, _ in merges] == [0.0, 1.0]
    assert all(torch.equal(merges[0][1][k], base[k]) and torch.equal(merges[1][1][k], tuned[k]) for k in base)
    [(alpha, _)] = blended_models(cfg, str(tmp_path / "base.pt"), str(tmp_path / "tuned.pt"), 0.3)
    assert alpha == 0.3


def test_cli_writes_a_checkpoint_that_loads(tmp_path, capsys):
    base, tuned = tiny_state(0), tiny_state(1)
    torch.save({f"module.{k}": v for k, v in base.items()}, tmp_path / "base.pt")
    write_ours(tmp_path / "tuned.pt", tuned)
    out = tmp_path / "merged" / "wise.pt"
    main([f"base={tmp_path / 'base.pt'}", f"tuned={tmp_path / 'tuned.pt'}", "alpha=0.5", f"out={out}"])
    assert str(out) in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert (saved["step"], saved["samples_seen"]) == (12, 192)
    assert saved["config"]["model"] == {"name": "bmca-tiny", "pretrained": "base.pt"}
    assert saved["wise_ft"]["alpha"] == 0.5
    torch.manual_seed(5)
    model = build_model(ModelConfig(name="bmca-tiny")).model
    load_model_weights(model, out)
    expected = blend(base, tuned, 0.5)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert not list(out.parent.glob(".*tmp*")), "the temporary file must be gone"


def test_foreign_tuned_file_needs_model(tmp_path):
    torch.save(tiny_state(0), tmp_path / "a.pt")
    with pytest.raises(ConfigError, match="model="):
        wise_ft(str(tmp_path / "a.pt"), str(tmp_path / "a.pt"), 0.5, tmp_path / "out.pt")
    out = wise_ft(str(tmp_path / "a.pt"), str(tmp_path / "a.pt"), 0.5, tmp_path / "out.pt", model="bmca-tiny")
    assert torch.load(out, weights_only=True)["config"]["model"]["name"] == "bmca-tiny"


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["base=a", "tuned=b", "alpha=2", f"out={tmp_path / 'x.pt'}"])
    assert exit_info.value.code == 2
    assert "alpha=2.0 is outside [0, 1]" in capsys.readouterr().err
    # The shell entry point, once: a fresh interpreter imports torch and open_clip (~7 s on 2 cores).
    result = subprocess.run(
        [sys.executable, "-m", "bmca_clip.wise_ft", "base=a", "tuned=b", "alpha=0.5", "oops=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown key 'oops'; allowed keys: base, tuned")


def _device_pairs() -> list[tuple[str, str]]:
    # "meta" is a second device on every machine: lerp across devices fails there exactly as it does
    # between a CUDA base and a CPU checkpoint (eval.py model.wise_ft_alpha on a GPU). It checks where
    # the merge lands, not its values; a GPU adds the pairs whose values are compared.
    pairs = [("cpu", "meta")]
    if torch.cuda.is_available():
        pairs += [("cuda", "cpu"), ("cpu", "cuda")]
    return pairs


@pytest.mark.parametrize(("base_device", "tuned_device"), _device_pairs())
def test_blend_merges_on_the_tuned_device_whatever_the_base_device(base_device, tuned_device):
    base = {k: v.to(base_device) for k, v in tiny_state(0).items()}
    tuned = {k: v.to(tuned_device) for k, v in tiny_state(1).items()}
    merged = blend(base, tuned, 0.5)
    assert all(v.device == tuned[k].device and v.shape == tuned[k].shape for k, v in merged.items())
    if "meta" not in (base_device, tuned_device):
        expected = blend(tiny_state(0), tiny_state(1), 0.5)
        assert all(torch.equal(v.cpu(), expected[k]) for k, v in merged.items())
        ids = blend({"ids": torch.tensor([1, 2], device=base_device)}, {"ids": torch.tensor([1, 2])}, 0.5)
        assert torch.equal(ids["ids"], torch.tensor([1, 2]))
