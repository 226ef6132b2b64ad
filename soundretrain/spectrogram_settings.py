"""The spectrogram settings: one frozen dataclass, saved next to the images.

The ``label`` stage reads ``spectrogram_config.json`` back so new audio is rendered
with exactly the settings the model was trained on.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from soundretrain import atomic_files

CONFIG_FILENAME = "spectrogram_config.json"

PAD_MODES = ("repeat", "zero")
LONG_CLIP_MODES = ("cut", "split")
IMAGE_FORMATS = ("png", "jpg")
MAX_IMAGE_SIZE = 4096  # pixels per side; the resize works on float32 [size, size]


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

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """One short sentence per invalid field (empty when all is well)."""
        p = []
        if self.sample_rate <= 0:
            p.append(f"sample_rate must be positive, not {self.sample_rate}")
        if not self.duration > 0:
            p.append(f"duration must be positive, not {self.duration}")
        if self.pad_mode not in PAD_MODES:
            p.append(f"pad_mode must be one of {', '.join(PAD_MODES)}, not {self.pad_mode!r}")
        if self.long_clips not in LONG_CLIP_MODES:
            p.append(f"long_clips must be one of {', '.join(LONG_CLIP_MODES)}, not {self.long_clips!r}")
        if self.window_hop is not None and not self.window_hop > 0:
            p.append(f"window_hop must be positive, not {self.window_hop}")
        if self.n_mels <= 0:
            p.append(f"n_mels must be positive, not {self.n_mels}")
        if self.n_fft <= 0:
            p.append(f"n_fft must be positive, not {self.n_fft}")
        if self.hop_length <= 0:
            p.append(f"hop_length must be positive, not {self.hop_length}")
        if self.fmin < 0:
            p.append(f"fmin must be >= 0, not {self.fmin}")
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax is None else self.fmax
        if self.fmax is not None and self.fmax > nyquist:
            p.append(f"fmax {self.fmax} is above the Nyquist frequency {nyquist:g} of sample_rate {self.sample_rate}")
        if fmax <= self.fmin:
            p.append(f"fmax ({fmax:g}) must be above fmin ({self.fmin:g})")
        if not self.top_db > 0:
            p.append(f"top_db must be positive, not {self.top_db}")
        if self.image_size < 8:
            p.append(f"image_size must be at least 8, not {self.image_size}")
        elif self.image_size > MAX_IMAGE_SIZE:  # 100000 px asked for 40 GB and got the run OOM-killed
            p.append(f"image_size must be at most {MAX_IMAGE_SIZE}, not {self.image_size}")
        if not self.colormap:
            p.append("colormap must not be empty")
        if self.image_format not in IMAGE_FORMATS:
            p.append(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, not {self.image_format!r}")
        return p

    @property
    def num_samples(self) -> int:
        """Samples per rendered clip: ``duration`` seconds at ``sample_rate``."""
        return int(round(self.duration * self.sample_rate))

    @property
    def hop_seconds(self) -> float:
        """Seconds between split windows."""
        return self.duration if self.window_hop is None else self.window_hop

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SpectrogramSettings":
        """Build from a dict, ignoring unknown keys (newer or older config files)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save_json(self, path: str | os.PathLike) -> None:
        """Write the settings as JSON, atomically (temp name, then rename)."""
        atomic_files.write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "SpectrogramSettings":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
