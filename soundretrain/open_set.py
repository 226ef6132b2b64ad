"""The background class and "I don't know": shared by retrain (which calibrates) and label
(which decides).

* A class folder named :data:`BACKGROUND_LABEL` (``_background_``) holds noise and silence:
  the head learns it like any class, but it is never reported as a detection.
* An open-set threshold: a sound whose best class (the background excluded) scores below it
  is "unknown", instead of being named after the nearest class. It is calibrated on held-out
  predictions of the known classes (out-of-fold ones, or the validation slice's), the way
  split conformal prediction does: the k-th lowest of their N scores, k = floor(rate (N + 1)),
  so that a new recording of a known class falls below it with probability at most
  :data:`DEFAULT_REJECT_RATE` (for recordings like the held-out ones). Fewer than
  1 / rate - 1 held-out predictions cannot promise that: no threshold then. It is stored in
  the model's sidecar (``open_set``), which label reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

BACKGROUND_LABEL = "_background_"
UNKNOWN = "unknown"
#: At most this share of new known-class recordings may be called unknown. The scores only
#: weakly separate unseen classes from known ones on UrbanSound8K (benchmarks/bench_open_set.py:
#: AUROC 0.62), so a higher rate costs about as many known sounds as it catches unknown ones;
#: docs/train.md has the trade-off table. The rate is the user's choice of that trade-off.
DEFAULT_REJECT_RATE = 0.05
#: The threshold never goes above this: a class holding most of the probability is named.
#: On well-separated classes every held-out score is near 1 (0.9997 on the generated test
#: classes), and a new recording at 0.986 was called unknown.
MAX_THRESHOLD = 0.5


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
    """The conformal threshold of the held-out known-class rows (rows of a background class
    are not known sounds and do not count): their k-th lowest score, k = floor(rate (N + 1)),
    so a new known sound scores below it with probability at most ``reject_rate``, and never
    above :data:`MAX_THRESHOLD`. 0 (no threshold) when N is too small for that (k < 1)."""
    true_ids = np.asarray(true_ids, int)
    known = ~np.isin(true_ids, list(background)) if len(background) else np.ones(len(true_ids), bool)
    scores = np.sort(known_scores(probabilities, background)[known])
    k = int(np.floor(reject_rate * (len(scores) + 1) + 1e-9))
    if k < 1:
        return 0.0
    return float(min(scores[k - 1], MAX_THRESHOLD))


def min_calibration_count(reject_rate: float = DEFAULT_REJECT_RATE) -> int:
    """The fewest held-out known-class predictions that give a threshold at ``reject_rate``."""
    return int(np.ceil(1.0 / reject_rate - 1 - 1e-9)) if reject_rate > 0 else 0
