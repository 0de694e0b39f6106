"""Fast image transforms for the data loader: JPEG bytes -> uint8 [3, H, W], normalised later on the device.

`FastTrainTransform` and `FastEvalTransform` reproduce open_clip's train and eval transforms (the same crop
and resize, the same random draws from torch's global RNG) with three changes that keep GPUs fed:

- the random crop is drawn from the JPEG header alone, before decoding, so the decoder can be told how much
  it may shrink the image: `PIL.Image.draft` makes libjpeg decode at 1/2, 1/4 or 1/8 scale by DCT scaling,
  which skips most of the inverse-DCT work and leaves far fewer pixels to resize (see `draft_size_for`);
- workers return uint8 tensors (a quarter of float32's bytes through shared memory and host-to-device);
- `normalize_on_device` does ToTensor's /255 and Normalize on the whole batch, where the model runs.

Without a draft (small images, non-JPEG bytes, `draft=False`) the pixels equal open_clip's exactly: same
PIL crop and resize, and the normalisation is the same float32 arithmetic. Images wider than 8 bits per
channel go through decode.py's `to_rgb8`, as on every other image path.
"""

from __future__ import annotations

import functools
import io
import numbers
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from open_clip import get_model_preprocess_cfg
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import (
    AugmentationCfg,
    PreprocessCfg,
    ResizeKeepRatio,
    center_crop_or_pad,
    merge_preprocess_dict,
)
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from bmca_clip.data.decode import to_rgb8

Box = tuple[float, float, float, float]

# open_clip's train transform: RandomResizedCrop(scale=AugmentationCfg().scale) with torchvision's default
# ratio; open_clip passes no ratio, and only its timm path reads AugmentationCfg.ratio.
DEFAULT_SCALE = tuple(AugmentationCfg().scale)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_RESIZE_MODES = ("shortest", "longest", "squash")


def draft_size_for(
    image_size: tuple[int, int], region_size: tuple[float, float], out_size: tuple[int, int]
) -> tuple[int, int] | None:
    """The size to pass to `Image.draft` so that a region of the image still covers `out_size` pixels.

    All sizes are (width, height) in pixels of the full image, except `out_size`, the size the region is
    resized to. Returns None when no JPEG reduction (1/2, 1/4, 1/8) keeps the region at >= `out_size`.
    """
    width, height = image_size
    region_w, region_h = region_size
    out_w, out_h = out_size
    # The largest power-of-two factor k at which the region, k times smaller, still spans >= out_size: the
    # resize after it then only shrinks, as it does at full size. A region that is already smaller than
    # out_size (upsampled even without a draft) gets k = 1: a draft never adds upsampling.
    k = 1
    while k < 8 and region_w >= 2 * k * out_w and region_h >= 2 * k * out_h:
        k *= 2
    if k == 1:
        return None
    # PIL's JpegImageFile.draft picks the largest s in {1, 2, 4, 8} with s <= min(W // w, H // h). For
    # w = W // k: k <= W // w < 2k (as W // k >= 1), so it picks exactly k, and decodes ceil(W / k) pixels.
    return width // k, height // k


def _resample(interpolation: str) -> Image.Resampling:
    # open_clip accepts 'random' but treats it as bicubic (transform.py, image_transform)
    if interpolation not in (*_RESAMPLE, "random"):
        raise ValueError(f"interpolation={interpolation!r}: expected one of 'bicubic', 'bilinear', 'random'")
    return _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC)


def _size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, numbers.Number):
        return int(image_size), int(image_size)
    if len(image_size) == 1:
        return int(image_size[0]), int(image_size[0])
    return int(image_size[-2]), int(image_size[-1])


def _triple(value: float | Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, Sequence) else (float(value),) * 3


def _load_rgb(img: Image.Image, request: tuple[int, int] | None) -> tuple[Image.Image, int]:
    """Decode `img` (reduced by a draft if `request` is set and the format allows) as RGB; -> (image, k)."""
    k = 1
    if request is not None:
        full_width = img.width
        drafted = img.draft("RGB", request)  # None for formats the decoder cannot scale (PNG, ...)
        if drafted is not None:
            k = round(
                full_width / drafted[1][2]
            )  # the full image spans (0, 0, W / k, H / k) of the decoded one
    if img.mode != "RGB":
        return to_rgb8(img), k
    img.load()  # convert("RGB") of an RGB image would only copy it; load() raises OSError on bad data
    return img, k


def _to_uint8_chw(img: Image.Image) -> torch.Tensor:
    # numpy's transposing copy is writable and contiguous: no read-only-array warning from torch
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))


class FastTrainTransform:
    """JPEG bytes -> uint8 [3, H, W] crop, drawn like open_clip's train transform (RandomResizedCrop).

    The crop draws from torch's global CPU generator: seed it per sample for reproducible crops
    (`torch.default_generator.manual_seed(s)` is enough, and ~1 ms cheaper than `torch.manual_seed` in a
    process without CUDA initialised). Picklable, for DataLoader workers.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        mean: float | Sequence[float] = OPENAI_DATASET_MEAN,
        std: float | Sequence[float] = OPENAI_DATASET_STD,
        interpolation: str = "bicubic",
        scale: Sequence[float] = DEFAULT_SCALE,
        ratio: Sequence[float] = DEFAULT_RATIO,
        draft: bool = True,
    ):
        self.size = _size_hw(image_size)
        self.mean, self.std = _triple(mean), _triple(std)
        self.interpolation, self.resample = interpolation, _resample(interpolation)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.draft = draft

    def decode(self, jpeg_bytes: bytes) -> tuple[Image.Image, Box]:
        """Draw the crop, decode as small as it allows; -> (RGB image, crop box in its pixels)."""
        img = Image.open(io.BytesIO(jpeg_bytes))
        # get_params reads only img.size, which the header gives: the draws (and so the crop, in full-size
        # pixels) are those open_clip makes on the decoded image, whatever size we decode at. So the draft
        # is sized for this very crop, not for the smallest crop that the scale range allows.
        top, left, h, w = RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
        out_wh = self.size[::-1]
        request = draft_size_for(img.size, (w, h), out_wh) if self.draft else None
        img, k = _load_rgb(img, request)
        return img, (left / k, top / k, (left + w) / k, (top + h) / k)

    def __call__(self, jpeg_bytes: bytes) -> torch.Tensor:
        img, box = self.decode(jpeg_bytes)
        out_wh = self.size[::-1]
        if all(float(v).is_integer() for v in box):
            # torchvision's resized_crop on PIL: crop, then resize; filters stop at the crop's edges
            img = img.crop(tuple(int(v) for v in box)).resize(out_wh, self.resample)
        else:  # a drafted box can fall between pixels; resize(box=) takes it exactly, without rounding
            img = img.resize(out_wh, self.resample, box=box)
        return _to_uint8_chw(img)

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`normalize_on_device` with this transform's mean and std."""
        return normalize_on_device(images, self.mean, self.std, dtype)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"interpolation={self.interpolation!r}, draft={self.draft})"
        )


class FastEvalTransform:
    """JPEG bytes -> uint8 [3, H, W], like open_clip's eval transform (resize per `resize_mode`, centre crop)."""

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        mean: float | Sequence[float] = OPENAI_DATASET_MEAN,
        std: float | Sequence[float] = OPENAI_DATASET_STD,
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        fill_color: int = 0,
        draft: bool = True,
    ):
        if resize_mode not in _RESIZE_MODES:
            raise ValueError(f"resize_mode={resize_mode!r}: expected one of {_RESIZE_MODES}")
        self.size = _size_hw(image_size)
        self.mean, self.std = _triple(mean), _triple(std)
        self.interpolation, self.resample = interpolation, _resample(interpolation)
        self.resize_mode, self.fill_color, self.draft = resize_mode, fill_color, draft

    def resize_size(self, img: Image.Image) -> tuple[int, int]:
        """(width, height) open_clip's eval transform resizes `img` to before its centre crop."""
        th, tw = self.size
        if self.resize_mode == "squash":
            return tw, th
        if self.resize_mode == "shortest" and th == tw:
            # torchvision Resize(int): the short side becomes th, the long one is truncated, not rounded
            if img.width <= img.height:
                return th, int(th * img.height / img.width)
            return int(th * img.width / img.height), th
        longest = 1.0 if self.resize_mode == "longest" else 0.0
        h, w = ResizeKeepRatio.get_params(img, self.size, longest)
        return w, h

    def __call__(self, jpeg_bytes: bytes) -> torch.Tensor:
        img = Image.open(io.BytesIO(jpeg_bytes))
        width, height = img.size
        out_wh = self.resize_size(img)
        request = draft_size_for(img.size, img.size, out_wh) if self.draft else None
        img, k = _load_rgb(img, request)
        img = img.resize(out_wh, self.resample, box=(0, 0, width / k, height / k))
        if self.resize_mode != "squash":
            img = center_crop_or_pad(img, list(self.size), fill=self.fill_color)
        return _to_uint8_chw(img)

    normalize = FastTrainTransform.normalize

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, resize_mode={self.resize_mode!r}, "
            f"interpolation={self.interpolation!r}, draft={self.draft})"
        )


def from_open_clip(
    preprocess_cfg_or_model,
    is_train: bool = True,
    aug_cfg: dict | AugmentationCfg | None = None,
    draft: bool = True,
) -> FastTrainTransform | FastEvalTransform:
    """The fast transform matching what `open_clip.create_model_and_transforms` builds for this model.

    Takes an open_clip model (its `visual.preprocess_cfg`), a preprocess dict or a `PreprocessCfg`.
    """
    source = preprocess_cfg_or_model
    if isinstance(source, torch.nn.Module):
        source = get_model_preprocess_cfg(source)
    elif isinstance(source, PreprocessCfg):
        source = asdict(source)
    cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), source))
    if not is_train:
        return FastEvalTransform(
            cfg.size, cfg.mean, cfg.std, cfg.interpolation, cfg.resize_mode, cfg.fill_color, draft
        )
    aug = AugmentationCfg(**aug_cfg) if isinstance(aug_cfg, dict) else aug_cfg or AugmentationCfg()
    unsupported = [
        k for k in ("use_timm", "color_jitter_prob", "gray_scale_prob", "re_prob") if getattr(aug, k)
    ]
    if unsupported:
        raise ValueError(
            f"aug_cfg sets {unsupported}: FastTrainTransform does only open_clip's default augmentation "
            "(RandomResizedCrop); drop these keys or use open_clip's own transform"
        )
    # open_clip's train transform is bicubic whatever cfg.interpolation says (transform.py, image_transform)
    return FastTrainTransform(cfg.size, cfg.mean, cfg.std, "bicubic", aug.scale, DEFAULT_RATIO, draft)


@functools.lru_cache(maxsize=32)
def _stats_on(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch would be a host-to-device copy on every step.
    as_t = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_t(mean).view(-1, 1, 1), as_t(std).view(-1, 1, 1)


def normalize_on_device(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 [B, 3, H, W] (or [3, H, W]) on any device -> (images / 255 - mean) / std as `dtype`, same device.

    The arithmetic is float32 and in the order of ToTensor + Normalize, so it equals open_clip's transform.
    """
    if images.dtype != torch.uint8:
        raise TypeError(
            f"normalize_on_device expects uint8 images (from FastTrainTransform/FastEvalTransform), got "
            f"{images.dtype}; images already normalised must not be normalised again"
        )
    mean_t, std_t = _stats_on(_triple(mean), _triple(std), images.device)
    out = images.to(torch.float32).div_(255).sub_(mean_t).div_(std_t)
    return out if dtype == torch.float32 else out.to(dtype)
