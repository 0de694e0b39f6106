"""Credentials out of what a run records: `redact_url(text)` for a string, `redact_config(obj)` for a config.

Shard URLs may carry credentials: `https://user:password@host/...`, a signed query (`?token=`,
`X-Amz-Signature=`, Azure's `sig=`), or a `pipe:curl -H 'Authorization: Bearer ...'` command. The config
holding them is written to config.yaml, .hydra/, every checkpoint, wandb and the exported model card, and
the URLs appear in log lines. The requests themselves use the real URL; only the records are redacted,
and a redacted record still says which host and path the data came from.

Hydra would write its raw .hydra/ record before any of our code runs, so conf/pretrain.yaml turns that
off (hydra.output_subdir: null) and train.py writes the same three files redacted (save_hydra_record).

A query value is hidden when its key looks like a credential (token, sig, key, pass, secret, auth, ...)
or belongs to a signed-URL scheme (X-Amz-*, X-Goog-*): hiding a harmless value costs nothing, keeping a
secret publishes it. Redacting twice gives the same text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from bmca_clip.io import atomic_write

MASK = "***"

# scheme://user:password@ -- greedy up to the last '@' of the authority, as URL parsers read it.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s'\"]*@")
# ?key=value / &key=value; a value ends at '&', '#', a quote, whitespace or '::' (which joins shard specs).
_QUERY = re.compile(r"(?P<lead>[?&;](?P<key>[^=&#?;\s'\"]+)=)(?P<value>(?:(?!::)[^&#;\s'\"])*)")
_SECRET_KEY = re.compile(r"token|sig|key|pass|pwd|secret|auth|credential|session|^x-(amz|goog|ms)-", re.I)
# Header and command-line forms: 'Authorization: Bearer <x>', curl -u user:pw, a bare hf_ token.
_HEADER = re.compile(r"(?P<lead>\bauthorization\s*[:=]\s*)(?:(?:bearer|basic|token)\s+)?[^\s'\"]+", re.I)
_CURL_USER = re.compile(r"(?P<lead>(?:^|\s)(?:-u|--user)(?:\s+|=))[^\s'\"]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")  # hub tokens: hf_ + 34 letters


def _query_value(match: re.Match) -> str:
    if _SECRET_KEY.search(match["key"]) and match["value"]:
        return match["lead"] + MASK
    return match[0]


def redact_url(text: str) -> str:
    """`text` (a URL, a '::'-joined shard spec, a pipe: command, a log line) with credentials as ***."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _QUERY.sub(_query_value, text)
    text = _HEADER.sub(lambda m: m["lead"] + MASK, text)
    text = _CURL_USER.sub(lambda m: m["lead"] + MASK, text)
    return _HF_TOKEN.sub(MASK, text)


def redact_config(obj: Any) -> Any:
    """A copy of a plain config (dicts, lists, scalars) with every string passed through redact_url."""
    if isinstance(obj, dict):
        return {key: redact_config(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_config(value) for value in obj)
    return redact_url(obj) if isinstance(obj, str) else obj


def hydra_record(task_cfg) -> dict[str, str]:
    """What Hydra's output_subdir would hold (.hydra/config.yaml, hydra.yaml, overrides.yaml, as composed,
    unresolved), redacted, as {file name: YAML}; bmca_clip.train.run writes it once the start checks pass.
    A sweep's multirun.yaml, which Hydra's sweeper writes before any job starts, is redacted in place."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    record = {
        "config.yaml": OmegaConf.to_container(task_cfg, resolve=False),
        "hydra.yaml": {"hydra": OmegaConf.to_container(hydra_cfg, resolve=False)},
        "overrides.yaml": OmegaConf.to_container(hydra_cfg.overrides.task),
    }
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank composes the same config
        _redact_sweep_record(hydra_cfg)
    return {
        name: OmegaConf.to_yaml(OmegaConf.create(redact_config(content))) for name, content in record.items()
    }


def _redact_sweep_record(hydra_cfg) -> None:
    """A sweep's multirun.yaml, written by Hydra's sweeper before any job runs, redacted in place by the
    jobs (atomically: they may do it at once)."""
    from hydra.types import RunMode

    path = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if hydra_cfg.mode != RunMode.MULTIRUN or not path.is_file():
        return
    text = path.read_text()
    if redact_url(text) != text:
        atomic_write(path, redact_url(text))
