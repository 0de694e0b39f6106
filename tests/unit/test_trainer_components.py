"""The Trainer is handed its components (checkpointer, metric logger, evaluator, preemption handler) at
construction; each decides when it acts through one cadence rule; and a run closes whatever it opened,
however it ends: a misspelt eval suite opens no logger, a failing step stops the data workers."""

from __future__ import annotations

import ast
import inspect
import json
import multiprocessing
import signal
from pathlib import Path

import open_clip
import pytest

import bmca_clip.tracking as tracking
from bmca_clip.cadence import every
from bmca_clip.checkpoint import Checkpointer, list_checkpoints
from bmca_clip.config import LoggerConfig, PretrainConfig, TrainEvalConfig, WandbConfig, to_object
from bmca_clip.dist import DistInfo
from bmca_clip.tracking import MetricLogger
from bmca_clip.train import run as train_mod
from bmca_clip.train.components import Components
from bmca_clip.train.evaluation import PeriodicEval
from bmca_clip.train.preemption import PreemptionHandler
from bmca_clip.train.trainer import Trainer
from tests.helpers.batch import global_batch
from tests.helpers.config import REPO, compose_config, tiny_train_overrides

COMPONENTS = ("checkpointer", "logger", "evaluator", "preemption", "validator")


def _cfg(corpus: Path, out: Path, **extra) -> PretrainConfig:
    return to_object(compose_config("pretrain", tiny_train_overrides(corpus, out, **extra)), PretrainConfig)


# --- (a) what a run opens, it closes -------------------------------------------------------------------


def test_a_misspelt_eval_suite_stops_the_start_before_the_logger_opens(corpus, tmp_path, monkeypatch):
    """Before: the logger opened (metrics.jsonl, a wandb run) before the suite loaded, outside the try,
    and the suite's error left both open."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    overrides = {"eval.suite": "no_such_suite", "logger.wandb.mode": "offline"}
    try:
        with pytest.raises(Exception, match="unknown suite 'no_such_suite'"):
            train_mod.run(_cfg(corpus, out, **overrides))
        assert wandb.run is None
    finally:
        if wandb.run is not None:  # the bug: finish it here, so it does not leak into other tests
            wandb.run.finish()
    assert not (out / "metrics.jsonl").exists()
    assert not list(out.glob("config*.yaml"))  # a refused start records nothing


def test_a_misspelt_eval_suite_is_refused_before_the_model_is_built(corpus, tmp_path, monkeypatch):
    """A ViT-L-14 download is 1.7 GB: the suite is checked with the data, before any of it."""

    def built(*args, **kwargs):
        raise AssertionError("the model was built before eval.suite was checked")

    monkeypatch.setattr(train_mod, "build_model", built)
    with pytest.raises(Exception, match="unknown suite 'no_such_suite'"):
        train_mod.run(_cfg(corpus, tmp_path / "run", **{"eval.suite": "no_such_suite"}))


@pytest.fixture
def failing_step(monkeypatch):
    """The optimizer step of step 2 raises, as a CUDA error or a bug in a loss would."""
    original = Trainer._optimizer_step

    def step(self, loss):
        if self.step + 1 == 2:
            raise RuntimeError("boom at step 2")
        return original(self, loss)

    monkeypatch.setattr(Trainer, "_optimizer_step", step)


@pytest.fixture
def closed_loggers(monkeypatch) -> list[MetricLogger]:
    closed: list[MetricLogger] = []
    original = MetricLogger.close

    def close(self):
        closed.append(self)
        original(self)

    monkeypatch.setattr(MetricLogger, "close", close)
    return closed


def test_a_failing_step_closes_the_logger_stops_the_data_workers_and_restores_signals(
    corpus, tmp_path, failing_step, closed_loggers
):
    """Before: the DataLoader workers lived on as long as the traceback (which holds the loop's frame)."""
    before_children = set(multiprocessing.active_children())
    before_handler = signal.getsignal(signal.SIGUSR1)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom at step 2") as failure:
        train_mod.run(_cfg(corpus, out, **{"data.num_workers": 1}))
    assert failure.traceback  # still held: nothing below may rely on it being freed
    assert set(multiprocessing.active_children()) <= before_children  # the worker is gone
    assert len(closed_loggers) == 1 and closed_loggers[0].jsonl is None  # metrics.jsonl closed
    assert signal.getsignal(signal.SIGUSR1) is before_handler
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]  # step 1 was logged before step 2 failed


def test_a_logger_that_fails_to_open_wandb_closes_the_file_it_had_opened(tmp_path, monkeypatch):
    """Before: metrics.jsonl stayed open when wandb.init raised in MetricLogger's constructor."""
    opened = []

    def recording_open(*args, **kwargs):
        opened.append(open(*args, **kwargs))
        return opened[-1]

    def wandb_down(*args, **kwargs):
        raise RuntimeError("wandb is down")

    monkeypatch.setattr(tracking, "open", recording_open, raising=False)
    monkeypatch.setattr(tracking, "_start_wandb", wandb_down)
    cfg = LoggerConfig(progress_bar=False, jsonl=True, wandb=WandbConfig(mode="offline"))
    with pytest.raises(RuntimeError, match="wandb is down"):
        with MetricLogger(cfg, tmp_path, total_steps=3, start_step=0, run_name="t", config={}):
            pass
    assert [f.name for f in opened] == [str(tmp_path / "metrics.jsonl")]
    assert opened[0].closed


def test_the_preemption_handler_holds_the_signals_only_while_entered():
    default = signal.getsignal(signal.SIGTERM)
    handler = PreemptionHandler(DistInfo())
    assert signal.getsignal(signal.SIGTERM) is default  # constructing it changes nothing
    with handler:
        assert signal.getsignal(signal.SIGTERM) == handler._on_signal
    assert signal.getsignal(signal.SIGTERM) is default


# --- (b) one cadence rule ------------------------------------------------------------------------------


def test_every_is_the_rule_the_three_copies_had():
    """`step % n == 0 or step == last`: what checkpointing, evaluation and log lines each wrote out."""
    for n in range(1, 8):
        for last in range(1, 15):
            for step in range(1, last + 1):
                assert every(n, step, last) == (step % n == 0 or step == last), (n, step, last)


@pytest.mark.parametrize("n", [None, 0, -3])
def test_every_without_a_positive_n_acts_only_at_the_last_step(n):
    assert [s for s in range(1, 8) if every(n, s, 7)] == [7]


def test_each_component_asks_the_rule_with_its_own_n(tmp_path):
    steps = range(1, 11)
    checkpointer = Checkpointer(tmp_path, every_steps=4, keep_last=1)
    evaluator = PeriodicEval([], TrainEvalConfig(every_steps=3), None, None, DistInfo())
    run = {"total_steps": 10, "start_step": 0, "run_name": "t", "config": {}}
    quiet = MetricLogger(LoggerConfig(), tmp_path, **run)
    # Every rank must agree (rank 0's logger is enabled, the others' not): a log line starts with a collective.
    loggers = [MetricLogger(LoggerConfig(), tmp_path, **run, log_every=6, enabled=on) for on in (True, False)]
    assert [s for s in steps if checkpointer.should_save(s, 10)] == [4, 8, 10]
    assert [s for s in steps if evaluator.should_eval(s, 10)] == [3, 6, 9, 10]
    for logger in loggers:
        assert [s for s in steps if logger.should_log(s, 10)] == [6, 10]
    assert [s for s in steps if quiet.should_log(s, 10)] == list(steps)  # log_every defaults to 1
    assert quiet.jsonl is None and not list(tmp_path.iterdir())  # constructing a logger opens nothing


# --- (c) the Trainer is handed its components ----------------------------------------------------------


def test_train_py_assigns_no_component_onto_a_trainer():
    """Before: run() set trainer.evaluator and trainer.preemption after building the Trainer."""
    for path in (REPO / "bmca_clip").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in COMPONENTS:
                    owner = target.value
                    assert isinstance(owner, ast.Name) and owner.id == "self", (
                        f"{path.name}:{node.lineno} assigns .{target.attr} from outside its class"
                    )
    assert "components" in inspect.signature(Trainer).parameters


class _Loader:
    """Stands in for a TrainLoader: the same small batch forever; a generator, as TrainLoader's is."""

    def __iter__(self):
        batch = global_batch(4)
        while True:
            yield batch

    def state_dict(self) -> dict:
        return {"position": 0}

    def counters(self) -> dict:
        return {}


class _Evaluator:
    """An evaluator with a cadence of its own (step 1 and the last): the Trainer must follow it."""

    calls = 0

    def should_eval(self, step: int, last_step: int) -> bool:
        return step == 1 or step == last_step

    def __call__(self, model) -> dict[str, float]:
        self.calls += 1
        return {"eval/fake": 0.5}


def test_the_trainer_acts_when_its_components_say(tmp_path):
    overrides = ["model=bmca-tiny", "train.steps=5", "train.batch_size=4", "optim.warmup_steps=1"]
    cfg = to_object(compose_config("pretrain", overrides), PretrainConfig)
    log_cfg = LoggerConfig(progress_bar=False)
    logger = MetricLogger(
        log_cfg, tmp_path, total_steps=5, start_step=0, run_name="t", config={}, log_every=3
    )
    evaluator = _Evaluator()
    parts = Components(
        checkpointer=Checkpointer(tmp_path / "ckpt", every_steps=2, keep_last=10, extra={"note": "x"}),
        logger=logger,
        evaluator=evaluator,
    )
    trainer = Trainer(
        cfg, DistInfo(), open_clip.create_model("bmca-tiny", output_dict=True), components=parts
    )
    with logger:
        last = trainer.train(_Loader())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # Log lines every 3 steps and at the last; the evaluator's scores at the steps it chose (1 and 5).
    assert [(r["step"], "loss" in r, "eval/fake" in r) for r in rows] == [
        (1, False, True),
        (3, True, False),
        (5, True, False),
        (5, False, True),
    ]
    assert evaluator.calls == 2 and last["eval/fake"] == 0.5 and "loss" in last
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == [
        "step_00000002.pt",
        "step_00000004.pt",
        "step_00000005.pt",
    ]


def test_a_trainer_without_a_checkpointer_or_logger_refuses_to_train(tmp_path):
    cfg = to_object(compose_config("pretrain", ["model=bmca-tiny"]), PretrainConfig)
    trainer = Trainer(cfg, DistInfo(), open_clip.create_model("bmca-tiny", output_dict=True))
    with pytest.raises(ValueError, match=r"Components\(checkpointer=..., logger=...\)"):
        trainer.train(_Loader())
