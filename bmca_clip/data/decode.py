"""Decoding one sample: tar members -> (image, caption), and any image's pixels as 8-bit RGB.

`SampleDecoder` turns one training sample's tar members into (image, caption), raising `UnusableSample`
(counted by the stream as skipped/<reason>) for a missing member or an empty caption; `PilTransform` wraps
any torchvision-style transform (open_clip's preprocess) as bytes -> tensor; transforms.py holds the fast
ones.

Images wider than 8 bits per channel (16-bit grayscale PNG/TIFF, 32-bit integer or float TIFF) are stretched
from their own min..max to 0..255 by `to_rgb8`, on the train paths and in the evaluation harness alike;
Pillow's own convert("RGB") clips them to 255, and a 16-bit image trains as pure white.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # more than 8 bits per pixel, one channel


def to_rgb8(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB; a wide grayscale image (WIDE_MODES) is stretched from its own min..max.

    Why its own range rather than the fixed 0..65535 of its container: biomedical 16-bit images mostly hold
    10 to 14 bits of sensor data (X-ray, CT windows, microscopy cameras), which a fixed scale turns nearly
    black, and float images have no fixed range at all. Stretching is how viewers (ImageJ's auto-contrast)
    and the figures BIOMEDICA is made of show them. The cost: absolute intensity between images is lost (a
    dim control looks as bright as a stained sample), and a constant image becomes black.
    """
    if img.mode in WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        low, high = values.min(), values.max()
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        img = Image.fromarray(scaled.round().astype(np.uint8), "L")
    return img.convert("RGB")


class UnusableSample(ValueError):
    """A sample that cannot be trained on whatever its image bytes: `reason` names the counter."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class SampleDecoder:
    """Raw tar members -> (image tensor, caption); augmentation is seeded from the sample's place."""

    image_fn: Callable[[bytes], torch.Tensor]
    image_key: str = "jpg"
    caption_key: str = "txt"

    def __call__(self, sample: dict, aug_seed: int) -> tuple[torch.Tensor, str]:
        if self.image_key not in sample:
            where = sample.get("__image_ref__")  # a table row (tables.py): the file or column looked at
            raise UnusableSample("missing_image", where or f"no {self.image_key!r} member")
        if self.caption_key not in sample:
            raise UnusableSample("missing_caption", f"no {self.caption_key!r} member")
        try:
            caption = sample[self.caption_key].decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise UnusableSample(
                "caption_not_utf8", f"the {self.caption_key!r} member is not UTF-8: {err}"
            ) from None
        if not caption:
            raise UnusableSample("empty_caption", f"the {self.caption_key!r} member is empty")
        # The random crop depends on the sample alone, not on what this process drew before: that is what
        # makes a resumed stream augment exactly as the uninterrupted one. fork_rng leaves the global RNG be.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(aug_seed)  # torch.manual_seed costs ~1 ms without CUDA
            return self.image_fn(sample[self.image_key]), caption


class PilTransform:
    """bytes -> PIL -> a torchvision-style transform (e.g. open_clip's preprocess); picklable."""

    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess

    def __call__(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as img:
            return self.preprocess(to_rgb8(img))
