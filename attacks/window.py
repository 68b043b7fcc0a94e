"""The rows and columns of a photo its scorer can see: where a Linf attack's updates can land.

A centre crop after the resize (the tagger's 256 -> 224, CLIP's short-side resize + square crop)
means part of a photo never reaches the model: its gradient is exactly zero, ``sign`` of it is
zero, and PGD / APGD leave those pixels where the random start put them. Updating them anyway is
a full-resolution pass per operation for nothing (about half of a 3:2 photo under the tagger), so
``RowPGD`` and ``RowAPGD`` update only the ``support`` window, a superset of the pixels with any
weight in the crop. The result is the same bits: outside it every update is ``x + 0``, clamped
to a box ``x`` is in (``tests/test_attack_batching.py`` checks both on real photos).

The window follows ``PixelPreprocess``'s geometry per axis: the output rows kept by the crop(s),
mapped back through the resize with the kernel's reach, ``2 * max(scale, 1)`` input pixels for
bicubic with antialiasing (bilinear and nearest reach less), plus 2 pixels of margin.
"""

from __future__ import annotations

import math

import torch

from tools.scorers.base import PixelPreprocess

Window = tuple[int, int, int, int]
"""(top, bottom, left, right), Python slice bounds."""

MARGIN = 2


def crop_offset(size: int, target: int) -> int:
    """``center_crop_or_pad`` along one axis: output index j reads input index j + offset."""
    pad = max(target - size, 0)
    return (size + pad - target) // 2 - pad // 2


def axis_support(size: int, resized: int, crops: list[int]) -> tuple[int, int]:
    """Input index range [start, stop) of one axis that reaches the kept output range."""
    offset, extent = 0, resized
    for target in crops:  # successive centre crops / pads of the resized axis
        offset += crop_offset(extent, target)
        extent = target
    first, last = max(offset, 0), min(offset + extent, resized) - 1  # kept resized indices
    if last < first:
        return 0, 0
    if resized == size:
        return max(first - MARGIN, 0), min(last + 1 + MARGIN, size)
    scale = size / resized
    reach = 2 * max(scale, 1.0) + MARGIN
    start = math.floor((first + 0.5) * scale - 0.5 - reach)
    stop = math.ceil((last + 0.5) * scale - 0.5 + reach) + 1
    return max(start, 0), min(stop, size)


def support(preprocess: PixelPreprocess | None, height: int, width: int) -> Window:
    """The window of an (height, width) image that ``preprocess`` can see (all of it without one)."""
    if preprocess is None:
        return (0, height, 0, width)
    resized_h, resized_w = preprocess.resized_shape(height, width)
    crops_h: list[int] = []
    crops_w: list[int] = []
    if preprocess.resize_mode == "longest":
        crops_h.append(preprocess.size)  # type: ignore[arg-type]
        crops_w.append(preprocess.size)  # type: ignore[arg-type]
    if preprocess.crop_size is not None:
        crops_h.append(preprocess.crop_size[0])
        crops_w.append(preprocess.crop_size[1])
    top, bottom = axis_support(height, resized_h, crops_h)
    left, right = axis_support(width, resized_w, crops_w)
    return (top, bottom, left, right)


def view(tensor: torch.Tensor, window: Window) -> torch.Tensor:
    """The window of a (..., H, W) tensor, as a view (writes land in ``tensor``)."""
    top, bottom, left, right = window
    return tensor[..., top:bottom, left:right]
