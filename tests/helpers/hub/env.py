"""Pointing huggingface_hub at a FakeHub for a block: the environment and the constants it read at import."""

from __future__ import annotations

import os
from pathlib import Path


def hub_env(url: str, home: Path, token: str | None) -> dict[str, str | None]:
    """Environment for the `use()` block; None unsets. Read by code that looks at os.environ at call time."""
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
    env: dict[str, str | None] = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
        "HF_TOKEN": token,
    }
    unset = "HF_HUB_OFFLINE TRANSFORMERS_OFFLINE HF_DATASETS_OFFLINE HUGGING_FACE_HUB_TOKEN HF_TOKEN_PATH"
    unset += " HF_OIDC_RESOURCE HUGGINGFACE_HUB_CACHE HF_ASSETS_CACHE HF_XET_CACHE"
    return env | dict.fromkeys(unset.split())


def constant_patches(c, url: str, home: Path) -> list[tuple[object, str, object]]:
    """huggingface_hub.constants values computed from the environment at import time."""
    values = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": c.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    return [(c, name, value) for name, value in values.items() if hasattr(c, name)]


def set_env(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
