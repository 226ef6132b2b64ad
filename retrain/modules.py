"""The module contract: a frozen pretrained network that turns a batch of inputs into
a batch of feature vectors ("bottlenecks").

Every backbone (a TF Hub handle or URL, a local SavedModel folder, a short registry name
such as ``efficientnet_lite0`` or ``birdnet``, or several of these joined by commas)
is loaded into an object that satisfies :class:`Backbone`.

Input conventions (retrain.py's TF Hub convention, so exported graphs agree with
``label_image --input_mean 0 --input_std 255``):

* ``input_kind == "image"``: float32 batch ``[N, height, width, 3]`` with values in
  ``[0, 1]``; the backbone applies its own normalisation inside.
* ``input_kind == "waveform"``: float32 batch ``[N, num_samples]`` of mono audio at
  ``sample_rate`` in ``[-1, 1]``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """What a backbone eats: an image of ``height`` x ``width`` or a waveform."""

    kind: str  # "image" | "waveform"
    height: Optional[int] = None
    width: Optional[int] = None
    sample_rate: Optional[int] = None
    num_samples: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "waveform"):
            raise ValueError(f"input kind must be 'image' or 'waveform', not {self.kind!r}")


class ModuleError(RuntimeError):
    """A module could not be resolved or loaded; the message is one line saying
    what was tried and how to fix it."""


class Backbone(abc.ABC):
    """A frozen feature extractor: a batch of inputs in, a batch of feature vectors out."""

    #: Stable identifier, used as the bottleneck cache key and in sidecars.
    name: str
    input_spec: InputSpec
    feature_size: int

    @abc.abstractmethod
    def compute(self, inputs: np.ndarray) -> np.ndarray:
        """Return float32 features ``[N, feature_size]`` for a batch ``inputs``."""

    def tf_callable(self) -> Optional[Callable[[Any], Any]]:
        """A TensorFlow-traceable function ``inputs -> features`` for exporting a single
        graph of backbone + head, or ``None`` when the backbone cannot be part of a
        TensorFlow graph (for example a TFLite-only network)."""
        return None

    def description(self) -> dict:
        """What a sidecar records about this module."""
        spec = self.input_spec
        return {
            "name": self.name,
            "feature_size": int(self.feature_size),
            "input_kind": spec.kind,
            "height": spec.height,
            "width": spec.width,
            "sample_rate": spec.sample_rate,
            "num_samples": spec.num_samples,
        }
