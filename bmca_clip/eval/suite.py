"""The one path from a run's config to its suite of tasks: read once, checked once, for both entry points.

eval.py: Hydra finds `suite=<name>` in conf/suite/ (then <dir>/suite/ of each hydra.searchpath folder) and
composes it, overrides such as `'suite.tasks=[pcam]'` included, into EvaluateConfig.suite (a SuiteConfig).
That composed value IS the suite: `suite_from_config` turns it into tasks; the file is not read again.
train.py: `eval.suite=<name>` is a plain key (its `eval` group holds training-time settings, not a Hydra
group), so `suite_config(name)` looks the name up in the same folders in the same order, reads the file
and checks its keys against the same SuiteConfig; the result goes through the same `suite_from_config`.
A misspelt key in a suite file that eval.py composes is refused before Hydra runs (cli_args.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from bmca_clip.config import SuiteConfig
from bmca_clip.config.checks import did_you_mean
from bmca_clip.errors import TaskError
from bmca_clip.eval.tasks import Suite, list_suites, suite_from_mapping
from bmca_clip.paths import config_dirs

SUITE_KEYS = tuple(f.name for f in dataclasses.fields(SuiteConfig))


def suite_file(name: str) -> Path | None:
    """The file suite=<name> composes: conf/suite/<name>.yaml, else <dir>/suite/<name>.yaml of the first
    hydra.searchpath folder holding one (Hydra's order); None when there is none."""
    return next((d / f"{name}.yaml" for d in config_dirs("suite") if (d / f"{name}.yaml").is_file()), None)


def suite_config(name: str, key: str = "eval.suite") -> SuiteConfig:
    """The SuiteConfig that Hydra would compose for suite=<name>, for an entry point that names its suite
    in a plain key (train.py's eval.suite). TaskError, one line naming the key or the file, when there is
    no such suite or its file holds a key SuiteConfig lacks."""
    file = suite_file(name)
    if file is None:
        names = list_suites()
        where = " or ".join(str(d) for d in config_dirs("suite"))
        hint = did_you_mean(name, names, prefix=f"{key}=")
        raise TaskError(
            f"{key}={name}: unknown suite '{name}': no {name}.yaml in {where}; {hint}"
            f"available suites: {', '.join(names) or 'none'}"
        )
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise TaskError(f"{file}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{file}: expected a mapping of suite keys, got {type(raw).__name__}")
    for k in raw:
        if k not in SUITE_KEYS:
            hint = did_you_mean(str(k), SUITE_KEYS)
            raise TaskError(f"{file}: key '{k}' is not a suite key; {hint}(keys: {', '.join(SUITE_KEYS)})")
    if raw.get("name") != name:
        raise TaskError(f"{file}: key 'name': '{raw.get('name')}' must equal the file name '{name}'")
    return SuiteConfig(**raw)


def suite_from_config(composed: SuiteConfig | DictConfig | dict, tasks_dir: Path | None = None) -> Suite:
    """The suite of a run from its config: EvaluateConfig.suite as Hydra composed it (overrides included)
    or suite_config(eval.suite). Each task is loaded and checked (tasks_dir: default conf/tasks, then
    hydra.searchpath's tasks/); messages name suite=<name> and the file of that name, if any."""
    if dataclasses.is_dataclass(composed):
        raw = dataclasses.asdict(composed)
    elif isinstance(composed, DictConfig):
        raw = OmegaConf.to_container(composed, resolve=True)
    else:
        raw = dict(composed)
    raw = {key: value for key, value in raw.items() if value is not None}
    name = raw.get("name")
    file = suite_file(name) if isinstance(name, str) and name else None
    origin = f"suite={name} ({file})" if file else f"suite={name} (as composed)"
    expect, tasks = raw.get("expect_tasks"), raw.get("tasks")
    if type(expect) is int and isinstance(tasks, list) and expect != len(tasks):
        raise TaskError(
            f"{origin}: key 'expect_tasks': says {expect} tasks, but the suite lists {len(tasks)}; make "
            "them agree (a command line that sets suite.tasks=[...] can add suite.expect_tasks=null)"
        )
    return suite_from_mapping(raw, origin, tasks_dir)
