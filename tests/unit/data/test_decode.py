"""The fast decode transforms give open_clip's pixels (exactly without a draft, closely with one)."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from bmca_clip.data.transforms import (
    FastEvalTransform,
    FastTrainTransform,
    draft_size_for,
    from_open_clip,
    normalize_on_device,
)


def _encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _figure(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradient + blobby texture + grain + a bright square: smooth areas, edges and fine detail."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 180, width, dtype=np.float32)
    y = np.linspace(0, 120, height, dtype=np.float32)[:, None]
    img = np.stack([x + y, 200 - y + 0 * x, 60 + x / 2 + 0 * y], axis=-1)
    blobs = Image.fromarray(rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8))
    img += (np.asarray(blobs.resize((width, height), Image.Resampling.BICUBIC), np.float32) - 128) / 3
    img += rng.normal(0, 5, (height, width, 1))
    img[height // 3 : height // 2, width // 4 : width // 2] = 250
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def small_jpeg() -> bytes:
    return _encode(_figure(300, 260))  # < 2x the 224 px input: never drafted


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    return _encode(_figure(1500, 1200, seed=1))


def _seeded(fn, data, seed):
    torch.manual_seed(seed)
    return fn(data)


def _close(drafted: torch.Tensor, full: torch.Tensor) -> bool:
    """Drafted vs full-size decode of the same region, in uint8 levels. DCT scaling + bicubic vs bicubic alone
    measured: mean 0.35-0.55, 0.1-0.5% of values off by > 4, max 15 (ringing at the bright square's edges)."""
    diff = (drafted - full).abs()
    return drafted.shape == full.shape and diff.mean() < 1.0 and (diff > 4).float().mean() < 0.01


def _open_clip_train(data: bytes, seed: int, size=224) -> torch.Tensor:
    transform = open_clip.image_transform(size, is_train=True)
    return _seeded(transform, Image.open(io.BytesIO(data)).convert("RGB"), seed)


@pytest.mark.parametrize("size", [224, (160, 192)])
def test_train_output_is_contiguous_uint8_chw(small_jpeg, size):
    out = _seeded(FastTrainTransform(size), small_jpeg, 0)
    h, w = (size, size) if isinstance(size, int) else size
    assert out.shape == (3, h, w) and out.dtype == torch.uint8 and out.is_contiguous()
    tiny = _seeded(FastTrainTransform(size), _encode(_figure(100, 80)), 0)  # upsampled, like open_clip
    assert tiny.shape == (3, h, w)


@pytest.mark.parametrize("kind", ["jpeg", "grayscale-jpeg", "png"])
def test_train_equals_open_clip_without_draft(small_jpeg, kind):
    data = {
        "jpeg": small_jpeg,
        "grayscale-jpeg": _encode(_figure(300, 260).convert("L")),
        "png": _encode(_figure(700, 500), "PNG"),  # large, but PNG cannot be drafted
    }[kind]
    t = FastTrainTransform(224)
    for seed in range(4):
        ours = normalize_on_device(_seeded(t, data, seed)[None], t.mean, t.std)[0]
        # Same crop box, same PIL resize, same float32 ops: equal up to float rounding.
        assert (ours - _open_clip_train(data, seed)).abs().max() <= 1e-6


def test_large_jpeg_is_decoded_smaller_and_close(large_jpeg):
    t, full = FastTrainTransform(224), FastTrainTransform(224, draft=False)
    for seed in range(4):
        img, (left, top, right, bottom) = _seeded(t.decode, large_jpeg, seed)
        # scale >= 0.9 keeps every crop >= 896 px = 4 x 224 on both sides: a 1/4 decode, 1/16 of the pixels
        assert img.size == (375, 300)
        assert right - left >= 224 and bottom - top >= 224  # the crop is still downsampled, never upsampled
        fast = _seeded(t, large_jpeg, seed).float()
        slow = _seeded(full, large_jpeg, seed).float()
        assert _close(fast, slow)  # same crop (drawn from the header), only the downsampling filter differs
        ours = normalize_on_device(fast[None].to(torch.uint8), t.mean, t.std)[0]
        # measured 0.0075 in normalised units (0.5 levels / 255 / std ~ 0.27)
        assert (ours - _open_clip_train(large_jpeg, seed)).abs().mean() < 0.02


@pytest.mark.parametrize("size", [(1500, 1200), (4000, 300), (513, 2049), (300, 260)])
def test_draft_never_adds_upsampling(size):
    """With PIL's own choice of scale, a crop that was >= the target stays >= it; none is lost needlessly."""
    data = _encode(Image.new("RGB", size, (90, 120, 200)))
    rng = np.random.default_rng(0)
    for _ in range(20):
        region = (float(rng.uniform(100, size[0])), float(rng.uniform(100, size[1])))
        request = draft_size_for(size, region, (224, 224))
        img = Image.open(io.BytesIO(data))
        k = 1 if request is None else size[0] / img.draft("RGB", request)[1][2]  # box: full image, drafted
        assert k in (1, 2, 4, 8)
        assert img.size == (math.ceil(size[0] / k), math.ceil(size[1] / k))
        if min(region) >= 224:
            assert min(region) / k >= 224
        if k < 8:  # the next reduction would have taken the crop below the target
            assert min(region[0], region[1]) / (2 * k) < 224


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 64], ids=["empty", "text", "header"]
)
def test_bad_bytes_raise_oserror(data):
    with pytest.raises(OSError):
        FastTrainTransform(224)(data)


def test_truncated_jpeg_raises_oserror(large_jpeg):
    for draft in (True, False):
        with pytest.raises(OSError):
            _seeded(FastTrainTransform(224, draft=draft), large_jpeg[: len(large_jpeg) // 2], 0)


def test_seeded_crops_are_reproducible_and_vary(large_jpeg):
    t = FastTrainTransform(224)
    assert torch.equal(_seeded(t, large_jpeg, 7), _seeded(t, large_jpeg, 7))
    assert not torch.equal(_seeded(t, large_jpeg, 7), _seeded(t, large_jpeg, 8))


def test_transforms_pickle(large_jpeg):
    for t in (FastTrainTransform(224, scale=(0.5, 1.0)), FastEvalTransform(224, resize_mode="longest")):
        clone = pickle.loads(pickle.dumps(t))
        assert torch.equal(_seeded(clone, large_jpeg, 3), _seeded(t, large_jpeg, 3))


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_eval_equals_open_clip(small_jpeg, large_jpeg, resize_mode):
    t = FastEvalTransform(224, resize_mode=resize_mode)
    reference = open_clip.image_transform(224, is_train=False, resize_mode=resize_mode)
    ours = normalize_on_device(t(small_jpeg)[None], t.mean, t.std)[0]
    assert (ours - reference(Image.open(io.BytesIO(small_jpeg)).convert("RGB"))).abs().max() <= 1e-6
    full = FastEvalTransform(224, resize_mode=resize_mode, draft=False)(large_jpeg)
    assert _close(t(large_jpeg).float(), full.float())


def test_from_open_clip_matches_model_transforms(small_jpeg):
    model, train_ref, eval_ref = open_clip.create_model_and_transforms("bmca-tiny")
    pil = Image.open(io.BytesIO(small_jpeg)).convert("RGB")
    train = from_open_clip(model, is_train=True, draft=False)
    assert train.size == (32, 32) and train.mean == tuple(model.visual.preprocess_cfg["mean"])
    ours = normalize_on_device(_seeded(train, small_jpeg, 5)[None], train.mean, train.std)[0]
    assert (ours - _seeded(train_ref, pil, 5)).abs().max() <= 1e-6
    evaluate = from_open_clip(model.visual.preprocess_cfg, is_train=False)  # drafted: 260 px >= 4 x 32
    assert (evaluate.normalize(evaluate(small_jpeg)[None])[0] - eval_ref(pil)).abs().mean() < 0.05
    with pytest.raises(ValueError, match="gray_scale_prob"):
        from_open_clip(model, aug_cfg={"gray_scale_prob": 0.2})


def test_normalize_on_device_values_dtype_and_input_check():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 4, 2).contiguous()
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    out = normalize_on_device(images, mean, std, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == images.shape
    expected = torch.tensor([[-1.0, 1.0], [-1.0, 3.0], [0.0, 1.0]]).view(1, 3, 1, 2).expand(2, 3, 4, 2)
    assert torch.equal(out.float(), expected)
    with pytest.raises(TypeError, match="uint8"):
        normalize_on_device(images.float(), mean, std)
