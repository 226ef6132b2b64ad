"""Audio -> log-mel spectrogram -> square RGB image, as pure functions.

:func:`render_clip` is THE function that renders a clip: the writer, the ``label``
stage and the tests all call it, so training and inference images agree pixel for
pixel. No matplotlib figure is drawn: the colormap is a 256-entry lookup table taken
once from matplotlib, and resizing is one Pillow call on the float spectrogram.
"""
from __future__ import annotations

import functools
import os
import re
import warnings
from typing import Optional

import numpy as np

from spectrograms.settings import SpectrogramSettings

#: A clip whose peak amplitude stays below -80 dBFS counts as silent.
SILENCE_PEAK = 1e-4


class AudioReadError(Exception):
    """An audio file could not be read; ``reason`` is one line for the summary."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = " ".join(str(reason).split()) or "unreadable"
        super().__init__(f"{self.path}: {self.reason}")


#: Seconds decoded beyond ``max_seconds``, so resampling the prefix gives exactly the
#: samples resampling the whole file would (soxr's filter reaches far less than this).
PREFIX_MARGIN_SECONDS = 1.0


def load_audio(path: str | os.PathLike, sr: int, max_seconds: Optional[float] = None) -> np.ndarray:
    """Decode ``path`` to float32 mono ``y`` at ``sr`` Hz (soxr resampling).

    Any format soundfile reads (wav 8/16/24/32-bit and float, flac, ogg, mp3, aiff),
    any sample rate or channel count. Raises :class:`AudioReadError` with a one-line
    reason for missing, empty, corrupt, non-audio or unreadable files.

    ``max_seconds``: only the start is needed (``--long_clips=cut``); at least that much
    is returned, identical to the whole file's first samples, without decoding an hour-long
    recording whole. Formats libsndfile cannot read are still decoded whole.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise AudioReadError(path, e.strerror or "cannot access file") from None
    if size == 0:
        raise AudioReadError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioReadError(path, "permission denied")
    try:
        y = _decode(path, sr, max_seconds)
    except AudioReadError:
        raise
    except Exception as e:  # soundfile, audioread and numpy raise many types
        reason = str(e).strip() or type(e).__name__
        if type(e).__name__ == "NoBackendError":
            reason = "not a readable audio file (no decoder recognised it)"
        raise AudioReadError(path, f"cannot decode audio: {reason.splitlines()[0]}") from None
    if y.size == 0:
        raise AudioReadError(path, "no audio samples (zero-length clip)")
    if not np.all(np.isfinite(y)):
        raise AudioReadError(path, "audio contains NaN or infinite samples")
    return np.ascontiguousarray(y, dtype=np.float32)


def fit_duration(y: np.ndarray, sr: int, duration: float, pad_mode: str = "repeat") -> np.ndarray:
    """Cut or pad ``y`` to exactly ``duration`` seconds.

    Longer clips keep their first ``duration`` seconds. Shorter ones are looped
    (``pad_mode="repeat"``; a short bark repeated resembles real ambient repetition
    better than silence) or padded with zeros at the end (``"zero"``).
    """
    n = int(round(duration * sr))
    y = np.asarray(y, dtype=np.float32)
    if y.shape[0] >= n:
        return y[:n]
    if y.shape[0] == 0 or pad_mode == "zero":
        out = np.zeros(n, dtype=np.float32)
        out[: y.shape[0]] = y
        return out
    if pad_mode == "repeat":
        return np.resize(y, n)  # np.resize tiles the array cyclically
    raise ValueError(f"pad_mode must be 'repeat' or 'zero', not {pad_mode!r}")


def split_windows(
    y: np.ndarray, sr: int, duration: float, hop_seconds: Optional[float] = None, pad_mode: str = "repeat"
) -> list[tuple[float, np.ndarray]]:
    """Cut ``y`` into windows of ``duration`` seconds, ``hop_seconds`` apart.

    Returns ``[(start_seconds, y_window), ...]``. A clip no longer than one window
    gives one padded window. When a tail shorter than a window remains after the last
    full window, one more window is aligned to the clip's end, so every window of a
    long clip is real audio and no sound is dropped.
    """
    n = int(round(duration * sr))
    hop = n if hop_seconds is None else max(1, int(round(hop_seconds * sr)))
    total = int(y.shape[0])
    if total <= n:
        return [(0.0, fit_duration(y, sr, duration, pad_mode))]
    starts = list(range(0, total - n + 1, hop))
    if starts[-1] + n < total:
        starts.append(total - n)
    return [(s / sr, np.asarray(y[s : s + n], dtype=np.float32)) for s in starts]


def is_silent(y: np.ndarray) -> bool:
    """True when ``y`` never rises above -80 dBFS (digital silence or near it)."""
    # max and -min: two passes without allocating |y|
    return y.size == 0 or max(float(np.max(y)), -float(np.min(y))) < SILENCE_PEAK


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
    resized bilinearly (Pillow mode ``"F"``) before quantising, so no detail is lost
    to 8-bit steps before interpolation.
    """
    from PIL import Image

    top_db = float(settings.top_db)
    # Scale to [0, 255] first: bilinear weights are convex, so the resized values stay
    # in range and +0.5 then truncation rounds them (half up) without another clip.
    v = np.clip(np.asarray(S_db, dtype=np.float32)[::-1], -top_db, 0.0)  # row 0 = top: high mels
    v *= np.float32(255.0 / top_db)
    v += np.float32(255.5)
    size = settings.image_size
    resized = np.asarray(Image.fromarray(v).resize((size, size), Image.Resampling.BILINEAR))
    return resized.astype(np.uint8)


def spectrogram_image(S_db: np.ndarray, settings: SpectrogramSettings) -> np.ndarray:
    """``S_db`` -> uint8 RGB ``[image_size, image_size, 3]``, low frequencies at the bottom.

    The colormap's first colour is ``-top_db`` (and silence), its last is 0 dB.
    """
    return np.take(colormap_lut(settings.colormap), spectrogram_indices(S_db, settings), axis=0)


def _decode(path: str, sr: int, max_seconds: Optional[float] = None) -> np.ndarray:
    """What ``librosa.load(path, sr=sr, mono=True)`` returns, without importing
    librosa's audio module (scipy.signal and numba: about 3 s of a labelling command's
    cold start). Formats libsndfile cannot read still go through librosa (audioread)."""
    import soundfile as sf

    try:
        with sf.SoundFile(path) as f:
            _refuse_truncated(f)
            native_sr = f.samplerate
            frames = -1 if max_seconds is None else \
                int(np.ceil((max_seconds + PREFIX_MARGIN_SECONDS) * native_sr))
            y = f.read(frames=frames, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        import librosa

        try:
            with warnings.catch_warnings():
                # librosa warns before falling back to audioread; the reason we report suffices.
                warnings.simplefilter("ignore")
                y, _ = librosa.load(path, sr=sr, mono=True)
        except Exception as fallback:
            # Both decoders failed: name libsndfile's reason ("Format not recognised") rather
            # than audioread's bare exception type (a text file gave "EOFError").
            why = (str(getattr(e, "error_string", "")) or str(e)).strip().rstrip(".")
            if type(fallback).__name__ == "NoBackendError":  # audioread has no decoder at all
                raise RuntimeError(why) from None
            other = str(fallback).strip().splitlines()[0] if str(fallback).strip() else type(fallback).__name__
            raise RuntimeError(f"{why} (libsndfile); {other} (audioread)") from None
        return y
    return to_sample_rate(y.mean(axis=1, dtype=np.float32), native_sr, sr)


_DATA_LENGTH_WRONG = re.compile(r"^\s*data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _refuse_truncated(f) -> None:
    """Raise when a WAV file's header announces more audio than the file holds.

    libsndfile quietly reads what is there, so a file cut short (an interrupted copy or
    download) would otherwise become a clip of a few milliseconds, looped into an image
    of nothing. Placeholder sizes that streaming writers leave (0, 0xFFFFFFFF) are not
    truncation, nor is a shortfall of up to 1 % (odd padding, sloppy writers).
    """
    try:
        log = f.extra_info
    except Exception:  # older soundfile, or no log
        return
    m = _DATA_LENGTH_WRONG.search(log or "")
    if not m:
        return
    announced, present = int(m.group(1)), int(m.group(2))
    if announced in (0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE) or present >= announced * 0.99:
        return
    raise AudioReadError(f.name, f"truncated file: its header announces {announced} bytes of audio, "
                                 f"only {present} are there")


def to_sample_rate(y: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """``y`` resampled from ``sr`` to ``target_sr`` exactly as ``librosa.resample`` with
    ``res_type="soxr_hq"`` does (soxr, then the length fixed to ``ceil(n * ratio)``)."""
    if sr == target_sr:
        return y
    import soxr

    y = np.asarray(y, dtype=np.float32)
    n_out = int(np.ceil(y.shape[0] * float(target_sr) / sr))
    y_hat = np.asarray(soxr.resample(y, sr, target_sr, quality="soxr_hq"), dtype=np.float32)
    if y_hat.shape[0] >= n_out:
        return y_hat[:n_out]
    return np.pad(y_hat, (0, n_out - y_hat.shape[0]))


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
