"""The TensorFlow twin of :func:`soundretrain.render.render_clip`, for models that take sound.

An audio-in model (:mod:`soundretrain.audio_export`) carries the spectrogram front-end
inside its graph: a batch of waveform windows ``[N, num_samples]`` at the training
sample rate becomes the very images the model was trained on. Each step mirrors
:mod:`soundretrain.render`:

==========================  ==================================================================
render.py (numpy)           here (TensorFlow ops, all TFLite builtins)
==========================  ==================================================================
``power_stft``              centred zero padding, ``tf.signal.frame``, periodic Hann, ``rfft``
``_mel_basis`` product      the same filterbank as per-bin segment sums (no matmul: below)
``power_to_db`` ref = max   ``10 log10(max(mel, 1e-10))`` minus the window's maximum, ``top_db``
silent clip (``is_silent``) peak below ``SILENCE_PEAK``: every pixel ``-top_db``
``spectrogram_indices``     flip, scale to [0.5, 255.5], :func:`image_resize.taps` resize, truncate
``colormap_lut``            the same 256-entry table, gathered
``channel_plane`` (``db``,  one front-end per window length; the derivatives a 9-tap filter
``pcen``, ``delta``,        over edge-replicated frames; PCEN's smoother a lower-triangular
``delta2``; three channels  matrix product (its closed form); three planes stacked as red,
as red, green, blue)        green and blue instead of the colormap
==========================  ==================================================================

plus, for a backbone whose input size differs from the rendered image, Pillow's 8-bit
bilinear resize in exact integer arithmetic (:func:`soundretrain.image_resize.resize_uint8`),
and the input scaling ``(pixel - input_mean) / input_std``.

Quantised TFLite variants must not touch the front-end: the power spectrum spans 100 dB,
and ``float16`` constants or int8 matmul inputs (dynamic-range quantisation) would move
quiet bins, thresholds and colour steps. So the filterbank is gathers, multiplies and
segment sums rather than a matrix product, and every float constant is stored as its
int32 bits, reinterpreted at run time (:func:`exact`): both quantisers leave it alone, and
only the network's weights are quantised.

The resize is the same float32 tap-by-tap sum as :func:`image_resize.resize_float32`, so
given the same spectrogram both paths give the same bits; the STFT and logarithm differ
from numpy's by float rounding only (a colour index at a rounding boundary may move by
one step in a few pixels per image).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
import numpy as np

from soundretrain.audio import SILENCE_PEAK
from soundretrain.image_resize import fixed_point_taps, taps, PRECISION_BITS
from soundretrain import render
from soundretrain.render import _mel_basis, colormap_lut
from soundretrain.spectrogram_settings import SpectrogramSettings


@dataclass(frozen=True)
class MelLayer:
    """One layer of the mel filterbank seen from the FFT bins: bin ``k`` adds
    ``weight[k] * power[k]`` to band ``band[k]`` (``n_mels``, one past the last band, for
    bins this layer does not use)."""

    band: np.ndarray  # int32 [1 + n_fft // 2]
    weight: np.ndarray  # float32 [1 + n_fft // 2]


def mel_layers(settings: SpectrogramSettings) -> list[MelLayer]:
    """The mel filterbank of ``settings`` as per-bin layers for segment sums.

    Triangular mel filters overlap pairwise, so every FFT bin feeds at most two bands:
    the filterbank product is two multiplies and two segment sums (about 1 ms for the
    defaults in TFLite, against 7 ms for gathered taps), in float32 under every
    quantisation.
    """
    basis = _mel_basis(settings.sample_rate, settings.n_fft, settings.n_mels, float(settings.fmin), settings.fmax)
    by_bin = basis.tocsc()
    n_bins, n_mels = by_bin.shape[1], by_bin.shape[0]
    per_bin = np.diff(by_bin.indptr)
    layers = []
    for j in range(int(per_bin.max()) if n_bins else 0):
        band = np.full(n_bins, n_mels, np.int32)
        weight = np.zeros(n_bins, np.float32)
        has = per_bin > j
        band[has] = by_bin.indices[by_bin.indptr[:-1][has] + j]
        weight[has] = by_bin.data[by_bin.indptr[:-1][has] + j]
        layers.append(MelLayer(band, weight))
    return layers


class SpectrogramFrontEnd:
    """``render_clip`` as TensorFlow ops for windows of exactly ``settings.num_samples``.

    ``indices(y)`` gives the colormap indices (int32 ``[N, size, size]``), ``rgb(y)`` the
    pixels as float32 0..255, ``images(y, height, width, input_mean, input_std)`` what an
    image backbone takes. Resampling and cutting to length stay outside (the model's input
    is already one window at ``settings.sample_rate``).
    """

    def __init__(self, settings: SpectrogramSettings) -> None:
        self.settings = settings
        self.num_samples = int(settings.num_samples)
        n_fft, hop = int(settings.n_fft), int(settings.hop_length)
        padded = self.num_samples + 2 * (n_fft // 2)
        self._extra_pad = max(0, n_fft - padded)  # shorter than one frame: librosa pads to one
        self.frames = 1 + (padded + self._extra_pad - n_fft) // hop
        self.window = np.asarray(_hann(n_fft), np.float32)
        self.mel_layers = mel_layers(settings)
        size = int(settings.image_size)
        self.time_taps = tuple(np.asarray(t, np.float32) if t.dtype.kind == "f" else t for t in taps(self.frames, size))
        self.mel_taps = tuple(np.asarray(t, np.float32) if t.dtype.kind == "f" else t for t in taps(int(settings.n_mels), size))
        self.lut = colormap_lut(settings.colormap).astype(np.float32)
        # Channels other than today's one log-mel (settings.channels): one front-end per
        # window length; the frames (hop and duration) are the same for all of them.
        self.planes_needed = settings.channel_windows() != [("db", n_fft)]
        self._fronts = {n_fft: self}
        for _, n in settings.channel_windows():
            if n not in self._fronts:
                front = SpectrogramFrontEnd(dataclasses.replace(settings, n_fft=n, channels=("db",)))
                if front.frames != self.frames:
                    raise ValueError(f"window {n} gives {front.frames} frames, not {self.frames}: "
                                     "the clip is shorter than the window")
                self._fronts[n] = front

    # --- the steps -------------------------------------------------------------------

    def power_stft(self, y):
        """``|STFT|**2`` ``[N, frames, 1 + n_fft // 2]``, framed as ``render.power_stft``."""
        import tensorflow as tf

        n_fft, hop = int(self.settings.n_fft), int(self.settings.hop_length)
        y = tf.pad(y, [[0, 0], [n_fft // 2, n_fft // 2 + self._extra_pad]])
        frames = frame_static(y, n_fft, hop, self.frames) * exact(self.window, y)
        spectrum = tf.signal.rfft(frames, fft_length=[n_fft]) if _power_of_two(n_fft) else _rdft(frames, n_fft)
        if isinstance(spectrum, tuple):
            real, imag = spectrum
        else:
            real, imag = tf.math.real(spectrum), tf.math.imag(spectrum)
        return real * real + imag * imag

    def mel(self, y, magnitude: bool = False):
        """The mel spectrogram ``[N, frames, n_mels]`` of the power spectrum (or, for PCEN,
        of the magnitude), as ``render.mel_power`` (``render.pcen_mel``'s input)."""
        import tensorflow as tf

        spectrum = self.power_stft(y)
        if magnitude:
            spectrum = tf.sqrt(spectrum)
        power = tf.transpose(spectrum, [2, 0, 1])  # [F, N, T]: segments on axis 0
        n_mels = int(self.settings.n_mels)
        mel = None
        for layer in self.mel_layers:
            part = tf.math.unsorted_segment_sum(power * exact(layer.weight[:, None, None], y), layer.band, n_mels + 1)
            mel = part if mel is None else mel + part
        if mel is None:  # no bin in any band (refused by the settings' checks in practice)
            mel = tf.zeros([n_mels + 1, tf.shape(y)[0], self.frames], tf.float32)
        return tf.transpose(mel[:n_mels], [1, 2, 0])  # [N, T, M]

    def log_mel(self, y):
        """``S_db`` ``[N, n_mels, frames]`` in ``[-top_db, 0]``, as ``render.log_mel``."""
        import tensorflow as tf

        mel = self.mel(y)  # [N, T, M]
        top_db = float(self.settings.top_db)
        floor = exact(-top_db, y)
        s_db = tf.math.log(tf.maximum(mel, exact(1e-10, y))) * exact(10.0 / math.log(10.0), y)
        s_db = s_db - tf.reduce_max(s_db, axis=[1, 2], keepdims=True)
        s_db = tf.maximum(s_db, floor)
        silent = tf.reduce_max(tf.abs(y), axis=-1) < exact(SILENCE_PEAK, y)
        s_db = tf.where(silent[:, None, None], floor, s_db)
        return tf.transpose(s_db, [0, 2, 1])

    def indices(self, y):
        """Colormap indices int32 ``[N, size, size]``, low frequencies at the bottom."""
        import tensorflow as tf

        if self.planes_needed:
            if not self.settings.coloured:
                raise ValueError("three channels make an RGB image, not colormap indices: use rgb()")
            kind, n_fft = self.settings.channel_windows()[0]
            return self._plane_pixels(self.plane(y, kind, n_fft))
        top_db = float(self.settings.top_db)
        v = tf.clip_by_value(tf.reverse(self.log_mel(y), axis=[1]), exact(-top_db, y), exact(0.0, y))
        v = v * exact(255.0 / top_db, y) + exact(255.5, y)
        size = int(self.settings.image_size)
        if self.frames != size:  # width (time) first, then height, as image_resize.resize_float32
            v = _resize_axis(v, 2, *self.time_taps)
        if int(self.settings.n_mels) != size:
            v = _resize_axis(v, 1, *self.mel_taps)
        return tf.clip_by_value(tf.cast(v, tf.int32), 0, 255)

    def rgb(self, y):
        """Pixels float32 ``[N, size, size, 3]`` with values 0..255 (``render_clip``'s)."""
        import tensorflow as tf

        if self.settings.coloured:
            return tf.gather(exact(self.lut, y), self.indices(y))
        planes = [self._plane_pixels(self.plane(y, kind, n)) for kind, n in self.settings.channel_windows()]
        return tf.cast(tf.stack(planes, axis=-1), tf.float32)

    # --- channels other than one log-mel (render.channel_plane) ---------------------------

    def plane(self, y, kind: str, n_fft: int):
        """One channel ``[N, n_mels, frames]`` in ``[0, 1]``, as ``render.channel_plane``."""
        import tensorflow as tf

        front = self._fronts[n_fft]
        silent = tf.reduce_max(tf.abs(y), axis=-1) < exact(SILENCE_PEAK, y)
        if kind == "pcen":
            plane = tf.clip_by_value(front.pcen(y) / exact(render.PCEN_IMAGE_MAX, y), 0.0, 1.0)
            return tf.where(silent[:, None, None], tf.zeros_like(plane), plane)
        top_db = exact(float(self.settings.top_db), y)
        s_db = front.log_mel(y)
        if kind == "db":
            return (s_db + top_db) / top_db
        order = 2 if kind == "delta2" else 1
        scale = exact(2 * render.DELTA_IMAGE_RANGE[kind], y)
        zero = exact(render.DELTA_ZERO, y)
        plane = tf.clip_by_value(zero + delta(s_db, order) / scale, 0.0, 1.0)
        return tf.where(silent[:, None, None], tf.zeros_like(plane) + zero, plane)

    def pcen(self, y):
        """``render.pcen_mel`` ``[N, n_mels, frames]``: the smoother ``M[t] = (1 - b) M[t-1]
        + b S[t]`` started at ``M[-1] = S[0]`` is, in closed form, ``S`` times a
        lower-triangular matrix of powers of ``1 - b`` (plus ``(1 - b)**(t+1) S[0]``)."""
        import tensorflow as tf

        settings, frames = self.settings, self.frames
        S = tf.transpose(self.mel(y, magnitude=True), [0, 2, 1])  # [N, M, T]
        peak = tf.maximum(tf.reduce_max(S, axis=[1, 2], keepdims=True), exact(1e-30, y))
        S = S * (exact(render.PCEN_INPUT_SCALE, y) / peak)
        t_frames = render.PCEN_TIME_CONSTANT * settings.sample_rate / settings.hop_length
        b = (math.sqrt(1 + 4 * t_frames ** 2) - 1) / (2 * t_frames ** 2)
        k, t = np.arange(frames)[:, None], np.arange(frames)[None, :]
        smoother = np.where(k <= t, b * (1 - b) ** np.maximum(t - k, 0), 0.0)
        smoother[0] += (1 - b) ** (np.arange(frames) + 1)  # the state before the first frame: S[0]
        M = tf.linalg.matmul(S, exact(smoother, y))  # [N, M, T] x [T, T]
        eps, gain = render.PCEN_EPS, render.PCEN_GAIN
        bias, power = render.PCEN_BIAS, render.PCEN_POWER
        smooth = tf.exp(exact(-gain, y) * (exact(math.log(eps), y) + tf.math.log1p(M / exact(eps, y))))
        return exact(bias ** power, y) * tf.math.expm1(exact(power, y) * tf.math.log1p(S * smooth / exact(bias, y)))

    def _plane_pixels(self, plane):
        """A ``[0, 1]`` plane -> int32 pixels ``[N, size, size]``, as ``render.plane_image``."""
        import tensorflow as tf

        v = tf.clip_by_value(tf.reverse(plane, axis=[1]), 0.0, 1.0) * exact(255.0, plane) + exact(0.5, plane)
        size = int(self.settings.image_size)
        if self.frames != size:
            v = _resize_axis(v, 2, *self.time_taps)
        if int(self.settings.n_mels) != size:
            v = _resize_axis(v, 1, *self.mel_taps)
        return tf.clip_by_value(tf.cast(v, tf.int32), 0, 255)

    def images(self, y, height: int, width: int, input_mean: float = 0.0, input_std: float = 255.0):
        """What an image backbone of ``height`` x ``width`` takes: ``render_clip``, Pillow's
        bilinear resize when the size differs, then ``(pixel - input_mean) / input_std``."""
        return scale_pixels(resize_pixels(self.rgb(y), height, width), input_mean, input_std)


def delta(s_db, order: int):
    """``render.delta`` along the last axis: librosa's Savitzky-Golay derivative (9 frames,
    ``mode="nearest"``) as a sum of 9 shifted copies of the edge-replicated frames."""
    import scipy.signal
    import tensorflow as tf

    half = render.DELTA_WIDTH // 2
    weights = scipy.signal.savgol_coeffs(render.DELTA_WIDTH, order, deriv=order, use="dot")
    frames = int(s_db.shape[-1])
    padded = tf.concat([tf.repeat(s_db[..., :1], half, axis=-1), s_db,
                        tf.repeat(s_db[..., -1:], half, axis=-1)], axis=-1)
    out = None
    for k, w in enumerate(weights):
        term = padded[..., k:k + frames] * exact(w, s_db)
        out = term if out is None else out + term
    return out


def scale_pixels(pixels, input_mean: float = 0.0, input_std: float = 255.0):
    """label_image's ``(pixel - input_mean) / input_std`` in float32."""
    return (pixels - exact(input_mean, pixels)) / exact(input_std, pixels)


def exact(value, like):
    """A float32 constant that TFLite's quantisers cannot round: its bits are stored as
    int32 and reinterpreted at run time (``BITCAST``). ``like`` is any tensor with a
    dynamic batch dimension: adding zero derived from its shape keeps TensorFlow's
    constant folding from turning the bitcast back into a float constant before
    conversion (TFLite itself folds the ``+ 0`` but never the bitcast). The front-end's
    weights and thresholds stay exact in every variant; only the network is quantised."""
    import tensorflow as tf

    bits = np.ascontiguousarray(np.asarray(value, np.float32)).view(np.int32)
    zero = tf.shape(like)[0] * 0
    return tf.bitcast(tf.constant(bits) + zero, tf.float32)


def frame_static(y, n_fft: int, hop: int, frames: int):
    """``tf.signal.frame(y, n_fft, hop)`` ``[N, frames, n_fft]`` built from slices and
    reshapes whose shapes are all known when the model is converted.

    ``tf.signal.frame`` computes its gather indices from the input's shape at run time;
    in TFLite that makes every tensor after it dynamic, and the XNNPACK delegate then
    leaves the whole network to the slower built-in kernels (4x slower here). With
    ``g = gcd(n_fft, hop)`` the signal is cut into blocks of ``g`` samples and frame ``t``
    is blocks ``t * hop / g`` to ``t * hop / g + n_fft / g``: ``n_fft / g`` strided slices
    (4 for the defaults). When ``g`` is small, one gather with constant indices instead.
    """
    import math

    import tensorflow as tf

    g = math.gcd(n_fft, hop)
    per_frame, step = n_fft // g, hop // g
    if per_frame > 64:  # hop and n_fft nearly coprime: a gather (indices stored in the model)
        index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
        return tf.gather(y, index.astype(np.int32), axis=1)
    blocks_needed = (frames - 1) * step + per_frame
    length = int(y.shape[1])
    if length < blocks_needed * g:
        y = tf.pad(y, [[0, 0], [0, blocks_needed * g - length]])
    blocks = tf.reshape(y[:, : blocks_needed * g], [-1, blocks_needed, g])
    parts = [blocks[:, j: j + (frames - 1) * step + 1: step, :] for j in range(per_frame)]  # [N, frames, g] each
    return tf.reshape(tf.stack(parts, axis=2), [-1, frames, n_fft])


def resize_pixels(pixels, height: int, width: int):
    """Pillow's 8-bit bilinear resize of float32 pixels ``[N, H, W, C]`` holding whole
    values 0..255, in exact integer arithmetic (:func:`image_resize.resize_uint8`)."""
    import tensorflow as tf

    h, w = int(pixels.shape[1]), int(pixels.shape[2])
    if (h, w) == (height, width):
        return pixels
    x = tf.cast(pixels, tf.int32)
    for axis, (size_in, size_out) in ((2, (w, width)), (1, (h, height))):
        if size_in == size_out:
            continue
        index, weight = fixed_point_taps(size_in, size_out)
        acc = _resize_axis(x, axis, index, weight, dtype=np.int32) + (1 << (PRECISION_BITS - 1))
        x = tf.clip_by_value(tf.math.floordiv(acc, 1 << PRECISION_BITS), 0, 255)
    return tf.cast(x, tf.float32)


def _resize_axis(x, axis: int, index: np.ndarray, weight: np.ndarray, dtype=np.float32):
    """``sum_k weight[:, k] * x[..., index[:, k], ...]`` along ``axis``, tap by tap in the
    order of :func:`image_resize._apply`, so float32 results are bit-identical."""
    import tensorflow as tf

    shape = [1] * len(x.shape)
    shape[axis] = -1
    out = None
    for k in range(index.shape[1]):
        w = np.asarray(weight[:, k], dtype).reshape(shape)
        term = tf.gather(x, index[:, k], axis=axis) * (exact(w, x) if dtype == np.float32 else w)
        out = term if out is None else out + term
    return out


def _hann(n: int) -> np.ndarray:
    from soundretrain.render import _window

    return _window(n)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _rdft(frames, n_fft: int):
    """Real DFT for an ``n_fft`` that is not a power of two (TFLite's FFT needs one): a
    product with cosine and sine tables (``n_fft * (n_fft // 2 + 1)`` floats each, and
    slower than an FFT), kept exact under quantisation like every front-end constant."""
    import tensorflow as tf

    k = np.arange(n_fft // 2 + 1)[None, :]
    t = np.arange(n_fft)[:, None]
    angle = 2.0 * np.pi * ((t * k) % n_fft) / n_fft
    real = tf.linalg.matmul(frames, exact(np.cos(angle), frames))
    imag = tf.linalg.matmul(frames, exact(-np.sin(angle), frames))
    return real, imag


def render_clips_tf(y: np.ndarray, settings: SpectrogramSettings) -> np.ndarray:
    """Eager helper: uint8 RGB ``[N, size, size, 3]`` for windows ``y`` ``[N, num_samples]``
    (tests and benchmarks compare it with :func:`render.render_clip`)."""
    import tensorflow as tf

    front = SpectrogramFrontEnd(settings)
    y = np.atleast_2d(np.asarray(y, np.float32))
    return tf.cast(front.rgb(tf.constant(y)), tf.uint8).numpy()


__all__ = ["MelLayer", "SpectrogramFrontEnd", "mel_layers", "render_clips_tf", "resize_pixels"]
