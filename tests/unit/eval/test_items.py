"""Image items (bmca_clip/eval/items.py): 16-bit images are stretched to RGB, not clipped."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bmca_clip.eval.items import to_rgb


def test_wide_images_are_stretched_not_clipped():
    wide = Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16))
    assert wide.mode.startswith("I;16")
    assert np.asarray(to_rgb(wide))[..., 0].tolist() == [[0, 64], [128, 255]]
