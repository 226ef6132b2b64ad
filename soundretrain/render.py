"""Audio -> log-mel spectrogram -> square RGB image, as pure functions.

:func:`render_clip` is THE function that renders a clip: the spectrogram writer, the
bottleneck stage, labelling and the tests all call it, so training and inference images
agree pixel for pixel. No matplotlib figure is drawn: the colormap is a 256-entry lookup
table taken once from matplotlib, and the float spectrogram is resized with Pillow's
bilinear weights in float32. :mod:`soundretrain.render_tf` is the TensorFlow twin of every
step after decoding, which exported audio-in models carry inside their graph.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import numpy as np

from soundretrain.audio import fit_duration, is_silent, to_sample_rate
from soundretrain.image_resize import resize_float32
from soundretrain.spectrogram_settings import SpectrogramSettings


@functools.lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: Optional[float]):
    """librosa's mel filterbank, built once per setting, stored sparse.

    Each triangular filter touches a few FFT bins only; a sparse product is ~50x
    cheaper than the dense one and, unlike BLAS, never spins up threads that fight
    the worker processes for cores.
    """
    import librosa
    import scipy.sparse

    with warnings.catch_warnings():  # "Empty filters detected": the CLI says it in one line
        warnings.simplefilter("ignore")
        dense = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return scipy.sparse.csr_matrix(dense.astype(np.float32))


def empty_mel_bands(settings: SpectrogramSettings, n_fft: Optional[int] = None) -> int:
    """How many of the ``n_mels`` bands no FFT bin falls into (constant rows in every image:
    too many mel bands for ``n_fft`` at this sample rate and frequency range). ``n_fft``
    defaults to the shortest window of any channel (the coarsest bins)."""
    n_fft = n_fft or min(n for _, n in settings.channel_windows())
    basis = _mel_basis(settings.sample_rate, n_fft, settings.n_mels, settings.fmin, settings.fmax)
    return int(np.sum(basis.getnnz(axis=1) == 0))


@functools.lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    import scipy.signal

    return scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)


def power_stft(y: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """``|librosa.stft(y, n_fft, hop_length)|**2`` as float32 ``[1 + n_fft//2, frames]``.

    Same framing as librosa (centred frames, zero padding, periodic Hann window),
    computed with ``scipy.fft`` in single precision, which is several times faster
    than librosa's numpy.fft path; a test pins the agreement.
    """
    import scipy.fft

    padded = np.pad(np.asarray(y, dtype=np.float32), (n_fft // 2, n_fft // 2))
    if padded.shape[0] < n_fft:  # shorter than one window: librosa pads to one frame too
        padded = np.pad(padded, (0, n_fft - padded.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    spec = scipy.fft.rfft(frames * _window(n_fft), axis=-1, overwrite_x=True)
    power = np.square(spec.real)
    power += np.square(spec.imag)
    return power.T


def mel_power(y: np.ndarray, sr: int, settings: SpectrogramSettings,
              n_fft: Optional[int] = None) -> np.ndarray:
    """Mel power spectrogram float32 ``[n_mels, frames]`` (``librosa.feature.melspectrogram``
    with power 2); ``n_fft`` defaults to the settings' (a channel may have its own)."""
    n_fft = n_fft or settings.n_fft
    basis = _mel_basis(sr, n_fft, settings.n_mels, float(settings.fmin), settings.fmax)
    return np.asarray(basis @ power_stft(y, n_fft, settings.hop_length), dtype=np.float32)


def log_mel(y: np.ndarray, sr: int, settings: SpectrogramSettings,
            n_fft: Optional[int] = None) -> np.ndarray:
    """Log-mel power spectrogram ``S_db`` float32 ``[n_mels, frames]`` in ``[-top_db, 0]``.

    ``power_to_db`` is taken relative to the clip's own maximum, so 0 dB is the
    loudest bin of every clip. A silent clip has no meaningful maximum (relative to
    itself it would come out all 0 dB, a bright image): it is rendered as the
    minimum, ``-top_db`` everywhere.
    """
    frames = 1 + len(y) // settings.hop_length
    if is_silent(y):
        return np.full((settings.n_mels, frames), -settings.top_db, dtype=np.float32)
    mel = mel_power(y, sr, settings, n_fft)
    # librosa.power_to_db(mel, ref=np.max, amin=1e-10, top_db=top_db), in place
    S_db = np.log10(np.maximum(mel, 1e-10, out=mel), out=mel)
    S_db *= 10.0
    S_db -= S_db.max()
    return np.maximum(S_db, -settings.top_db, out=S_db)


# PCEN (Wang et al. 2017) with librosa's defaults, which expect integer-PCM amplitudes:
# librosa advises scaling [-1, 1] audio by 2**31 and a magnitude (power 1) mel spectrogram.
PCEN_INPUT_SCALE = 2.0 ** 31
PCEN_TIME_CONSTANT = 0.4  # seconds of the smoother (librosa's default)
PCEN_GAIN, PCEN_BIAS, PCEN_POWER, PCEN_EPS = 0.98, 2.0, 0.5, 1e-6
# Image ranges, from the value distribution on real clips (UrbanSound8K fold 1, every 9th):
# PCEN's median is 0.40 (steady sound), 99th percentile 1.36; |delta| 0.38 / 4.9 dB per frame,
# |delta2| 0.25 / 2.6; 1-2 % of pixels saturate.
PCEN_IMAGE_MAX = 1.5  # PCEN value shown at full brightness
DELTA_WIDTH = 9  # frames of the Savitzky-Golay window (librosa's default)
DELTA_IMAGE_RANGE = {"delta": 4.0, "delta2": 2.0}  # dB per frame (per frame^2) at the extremes
# A derivative of 0 (steady sound, silence) is grey 128, in the middle of its rounding step:
# at 0.5 (127.5 + 0.5 before truncation) the least float difference flipped it to 127.
DELTA_ZERO = 128.0 / 255.0


def pcen_mel(y: np.ndarray, sr: int, settings: SpectrogramSettings,
             n_fft: Optional[int] = None) -> np.ndarray:
    """Per-channel energy normalisation of the magnitude mel spectrogram, float32
    ``[n_mels, frames]`` >= 0: ``librosa.pcen(S * 2**31, sr, hop_length)`` with librosa's
    defaults, where ``S`` is relative to the clip's maximum (so loudness does not change
    the image, as with dB) and each band's smoother starts at the band's first frame
    (librosa starts it at 1, which makes the first ~0.4 s of every clip a bright transient)."""
    import librosa
    import scipy.signal

    n_fft = n_fft or settings.n_fft
    basis = _mel_basis(sr, n_fft, settings.n_mels, float(settings.fmin), settings.fmax)
    magnitude = np.sqrt(power_stft(y, n_fft, settings.hop_length))
    S = np.asarray(basis @ magnitude, dtype=np.float64)
    S *= PCEN_INPUT_SCALE / max(float(S.max()), 1e-30)
    t_frames = PCEN_TIME_CONSTANT * sr / settings.hop_length
    b = (np.sqrt(1 + 4 * t_frames ** 2) - 1) / (2 * t_frames ** 2)  # librosa's choice of b
    zi = scipy.signal.lfilter_zi([b], [1, b - 1]) * S[:, :1]
    P = librosa.pcen(S, sr=sr, hop_length=settings.hop_length, gain=PCEN_GAIN, bias=PCEN_BIAS,
                     power=PCEN_POWER, time_constant=PCEN_TIME_CONSTANT, eps=PCEN_EPS, b=b, zi=zi)
    return P.astype(np.float32)


def delta(S: np.ndarray, order: int = 1) -> np.ndarray:
    """``librosa.feature.delta(S, width=9, order=order, mode="nearest")`` along time: a
    fixed Savitzky-Golay filter over edge-replicated frames (one convolution)."""
    import librosa

    frames = S.shape[-1]
    if frames < DELTA_WIDTH:  # librosa refuses fewer frames than the window: pad by replication
        padded = np.pad(S, ((0, 0), (0, DELTA_WIDTH - frames)), mode="edge")
        return delta(padded, order)[:, :frames]
    return librosa.feature.delta(S, width=DELTA_WIDTH, order=order, mode="nearest").astype(np.float32)


def channel_plane(y: np.ndarray, sr: int, settings: SpectrogramSettings, kind: str,
                  n_fft: Optional[int] = None, S_db: Optional[np.ndarray] = None) -> np.ndarray:
    """One image channel as float32 ``[n_mels, frames]`` in ``[0, 1]`` (1 = brightest):

    * ``db``: the log-mel, ``-top_db`` -> 0, the clip's loudest bin -> 1;
    * ``pcen``: PCEN, 0 -> 0, :data:`PCEN_IMAGE_MAX` and above -> 1;
    * ``delta``, ``delta2``: the first / second time derivative of the dB log-mel, 0 -> grey
      128 (silence and steady sound), +-:data:`DELTA_IMAGE_RANGE` -> 1 / 0.

    ``S_db`` (the log-mel at this ``n_fft``) is reused when given. A silent clip is flat:
    0 for ``db`` and ``pcen``, grey 128 for the derivatives.
    """
    frames = 1 + len(y) // settings.hop_length
    if is_silent(y):
        return np.full((settings.n_mels, frames), DELTA_ZERO if kind.startswith("delta") else 0.0, np.float32)
    if kind == "pcen":
        return np.clip(pcen_mel(y, sr, settings, n_fft) / np.float32(PCEN_IMAGE_MAX), 0.0, 1.0)
    if S_db is None:
        S_db = log_mel(y, sr, settings, n_fft)
    if kind == "db":
        return (S_db + np.float32(settings.top_db)) / np.float32(settings.top_db)
    if kind in DELTA_IMAGE_RANGE:
        d = delta(S_db, order=2 if kind == "delta2" else 1)
        return np.clip(np.float32(DELTA_ZERO) + d / np.float32(2 * DELTA_IMAGE_RANGE[kind]), 0.0, 1.0)
    raise ValueError(f"unknown channel kind {kind!r}")


def channel_planes(y: np.ndarray, sr: int, settings: SpectrogramSettings) -> list[np.ndarray]:
    """Every channel of ``settings.channels`` (see :func:`channel_plane`), at ``sr``; the
    log-mel of one window length is computed once for all channels that use it."""
    db_cache: dict[int, np.ndarray] = {}
    planes = []
    for kind, n_fft in settings.channel_windows():
        S_db = None
        if kind != "pcen" and not is_silent(y):
            if n_fft not in db_cache:
                db_cache[n_fft] = log_mel(y, sr, settings, n_fft)
            S_db = db_cache[n_fft]
        planes.append(channel_plane(y, sr, settings, kind, n_fft, S_db))
    return planes


def resize_plane(v: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 ``[rows, cols]`` -> ``[height, width]``: the resize of :func:`spectrogram_indices`
    (:func:`soundretrain.image_resize.resize_float32`, Pillow's bilinear taps in float32)."""
    return resize_float32(np.asarray(v, np.float32), height, width)


def plane_image(plane: np.ndarray, settings: SpectrogramSettings) -> np.ndarray:
    """A ``[0, 1]`` plane -> uint8 ``[image_size, image_size]``, low frequencies at the
    bottom, resized as floats before rounding (as :func:`spectrogram_indices`)."""
    v = np.clip(np.asarray(plane, np.float32)[::-1], 0.0, 1.0) * np.float32(255.0)
    v += np.float32(0.5)
    size = settings.image_size
    return resize_plane(v, size, size).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def colormap_lut(name: str) -> np.ndarray:
    """uint8 ``[256, 3]`` lookup table for a matplotlib colormap (``"gray"`` too)."""
    if name in ("gray", "grey"):
        ramp = np.arange(256, dtype=np.uint8)
        return np.stack([ramp, ramp, ramp], axis=1)
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r} (try viridis, magma, inferno, plasma, gray)"
        ) from None
    rgba = cmap(np.linspace(0.0, 1.0, 256))
    return np.rint(rgba[:, :3] * 255).astype(np.uint8)


def spectrogram_indices(S_db: np.ndarray, settings: SpectrogramSettings) -> np.ndarray:
    """``S_db`` -> uint8 colormap indices ``[image_size, image_size]``, low frequencies at the bottom.

    ``-top_db`` maps to index 0 and 0 dB to 255; the normalised float spectrogram is
    resized bilinearly before quantising, so no detail is lost to 8-bit steps before
    interpolation. The resize is :func:`soundretrain.image_resize.resize_float32`:
    Pillow's bilinear weights summed in float32, the same taps the TensorFlow twin
    (:mod:`soundretrain.render_tf`) runs inside exported audio-in models.
    """
    top_db = float(settings.top_db)
    # Scale to [0, 255] first: bilinear weights are convex, so the resized values stay
    # in range and +0.5 then truncation rounds them (half up) without another clip.
    v = np.clip(np.asarray(S_db, dtype=np.float32)[::-1], -top_db, 0.0)  # row 0 = top: high mels
    v *= np.float32(255.0 / top_db)
    v += np.float32(255.5)
    size = settings.image_size
    return resize_float32(v, size, size).astype(np.uint8)


def spectrogram_image(S_db: np.ndarray, settings: SpectrogramSettings) -> np.ndarray:
    """``S_db`` -> uint8 RGB ``[image_size, image_size, 3]``, low frequencies at the bottom.

    The colormap's first colour is ``-top_db`` (and silence), its last is 0 dB.
    """
    return np.take(colormap_lut(settings.colormap), spectrogram_indices(S_db, settings), axis=0)


def silence_pixel(settings: SpectrogramSettings) -> np.ndarray:
    """uint8 ``[3]``: the colour of silence in this rendering (what a silent clip's image is
    made of): the colormap's first colour, or per channel 0 (db, pcen) or 128 (derivatives).
    Augmentation paints its masks with it."""
    if settings.coloured:
        return colormap_lut(settings.colormap)[0].copy()
    return np.array([128 if kind.startswith("delta") else 0 for kind, _ in settings.channel_windows()],
                    np.uint8)


def render_clip_indices(y: np.ndarray, sr: int, settings: SpectrogramSettings) -> np.ndarray:
    """:func:`render_clip` before the colormap: uint8 indices into ``colormap_lut``.

    The writer stores these as a palette PNG (indices + the colormap as palette),
    which decodes to exactly ``render_clip``'s RGB pixels. Only for one coloured
    channel (``settings.coloured``); three-channel images have no palette.
    """
    if not settings.coloured:
        raise ValueError(f"{len(settings.channels)} channels make an RGB image, not colormap "
                         "indices: use render_clip")
    y = to_sample_rate(y, sr, settings.sample_rate)
    y = fit_duration(y, settings.sample_rate, settings.duration, settings.pad_mode)
    kind, n_fft = settings.channel_windows()[0]
    if kind == "db" and n_fft == settings.n_fft:  # the original rendering, bit for bit
        return spectrogram_indices(log_mel(y, settings.sample_rate, settings), settings)
    return plane_image(channel_plane(y, settings.sample_rate, settings, kind, n_fft), settings)


def render_clip(y: np.ndarray, sr: int, settings: SpectrogramSettings) -> np.ndarray:
    """The one rendering of a clip: uint8 RGB ``[image_size, image_size, 3]``.

    ``y`` (mono float) at ``sr`` is resampled to ``settings.sample_rate`` if needed
    (as ``load_audio`` would have), cut or padded to ``settings.duration``, turned
    into a log-mel spectrogram and coloured, or, with three ``settings.channels``,
    into three planes (window lengths, PCEN, derivatives) stacked as red, green and
    blue. The writer, the ``label`` stage and the tests all render through here.
    """
    if settings.coloured:
        return np.take(colormap_lut(settings.colormap), render_clip_indices(y, sr, settings), axis=0)
    y = to_sample_rate(y, sr, settings.sample_rate)
    y = fit_duration(y, settings.sample_rate, settings.duration, settings.pad_mode)
    planes = channel_planes(y, settings.sample_rate, settings)
    return np.stack([plane_image(p, settings) for p in planes], axis=-1)
