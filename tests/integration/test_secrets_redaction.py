"""Credentials inside shard URLs (user:password@, ?token=, signed-URL queries) are used for the request but
redacted (bmca_clip/redact.py) from the records: the URL and config redaction rules, Basic auth from the
userinfo, old records carried on, a checkpoint from before redaction, and the config wandb is given."""

from __future__ import annotations

import pytest

from bmca_clip.data.http import HttpPolicy
from bmca_clip.data.shards import open_shard
from bmca_clip.errors import ShardError
from bmca_clip.model_card import model_card
from bmca_clip.tracking import _start_wandb
from bmca_clip.train.resume import ResumePlan, config_history
from tests.helpers.biomedica_hub import MASK, REPO_ID, SHARD
from tests.helpers.biomedica_hub import basic_auth as _basic
from tests.helpers.hub import FakeHub

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
