"""Which head ``retrain`` trains (``--head``), and the default head for any size of data.

* ``logistic``: a logistic regression on standardised features whose L2 strength ``C`` is
  chosen by grouped, class-stratified inner cross-validation on the training images
  (:mod:`retrain.logistic`); with a backbone of several parts (``aisfx,soundnet,...``) inner
  CV also decides between one head on all features and the average of one head per part
  (``--ensemble``). No step count, learning rate or validation slice is involved: it is
  fitted to convergence, and the strength comes from the training data itself.
* ``sgd``: retrain.py's softmax layer trained by SGD (or Adam) for
  ``--how_many_training_steps``, with every option of :mod:`retrain.head`.
* ``auto`` (default): ``logistic``, unless a flag only the SGD head has is set
  (``--hidden_units``, ``--learning_rate``, ``--early_stopping``, ...: then ``sgd``, as
  asked), or the training set is so large that the inner CV would cost minutes while the
  SGD head matches it there (over :data:`LOGISTIC_MAX_EXAMPLES` examples).

Why: on ``benchmarks/bench_small_data.py`` (3 to 40 files a class) the SGD head with its
fixed 4000 steps trailed a logistic-regression probe by up to 6 points, and a fixed
number of steps cannot suit 30 examples and 30,000 alike; the logistic head matches or beats
the probe at every size (docs/retrain.md has the figures).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from retrain import logistic
from retrain.settings import HeadSettings

#: Above this many training examples ``--head=auto`` trains the SGD head: the logistic
#: head's inner CV (9 strengths x 5 folds) then takes minutes on a CPU, and on full folds
#: both heads score alike (README's accuracy section).
LOGISTIC_MAX_EXAMPLES = 4000


def resolve_kind(head: HeadSettings, training_examples: int) -> tuple[str, str]:
    """``(kind, why)``: the head ``--head`` asks for, ``auto`` resolved."""
    if head.kind != "auto":
        return head.kind, f"--head={head.kind}"
    knobs = head.sgd_knobs()
    if knobs:
        return "sgd", f"{', '.join(knobs)} set{'s' if len(knobs) == 1 else ''} the SGD head's training"
    if training_examples > LOGISTIC_MAX_EXAMPLES:
        return "sgd", (f"{training_examples} training examples (over {LOGISTIC_MAX_EXAMPLES}, "
                       "where the logistic head's inner CV would take minutes)")
    return "logistic", "the default"


@dataclass
class HeadReport:
    """What the logistic head's inner CV chose and how every candidate scored: printed,
    written to TensorBoard and to the model's sidecar."""

    kind: str
    why: str
    c: Optional[float] = None  # one head on all features; None with ensemble "parts"
    part_c: list[float] = field(default_factory=list)  # ensemble "parts": each part's C
    ensemble: str = "none"  # what was chosen: "none" (one head) or "parts"
    class_weights: str = "none"
    folds: int = 0
    examples: int = 0
    inner_cv_accuracy: Optional[float] = None
    candidates: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "why": self.why, "c": self.c, "part_c": self.part_c,
                "ensemble": self.ensemble, "class_weights": self.class_weights,
                "inner_cv_folds": self.folds, "inner_cv_examples": self.examples,
                "inner_cv_accuracy": self.inner_cv_accuracy, "candidates": self.candidates}

    def table(self) -> str:
        rows = ["| head | C | inner-CV accuracy | inner-CV cross-entropy |", "|---|---|---|---|"]
        for r in self.candidates:
            rows.append(f"| {r['head']}{' (chosen)' if r.get('chosen') else ''} | {r['c']} | "
                        f"{r['accuracy'] * 100:.1f}% | {r['cross_entropy']:.4f} |")
        return "\n".join(rows)

    def summary(self) -> str:
        if self.ensemble == "parts":
            what = "one head per backbone part, logits averaged (C " + \
                ", ".join(f"{c:g}" for c in self.part_c) + ")"
        else:
            what = f"C={self.c:g}"
        score = "" if self.inner_cv_accuracy is None else \
            f", inner-CV accuracy {self.inner_cv_accuracy * 100:.1f}%"
        how = (f"grouped {self.folds}-fold inner CV on the {self.examples} training examples"
               if self.folds else "no inner CV")
        return f"{what} ({how}{score})"


def fit_logistic_head(x: np.ndarray, y: np.ndarray, groups: Sequence[str], num_classes: int,
                      head: HeadSettings, blocks: Sequence[tuple[int, int]], why: str = "",
                      log: Callable[[str], None] = print
                      ) -> tuple[np.ndarray, np.ndarray, logistic.LogisticFit, HeadReport]:
    """The logistic head on training features ``x`` (raw; standardised here with their own
    statistics): ``(mean, std, fit, report)``. ``groups``: each row's recording (an augmented
    copy has its original's), so inner CV never splits a recording; ``blocks``: the feature
    ranges of the backbone's parts, for ``--ensemble``."""
    y = np.asarray(y, int)
    cw = head.class_weights
    report = HeadReport("logistic", why, class_weights=cw, examples=len(y))
    ensembles = ["none"] if len(blocks) < 2 or head.ensemble == "none" else \
        (["parts"] if head.ensemble == "parts" else ["none", "parts"])
    folds = logistic.inner_folds(groups, y, num_classes, head.seed) \
        if not head.logistic_c or len(ensembles) > 1 else []
    report.folds = len(folds)
    grid = [head.logistic_c] if head.logistic_c else list(logistic.C_GRID)
    if not folds:
        if not head.logistic_c:
            log("Inner CV: too few recordings a class to cross-validate; C=0.1 (the middle "
                "of the grid)")
        c = head.logistic_c or 0.1
        ensemble = ensembles[0]
        part_c = [c] * len(blocks) if ensemble == "parts" else []
    else:
        primal = logistic.use_primal(x.shape, folds)
        block_grams = None if primal else [logistic.fold_grams(x[:, a:b], folds) for a, b in blocks]
        block_scores = None
        joint: dict[float, logistic.CVScores] = {}
        if "none" in ensembles:
            grams = None if primal else [sum(g[f] for g in block_grams) for f in range(len(folds))]
            probs = logistic.cv_probabilities(x, y, num_classes, folds, grid, cw, grams)
            joint = {c: logistic.scores_of(p, y) for c, p in probs.items()}
            for c in grid:
                report.candidates.append(_row("one head", c, joint[c]))
        fusion = None
        if "parts" in ensembles:
            fusion = logistic.late_fusion_cv(x, y, blocks, num_classes, folds, grid, cw,
                                             block_grams, block_scores)
            report.candidates.append(_row("one per part", ", ".join(f"{ch.c:g}" for ch in fusion.choices),
                                          fusion.scores))
        best_joint = logistic.best_c(joint) if joint else None
        # The ensemble only where inner CV favours it: a higher accuracy, not a tie.
        if fusion is not None and (best_joint is None
                                   or fusion.scores.accuracy > joint[best_joint].accuracy):
            ensemble, c, part_c = "parts", None, [ch.c for ch in fusion.choices]
            report.inner_cv_accuracy = fusion.scores.accuracy
            report.candidates[-1]["chosen"] = True
        else:
            ensemble, c, part_c = "none", best_joint, []
            report.inner_cv_accuracy = joint[best_joint].accuracy
            next(r for r in report.candidates if r["head"] == "one head" and r["c"] == f"{c:g}")["chosen"] = True
    report.ensemble, report.c, report.part_c = ensemble, c, part_c
    if ensemble == "parts":
        choice = logistic.FusionChoice(list(blocks), [logistic.LogisticChoice(pc, {}, 0) for pc in part_c],
                                       logistic.CVScores(float("nan"), float("nan"), 0))
        mean, std, fit = logistic.fit_late_fusion(x, y, num_classes, choice, cw)
    else:
        mean, std, fit = logistic.fit_standardized(x, y, num_classes, c, cw)
    return mean, std, fit, report


def _row(head: str, c, scores: logistic.CVScores) -> dict:
    return {"head": head, "c": c if isinstance(c, str) else f"{c:g}", "accuracy": scores.accuracy,
            "cross_entropy": scores.cross_entropy}


class LogisticTrainer:
    """The logistic head behind :class:`retrain.head.HeadTrainer`'s interface, so
    ``retrain``'s training loop (:func:`retrain.head.fit`: console lines, TensorBoard,
    progress) runs it as one step: the first ``train`` call chooses and fits the head and
    writes it into ``head``; it returns the training accuracy and cross-entropy."""

    learning_rate = 0.0  # nothing is stepped: TensorBoard's learning-rate chart shows 0

    def __init__(self, head, x: np.ndarray, y: np.ndarray, groups: Sequence[str],
                 settings: HeadSettings, blocks: Sequence[tuple[int, int]], why: str = "",
                 log: Callable[[str], None] = print) -> None:
        self.head = head
        self.settings = settings
        self._x, self._y, self._groups, self._blocks = x, np.asarray(y, int), list(groups), list(blocks)
        self._why, self._log = why, log
        self.report: Optional[HeadReport] = None
        self._scores: Optional[tuple[float, float]] = None

    def train(self, steps: int) -> tuple[float, float]:
        if self._scores is None:
            mean, std, fit, self.report = fit_logistic_head(
                self._x, self._y, self._groups, self.head.num_classes, self.settings,
                self._blocks, self._why, self._log)
            self.head.set_standardization(mean, std)
            self.head.set_linear(fit.weights, fit.biases)
            p = logistic.softmax(fit.logits((np.asarray(self._x, np.float32) - mean) / std))
            s = logistic.scores_of(p, self._y)
            self._scores = (s.accuracy, s.cross_entropy)
            if not fit.converged:
                self._log(f"Note: the logistic head stopped after {fit.iterations} iterations "
                          "without meeting its tolerance")
        return self._scores


def feature_blocks(backbone) -> list[tuple[int, int]]:
    """``[start, stop)`` of each part's features in a backbone's concatenated vector."""
    blocks, start = [], 0
    for part in getattr(backbone, "parts", [backbone]):
        blocks.append((start, start + part.feature_size))
        start += part.feature_size
    return blocks
