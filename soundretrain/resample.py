"""One resampler shared by training and the exported graph: a fixed polyphase filter.

A model whose modules hear different sample rates (``aisfx`` at 44.1 kHz, ``soundnet``
and the spectrograms at 22,050 Hz) takes one rate; every module at another rate gets
the window resampled by this filter. The bottleneck stage and ``label_image`` run the
numpy form (:func:`resample`), the audio-in model the TensorFlow form
(:func:`resample_tf`), built from the very same table (:func:`polyphase`), so training
and the exported model cannot drift apart (soxr in training and another filter in the
graph changed 2 % of the spectrogram pixels: docs/backbones.md).

The filter is a Kaiser-windowed sinc with resampy's ``kaiser_best`` parameters (64 zero
crossings each side, beta 14.77, roll-off 0.9476: the pass band ends at 94.8 % of the
lower rate's Nyquist frequency, the stop band starts there and is attenuated by more than
120 dB). Changing them changes :data:`RESAMPLER`, which names the filter in sidecars and
bottleneck keys.

For ``up / down = sr_out / sr_in`` in lowest terms, output sample ``t * up + r`` is a dot
product of input samples ``t * down + j`` with phase ``r``'s taps, so the whole resampler
is one strided convolution: ``up`` output channels, stride ``down``, the taps of every
phase side by side in one kernel (``[width, up]``), then the channels interleaved. In
TFLite that is one ``CONV_2D`` and two reshapes.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

ZERO_CROSSINGS = 64
KAISER_BETA = 14.769656459379492
ROLLOFF = 0.9475937167399596
#: Names the filter (recorded in sidecars and bottleneck cache keys).
RESAMPLER = f"kaiser-polyphase-z{ZERO_CROSSINGS}-b{KAISER_BETA:.4f}-r{ROLLOFF:.4f}"
#: Output samples per numpy matrix product (bounds memory on long recordings).
_CHUNK = 1 << 14


@dataclass(frozen=True)
class Polyphase:
    """The resampler from ``up * g`` Hz to ``down * g`` Hz: ``kernel[w, r]`` is the tap
    of phase ``r`` on input sample ``t * down + w - left`` for output ``t * up + r``."""

    up: int
    down: int
    kernel: np.ndarray  # float32 [width, up]
    left: int  # zeros before the first input sample

    @property
    def width(self) -> int:
        return int(self.kernel.shape[0])

    def num_out(self, num_in: int) -> int:
        """``ceil(num_in * up / down)``: the length :func:`resample` gives by default."""
        return -(-num_in * self.up // self.down)

    def padding(self, num_in: int, num_out: int) -> tuple[int, int, int]:
        """``(left, right, frames)``: zeros around the input and output frames of ``up``
        samples needed for ``num_out`` outputs."""
        frames = -(-num_out // self.up)
        need = (frames - 1) * self.down + self.width
        return self.left, max(0, need - self.left - num_in), frames


def prototype(up: int, down: int) -> np.ndarray:
    """The low-pass filter at ``up`` times the input rate (float64, odd length, centred,
    unit gain in the pass band): the windowed sinc every phase is taken from."""
    widest = max(up, down)
    half = int(math.ceil(ZERO_CROSSINGS * widest / ROLLOFF))
    n = np.arange(-half, half + 1, dtype=np.float64)
    cutoff = ROLLOFF / widest  # of the high rate's Nyquist frequency
    return cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half + 1, KAISER_BETA)


@functools.lru_cache(maxsize=32)
def polyphase(sr_in: int, sr_out: int) -> Polyphase:
    """The kernel of the resampler from ``sr_in`` to ``sr_out`` Hz (cached)."""
    sr_in, sr_out = int(sr_in), int(sr_out)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, not {sr_in} and {sr_out}")
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    h = prototype(up, down) * up  # up: the zeros stuffed between input samples
    centre = (len(h) - 1) // 2
    # y[t*up + r] = sum_j x[t*down + j] * h[r*down + centre - j*up]
    lo = -(centre // up)
    hi = ((up - 1) * down + centre) // up
    kernel = np.zeros((hi - lo + 1, up), np.float64)
    for r in range(up):
        j = np.arange(lo, hi + 1)
        k = r * down + centre - j * up
        ok = (k >= 0) & (k < len(h))
        kernel[ok, r] = h[k[ok]]
    # Trim all-zero rows at either end (taps no phase uses).
    used = np.flatnonzero(np.any(kernel != 0, axis=1))
    kernel = kernel[used[0]: used[-1] + 1]
    return Polyphase(up, down, kernel.astype(np.float32), left=-(lo + int(used[0])))


def resample(y: np.ndarray, sr_in: int, sr_out: int, num_samples: Optional[int] = None) -> np.ndarray:
    """``y`` (float32 ``[..., samples]``) from ``sr_in`` to ``sr_out`` Hz, along the last
    axis; ``num_samples`` outputs (default ``ceil(samples * sr_out / sr_in)``), the signal
    taken as zero outside ``y``."""
    y = np.asarray(y, dtype=np.float32)
    if int(sr_in) == int(sr_out):
        return _fit(y, num_samples)
    p = polyphase(sr_in, sr_out)
    num_in = y.shape[-1]
    num_out = p.num_out(num_in) if num_samples is None else int(num_samples)
    left, right, frames = p.padding(num_in, num_out)
    lead = y.shape[:-1]
    flat = y.reshape(-1, num_in)
    out = np.empty((flat.shape[0], frames * p.up), np.float32)
    for i, row in enumerate(flat):
        padded = np.concatenate([np.zeros(left, np.float32), row, np.zeros(right, np.float32)])
        view = np.lib.stride_tricks.sliding_window_view(padded, p.width)[:: p.down]
        for s in range(0, frames, _CHUNK):
            block = view[s: min(s + _CHUNK, frames)]
            out[i, s * p.up: (s + len(block)) * p.up] = (block @ p.kernel).reshape(-1)
    return out[:, :num_out].reshape(*lead, num_out)


def resample_tf(y, sr_in: int, sr_out: int, num_samples: Optional[int] = None):
    """:func:`resample` as TensorFlow ops for ``y`` float32 ``[N, samples]`` with a known
    number of samples: one strided convolution (TFLite ``CONV_2D``) whose kernel is kept
    exact under TFLite's quantisers (:func:`soundretrain.render_tf.exact`)."""
    import tensorflow as tf

    from soundretrain.render_tf import exact

    num_in = y.shape[1]
    if num_in is None:
        raise ValueError("resample_tf needs a known number of samples per row")
    num_in = int(num_in)
    if int(sr_in) == int(sr_out):
        return _fit_tf(y, num_samples)
    p = polyphase(sr_in, sr_out)
    num_out = p.num_out(num_in) if num_samples is None else int(num_samples)
    left, right, frames = p.padding(num_in, num_out)
    x = tf.pad(y, [[0, 0], [left, right]])[:, : (frames - 1) * p.down + p.width, tf.newaxis]
    out = tf.nn.conv1d(x, exact(p.kernel[:, np.newaxis, :], y), stride=p.down, padding="VALID")
    return tf.reshape(out, [-1, frames * p.up])[:, :num_out]


def _fit(y: np.ndarray, num_samples: Optional[int]) -> np.ndarray:
    if num_samples is None or y.shape[-1] == num_samples:
        return y
    if y.shape[-1] > num_samples:
        return y[..., :num_samples]
    return np.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, num_samples - y.shape[-1])])


def _fit_tf(y, num_samples: Optional[int]):
    import tensorflow as tf

    n = int(y.shape[1])
    if num_samples is None or n == num_samples:
        return y
    if n > num_samples:
        return y[:, :num_samples]
    return tf.pad(y, [[0, 0], [0, num_samples - n]])


__all__ = ["RESAMPLER", "Polyphase", "polyphase", "prototype", "resample", "resample_tf"]
