"""Whole runs on credentialed shard URLs record no secret: a train.py run (and its resume with a rotated token)
and a sweep leave config.yaml, .hydra/, checkpoints, wandb, logs and the model card free of the password
and tokens, while the requests use the real URLs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers.biomedica_hub import MASK, REPO_ID
from tests.helpers.biomedica_hub import basic_auth as _basic
from tests.helpers.hub import FakeHub


def assert_nothing_holds(folder, secrets: tuple[str, ...]) -> int:
    """Every file under `folder` (checkpoints also as loaded) is free of `secrets`; returns files checked."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        texts = [data]
        if path.suffix == ".pt":
            texts.append(repr(torch.load(path, map_location="cpu", weights_only=True)).encode())
        for secret in secrets:
            assert not any(secret.encode() in text for text in texts), f"{secret} in {path}"
    return len(files)


PASSWORD, QUERY_TOKEN, NEW_TOKEN = "pw-s3cret-Basic", "tok-s3cret-Query", "tok-s3cret-Rotated"


def _shard_url(corpus, port: str, token: str) -> str:
    shards = sorted(p.name for p in (corpus / "train" / "commercial").glob("*.tar"))
    pattern = f"{{{shards[0][:-4]}..{shards[-1][:-4]}}}.tar"
    return (
        f"http://alice:{PASSWORD}@127.0.0.1:{port}/datasets/{REPO_ID}/resolve/main/commercial/{pattern}"
        f"?token={token}&part=1"
    )


def _overrides(url: str, out, steps: int) -> list[str]:
    return [
        "data=local",
        f"data.train_shards='{url}'",  # quoted for Hydra: braces, '=' and '@'
        "model=bmca-tiny",
        f"train.steps={steps}",
        "train.batch_size=8",
        "train.device=cpu",
        "train.log_every=1",
        "data.num_workers=1",
        "data.shuffle_buffer=16",
        "data.shuffle_initial=4",
        "data.retries=2",
        "data.retry_backoff_s=0.01",
        "data.max_empty_shards=3",
        "logger.progress_bar=false",
        f"output_dir={out}",
    ]


def test_a_run_on_credentialed_shard_urls_trains_and_records_no_secret(tmp_path, corpus, caplog):
    """train.py on http://alice:<password>@host/...?token=<token> shards: the server gets Basic auth and
    the token, training runs, and neither secret is in any file the run writes (.hydra/, config.yaml,
    checkpoints as loaded, metrics, wandb's offline files), in its logs, or in an exported model card.
    A resume with a rotated token (a fresh signed URL for a requeued job) is no data change."""
    from bmca_clip.checkpoint import list_checkpoints
    from bmca_clip.config import PretrainConfig, to_object
    from bmca_clip.export import export
    from bmca_clip.train import run as train_mod
    from tests.helpers.config import REPO, compose_config

    caplog.set_level(logging.INFO, logger="bmca_clip")
    out = tmp_path / "run"
    with FakeHub(basic_auth=("alice", PASSWORD)) as hub:
        hub.add_dataset(REPO_ID, corpus / "train")
        hub.fail("commercial/*", "404", times=1)  # one shard fails, so its URL is logged
        port = hub.url.rsplit(":", 1)[1]
        args = _overrides(_shard_url(corpus, port, QUERY_TOKEN), out, steps=3)
        proc = subprocess.run(
            [sys.executable, "train.py", *args, "logger.wandb.mode=offline", "hydra.verbose=true"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        rotated = _overrides(_shard_url(corpus, port, NEW_TOKEN), out, steps=4) + ["resume=latest"]
        train_mod.run(to_object(compose_config("pretrain", rotated), PretrainConfig))
        resolves = [r for r in hub.requests if "/resolve/" in r["path"]]
    assert resolves and all(r["headers"]["Authorization"] == _basic("alice", PASSWORD) for r in resolves)
    assert {r["query"]["token"][0] for r in resolves} == {QUERY_TOKEN, NEW_TOKEN}
    logs = proc.stdout + proc.stderr + caplog.text
    assert f"shard http://{MASK}@127.0.0.1:{port}/datasets/" in logs and f"?token={MASK}&part=1" in logs
    assert "resumed from" in caplog.text and "data.train_shards" not in caplog.text  # no change seen

    ckpt = list_checkpoints(out / "checkpoints")[-1]
    assert ckpt.name == "step_00000004.pt"
    overrides = (out / ".hydra" / "overrides.yaml").read_text()
    assert f"data.train_shards='http://{MASK}@127.0.0.1:{port}/" in overrides and (out / "wandb").is_dir()
    recorded = torch.load(ckpt, weights_only=True)["config"]["data"]["train_shards"]
    assert recorded == _shard_url(corpus, port, MASK).replace(f"alice:{PASSWORD}", MASK)  # still says where
    export(str(ckpt), tmp_path / "export")
    assert "## Training config" in (tmp_path / "export" / "README.md").read_text()
    secrets = (PASSWORD, QUERY_TOKEN, NEW_TOKEN)
    assert not any(secret in logs for secret in secrets)
    assert assert_nothing_holds(out, secrets) > 8
    assert assert_nothing_holds(tmp_path / "export", secrets) >= 3


@pytest.mark.slow  # a second train.py process, ~10 s
def test_a_sweep_records_no_secret(tmp_path, corpus):
    """train.py -m: Hydra's multirun.yaml (written before any job runs) and each job's .hydra/ too."""
    from tests.helpers.config import REPO

    sweep = tmp_path / "sweep"
    with FakeHub(basic_auth=("alice", PASSWORD)) as hub:
        hub.add_dataset(REPO_ID, corpus / "train")
        args = _overrides(_shard_url(corpus, hub.url.rsplit(":", 1)[1], QUERY_TOKEN), "x", steps=1)
        args = [a for a in args if not a.startswith("output_dir=")]
        proc = subprocess.run(
            [sys.executable, "train.py", "-m", *args, "train.seed=5", f"hydra.sweep.dir={sweep}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep / "0" / "checkpoints" / "step_00000001.pt").exists()
    assert f"?token={MASK}&part=1" in (sweep / "multirun.yaml").read_text()
    assert f"?token={MASK}&part=1" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    assert not any(s in proc.stdout + proc.stderr for s in (PASSWORD, QUERY_TOKEN))
    assert assert_nothing_holds(sweep, (PASSWORD, QUERY_TOKEN)) > 4
