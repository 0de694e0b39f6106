"""Every error a user can cause and act on, defined once, under one base class (huggingface_hub's errors.py).

The command lines (bmca_clip/cli.py) catch `BmcaError` and print its message as one `error: ...` line with
exit status 2; anything else is a bug and keeps its traceback. Each class also keeps the builtin base it
had before this module existed (ValueError, RuntimeError, OSError), so an `except ValueError` written
against the old class still catches it. The old modules re-export their names (e.g.
`bmca_clip.config.ConfigError`), so imports of either place work.

This is a leaf: it imports nothing from bmca_clip at module level, so any module can import it without
forming a cycle. Errors that never reach a user (a sample skipped while decoding, a metric undefined for
one resample) stay private to their modules; tests/unit/test_errors.py lists them.
"""

from __future__ import annotations


class BmcaError(Exception):
    """Base of every user-facing error: the message names the input, what is wrong and what to do."""


# --- configuration and command lines -------------------------------------------------------------------
class ConfigError(BmcaError, ValueError):
    """A config value that cannot work; the message names the dotted key and what to do."""


class ArgvError(BmcaError, ValueError):
    """A command-line override that cannot work; the message is the whole `error:` line's text."""


class CorpusArgumentError(BmcaError, ValueError):
    """A bad write_corpus argument (bmca_clip/data/synthetic.py); the message names its command-line flag."""


# --- training data --------------------------------------------------------------------------------------
class DataError(BmcaError, RuntimeError):
    """The data cannot feed training; the message names the shards or samples and what to do."""


class SourceCommitMoved(DataError):
    """A resumed data stream's hub source now resolves to another commit (check_commits)."""


class HubError(BmcaError, RuntimeError):
    """A repo that cannot be listed and has no fallback; the message says what to do."""


class ShardError(BmcaError, OSError):
    """A training shard that cannot be read; `reason` is a short counter name (http_404, not_a_tar, ...).
    An OSError too: the stream treats it like any other failed read (counts it, moves on)."""

    def __init__(self, url: str, reason: str, detail: str):
        # Lazy: redact.py is a stdlib-only leaf, imported here so this module stays import-free.
        from bmca_clip.redact import redact_url

        super().__init__(redact_url(f"shard {url}: {detail}"))  # the detail may quote the URL too
        self.url, self.reason = redact_url(url), reason


# --- models, checkpoints and training -------------------------------------------------------------------
class ModelLoadError(BmcaError, RuntimeError):
    """Weights or architecture could not be loaded; the message says what to do."""


class WeightMergeError(ModelLoadError):
    """Two state dicts that WiSE-FT cannot merge (bmca_clip/wise_ft.py); the message names the first key."""


class CheckpointError(BmcaError, RuntimeError):
    """No usable checkpoint where one was asked for; the message names the file or folder."""


class TrainingDiverged(BmcaError, RuntimeError):
    """The run cannot go on without losing its last good state; the message names the step and what to do."""


# --- evaluation -----------------------------------------------------------------------------------------
class TaskError(BmcaError, ValueError):
    """A task or suite declaration, or the data it points at, is not what the harness expects."""


class TaskShardError(ConfigError):
    """An eval shard specification (shard=i/n, SLURM_ARRAY_*) that cannot work (bmca_clip/eval/shard.py)."""


class ResultsMergeError(ConfigError):
    """Result folders that cannot be merged into one summary (bmca_clip/eval/merge.py)."""


class ComparisonError(ConfigError):
    """Results that cannot be compared by the paired bootstrap: other items, an unknown baseline (eval/compare.py)."""
