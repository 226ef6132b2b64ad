"""Audio in: decode any file to float32 mono ``y`` at ``sr`` and cut it to windows.

Every stage reads sound through here (the spectrogram writer, the bottleneck stage's
waveform modules, labelling), so a clip decodes to the same samples everywhere.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from typing import Iterator, Optional

import numpy as np

#: A clip whose peak amplitude stays below -80 dBFS counts as silent.
SILENCE_PEAK = 1e-4


class AudioReadError(Exception):
    """An audio file could not be read; ``reason`` is one line for the summary."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = " ".join(str(reason).split()) or "unreadable"
        super().__init__(f"{self.path}: {self.reason}")


class AudioWarning(UserWarning):
    """A file was decoded, but something about it needs saying (one line, naming it): the
    commands print it as ``PROG: warning: ...``."""


#: A channel mix that keeps less than this share of its channels' mean energy (-20 dB)
#: cancels: channels in opposite phase (L = -R: a miswired cable or microphone, an M/S
#: recording decoded wrongly), whose plain mean is silence.
CANCELLING_MIX = 0.01
#: The mix is judged over blocks of this many seconds of the file, counted from its start,
#: so a file decoded whole and one decoded block by block mix the same samples the same way.
MIX_BLOCK_SECONDS = 1.0

#: Seconds decoded beyond ``max_seconds``, so resampling the prefix gives exactly the
#: samples resampling the whole file would (soxr's filter reaches far less than this).
PREFIX_MARGIN_SECONDS = 1.0


def load_audio(path: str | os.PathLike, sr: int, max_seconds: Optional[float] = None) -> np.ndarray:
    """Decode ``path`` to float32 mono ``y`` at ``sr`` Hz (soxr resampling).

    Any format soundfile reads (wav 8/16/24/32-bit and float, flac, ogg, mp3, aiff),
    any sample rate or channel count (mixed by :func:`to_mono`). Raises :class:`AudioReadError` with a one-line
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


@contextlib.contextmanager
def open_audio(path: str | os.PathLike, warn: bool = True) -> Iterator:
    """``soundfile.SoundFile(path)``, except that an MP3 whose header misstates its length
    is read to its last frame (:mod:`soundretrain.mp3_frames`): libsndfile stops where the
    header says the sound ends, so a damaged or lying tag silently cut recordings short.
    Such a file is named in an :class:`AudioWarning` (``warn``), since other programs
    still stop early."""
    import soundfile as sf

    path = os.fspath(path)
    with sf.SoundFile(path) as f:
        found = _mp3_misstated(path, f)
        if found is None:
            yield f
            return
        header_seconds = f.frames / f.samplerate
    view = None
    try:
        if found.first.layer == 3:  # mpg123 reads an info tag only in layer III streams
            from soundretrain import mp3_frames

            view = mp3_frames.repaired(path, found)
            repaired = sf.SoundFile(view)
    except Exception:  # a view libsndfile will not take: the file as it is, said so
        view = view.close() if view is not None else None
    if view is None:
        if warn:
            warnings.warn(f"{path}: its MP3 header says {_seconds(header_seconds)} s but its frames hold "
                          f"{_seconds(found.frames_seconds)} s; only what the header says could be decoded",
                          AudioWarning)
        with sf.SoundFile(path) as f:
            yield f
        return
    try:
        if warn:
            seconds = repaired.frames / repaired.samplerate
            what = (f"decoded to the last frame (other programs may stop at {_seconds(header_seconds)} s)"
                    if seconds > header_seconds else "decoded what is there")
            warnings.warn(f"{path}: its MP3 header says {_seconds(header_seconds)} s but its frames hold "
                          f"{_seconds(seconds)} s; {what}", AudioWarning)
        yield repaired
    finally:
        repaired.close()
        view.close()


def _seconds(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.3f}"


def read_blocks(f, frames: int) -> Iterator[np.ndarray]:
    """float32 ``[n, channels]`` blocks of up to ``frames`` from the open
    ``soundfile.SoundFile`` ``f``, to its end: ``f.blocks`` (which ends at ``f.frames``),
    except that an MP3 is read without soundfile's seek around every read. libsndfile's MP3
    decoder (1.2) is not sample-exact across a seek, even to where it already is: read block
    by block through ``f.read``, an MP3 came out with runs of near-silence after each block
    (tested against one whole read, which is right)."""
    import soundfile as sf

    raw = f.format == "MP3" and all(hasattr(x, a) for x, a in ((sf, "_snd"), (sf, "_ffi"), (f, "_file")))
    if not raw:
        if f.format == "MP3":  # a soundfile without those internals: one read is still exact
            yield f.read(dtype="float32", always_2d=True)
            return
        while True:
            block = f.read(frames=frames, dtype="float32", always_2d=True)
            if len(block):
                yield block
            if len(block) < frames:
                return
    while True:
        out = np.empty((frames, f.channels), np.float32)
        n = int(sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", sf._ffi.from_buffer(out)), frames))
        if n < 0 or f._errorcode:
            raise sf.LibsndfileError(f._errorcode)
        if n:
            yield out[:n]
        if n < frames:
            return


def audio_header(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(frames, sample_rate, channels)`` of what :func:`open_audio` reads; raises what
    libsndfile raises for a file it cannot open."""
    with open_audio(path, warn=False) as f:
        return int(f.frames), int(f.samplerate), int(f.channels)


def _mp3_misstated(path: str, f) -> Optional[object]:
    """The :class:`~soundretrain.mp3_frames.Mp3Scan` of an MP3 whose length as libsndfile
    reads it (``f.frames``) is not what its frames hold, else None."""
    if f.format != "MP3":
        return None
    stat = os.stat(path)
    found = _mp3_scan(path, stat.st_size, stat.st_mtime_ns)
    if found is None:
        return None
    if found.tag_frames is not None:  # encoders differ on counting the tag's own frame: 1 is no lie
        return None if abs(found.tag_frames - found.audio_frames) <= 1 else found
    # No frame count in a tag: libsndfile estimated it from the size and the first bit rate.
    return None if abs(f.frames - found.audio_frames * found.samples_per_frame) <= found.samples_per_frame else found


@functools.lru_cache(maxsize=64)
def _mp3_scan(path: str, size: int, mtime_ns: int):
    """The file's frames counted once per version of it (the header is read, then the
    file decoded, per sample rate)."""
    from soundretrain import mp3_frames

    try:
        return mp3_frames.scan(path)
    except (OSError, ValueError):  # unreadable here: libsndfile's length stands
        return None


def mix_block_frames(sr: int) -> int:
    """Frames (at the file's own rate ``sr``) of a block :func:`to_mono` judges at once."""
    return max(1, int(MIX_BLOCK_SECONDS * sr))


def to_mono(y: np.ndarray, sr: int) -> np.ndarray:
    """Mix ``y`` (``[frames, channels]`` at the file's rate ``sr``) to float32 mono.

    The channels' mean, as ``librosa.to_mono`` (and so the training images) has it,
    except in a block (:data:`MIX_BLOCK_SECONDS`) where that mean cancels
    (:data:`CANCELLING_MIX`): there each channel is first turned to the polarity of the
    loudest one (the first channel keeps its own), so a file with L = -R is labelled as
    the sound it holds, not called silent. Blocks are counted from ``y[0]``, which is the
    file's first frame for every caller.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 1:
        return y
    mono = y.mean(axis=1, dtype=np.float32)
    channels = y.shape[1]
    if channels < 2:
        return mono
    block = mix_block_frames(sr)
    for start in range(0, y.shape[0], block):
        part = y[start:start + block]
        part64 = part.astype(np.float64)
        gram = part64.T @ part64
        if gram.sum() / channels**2 >= CANCELLING_MIX * np.trace(gram) / channels:  # (silence: 0 >= 0)
            continue
        loudest = int(np.argmax(np.diag(gram)))
        signs = np.where(gram[loudest] < 0, -1.0, 1.0).astype(np.float32)
        if signs[0] < 0 and gram[0, 0] > 0:
            signs = -signs
        mono[start:start + block] = (part * signs).mean(axis=1, dtype=np.float32)
    return mono


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
    return [(s / sr, np.asarray(y[s : s + n], dtype=np.float32)) for s in window_starts(total, n, hop)]


def window_starts(total: int, n: int, hop: int) -> list[int]:
    """Start samples of :func:`split_windows`'s windows of ``n`` samples every ``hop`` in
    ``total`` samples (``total > n``), plus one aligned to the end when a tail remains."""
    starts = list(range(0, total - n + 1, hop))
    if starts[-1] + n < total:
        starts.append(total - n)
    return starts


def is_silent(y: np.ndarray) -> bool:
    """True when ``y`` never rises above -80 dBFS (digital silence or near it)."""
    # max and -min: two passes without allocating |y|
    return y.size == 0 or max(float(np.max(y)), -float(np.min(y))) < SILENCE_PEAK


def _decode(path: str, sr: int, max_seconds: Optional[float] = None) -> np.ndarray:
    """What ``librosa.load(path, sr=sr, mono=True)`` returns (but mixed by :func:`to_mono`,
    so channels in opposite phase do not cancel), without importing librosa's audio module
    (scipy.signal and numba: about 3 s of a labelling command's cold start). Formats
    libsndfile cannot read still go through librosa (audioread)."""
    import soundfile as sf

    try:
        with open_audio(path) as f:
            _refuse_truncated(f)
            native_sr = f.samplerate
            frames = -1
            if max_seconds is not None:  # whole mix blocks, so the prefix mixes as the whole file
                block = mix_block_frames(native_sr)
                frames = -(-int(np.ceil((max_seconds + PREFIX_MARGIN_SECONDS) * native_sr)) // block) * block
            y = f.read(frames=frames, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        import librosa

        try:
            with warnings.catch_warnings():
                # librosa warns before falling back to audioread; the reason we report suffices.
                warnings.simplefilter("ignore")
                y, native_sr = librosa.load(path, sr=None, mono=False)
        except Exception as fallback:
            # Both decoders failed: name libsndfile's reason ("Format not recognised") rather
            # than audioread's bare exception type (a text file gave "EOFError").
            why = (str(getattr(e, "error_string", "")) or str(e)).strip().rstrip(".")
            if type(fallback).__name__ == "NoBackendError":  # audioread has no decoder at all
                raise RuntimeError(why) from None
            other = str(fallback).strip().splitlines()[0] if str(fallback).strip() else type(fallback).__name__
            raise RuntimeError(f"{why} (libsndfile); {other} (audioread)") from None
        y = y.T if y.ndim == 2 else y  # librosa: [channels, frames]
    return to_sample_rate(to_mono(y, native_sr), native_sr, sr)


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


def refuse_truncated(f) -> None:
    """Raise :class:`AudioReadError` when the open ``soundfile.SoundFile`` ``f`` is a WAV
    whose header announces more audio than the file holds (what ``load_audio`` refuses)."""
    _refuse_truncated(f)


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
