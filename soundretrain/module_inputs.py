"""What each module of a backbone hears: the model's one sample rate, resampled per module.

A backbone of several modules (``aisfx,soundnet,efficientnet_lite0``: 44.1 kHz, 22,050 Hz
and spectrograms) takes sound at one rate, the *model rate*:

* the spectrograms' rate (``SpectrogramSettings.sample_rate``) when any module takes
  images: the training images are rendered at that rate, so image modules get exactly
  the PNGs ``spectrograms`` wrote, and the other modules are resampled from it;
* otherwise the highest rate of its waveform modules (nothing is upsampled).

Every stage cuts windows at the model rate, and a waveform module at another rate gets
each window resampled by :func:`soundretrain.resample.resample` (the audio-in graph runs
its TensorFlow twin). The bottleneck stage, ``label_image`` and the exported model thus
feed every module the same samples. A sidecar records the rate and the filter
(:func:`describe`); models exported before had neither, and their modules decoded the
file at their own rates (``label_image`` still labels them so).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from soundretrain.resample import RESAMPLER, resample

#: The sidecar key of :func:`describe`.
SIDECAR_KEY = "audio"


def parts_of(backbone) -> list:
    """The modules of ``backbone`` (a concatenation's parts, else the backbone itself)."""
    return list(getattr(backbone, "parts", None) or [backbone])


def part_rate(part, settings) -> int:
    """The rate ``part`` hears: its own for a waveform module, the spectrograms' for an
    image module."""
    spec = part.input_spec
    if spec.kind == "waveform":
        return int(spec.sample_rate)
    return int(settings.sample_rate)


def model_rate(parts: Sequence, settings) -> int:
    """The one rate a backbone of ``parts`` takes (see the module docstring)."""
    if any(p.input_spec.kind == "image" for p in parts):
        return int(settings.sample_rate)
    return max(part_rate(p, settings) for p in parts)


def needs_resampling(parts: Sequence, settings) -> bool:
    rate = model_rate(parts, settings)
    return any(part_rate(p, settings) != rate for p in parts)


def part_window(y: np.ndarray, rate: int, part, settings) -> np.ndarray:
    """A window ``y`` (``[..., samples]`` at ``rate``) as ``part`` hears it."""
    return resample(y, rate, part_rate(part, settings))


def describe(parts: Sequence, settings) -> Optional[dict]:
    """What a sidecar records under :data:`SIDECAR_KEY`: the model rate, the filter and
    each module's rate; None when no module hears sound."""
    if not any(p.input_spec.kind == "waveform" for p in parts):
        return None
    return {"sample_rate": model_rate(parts, settings), "resampler": RESAMPLER,
            "module_rates": [part_rate(p, settings) for p in parts]}


__all__ = ["SIDECAR_KEY", "describe", "model_rate", "needs_resampling", "part_rate", "part_window",
           "parts_of"]
