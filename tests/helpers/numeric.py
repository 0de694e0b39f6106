"""Float comparisons that hold on every CPU and thread count.

fp32 sums change with the order they run in (thread count, SIMD width, the BLAS pip resolved), and the
rounding error of a sum is proportional to the magnitude of what is summed, not of the result. So the
absolute tolerance is scaled to the values involved: `atol = rel * scale`, where `scale` is the largest
magnitude in `expected` or, for a whole model's gradients, the largest over all of them (a gradient that is
exactly zero in theory, such as an attention key bias's, is pure rounding noise of that size). STYLE.md,
"Numeric tests".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def max_abs(tensors: Iterable[torch.Tensor]) -> float:
    """The largest magnitude over several tensors: the scale of a model's parameters or gradients."""
    return max((t.detach().abs().max().item() for t in tensors if t.numel()), default=0.0)


def assert_close_scaled(
    actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5, scale: float | None = None, msg=None
) -> None:
    """`actual` equals `expected` elementwise to `rel` relative, or to `rel * scale` absolute, where
    `scale` defaults to the largest magnitude in `expected`."""
    expected = expected.detach()
    if scale is None:
        scale = max_abs([expected])
    atol = rel * max(scale, torch.finfo(torch.float32).tiny)
    torch.testing.assert_close(
        actual.detach(), expected, rtol=rel, atol=atol, msg=(lambda m: f"{msg}: {m}") if msg else None
    )
