"""Secrets stay where they belong: the HF token goes only to the hub endpoint itself (scheme, host and port
compared exactly), and credentials inside shard URLs (user:password@, ?token=, signed-URL queries) are
used for the request but redacted from everything a run records: config.yaml, .hydra/, checkpoints, wandb,
logs and the exported model card."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import constants

from bmca_clip.data.auth import auth_headers
from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.shards import open_shard
from bmca_clip.errors import ShardError
from bmca_clip.model_card import model_card
from bmca_clip.tracking import _start_wandb
from bmca_clip.train.resume import ResumePlan, config_history
from tests.helpers.hub import FakeHub

TOKEN = "hf_TESTsecretTOKEN123"
REPO_ID = "BIOMEDICA/biomedica_webdataset_24M"
SHARD = "commercial/000000.tar"
MASK = "***"  # what a redacted secret reads as (bmca_clip.redact.MASK)


# --- item 10: the HF token goes to the hub endpoint and nowhere else -------------------------------------


@pytest.mark.parametrize(
    "endpoint, url, gets_token",
    [
        ("https://huggingface.co", "https://huggingface.co/datasets/a/b/resolve/main/x.tar", True),
        ("https://huggingface.co", "https://huggingface.co:443/datasets/a/b/resolve/main/x.tar", True),
        ("https://huggingface.co", "HTTPS://HuggingFace.CO/datasets/a/b/resolve/main/x.tar", True),
        ("https://huggingface.co/", "https://huggingface.co/datasets/x.tar", True),
        ("https://huggingface.co", "https://huggingface.co.evil.example/datasets/x.tar", False),
        ("https://huggingface.co", "https://huggingface.co:8443/datasets/x.tar", False),
        ("https://huggingface.co", "http://huggingface.co/datasets/x.tar", False),
        ("https://huggingface.co", "https://huggingface.co@evil.example/datasets/x.tar", False),
        ("https://huggingface.co", "https://huggingface.co:443@evil.example/x.tar", False),
        ("https://huggingface.co", "https://evil.example/https://huggingface.co/x.tar", False),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/datasets/x.tar", True),
        ("http://127.0.0.1:8000", "http://127.0.0.1:80001/datasets/x.tar", False),
        ("http://127.0.0.1:8000", "http://127.0.0.1/datasets/x.tar", False),
        ("http://hub.internal", "http://hub.internal:80/datasets/x.tar", True),
        ("https://mirror.example/hf", "https://mirror.example/hf/datasets/x.tar", True),
        ("https://mirror.example/hf", "https://mirror.example/hfx/datasets/x.tar", False),
        ("https://mirror.example/hf", "https://mirror.example/other/x.tar", False),
        ("https://mirror.example/hf", "https://mirror.example/hf/../other/x.tar", False),
    ],
)
def test_the_token_goes_only_to_the_hub_endpoint(endpoint, url, gets_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    sent = auth_headers(url).get("authorization", "")
    if gets_token:
        assert sent == f"Bearer {TOKEN}", (endpoint, url)
    else:  # nothing, or the URL's own user:password@ as Basic auth
        assert TOKEN not in sent and not sent.startswith("Bearer"), (endpoint, url, sent)


def test_over_the_wire_the_hub_gets_the_token_and_a_look_alike_host_does_not(tmp_path):
    """The same server reached as 127.0.0.1 (the endpoint), as localhost (another host) and through a
    userinfo trick: only the first request carries the token."""
    (tmp_path / "repo" / "commercial").mkdir(parents=True)
    (tmp_path / "repo" / SHARD).write_bytes(b"\0" * 1024)
    with FakeHub() as hub, hub.use(token=TOKEN):
        hub.add_dataset(REPO_ID, tmp_path / "repo")
        port = hub.url.rsplit(":", 1)[1]
        path = f"/datasets/{REPO_ID}/resolve/main/{SHARD}"
        for url in (
            f"http://127.0.0.1:{port}{path}",
            f"http://localhost:{port}{path}",
            f"http://127.0.0.1:{port}@localhost:{port}{path}",
        ):
            with open_shard(url, HttpPolicy(retries=1, timeout_s=5), {}) as stream:
                assert stream.read() == b"\0" * 1024
    sent = [r["headers"].get("Authorization", "") for r in hub.requests]
    assert sent[0] == f"Bearer {TOKEN}"
    assert len(sent) == 3 and not any(TOKEN in header for header in sent[1:]), sent


# --- item 11: credentials in shard URLs are used, and redacted from every record ---------------------------


@pytest.mark.parametrize(
    "url, redacted",
    [
        ("https://user:pw@host.example/a.tar", "https://***@host.example/a.tar"),
        ("https://user@host.example/a.tar", "https://***@host.example/a.tar"),
        ("https://u:p@ss@host.example:8443/a.tar", "https://***@host.example:8443/a.tar"),
        (
            "https://host.example/a.tar?token=abc&part=1",
            "https://host.example/a.tar?token=***&part=1",
        ),
        (
            "https://b.s3.amazonaws.com/s/{000..009}.tar?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1"
            "&X-Amz-Signature=f00d&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/s/{000..009}.tar?X-Amz-Algorithm=***&X-Amz-Credential=***"
            "&X-Amz-Signature=***&X-Amz-Expires=***",
        ),
        (
            "https://acct.blob.core.windows.net/c/a.tar?sv=2024&sp=r&sig=AbC%2B/x=",
            "https://acct.blob.core.windows.net/c/a.tar?sv=2024&sp=r&sig=***",
        ),
        (
            "http://u:p@h/a.tar?access_token=1::http://u:p@h/b.tar?api_key=2#frag",
            "http://***@h/a.tar?access_token=***::http://***@h/b.tar?api_key=***#frag",
        ),
        (
            "pipe:curl -s -L -H 'Authorization: Bearer hf_abcdefghijklmnopqrstuvwxyz0123' https://h/a.tar",
            "pipe:curl -s -L -H 'Authorization: ***' https://h/a.tar",
        ),
        ("pipe:curl -u alice:pw https://h/a.tar", "pipe:curl -u *** https://h/a.tar"),
        ("/data/shards/{000000..000099}.tar", "/data/shards/{000000..000099}.tar"),
        ("hf-hub:org/model@main", "hf-hub:org/model@main"),
        ("https://huggingface.co/datasets/a/b/resolve/main/x.tar", None),
    ],
)
def test_redact_url_hides_userinfo_and_secret_query_values(url, redacted):
    from bmca_clip.redact import redact_url

    assert redact_url(url) == (url if redacted is None else redacted)
    assert redact_url(redact_url(url)) == redact_url(url)  # records may be redacted twice


def test_redact_config_walks_nested_dicts_and_lists():
    from bmca_clip.redact import redact_config

    config = {
        "data": {"train_shards": "http://u:pw9@h/a.tar?token=tk9", "sources": {"x": {"shards": None}}},
        "overrides": ["data.train_shards=http://u:pw9@h/a.tar?token=tk9", 3, 1.5, True],
        "steps": 6,
    }
    redacted = redact_config(config)
    assert "pw9" not in repr(redacted) and "tk9" not in repr(redacted)
    assert redacted["data"]["train_shards"] == f"http://{MASK}@h/a.tar?token={MASK}"
    assert redacted["overrides"][1:] == [3, 1.5, True] and redacted["steps"] == 6
    assert redacted["data"]["sources"] == {"x": {"shards": None}}
    assert config["data"]["train_shards"].startswith("http://u:pw9@")  # the input is left alone


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_user_and_password_in_a_shard_url_become_basic_auth(tmp_path):
    (tmp_path / "repo" / "commercial").mkdir(parents=True)
    (tmp_path / "repo" / SHARD).write_bytes(bytes(range(256)) * 8)
    with FakeHub(basic_auth=("alice", "p@ss:w0rd")) as hub:
        hub.add_dataset(REPO_ID, tmp_path / "repo")
        base = hub.url.replace("http://", "http://alice:p%40ss%3Aw0rd@")
        url = f"{base}/datasets/{REPO_ID}/resolve/main/{SHARD}?token=tk9"
        with open_shard(url, HttpPolicy(retries=1, timeout_s=5), {}) as stream:
            assert stream.read() == bytes(range(256)) * 8
        assert hub.requests[-1]["headers"]["Authorization"] == _basic("alice", "p@ss:w0rd")
        assert hub.requests[-1]["query"] == {"token": ["tk9"]}  # the query goes to the server as it is

        wrong = url.replace("w0rd", "wrong")
        with pytest.raises(ShardError) as err:
            with open_shard(wrong, HttpPolicy(retries=1, timeout_s=5), {}) as stream:
                stream.read()
    assert err.value.reason == "http_401"
    assert "wrong" not in str(err.value) and "tk9" not in str(err.value) and "alice" not in str(err.value)
    assert f"http://{MASK}@127.0.0.1:" in str(err.value)


SECRET_CONFIG = {
    "model": {"name": "bmca-tiny", "pretrained": None},
    "data": {"train_shards": "https://alice:pw9@h.example/{0..3}.tar?X-Amz-Signature=tk9", "sources": {}},
}


def test_old_records_with_secrets_are_redacted_when_carried_on():
    """Checkpoints written before redaction hold the raw URLs: a resume's config history and an export's
    model card must not carry them on."""
    old = {
        "step": 4,
        "config": SECRET_CONFIG,
        "config_history": [{"step": 0, "config": SECRET_CONFIG, "changed": {}}],
        "model": {},
    }
    plan = ResumePlan(changed={"data.train_shards": [SECRET_CONFIG["data"]["train_shards"], "x"]})
    history = config_history(old, SECRET_CONFIG, plan, 1)
    card = model_card({**old, "config_history": history}, title="org/model")
    for text in (repr(history), card):
        assert "pw9" not in text and "tk9" not in text
    assert f"https://{MASK}@h.example/{{0..3}}.tar?X-Amz-Signature={MASK}" in card


def test_a_checkpoint_from_before_redaction_resumes_without_a_data_change():
    """Its config holds the raw URL and this run's is redacted: compared redacted, nothing changed."""
    from omegaconf import OmegaConf

    from bmca_clip.redact import redact_config
    from bmca_clip.train.start import _plan
    from tests.helpers.config import compose_config

    shards = "data.train_shards='http://alice:pw9@h.example/{0..3}.tar?sig=tk9'"
    raw = OmegaConf.to_container(compose_config("pretrain", ["data=local", shards]), resolve=True)
    plan = _plan({"config": raw, "step": 2, "data": {"ranks": [{}]}}, redact_config(raw), world_size=1)
    assert plan.changed == {} and not plan.reset_data


def test_wandb_is_given_the_redacted_config(tmp_path, monkeypatch):
    import sys
    import types

    from bmca_clip.config import LoggerConfig, WandbConfig

    seen = {}
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: seen.update(kwargs, argv=list(sys.argv))  # wandb records sys.argv too
    monkeypatch.setitem(sys.modules, "wandb", fake)
    argv = ["train.py", f"data.train_shards={SECRET_CONFIG['data']['train_shards']}"]
    monkeypatch.setattr(sys, "argv", list(argv))
    _start_wandb(LoggerConfig(wandb=WandbConfig(mode="offline")), tmp_path, "run", SECRET_CONFIG)
    for recorded in (seen["config"], seen["argv"]):
        assert "pw9" not in repr(recorded) and "tk9" not in repr(recorded)
    assert seen["config"]["model"] == SECRET_CONFIG["model"] and len(seen["argv"]) == 2
    assert sys.argv == argv  # the process keeps its own command line


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
