"""End to end on the synthetic corpus: a short run lowers the loss and lifts zero-shot accuracy."""

from __future__ import annotations

import json

from bmca_clip.config import EvaluateConfig, PretrainConfig, to_object
from bmca_clip.eval import run as eval_run
from bmca_clip.train import run as train_mod
from tests.helpers.config import compose_config, tiny_train_overrides


def test_training_lowers_loss_and_raises_zero_shot_accuracy(corpus, tmp_path):
    steps = 60
    overrides = tiny_train_overrides(
        corpus,
        tmp_path / "run",
        **{
            "train.steps": steps,
            "train.batch_size": 32,
            "train.log_every": 5,
            "optim.lr": 2e-3,
            "optim.warmup_steps": 5,
            "checkpoint.every_steps": steps,
        },
    )
    train_mod.run(to_object(compose_config("pretrain", overrides), PretrainConfig))
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert losses[-1] < 0.7 * losses[0], losses

    eval_overrides = [
        "model=bmca-tiny",
        f"data_root={corpus.parent}",
        f"output_dir={tmp_path / 'eval'}",
        f"checkpoint=[null,{tmp_path / 'run'}]",
    ]
    results = eval_run.run(to_object(compose_config("evaluate", eval_overrides), EvaluateConfig))
    untrained, trained = ({r.task: r.main_value for r in rs} for rs in results.values())
    assert trained["synthetic_modality"] > untrained["synthetic_modality"] + 0.2, (untrained, trained)
    assert trained["synthetic_modality"] > 1 / 6 + 0.2  # well above chance
    assert (tmp_path / "eval" / "summary.md").exists()
