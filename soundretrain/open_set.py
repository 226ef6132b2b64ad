"""The background class and "I don't know": shared by retrain (which calibrates) and label
(which decides).

* A class folder named :data:`BACKGROUND_LABEL` (``_background_``) holds noise and silence:
  the head learns it like any class, but it is never reported as a detection.
* An open-set threshold: a sound whose best class (the background excluded) scores below it
  is "unknown", instead of being named after the nearest class. It is calibrated on held-out
  predictions of the known classes (out-of-fold ones, or the validation slice's), so that
  :data:`DEFAULT_REJECT_RATE` of their recordings would be called unknown, and stored in the
  model's sidecar (``open_set``), which label reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

BACKGROUND_LABEL = "_background_"
UNKNOWN = "unknown"
#: Share of held-out known-class clips the threshold may call unknown. Chosen on training
#: data (benchmarks/bench_open_set.py: classes held out of fold 1's training, scored on the
#: rest of fold 1); see docs/train.md for the trade-off it buys.
DEFAULT_REJECT_RATE = 0.05


def is_background(label: str) -> bool:
    return label == BACKGROUND_LABEL


@dataclass(frozen=True)
class OpenSet:
    """How a model's probabilities become a decision."""

    threshold: float  # below it (best non-background probability): unknown; 0: never
    background: tuple[int, ...] = ()  # class indices never reported

    @classmethod
    def from_sidecar(cls, sidecar: Optional[dict], labels: Sequence[str]) -> "OpenSet":
        """The sidecar's ``open_set`` (none: a threshold of 0, as before), with the labels'
        background classes."""
        background = tuple(k for k, label in enumerate(labels) if is_background(label))
        block = (sidecar or {}).get("open_set")
        threshold = 0.0
        if isinstance(block, dict):
            value = block.get("threshold")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
                threshold = float(value)
        return cls(threshold, background)

    def decide(self, probabilities: np.ndarray) -> tuple[Optional[int], float]:
        """``(class index, its probability)``; ``(None, best score)`` when the sound is
        unknown: the background wins, or no class reaches the threshold."""
        p = np.asarray(probabilities, dtype=np.float64)
        best = int(np.argmax(p))
        if best in self.background:
            return None, float(p[best])
        if p[best] < self.threshold:
            return None, float(p[best])
        return best, float(p[best])

    def label(self, probabilities: np.ndarray, labels: Sequence[str]) -> tuple[str, float]:
        """:meth:`decide` as a label: the class's, or :data:`UNKNOWN`."""
        k, score = self.decide(probabilities)
        return (UNKNOWN if k is None else labels[k]), score


def known_scores(probabilities: np.ndarray, background: Sequence[int] = ()) -> np.ndarray:
    """The open-set score of each row: its best probability over the known classes."""
    p = np.asarray(probabilities, dtype=np.float64)
    if background:
        p = np.delete(p, list(background), axis=1)
    return p.max(axis=1) if p.size else np.zeros(len(probabilities))


def calibrate_threshold(probabilities: np.ndarray, true_ids: Sequence[int],
                        background: Sequence[int] = (),
                        reject_rate: float = DEFAULT_REJECT_RATE) -> float:
    """The threshold that calls ``reject_rate`` of the held-out known-class rows unknown:
    that quantile of their scores (rows of a background class are not known sounds and do
    not count). 0 when there is nothing to calibrate on."""
    true_ids = np.asarray(true_ids, int)
    known = ~np.isin(true_ids, list(background)) if len(background) else np.ones(len(true_ids), bool)
    scores = known_scores(probabilities, background)[known]
    if not len(scores) or reject_rate <= 0:
        return 0.0
    return float(np.quantile(scores, reject_rate))
