"""Shared bits of the command-line entry points: bad input ends with one clear line, not a traceback.

Exit codes of train.py, eval.py and `python -m bmca_clip.eval.merge` (docs/reliability.md):
0 done; 1 a bug (Python's traceback); 2 refused: bad input, an environment that cannot run it, or a full
disk, with one `error: ...` line on stderr; 3 (eval, merge) the summary is written but some tasks failed
or are missing, named in the last line; 75 (train) preempted after saving, for Slurm to requeue.
"""

from __future__ import annotations

import contextlib
import errno
import io
import sys
from collections.abc import Iterator, Mapping, Sequence

from omegaconf.errors import OmegaConfBaseException

from bmca_clip.errors import BmcaError, ConfigError

# Every error a user can cause derives from BmcaError (bmca_clip/errors.py); OmegaConf's are a bad override.
USER_ERRORS = (BmcaError, OmegaConfBaseException)
EXIT_REFUSED = 2
EXIT_TASKS_FAILED = 3
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _chain(err: BaseException) -> Iterator[BaseException]:
    """err and the exceptions it was raised from or while handling (torch re-raises a write error)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _open_file_written(err: BaseException) -> str | None:
    """The file being written where err was raised: torch.save and f.write through a file object raise
    OSError(ENOSPC) without a filename, but the failing frames hold the open file."""
    for exc in _chain(err):
        frames, tb = [], exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):  # innermost first
            for value in frame.f_locals.values():
                name = getattr(value, "name", None)
                writable = isinstance(value, io.IOBase) and any(
                    c in getattr(value, "mode", "") for c in "wax+"
                )
                if writable and isinstance(name, str):
                    return name
    return None


def disk_full_message(err: BaseException, where: str, hint: str) -> str | None:
    """`error:`-line text for a full disk or quota anywhere in err's chain, else None. where: the folder
    to name when the failing file cannot be found; hint: the setting that moves the output elsewhere."""
    full = next((e for e in _chain(err) if isinstance(e, OSError) and e.errno in DISK_FULL), None)
    if full is None:
        return None
    path = full.filename or _open_file_written(err) or where
    return f"{full.strerror or 'no space left on device'} while writing {path}: free space or set {hint}"


def _fail(message: str) -> None:
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    sys.stdout.flush()  # in a Slurm log (stdout buffered, both streams in one file) the error stays last
    print(f"error: {' '.join(lines)}", file=sys.stderr)
    sys.exit(EXIT_REFUSED)


@contextlib.contextmanager
def exit_on_user_error(where: str = "the output folder", disk_hint: str = "another output path"):
    """Turn errors caused by the user's input, and a full disk, into `error: <message>` on stderr and exit
    status 2. where / disk_hint: the output folder and the setting named when the disk is full."""
    try:
        yield
    except USER_ERRORS as err:
        _fail(str(err))
    except Exception as err:
        message = disk_full_message(err, where, disk_hint)
        if message is None:
            raise
        _fail(message)


def check_group_choice(group: str) -> None:
    """Refuse a name that no config of an optional Hydra group has: `optional experiment: null` in
    conf/pretrain.yaml lets Hydra skip a misspelled experiment=... silently and train the defaults. Call it
    inside a @hydra.main function (it reads the choices Hydra made)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    choice = hydra_cfg.runtime.choices.get(group)
    if choice is None:
        return
    # With the overrides, the options include those of folders added by hydra.searchpath=[...]
    overrides = [*hydra_cfg.overrides.hydra, *hydra_cfg.overrides.task]
    options = (
        GlobalHydra.instance()
        .config_loader()
        .get_group_options(group, config_name=hydra_cfg.job.config_name, overrides=overrides)
    )
    if choice not in options:
        raise ConfigError(
            f"{group}={choice} is not a known {group}; choose one of: {', '.join(options)} "
            f"(conf/{group}/<name>.yaml)"
        )


def failed_tasks_line(records: dict[str, list], suite_tasks: Sequence[str] | None = None) -> str | None:
    """The last line of an eval or merge whose results are not all ok, else None. records: per model
    label, its results (TaskResult or JSON records, each with task and status); suite_tasks: every task
    that should have a result (a missing one is listed too)."""
    failed, missing, total = [], [], 0
    for label, results in records.items():
        status = {_get(r, "task"): _get(r, "status") for r in results}
        names = list(suite_tasks) if suite_tasks is not None else list(status)
        names += [name for name in status if name not in names]
        total += len(names)
        failed += [f"{label}: {name}" for name in names if status.get(name, "ok") != "ok" and name in status]
        missing += [f"{label}: {name}" for name in names if name not in status]
    if not failed and not missing:
        return None
    listed = "; ".join([*(f + " (failed)" for f in failed), *(m + " (missing)" for m in missing)])
    return (
        f"error: {len(failed) + len(missing)} of {total} task results are not ok ({len(failed)} failed, "
        f"{len(missing)} missing): {listed}"
    )


def _get(result, key: str):
    return result[key] if isinstance(result, dict) else getattr(result, key)


def key_values_help(
    required: Sequence[str], optional: Sequence[str], usage: str, key_help: Mapping[str, str]
) -> str:
    """The --help text of a key=value command: its usage, then each key with its one-line description."""
    lines = [f"usage: {usage}", "", "keys (key=value; * = required):"]
    for key in [*required, *optional]:
        name = f"{key}=" + ("*" if key in required else "")
        lines.append(f"  {name:<16}{key_help.get(key, '')}")
    return "\n".join(lines)


def parse_key_values(
    argv: Sequence[str],
    required: Sequence[str],
    optional: Sequence[str],
    usage: str,
    key_help: Mapping[str, str] | None = None,
):
    """`key=value` arguments as a dict; a missing, unknown, repeated or malformed one is a ConfigError.
    `--help` or `-h` prints the usage and each key's description from `key_help` and exits with 0."""
    if "--help" in argv or "-h" in argv:
        print(key_values_help(required, optional, usage, key_help or {}))
        sys.exit(0)
    allowed = f"allowed keys: {', '.join([*required, *optional])} (usage: {usage})"
    values: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {arg!r} is not key=value; {allowed}")
        if key not in required and key not in optional:
            raise ConfigError(f"unknown key {key!r}; {allowed}")
        if key in values:
            raise ConfigError(f"{key}= is given twice; {allowed}")
        values[key] = value
    missing = [k for k in required if not values.get(k)]
    if missing:
        raise ConfigError(f"missing {', '.join(k + '=' for k in missing)}; {allowed}")
    return values
