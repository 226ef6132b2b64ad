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


def empty_mel_bands(settings: SpectrogramSettings) -> int:
    """How many of the ``n_mels`` bands no FFT bin falls into (constant rows in every image:
    too many mel bands for ``n_fft`` at this sample rate and frequency range)."""
    basis = _mel_basis(settings.sample_rate, settings.n_fft, settings.n_mels, settings.fmin, settings.fmax)
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


def log_mel(y: np.ndarray, sr: int, settings: SpectrogramSettings) -> np.ndarray:
    """Log-mel power spectrogram ``S_db`` float32 ``[n_mels, frames]`` in ``[-top_db, 0]``.

    ``power_to_db`` is taken relative to the clip's own maximum, so 0 dB is the
    loudest bin of every clip. A silent clip has no meaningful maximum (relative to
    itself it would come out all 0 dB, a bright image): it is rendered as the
    minimum, ``-top_db`` everywhere.
    """
    frames = 1 + len(y) // settings.hop_length
    if is_silent(y):
        return np.full((settings.n_mels, frames), -settings.top_db, dtype=np.float32)
    basis = _mel_basis(sr, settings.n_fft, settings.n_mels, float(settings.fmin), settings.fmax)
    mel = np.asarray(basis @ power_stft(y, settings.n_fft, settings.hop_length), dtype=np.float32)
    # librosa.power_to_db(mel, ref=np.max, amin=1e-10, top_db=top_db), in place
    S_db = np.log10(np.maximum(mel, 1e-10, out=mel), out=mel)
    S_db *= 10.0
    S_db -= S_db.max()
    return np.maximum(S_db, -settings.top_db, out=S_db)


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


def render_clip_indices(y: np.ndarray, sr: int, settings: SpectrogramSettings) -> np.ndarray:
    """:func:`render_clip` before the colormap: uint8 indices into ``colormap_lut``.

    The writer stores these as a palette PNG (indices + the colormap as palette),
    which decodes to exactly ``render_clip``'s RGB pixels.
    """
    y = to_sample_rate(y, sr, settings.sample_rate)
    y = fit_duration(y, settings.sample_rate, settings.duration, settings.pad_mode)
    return spectrogram_indices(log_mel(y, settings.sample_rate, settings), settings)


def render_clip(y: np.ndarray, sr: int, settings: SpectrogramSettings) -> np.ndarray:
    """The one rendering of a clip: uint8 RGB ``[image_size, image_size, 3]``.

    ``y`` (mono float) at ``sr`` is resampled to ``settings.sample_rate`` if needed
    (as ``load_audio`` would have), cut or padded to ``settings.duration``, turned
    into a log-mel spectrogram and coloured. The writer, the ``label`` stage and the
    tests all render through here.
    """
    return np.take(colormap_lut(settings.colormap), render_clip_indices(y, sr, settings), axis=0)
