"""Count an MP3 file's frames, so a damaged header cannot shorten the sound.

libsndfile (through mpg123) takes an MP3's length from its Xing/Info tag, or without one
estimates it from the file size and the first frame's bit rate, and never reads past that
length. A tag whose frame count lies, or a damaged tag (a VBR file then "lasts" as long as
its size divided by the tag frame's bit rate), silently cuts the sound short: a 400 s
recording decoded as 96 s. :func:`scan` walks the frame headers themselves (no audio is
decoded: about 6 % of the time a decode takes) and :func:`repaired` gives libsndfile a view of
the file whose tag holds the counted frames: the tag's frame count patched in place (its
encoder delay and padding kept, so gapless trimming still applies), or, when the file has
no readable tag, a minimal Xing frame put in front. The file itself is never changed.
"""
from __future__ import annotations

import io
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Optional

# kbit/s by bit-rate index 1..14, per (MPEG-1?, layer)
_BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# sample rates by version bits (0: MPEG-2.5, 2: MPEG-2, 3: MPEG-1) and rate index 0..2
_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}


@dataclass(frozen=True)
class FrameHeader:
    version: int  # version bits: 0 MPEG-2.5, 2 MPEG-2, 3 MPEG-1
    layer: int  # 1, 2 or 3
    sample_rate: int
    length: int  # bytes, header included
    samples: int  # samples per channel the frame decodes to
    mono: bool
    crc: bool

    @property
    def side_info(self) -> int:
        """Bytes of layer III side information after the header (and CRC)."""
        if self.version == 3:
            return 17 if self.mono else 32
        return 9 if self.mono else 17

    def same_stream(self, other: "FrameHeader") -> bool:
        return (self.version, self.layer, self.sample_rate) == (other.version, other.layer, other.sample_rate)


def parse_header(word: int) -> Optional[FrameHeader]:
    """The frame header in the 32-bit big-endian ``word``, or None when it is not one
    (free-format bit rates included: their length cannot be told from the header)."""
    if word >> 21 != 0x7FF:
        return None
    version = (word >> 19) & 3
    layer = 4 - ((word >> 17) & 3)
    bitrate_index = (word >> 12) & 15
    rate_index = (word >> 10) & 3
    if version == 1 or layer == 4 or bitrate_index in (0, 15) or rate_index == 3 or (word & 3) == 2:
        return None
    mpeg1 = version == 3
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index - 1] * 1000
    sr = _RATES[version][rate_index]
    padding = (word >> 9) & 1
    if layer == 1:
        length, samples = (12 * bitrate // sr + padding) * 4, 384
    elif layer == 2 or mpeg1:
        length, samples = 144 * bitrate // sr + padding, 1152
    else:
        length, samples = 72 * bitrate // sr + padding, 576
    return FrameHeader(version, layer, sr, length, samples, ((word >> 6) & 3) == 3, not (word >> 16) & 1)


@dataclass(frozen=True)
class Mp3Scan:
    """What the frames of an MP3 file say about its length."""

    first_frame: int  # byte offset of the first frame (after any ID3v2 tag)
    first: FrameHeader
    audio_frames: int  # frames that decode to sound (an info tag's frame not counted)
    samples_per_frame: int
    sample_rate: int
    tag: Optional[str]  # "Xing", "Info" or "VBRI" when the first frame is an info tag
    tag_frames: Optional[int]  # the frame count the tag announces
    tag_frames_offset: Optional[int]  # byte offset of that count in the file (Xing/Info)
    skipped_bytes: int  # bytes between frames that were not a frame (damage, stray tags)

    @property
    def frames_seconds(self) -> float:
        """Seconds the counted frames hold (encoder delay and padding not removed)."""
        return self.audio_frames * self.samples_per_frame / self.sample_rate


def _id3v2_end(mm) -> int:
    if len(mm) >= 10 and mm[:3] == b"ID3":
        size = 0
        for b in mm[6:10]:
            size = (size << 7) | (b & 0x7F)
        return 10 + size + (10 if mm[5] & 0x10 else 0)
    return 0


def _header_at(mm, pos: int) -> Optional[FrameHeader]:
    if pos + 4 > len(mm):
        return None
    return parse_header(int.from_bytes(mm[pos:pos + 4], "big"))


def _sync(mm, pos: int, like: Optional[FrameHeader]) -> Optional[int]:
    """The next offset from ``pos`` where a frame starts that is followed by another
    frame of the same stream (or the file's end): two in a row, as decoders resync."""
    end = len(mm)
    while True:
        pos = mm.find(b"\xff", pos)
        if pos < 0 or pos + 4 > end:
            return None
        h = _header_at(mm, pos)
        if h is not None and (like is None or h.same_stream(like)):
            following = pos + h.length
            if following >= end - 128:  # the last frame (perhaps before an ID3v1 tag)
                return pos
            nxt = _header_at(mm, following)
            if nxt is not None and nxt.same_stream(h):
                return pos
        pos += 1


def _info_tag(mm, pos: int, h: FrameHeader) -> tuple[Optional[str], Optional[int], Optional[int]]:
    """``(kind, frames, offset of the frames field)`` of an info tag in the frame at ``pos``."""
    if h.layer != 3:
        return None, None, None
    at = pos + 4 + (2 if h.crc else 0) + h.side_info
    magic = bytes(mm[at:at + 4])
    if magic in (b"Xing", b"Info") and at + 8 <= len(mm):
        flags = struct.unpack(">I", mm[at + 4:at + 8])[0]
        if flags & 1 and at + 12 <= len(mm):
            return magic.decode(), struct.unpack(">I", mm[at + 8:at + 12])[0], at + 8
        return magic.decode(), None, None
    vbri = pos + 4 + 32
    if bytes(mm[vbri:vbri + 4]) == b"VBRI" and vbri + 18 <= len(mm):
        return "VBRI", struct.unpack(">I", mm[vbri + 14:vbri + 18])[0], None
    return None, None, None


def scan(path: str | os.PathLike) -> Optional[Mp3Scan]:
    """Count the frames of the MP3 file ``path``; None when no frame is found."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 4:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _scan(mm)


def _scan(mm) -> Optional[Mp3Scan]:
    end = len(mm)
    start = _sync(mm, _id3v2_end(mm), None)
    if start is None:
        return None
    first = _header_at(mm, start)
    tag, tag_frames, tag_offset = _info_tag(mm, start, first)
    frames, skipped = (0 if tag else 1), 0
    pos = start + first.length
    while pos + 4 <= end:
        h = _header_at(mm, pos)
        if h is None or not h.same_stream(first):
            if mm[pos:pos + 3] == b"TAG" and end - pos == 128:  # ID3v1 at the end
                break
            nxt = _sync(mm, pos + 1, first)
            if nxt is None:
                break
            skipped += nxt - pos
            pos = nxt
            continue
        if pos + h.length > end:  # a frame cut short: mpg123 drops it
            break
        frames += 1
        pos += h.length
    return Mp3Scan(start, first, frames, first.samples, first.sample_rate, tag, tag_frames, tag_offset, skipped)


def _xing_frame(first: FrameHeader, word: int, frames: int) -> bytes:
    """A minimal Xing frame (frame count only) for the stream of ``first``, whose header
    word is ``word``: the same version, layer, rate and channels, no CRC, the largest bit
    rate (any frame length that holds the tag will do)."""
    header = (word | 0x10000) & ~(0xF << 12) & ~(1 << 9)  # no CRC, no padding
    for index in range(14, 0, -1):
        h = parse_header(header | (index << 12))
        if h is not None:
            break
    header |= index << 12
    h = parse_header(header)
    body = bytearray(h.length)
    body[:4] = header.to_bytes(4, "big")
    at = 4 + h.side_info
    body[at:at + 12] = b"Xing" + struct.pack(">II", 1, frames)
    return bytes(body)


class _SplicedFile(io.RawIOBase):
    """A read-only file made of byte strings and ranges of a real file, for libsndfile's
    virtual I/O: the repaired MP3 without copying the file into memory."""

    def __init__(self, path: str, parts: list) -> None:
        self._f = open(path, "rb")
        self._parts = []  # (start in this view, bytes or (file offset, length))
        at = 0
        for part in parts:
            size = len(part) if isinstance(part, bytes) else part[1]
            if size > 0:
                self._parts.append((at, part))
                at += size
        self._size, self._pos = at, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            start, part = next((s, p) for s, p in reversed(self._parts) if s <= self._pos)
            inside = self._pos - start
            if isinstance(part, bytes):
                chunk = part[inside:inside + len(view) - done]
            else:
                self._f.seek(part[0] + inside)
                chunk = self._f.read(min(part[1] - inside, len(view) - done))
            if not chunk:
                break
            view[done:done + len(chunk)] = chunk
            done += len(chunk)
            self._pos += len(chunk)
        return done

    def close(self) -> None:
        self._f.close()
        super().close()


def repaired(path: str | os.PathLike, found: Mp3Scan) -> io.RawIOBase:
    """A read-only view of ``path`` whose info tag announces ``found.audio_frames``."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if found.tag in ("Xing", "Info") and found.tag_frames_offset is not None:
        at = found.tag_frames_offset
        return _SplicedFile(path, [(0, at), struct.pack(">I", found.audio_frames), (at + 4, size - at - 4)])
    with open(path, "rb") as f:
        f.seek(found.first_frame)
        word = int.from_bytes(f.read(4), "big")
    skip = found.first.length if found.tag else 0  # a VBRI or count-less tag frame: replaced
    tag = _xing_frame(found.first, word, found.audio_frames)
    return _SplicedFile(path, [(0, found.first_frame), tag, (found.first_frame + skip, size - found.first_frame - skip)])
