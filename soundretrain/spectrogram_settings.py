"""The spectrogram settings: one frozen dataclass, saved next to the images.

The ``label`` stage reads ``spectrogram_config.json`` back so new audio is rendered
with exactly the settings the model was trained on.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from soundretrain import filesystems

CONFIG_FILENAME = "spectrogram_config.json"

PAD_MODES = ("repeat", "zero")
LONG_CLIP_MODES = ("cut", "split")
IMAGE_FORMATS = ("png", "jpg")
MAX_IMAGE_SIZE = 4096  # pixels per side; the resize works on float32 [size, size]
# Limits that keep one clip's rendering within a laptop's memory (each worker renders one).
MAX_SAMPLE_RATE = 384_000  # Hz, the highest rate audio interfaces record at
MAX_DURATION = 600.0  # seconds per image; longer recordings: long_clips=split
MAX_N_FFT = 65_536  # samples per FFT window (and per hop)
MAX_N_MELS = 1024
MAX_TOP_DB = 200.0  # float32 power spans less than this
MAX_CLIP_BYTES = 2**30  # one clip's STFT

_FIELD_KINDS = {
    "sample_rate": int, "duration": float, "pad_mode": str, "long_clips": str, "window_hop": float,
    "n_mels": int, "n_fft": int, "hop_length": int, "fmin": float, "fmax": float, "top_db": float,
    "image_size": int, "colormap": str, "image_format": str,
}
_OPTIONAL = {"window_hop", "fmax"}
_KIND_WORDS = {int: "a whole number", float: "a number", str: "a string"}


def _is_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):  # True is an int to Python, never a setting
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, kind)


# What an image channel can show (see soundretrain.render.channel_plane): the log-mel in dB
# relative to the clip's maximum, its PCEN, or the first / second time derivative of the dB.
CHANNEL_KINDS = ("db", "pcen", "delta", "delta2")


def parse_channel(text: str) -> tuple[str, Optional[int]]:
    """``"db"`` -> ``("db", None)``; ``"db@1024"`` -> ``("db", 1024)``: the kind and its
    own FFT window (``None``: the settings' ``n_fft``). Raises ValueError with the reason."""
    kind, at, n_fft = str(text).strip().partition("@")
    if kind not in CHANNEL_KINDS:
        raise ValueError(f"channel {text!r}: the kind must be one of {', '.join(CHANNEL_KINDS)} "
                         "(optionally @N_FFT, e.g. db@1024)")
    if not at:
        return kind, None
    if not n_fft.isdigit() or not 16 <= int(n_fft) <= MAX_N_FFT:
        raise ValueError(f"channel {text!r}: the window after @ must be a whole number of "
                         f"samples, from 16 to {MAX_N_FFT}")
    return kind, int(n_fft)


@dataclass(frozen=True)
class SpectrogramSettings:
    """Everything that decides what a clip's image looks like.

    ``pad_mode``: how clips shorter than ``duration`` are filled. ``"repeat"`` (default)
    loops the clip: a short dog bark repeated looks more like real ambient repetition
    than a bark followed by silence, and keeps the image free of an artificial empty
    band. ``"zero"`` pads with silence.
    ``long_clips``: ``"cut"`` keeps the first ``duration`` seconds, ``"split"`` renders
    one image per window of ``duration`` seconds, ``window_hop`` seconds apart
    (``None``: windows do not overlap).
    ``channels``: what the image shows. One entry (default ``("db",)``, the log-mel in dB)
    is coloured by ``colormap``; three entries are the image's red, green and blue
    channels, each a grey plane, e.g. ``("db@1024", "db@2048", "db@4096")`` (three window
    lengths) or ``("db", "delta", "delta2")``. Kinds: :data:`CHANNEL_KINDS`; ``@N`` gives
    a channel its own FFT window. A comma-separated string is accepted too.
    """

    sample_rate: int = 22050
    duration: float = 4.0
    pad_mode: str = "repeat"
    long_clips: str = "cut"
    window_hop: Optional[float] = None
    n_mels: int = 128
    n_fft: int = 2048
    hop_length: int = 512
    fmin: float = 0.0
    fmax: Optional[float] = None
    top_db: float = 80.0
    image_size: int = 224
    colormap: str = "viridis"
    image_format: str = "png"
    channels: tuple[str, ...] = ("db",)

    def __post_init__(self) -> None:
        channels = self.channels
        if isinstance(channels, str):  # "db,delta,delta2", as the flag gives it
            channels = [c for c in channels.split(",") if c.strip()]
        if isinstance(channels, (list, tuple)) and all(isinstance(c, str) for c in channels):
            object.__setattr__(self, "channels", tuple(c.strip() for c in channels))  # JSON: a list
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """One short sentence per invalid field (empty when all is well). Every number must be
        finite and within limits that keep one clip's rendering within memory: ``inf`` and
        ``nan`` would otherwise overflow, allocate hundreds of GiB or draw flat images."""
        p = []
        for f in dataclasses.fields(self):
            kind = _FIELD_KINDS.get(f.name)
            value = getattr(self, f.name)
            if kind is None or (value is None and f.name in _OPTIONAL):
                continue
            if not _is_kind(value, kind):
                p.append(f"{f.name} must be {_KIND_WORDS[kind]}, not {value!r}")
            elif kind is not str and not math.isfinite(value):
                p.append(f"{f.name} must be a finite number, not {value}")
        if p:  # the checks below compare numbers
            return p
        if not 0 < self.sample_rate <= MAX_SAMPLE_RATE:
            p.append(f"sample_rate must be between 1 and {MAX_SAMPLE_RATE} Hz, not {self.sample_rate}")
        if not 0 < self.duration <= MAX_DURATION:
            p.append(f"duration must be above 0 and at most {MAX_DURATION:g} s (split longer "
                     f"recordings with long_clips=split), not {self.duration:g}")
        if self.pad_mode not in PAD_MODES:
            p.append(f"pad_mode must be one of {', '.join(PAD_MODES)}, not {self.pad_mode!r}")
        if self.long_clips not in LONG_CLIP_MODES:
            p.append(f"long_clips must be one of {', '.join(LONG_CLIP_MODES)}, not {self.long_clips!r}")
        if self.window_hop is not None and not 0 < self.window_hop <= MAX_DURATION:
            p.append(f"window_hop must be above 0 and at most {MAX_DURATION:g} s, not {self.window_hop:g}")
        if not 0 < self.n_mels <= MAX_N_MELS:
            p.append(f"n_mels must be between 1 and {MAX_N_MELS}, not {self.n_mels}")
        if not 0 < self.n_fft <= MAX_N_FFT:
            p.append(f"n_fft must be between 1 and {MAX_N_FFT}, not {self.n_fft}")
        if not 0 < self.hop_length <= MAX_N_FFT:
            p.append(f"hop_length must be between 1 and {MAX_N_FFT}, not {self.hop_length}")
        if self.fmin < 0:
            p.append(f"fmin must be >= 0, not {self.fmin:g}")
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax is None else self.fmax
        if self.fmax is not None and self.fmax > nyquist:
            p.append(f"fmax {self.fmax:g} is above the Nyquist frequency {nyquist:g} of sample_rate {self.sample_rate}")
        if fmax <= self.fmin:
            p.append(f"fmax ({fmax:g}) must be above fmin ({self.fmin:g})")
        if not 0 < self.top_db <= MAX_TOP_DB:
            p.append(f"top_db must be above 0 and at most {MAX_TOP_DB:g}, not {self.top_db:g}")
        if self.image_size < 8:
            p.append(f"image_size must be at least 8, not {self.image_size}")
        elif self.image_size > MAX_IMAGE_SIZE:  # 100000 px asked for 40 GB and got the run OOM-killed
            p.append(f"image_size must be at most {MAX_IMAGE_SIZE}, not {self.image_size}")
        if not self.colormap:
            p.append("colormap must not be empty")
        if not isinstance(self.channels, tuple):
            p.append(f"channels must be a list of strings, not {self.channels!r}")
        elif len(self.channels) not in (1, 3):
            p.append(f"channels takes 1 entry (coloured by the colormap) or 3 (red, green, blue), "
                     f"not {len(self.channels)}: {','.join(self.channels) or '(none)'}")
        for c in self.channels if isinstance(self.channels, tuple) else ():
            try:
                parse_channel(c)
            except ValueError as e:
                p.append(str(e))
        if self.image_format not in IMAGE_FORMATS:
            p.append(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, not {self.image_format!r}")
        if not p and self.clip_bytes > MAX_CLIP_BYTES:
            p.append(f"one clip's spectrogram would need {self.clip_bytes / 2**30:.1f} GiB of memory "
                     f"({self.frames} frames of n_fft {self.n_fft}); at most {MAX_CLIP_BYTES / 2**30:g} GiB: "
                     "raise hop_length or lower n_fft or duration")
        return p

    @property
    def frames(self) -> int:
        """STFT frames of one rendered clip (centred frames, as librosa)."""
        return 1 + self.num_samples // self.hop_length

    @property
    def clip_bytes(self) -> int:
        """Peak memory of one clip's STFT, roughly: the windowed frames (float32) and their
        spectrum (complex64)."""
        n_fft = max([self.n_fft] + [n for _, n in self.channel_windows()])  # the longest window
        return self.frames * (4 * max(n_fft, 1) + 8 * (n_fft // 2 + 1))

    @property
    def num_samples(self) -> int:
        """Samples per rendered clip: ``duration`` seconds at ``sample_rate``."""
        return int(round(self.duration * self.sample_rate))

    @property
    def hop_seconds(self) -> float:
        """Seconds between split windows."""
        return self.duration if self.window_hop is None else self.window_hop

    @property
    def coloured(self) -> bool:
        """True when one channel is coloured by ``colormap`` (palette images); False when
        three channels are the image's red, green and blue."""
        return len(self.channels) == 1

    def channel_windows(self) -> list[tuple[str, int]]:
        """``(kind, n_fft)`` of each channel, the settings' ``n_fft`` filled in."""
        return [(kind, n or self.n_fft) for kind, n in map(parse_channel, self.channels)]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)  # JSON has no tuples; from_dict turns it back
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SpectrogramSettings":
        """Build from a dict, ignoring unknown keys (newer or older config files)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save_json(self, path: str | os.PathLike) -> None:
        """Write the settings as JSON, atomically (temp name, then rename); ``path`` may be a
        Beam filesystem URL (``gs://...``)."""
        filesystems.write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "SpectrogramSettings":
        return cls.from_dict(json.loads(filesystems.read_text(path)))
