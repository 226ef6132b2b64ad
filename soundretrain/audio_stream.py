"""Decode a long recording block by block, in bounded memory, to the samples
:func:`soundretrain.audio.load_audio` would return.

An hour at 48 kHz is 690 MB of float32 once decoded whole (more while resampling);
labelling it needs only a window at a time. :class:`AudioStream` reads ``block_seconds``
of the file at a time with libsndfile, mixes to mono as ``load_audio`` does, and
resamples with soxr's streaming resampler, whose output is bit for bit the one-shot
``soxr.resample`` of the whole file (tested), fixed to the same length.
:func:`stream_windows` cuts the stream into the windows :func:`split_windows` would cut.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np

from soundretrain.audio import (AudioReadError, audio_header, fit_duration, load_audio, mix_block_frames, open_audio,
                                read_blocks, to_mono, window_starts)

#: Seconds decoded per block: large enough for soxr and libsndfile to run at full speed,
#: small enough that a block is a few MB.
BLOCK_SECONDS = 20.0


class AudioStream:
    """The audio of ``path`` at ``sr`` Hz as consecutive float32 mono blocks.

    ``num_samples`` (the length ``load_audio`` would return) is known before decoding,
    from the file's header, so windows aligned to the end can be placed in advance.
    Formats libsndfile cannot read are decoded whole (through ``load_audio``) and then
    served in blocks: correct, but not bounded.
    """

    def __init__(self, path: str | os.PathLike, sr: int, block_seconds: float = BLOCK_SECONDS) -> None:
        self.path = os.fspath(path)
        self.sr = int(sr)
        self.block_seconds = float(block_seconds)
        self._whole: Optional[np.ndarray] = None
        try:
            size = os.path.getsize(self.path)
        except OSError as e:
            raise AudioReadError(self.path, e.strerror or "cannot access file") from None
        if size == 0:
            raise AudioReadError(self.path, "empty file (0 bytes)")
        try:
            frames, native_sr, _ = audio_header(self.path)  # an MP3's real length, not its header's
        except Exception:  # not for libsndfile (or a header it rejects): decode whole, as load_audio does
            frames, native_sr = -1, 0
        if frames <= 0 or native_sr <= 0:
            self._whole = load_audio(self.path, self.sr)
            self.native_sr, self.frames = self.sr, len(self._whole)
            self.num_samples = len(self._whole)
        else:
            self.native_sr, self.frames = native_sr, frames
            self.num_samples = frames if native_sr == self.sr else int(np.ceil(frames * float(self.sr) / native_sr))
        self.bounded = self._whole is None

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.num_samples / self.sr

    def blocks(self) -> Iterator[np.ndarray]:
        """Consecutive float32 mono blocks at ``sr``; together exactly ``num_samples``."""
        if self._whole is not None:
            step = max(1, int(self.block_seconds * self.sr))
            for start in range(0, len(self._whole), step):
                yield self._whole[start:start + step]
            return
        yield from self._decode_blocks()

    def _decode_blocks(self) -> Iterator[np.ndarray]:
        from soundretrain.audio import _refuse_truncated

        resampler = None
        if self.native_sr != self.sr:
            import soxr

            # The quality load_audio's to_sample_rate asks of soxr.resample ("soxr_hq").
            resampler = soxr.ResampleStream(self.native_sr, self.sr, 1, dtype="float32", quality="HQ")
        emitted = 0
        mix_block = mix_block_frames(self.native_sr)  # whole mix blocks: mixed as load_audio mixes
        step = max(1, round(self.block_seconds * self.native_sr / mix_block)) * mix_block
        try:
            with open_audio(self.path) as f:
                _refuse_truncated(f)
                blocks = read_blocks(f, step)
                block = next(blocks, np.zeros((0, f.channels), np.float32))
                while True:
                    following = next(blocks, None)  # one block ahead: soxr must know the last
                    last = following is None
                    y = to_mono(block, self.native_sr)
                    if not np.all(np.isfinite(y)):
                        raise AudioReadError(self.path, "audio contains NaN or infinite samples")
                    if resampler is not None:
                        y = np.asarray(resampler.resample_chunk(y, last=last), dtype=np.float32)
                    y = y[: max(0, self.num_samples - emitted)]
                    emitted += len(y)
                    if len(y):
                        yield y
                    if last:
                        break
                    block = following
        except AudioReadError:
            raise
        except Exception as e:  # libsndfile and soxr raise their own types
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AudioReadError(self.path, f"cannot decode audio: {reason}") from None
        if emitted < self.num_samples:  # soxr gave slightly fewer: pad as to_sample_rate does
            if emitted == 0 and self.frames == 0:
                return
            yield np.zeros(self.num_samples - emitted, np.float32)


def stream_windows(stream: AudioStream, duration: float, hop_seconds: Optional[float] = None,
                   pad_mode: str = "repeat") -> Iterator[tuple[float, np.ndarray]]:
    """``(start_seconds, y_window)`` for :func:`soundretrain.audio.split_windows`'s windows
    of the stream, holding at most one block plus one window in memory."""
    sr = stream.sr
    n = int(round(duration * sr))
    hop = n if hop_seconds is None else max(1, int(round(hop_seconds * sr)))
    total = stream.num_samples
    if total <= n:  # one padded window, as split_windows
        y = np.concatenate(list(stream.blocks()) or [np.zeros(0, np.float32)])
        yield 0.0, fit_duration(y, sr, duration, pad_mode)
        return
    starts = window_starts(total, n, hop)
    buffer = np.zeros(0, np.float32)
    offset = 0  # sample index of buffer[0]
    k = 0
    for block in stream.blocks():
        buffer = np.concatenate([buffer, block])
        while k < len(starts) and starts[k] + n <= offset + len(buffer):
            s = starts[k] - offset
            yield starts[k] / sr, buffer[s:s + n].copy()
            k += 1
        # keep only what later windows need
        keep_from = (starts[k] - offset) if k < len(starts) else len(buffer)
        buffer = buffer[keep_from:]
        offset += keep_from
    if k < len(starts):
        raise AudioReadError(stream.path, "the file ended before its header said it would")
