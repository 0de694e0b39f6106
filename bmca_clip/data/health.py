"""Why a sample was skipped, and when a stream must stop because its data cannot feed training.

Every sample a training stream hands to its decoder ends as `decoded` or as `skipped/<reason>`, one of
SKIP_REASONS: the sample's members (`missing_image`, `missing_caption`, `empty_caption`,
`caption_not_utf8`: decode.SampleDecoder names them), its image (`truncated_image`, `corrupt_image`:
whatever Pillow raises on bad bytes, `decompression_bomb`: over Pillow's pixel limit), or `other`: an
exception nobody expected (a bug in a transform, say), whose class is named in one warning per class and
stream. No single sample can stop a run.

A stream whose skipped share exceeds data.max_bad_fraction once it has read data.max_bad_after samples
stops training with a DataError naming the likely cause ("500 had no `png` member; the shards hold `jpg`
(set data.image_key=jpg)"). Without it, data that never decodes (a wrong key, all-empty captions, corrupt
shards) never fills a batch and the run reads forever. The trainer's own check (step_metrics.checked_data_counters)
judges a rank's counters at log steps only, which a batch that never fills never reaches.
"""

from __future__ import annotations

import logging
from collections import Counter

from PIL import Image, UnidentifiedImageError

from bmca_clip.config import DataConfig
from bmca_clip.data.counters import DataCounters
from bmca_clip.data.decode import UnusableSample
from bmca_clip.errors import DataError
from bmca_clip.redact import redact_url

log = logging.getLogger(__name__)

# What a corrupt or truncated image raises in Pillow; these are skipped quietly (log level DEBUG).
DECODE_ERRORS = (OSError, ValueError, UnidentifiedImageError, SyntaxError)
SKIP_REASONS = (
    "missing_image",
    "missing_caption",
    "empty_caption",
    "caption_not_utf8",
    "truncated_image",
    "corrupt_image",
    "decompression_bomb",
    "other",
)
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp", "gif", "ppm", "pgm", "jp2")
TEXT_MEMBERS = ("txt", "text", "caption", "cap", "label")


def skip_reason(err: Exception) -> str:
    """The counter name (after `skipped/`) of a sample that raised `err`."""
    if isinstance(err, UnusableSample):
        return err.reason
    if isinstance(err, Image.DecompressionBombError):  # not an OSError: over 2 x Image.MAX_IMAGE_PIXELS
        return "decompression_bomb"
    # Pillow's words for a file that ends early: "image file is truncated (...)", "Truncated File Read"
    if isinstance(err, OSError) and "truncated" in str(err).lower():
        return "truncated_image"
    if isinstance(err, DECODE_ERRORS):  # UnidentifiedImageError (not an image), a broken PNG or JPEG, ...
        return "corrupt_image"
    return "other"


def _one_line(err: Exception, limit: int = 200) -> str:
    text = " ".join(redact_url(str(err)).split())  # errors may quote a shard URL with its credentials
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _backticked(names) -> str:
    return ", ".join(f"`{n}`" for n in names)


class StreamHealth:
    """Judges one stream's DataCounters (decoded and skipped); `skipped` counts a failed sample into them
    and raises DataError once too many fail."""

    def __init__(self, cfg: DataConfig, where: str, counters: DataCounters):
        self.cfg, self.where, self.counters = cfg, where, counters
        self.first: dict[str, str] = {}  # reason -> the first such error and its sample, for the message
        self.members: Counter[str] = Counter()  # the members of samples that lacked the image or caption
        self.unexpected: Counter[str] = Counter()  # skipped/other by exception class

    def skipped(self, err: Exception, sample: dict) -> str:
        """Count a sample that raised `err`; -> its reason. Raises DataError when the stream cannot go on."""
        reason = skip_reason(err)
        self.counters.count("skipped", reason)
        where = f"sample {sample.get('__key__')} of {redact_url(str(sample.get('__url__')))}"
        self.first.setdefault(reason, f"{_one_line(err)} in {where}")
        if reason in ("missing_image", "missing_caption"):
            self.members.update(sample.get("__members__", ()))
        n, c = self.counters.skipped[reason], self.counters
        if reason == "other":
            self._unexpected(err, where, n)
        elif n in (1, 10, 100, 1000) or n % 10_000 == 0:  # a few lines per reason, not one per sample
            quiet = isinstance(err, DECODE_ERRORS) and reason != "decompression_bomb"
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "skipping %s (skipped/%s, %d so far in stream %s): %s",
                where,
                reason,
                n,
                self.where,
                _one_line(err),
            )
        if c.seen >= self.cfg.max_bad_after and c.bad > self.cfg.max_bad_fraction * c.seen:
            raise DataError(self.diagnosis())
        return reason

    def _unexpected(self, err: Exception, where: str, n: int) -> None:
        """One warning per exception class (it may be a bug to report), the later ones at DEBUG."""
        cls = type(err).__name__
        self.unexpected[cls] += 1
        log.log(
            logging.WARNING if self.unexpected[cls] == 1 else logging.DEBUG,
            "skipping %s (skipped/other, %d so far in stream %s): an unexpected %s, counted as skipped/other "
            "from now on without a warning: %s",
            where,
            n,
            self.where,
            cls,
            _one_line(err),
        )

    def diagnosis(self) -> str:
        """One line: how many samples failed, and the likely cause of the two commonest failures."""
        c = self.counters
        causes = "; ".join(self._cause(reason, n) for reason, n in Counter(c.skipped).most_common(2))
        return (
            f"{c.bad} of the first {c.seen} samples of data stream {self.where} could not be used "
            f"(above data.max_bad_fraction={self.cfg.max_bad_fraction}): {causes}"
        )

    def _cause(self, reason: str, n: int) -> str:
        cfg, every = self.cfg, n == self.counters.seen
        if reason == "missing_image" and not self.members:  # table rows (parquet, csv): no members
            return (
                f"{n} rows had no image (first: {self.first[reason]}); check the source's image_column "
                "and, for a CSV, that its image paths are relative to the table's folder"
            )
        if reason == "missing_image":
            return f"{n} had no `{cfg.image_key}` member{self._hint('image_key', IMAGE_MEMBERS)}"
        if reason == "missing_caption":
            return f"{n} had no `{cfg.caption_key}` member{self._hint('caption_key', TEXT_MEMBERS)}"
        if reason == "empty_caption":
            head = "every caption was empty" if every else f"{n} had an empty caption"
            return f"{head} (`{cfg.caption_key}` members; check data.caption_key and the shards' captions)"
        if reason == "decompression_bomb":
            return (
                f"{n} images had more than {2 * Image.MAX_IMAGE_PIXELS} pixels, Pillow's decompression-bomb "
                f"limit (first: {self.first[reason]})"
            )
        if reason == "caption_not_utf8":
            return f"{n} captions were not UTF-8 text (first: {self.first[reason]})"
        if reason == "other":
            classes = ", ".join(self.unexpected)
            return f"{n} raised unexpected errors ({classes}; first: {self.first[reason]})"
        head = "every image failed to decode" if every else f"{n} images failed to decode"
        if reason == "truncated_image":
            return (
                f"{head} (first error: {self.first[reason]}); the files end early: are the shards complete?"
            )
        return f"{head} (first error: {self.first[reason]}); check the shards' `{cfg.image_key}` members"

    def _hint(self, key: str, likely: tuple[str, ...]) -> str:
        held = sorted(self.members)
        if not held:
            return ""
        candidates = [m for m in likely if m in self.members]
        if candidates:
            best = max(candidates, key=lambda m: self.members[m])
            return f"; the shards hold {_backticked(held)} (set data.{key}={best})"
        what = "image" if key == "image_key" else "caption"
        return f"; the shards hold {_backticked(held)} and no {what} member: check data.train_shards / data.sources"
