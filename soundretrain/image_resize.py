"""Bilinear resizing as explicit taps, so numpy and TensorFlow run the same function.

Pillow's bilinear resize is a separable filter: each output pixel of a row is a weighted
sum of a few input pixels, with weights from a triangle filter (widened when shrinking,
so it antialiases). :func:`taps` computes exactly Pillow's weights (``precompute_coeffs``
in ``Resample.c``); the resize is then a gather, a multiply and a sum along one axis,
first the width, then the height, as Pillow does.

* :func:`resize_float32` resizes a float image in float32 arithmetic. The spectrogram
  renderer uses it (it used Pillow's mode ``"F"``, which sums in double precision and so
  cannot be reproduced by a float32 graph); :mod:`soundretrain.render_tf` runs the same
  taps as TensorFlow ops.
* :func:`resize_uint8` is Pillow's 8-bit resize of RGB images bit for bit (22-bit fixed
  point weights, rounding after each pass), in integers that TensorFlow reproduces exactly.

The taps are the same tables for both sides, so the two paths differ only by float
rounding (float32) or not at all (uint8).
"""
from __future__ import annotations

import functools
import math

import numpy as np

#: Pillow's fixed-point precision for 8-bit images (``32 - 8 - 2``).
PRECISION_BITS = 22


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


@functools.lru_cache(maxsize=64)
def taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear weights for resizing ``in_size`` pixels to ``out_size``.

    Returns ``(index, weight)``, both ``[out_size, K]``: output pixel ``i`` is
    ``sum_k weight[i, k] * input[index[i, k]]``. Unused taps have weight 0 (and a valid
    index), so every row can be gathered as a rectangle. Weights are float64, normalised
    to sum to 1 per row, exactly as Pillow computes them.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, not {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), np.int32)
    weight = np.zeros((out_size, ksize), np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero
        xmax = min(int(center + support + 0.5), in_size) - xmin
        x = np.arange(xmax)
        w = _triangle((x + xmin - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        index[i, :xmax] = xmin + x
        index[i, xmax:] = xmin
        weight[i, :xmax] = w
    # Pillow's ksize is generous: drop the trailing columns no row uses.
    keep = max(1, int(max((np.nonzero(row)[0].max() + 1) if row.any() else 1 for row in weight)))
    index, weight = index[:, :keep].copy(), weight[:, :keep].copy()
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def fixed_point_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`taps` with the weights as Pillow's 8-bit path rounds them: int32 in units of
    ``2**-PRECISION_BITS`` (``normalize_coeffs_8bpc``)."""
    index, weight = taps(in_size, out_size)
    scaled = weight * (1 << PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return index, fixed


def _apply(x: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Sum over taps along ``axis``, tap by tap (the order the TensorFlow twin uses)."""
    out = None
    for k in range(index.shape[1]):
        term = np.take(x, index[:, k], axis=axis)
        shape = [1] * x.ndim
        shape[axis] = -1
        term = term * weight[:, k].reshape(shape)
        out = term if out is None else out + term
    return out


def resize_float32(v: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of float ``v`` ``[..., H, W]`` to ``[..., height, width]`` in float32
    (Pillow's weights; width first, then height)."""
    v = np.asarray(v, dtype=np.float32)
    if v.shape[-1] != width:
        index, weight = taps(v.shape[-1], width)
        v = _apply(v, v.ndim - 1, index, weight.astype(np.float32))
    if v.shape[-2] != height:
        index, weight = taps(v.shape[-2], height)
        v = _apply(v, v.ndim - 2, index, weight.astype(np.float32))
    return v


def _round_fixed(acc: np.ndarray) -> np.ndarray:
    """Pillow's ``clip8``: add half, shift out the fraction, clip to 0..255."""
    return np.clip((acc + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, 0, 255)


def resize_uint8(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's bilinear resize of uint8 ``[H, W, C]``, bit for bit: the width pass, then the
    height pass, as Pillow <= 12 always did (Pillow 13 may run the height first).

    int32 is enough: the weights of a row sum to ``2**22``, so a sum stays below
    ``255 * 2**22 + 2**21 < 2**31``."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"resize_uint8 takes uint8 pixels, not {rgb.dtype}")
    x = rgb.astype(np.int32)
    if x.shape[1] != width:
        index, weight = fixed_point_taps(x.shape[1], width)
        x = _round_fixed(_apply(x, 1, index, weight))
    if x.shape[0] != height:
        index, weight = fixed_point_taps(x.shape[0], height)
        x = _round_fixed(_apply(x, 0, index, weight))
    return x.astype(np.uint8)
