"""The start-weights fingerprint: every checkpoint records the weights its run started from, and a WiSE-FT
merge (eval.py model.wise_ft_alpha, python -m bmca_clip.wise_ft) refuses a base that is not them."""

from __future__ import annotations

import logging

import pytest
import torch

from bmca_clip.checkpoint import list_checkpoints
from bmca_clip.config import EvaluateConfig, ModelConfig, PretrainConfig, to_object
from bmca_clip.eval import run as eval_run
from bmca_clip.model import build_model, weights_sha256
from bmca_clip.train import run as train_mod
from bmca_clip.wise_ft import MergeError, blend, main
from tests.helpers.config import compose_config, tiny_train_overrides


def _seeded_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="bmca-tiny")).model.state_dict()


@pytest.fixture(scope="module")
def run_from_seed0(corpus, tmp_path_factory):
    """A 4-step run started from base0.pt (bmca-tiny at seed 0); base1.pt is the same model at seed 1."""
    root = tmp_path_factory.mktemp("start_weights")
    for seed in (0, 1):
        torch.save(_seeded_state(seed), root / f"base{seed}.pt")
    extra = {"model.pretrained": root / "base0.pt", "train.steps": 4, "checkpoint.every_steps": 2}
    cfg = to_object(
        compose_config("pretrain", tiny_train_overrides(corpus, root / "run", **extra)), PretrainConfig
    )
    train_mod.run(cfg)
    return root


def _evaluate(corpus, root, tmp_path, base: str, *extra: str):
    overrides = [
        "model=bmca-tiny",
        f"model.pretrained={root / base}",
        f"checkpoint={root / 'run'}",
        "model.wise_ft_alpha=0.5",
        "suite=demo",
        f"data_root={corpus.parent}",
        f"output_dir={tmp_path / 'eval'}",
        "cache_dir=null",
        *extra,
    ]
    return eval_run.run(to_object(compose_config("evaluate", overrides), EvaluateConfig))


def test_every_checkpoint_records_the_weights_training_started_from(run_from_seed0):
    start = weights_sha256(torch.load(run_from_seed0 / "base0.pt", weights_only=True))
    found = list_checkpoints(run_from_seed0 / "run" / "checkpoints")
    assert [p.name for p in found] == ["step_00000002.pt", "step_00000004.pt"]
    for path in found:
        state = torch.load(path, weights_only=True)
        expected = {"sha256": start, "model": "bmca-tiny", "pretrained": str(run_from_seed0 / "base0.pt")}
        assert state["start_weights"] == expected | {"seed": 0}
        assert weights_sha256(state["model"]) != start  # the run moved away from its start


def test_eval_refuses_a_wise_ft_base_that_is_not_the_runs_start(corpus, run_from_seed0, tmp_path):
    wrong = weights_sha256(_seeded_state(1))
    right = weights_sha256(_seeded_state(0))
    with pytest.raises(MergeError) as refused:
        _evaluate(corpus, run_from_seed0, tmp_path, "base1.pt")
    message = str(refused.value)
    assert wrong[:16] in message and right[:16] in message and "model.wise_ft_any_base=true" in message
    assert "\n" not in message and not (tmp_path / "eval").exists()


def test_eval_merges_with_the_runs_start_or_when_told_to(corpus, run_from_seed0, tmp_path, caplog):
    checkpoint = list_checkpoints(run_from_seed0 / "run" / "checkpoints")[-1]
    tuned = torch.load(checkpoint, weights_only=True)["model"]
    cfg = to_object(
        compose_config(
            "evaluate",
            ["model=bmca-tiny", f"model.pretrained={run_from_seed0 / 'base0.pt'}", "model.wise_ft_alpha=0.5"],
        ),
        EvaluateConfig,
    )
    initial = build_model(cfg.model).model.state_dict()
    [(label, merged, extra)] = eval_run._weights(cfg, checkpoint, initial)
    assert extra == {"wise_ft_alpha": 0.5} and label == "run-step4-wise0.5"
    expected = blend(initial, tuned, 0.5)
    assert all(torch.equal(v, expected[k]) for k, v in merged.items())
    with caplog.at_level(logging.WARNING, logger="bmca_clip"):
        results = _evaluate(corpus, run_from_seed0, tmp_path, "base1.pt", "model.wise_ft_any_base=true")
    assert len(results) == 1 and "is not the start of" in caplog.text


def test_wise_ft_cli_refuses_a_foreign_base_and_records_the_start(run_from_seed0, tmp_path, capsys, caplog):
    tuned = list_checkpoints(run_from_seed0 / "run" / "checkpoints")[-1]
    args = [f"tuned={tuned}", "alpha=0.5", f"out={tmp_path / 'wise.pt'}"]
    with pytest.raises(SystemExit) as exit_info:
        main([f"base={run_from_seed0 / 'base1.pt'}", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the start of" in err[0] and "any_base=true" in err[0]
    assert not (tmp_path / "wise.pt").exists()
    main([f"base={run_from_seed0 / 'base0.pt'}", *args])
    merged = torch.load(tmp_path / "wise.pt", weights_only=True)
    assert merged["start_weights"] == torch.load(tuned, weights_only=True)["start_weights"]
    with caplog.at_level(logging.WARNING, logger="bmca_clip"):
        main([f"base={run_from_seed0 / 'base1.pt'}", *args, "any_base=true"])
    assert "merging anyway" in caplog.text


def test_a_checkpoint_without_a_fingerprint_merges_with_a_warning(tmp_path, caplog):
    base, tuned = _seeded_state(0), _seeded_state(1)
    torch.save(base, tmp_path / "base.pt")
    config = {"model": {"name": "bmca-tiny", "pretrained": "base.pt"}}
    torch.save({"model": tuned, "step": 3, "samples_seen": 48, "config": config}, tmp_path / "old.pt")
    with caplog.at_level(logging.WARNING, logger="bmca_clip"):
        main(
            [
                f"base={tmp_path / 'base.pt'}",
                f"tuned={tmp_path / 'old.pt'}",
                "alpha=1",
                f"out={tmp_path / 'w.pt'}",
            ]
        )
    assert "no start-weights fingerprint" in caplog.text
    merged = torch.load(tmp_path / "w.pt", weights_only=True)["model"]
    assert all(torch.equal(v, tuned[k]) for k, v in merged.items())


def test_a_resumed_run_keeps_the_start_it_recorded(corpus, tmp_path):
    """Resuming rebuilds the model from model.pretrained; if that file changed since, the checkpoints must
    still name the weights the run really started from."""
    torch.save(_seeded_state(0), tmp_path / "base.pt")
    start = weights_sha256(_seeded_state(0))
    extra = {"model.pretrained": tmp_path / "base.pt", "train.steps": 4, "checkpoint.every_steps": 2}
    overrides = tiny_train_overrides(corpus, tmp_path / "run", **extra)
    train_mod.run(to_object(compose_config("pretrain", overrides), PretrainConfig))
    (tmp_path / "run" / "checkpoints" / "step_00000004.pt").unlink()
    torch.save(_seeded_state(1), tmp_path / "base.pt")  # the start file is overwritten between the two jobs
    train_mod.run(to_object(compose_config("pretrain", [*overrides, "resume=latest"]), PretrainConfig))
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert resumed["start_weights"]["sha256"] == start
