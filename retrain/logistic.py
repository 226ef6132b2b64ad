"""A regularised logistic-regression head whose strength is chosen by grouped inner
cross-validation on the training images: the head for small data.

retrain.py's head (a softmax layer, SGD for a fixed number of steps) has no knob that
says how strongly to trust a few examples; on small sets a logistic regression whose L2
strength is chosen by cross-validation beats it (``benchmarks/bench_small_data.py``).
This module fits that model exactly (multinomial, L-BFGS to convergence, the same loss as
scikit-learn's ``LogisticRegression(C=...)``: ``0.5 |W|^2 + C * sum of weighted
cross-entropies``, bias unpenalised) on standardised features, and chooses ``C`` by
grouped, class-stratified k-fold on the training data (a recording never on both sides;
the features standardised with each inner training part's own statistics).

The result is an ordinary softmax layer: :func:`load_into` writes it into a
:class:`retrain.head.ClassificationHead` (standardisation + weights + biases), so every
export (.pb, SavedModel, TFLite, audio-in) carries it with no special case.

An ensemble of such heads on the same features is one too: averaging the logits of
linear heads is a linear head. :func:`late_fusion` fits one head per backbone part
(each part's ``C`` chosen on its own) and averages their logits, which is a single layer
on the concatenated features.

Pure numpy and scipy: no TensorFlow here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

#: The grid of C (inverse L2 strength) searched by inner CV: scikit-learn's scale, half-decades.
C_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
INNER_FOLDS = 5  # at most; fewer when the smallest class has fewer recordings
CLASS_WEIGHTS = ("none", "balanced")


def standardization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training features' mean and std, with :func:`retrain.head.feature_statistics`'s
    floor (a copy here, so this module does not import TensorFlow)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    typical = float(np.mean(std)) if std.size else 0.0
    floor = 1e-3 * typical if typical > 0 else 1.0
    std = np.where(std > 0, np.maximum(std, floor), 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def sample_weights(y: np.ndarray, num_classes: int, class_weights: str = "none") -> np.ndarray:
    """Per-example weights: all 1, or ``balanced`` (scikit-learn's: n / (classes present *
    examples of the class)), so every class weighs the same in the loss."""
    y = np.asarray(y, int)
    if class_weights == "none":
        return np.ones(len(y))
    if class_weights != "balanced":
        raise ValueError(f"class weights must be one of {', '.join(CLASS_WEIGHTS)}, not {class_weights!r}")
    counts = np.bincount(y, minlength=num_classes).astype(float)
    present = int(np.count_nonzero(counts))
    return len(y) / (present * counts[y])


@dataclass
class LogisticFit:
    """A fitted softmax layer on standardised features: ``logits = z @ weights + biases``."""

    weights: np.ndarray  # [features, classes], float32
    biases: np.ndarray  # [classes], float32
    c: float
    iterations: int
    converged: bool

    def logits(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, np.float32) @ self.weights + self.biases


def _objective(params, z, onehot, weights_per_example, c, shape):
    d, k = shape
    w = params[:d * k].reshape(d, k)
    b = params[d * k:]
    logits = z @ w.astype(np.float32) + b.astype(np.float32)
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(axis=1, keepdims=True))
    log_p = logits - log_norm
    s = weights_per_example[:, None]
    n = len(z)
    loss = -(s * onehot * log_p).sum() / n + 0.5 * float((w * w).sum()) / (c * n)
    delta = (np.exp(log_p) - onehot) * s / n  # d loss / d logits
    grad_w = (z.T @ delta.astype(np.float32)).astype(np.float64) + w / (c * n)
    grad_b = delta.sum(axis=0)
    return loss, np.concatenate([grad_w.ravel(), grad_b])


def fit_logistic(z: np.ndarray, y: np.ndarray, num_classes: int, c: float,
                 class_weights: str = "none", init: Optional[LogisticFit] = None,
                 max_iter: int = 1000, tol: float = 1e-5) -> LogisticFit:
    """Multinomial logistic regression on standardised features ``z`` (L-BFGS), with
    scikit-learn's parametrisation of the L2 strength (larger ``C``: weaker). A class with
    no example gets a bias far below the others, so it is never predicted.

    With fewer examples than features the problem is solved in the span of the examples
    (the optimum's weights are a combination of them: ``W = z.T @ A``), which is exact and
    several times faster: :func:`reduce_examples`."""
    z = np.ascontiguousarray(z, np.float32)
    if init is None and len(z) < z.shape[1]:
        basis = reduce_examples(z @ z.T)
        fit = _fit_primal(basis.train, y, num_classes, c, class_weights, None, max_iter, tol)
        return LogisticFit(basis.weights(z, fit.weights), fit.biases, fit.c, fit.iterations,
                           fit.converged)
    return _fit_primal(z, y, num_classes, c, class_weights, init, max_iter, tol)


def _fit_primal(z, y, num_classes, c, class_weights, init, max_iter, tol) -> LogisticFit:
    from scipy.optimize import minimize

    if c <= 0 or not math.isfinite(c):
        raise ValueError(f"C must be a positive number, not {c}")
    z = np.ascontiguousarray(z, np.float32)
    y = np.asarray(y, int)
    d, k = z.shape[1], int(num_classes)
    onehot = np.eye(k)[y]
    s = sample_weights(y, k, class_weights)
    start = np.zeros(d * k + k) if init is None else \
        np.concatenate([init.weights.astype(np.float64).ravel(), init.biases.astype(np.float64)])
    result = minimize(_objective, start, args=(z, onehot, s, float(c), (d, k)), jac=True,
                      method="L-BFGS-B", options={"maxiter": max_iter, "gtol": tol})
    w = result.x[:d * k].reshape(d, k).astype(np.float32)
    b = result.x[d * k:].astype(np.float32)
    absent = np.bincount(y, minlength=k) == 0
    if absent.any():  # its bias went to -inf slowly; make it plainly never chosen
        b[absent] = float(b[~absent].min()) - 30.0
    return LogisticFit(w, b, float(c), int(result.nit), bool(result.success))


@dataclass
class ExampleBasis:
    """The training examples' span, from their Gram matrix ``G = z z^T = U L U^T``: the
    examples as ``r`` coordinates ``train = U sqrt(L)`` (r <= n), so that a linear model
    ``beta`` on them is ``W = z^T U L^-1/2 beta`` on the features with the same norm
    (an L2-penalised linear model's optimum lies in that span: the problem is the same)."""

    vectors: np.ndarray  # U, [n, r]
    root: np.ndarray  # sqrt(L), [r]

    @property
    def train(self) -> np.ndarray:
        return (self.vectors * self.root).astype(np.float32)

    def project(self, cross_gram: np.ndarray) -> np.ndarray:
        """Coordinates of other examples from their Gram rows ``z_other z^T`` [m, n]."""
        return (np.asarray(cross_gram, np.float64) @ self.vectors / self.root).astype(np.float32)

    def weights(self, z: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """``beta`` [r, K] as weights on the features [d, K]."""
        return (np.asarray(z, np.float64).T @ (self.vectors / self.root) @ beta).astype(np.float32)


def reduce_examples(gram: np.ndarray, rtol: float = 1e-9) -> ExampleBasis:
    values, vectors = np.linalg.eigh(np.asarray(gram, np.float64))
    keep = values > rtol * max(float(values[-1]), 1e-300)
    return ExampleBasis(vectors[:, keep], np.sqrt(values[keep]))


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ inner cross-validation

def inner_folds(groups: Sequence[str], y: np.ndarray, num_classes: int, seed: int = 0,
                max_folds: int = INNER_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, class-stratified folds of the training examples: as many as the smallest
    class's recordings allow (so each class trains in every fold), at most ``max_folds``,
    at least 2. Empty when a class has a single recording (nothing to cross-validate)."""
    from retrain.splits import recordings_per_class, stratified_group_kfold

    counts = [c for c in recordings_per_class(groups, y, num_classes) if c]
    k = min(max_folds, min(counts)) if counts else 0
    if k < 2:
        return []
    return stratified_group_kfold(groups, y, k, seed)


@dataclass
class CVScores:
    """Out-of-fold scores of one setting: accuracy and cross-entropy pooled over every
    held-out example (steadier than the mean of per-fold scores on small sets)."""

    accuracy: float
    cross_entropy: float
    count: int
    probabilities: Optional[np.ndarray] = field(default=None, repr=False)  # out-of-fold, [n, K]

    def key(self) -> tuple[float, float]:
        return (-self.accuracy, self.cross_entropy)


def use_primal(shape: tuple[int, int], folds) -> bool:
    """Whether the folds' training parts have at least as many examples as features (then
    the features are the cheaper coordinates; otherwise the examples' span is)."""
    return min(len(train) for train, _ in folds) >= shape[1]


def fold_grams(x: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Per fold, the Gram matrix ``z z^T`` of every example (training and held-out), ``z``
    standardised with that fold's training part. Grams of feature blocks add up to the
    Gram of their concatenation, so a concatenation of backbone parts costs a sum."""
    x = np.asarray(x, np.float32)
    out = []
    for train, _ in folds:
        mean, std = standardization(x[train])
        z = (x - mean) / std
        out.append(z @ z.T)
    return out


def cv_probabilities(x: np.ndarray, y: np.ndarray, num_classes: int,
                     folds: Sequence[tuple[np.ndarray, np.ndarray]], grid: Sequence[float],
                     class_weights: str = "none",
                     grams: Optional[Sequence[np.ndarray]] = None) -> dict[float, np.ndarray]:
    """Out-of-fold probabilities ``{C: [n, classes]}`` for every C of ``grid``: each fold's
    head standardised with its own training part (``grams``: :func:`fold_grams`, given when
    already computed), solved in the span of its training examples and warm-started along
    the grid."""
    y = np.asarray(y, int)
    if grams is None and x is not None and use_primal(x.shape, folds):
        grams = [None] * len(folds)
    grams = fold_grams(x, folds) if grams is None else grams
    out = {c: np.zeros((len(y), num_classes)) for c in grid}
    for (train, held), gram in zip(folds, grams):
        if gram is None:  # more examples than features: the features themselves
            mean, std = standardization(x[train])
            f_train = ((x[train] - mean) / std).astype(np.float32)
            f_held = ((x[held] - mean) / std).astype(np.float32)
        else:
            basis = reduce_examples(gram[np.ix_(train, train)])
            f_train, f_held = basis.train, basis.project(gram[np.ix_(held, train)])
        previous = None
        for c in sorted(grid):
            previous = _fit_primal(f_train, y[train], num_classes, c, class_weights, previous,
                                   1000, 1e-5)
            out[c][held] = softmax(previous.logits(f_held))
    return out


def scores_of(probabilities: np.ndarray, y: np.ndarray) -> CVScores:
    y = np.asarray(y, int)
    acc = float(np.mean(np.argmax(probabilities, 1) == y))
    xent = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(y)), y], 1e-12, 1))))
    return CVScores(acc, xent, len(y), probabilities)


def best_c(scores: dict[float, CVScores]) -> float:
    """The C with the best out-of-fold accuracy; ties: the lower cross-entropy, then the
    stronger regularisation (smaller C)."""
    return min(scores, key=lambda c: (*scores[c].key(), c))


@dataclass
class LogisticChoice:
    """What inner CV chose, and how every candidate scored (for the log and the sidecar)."""

    c: float
    scores: dict[float, CVScores]
    folds: int
    fit: Optional[LogisticFit] = None

    @property
    def inner_cv(self) -> Optional[CVScores]:
        return self.scores.get(self.c)

    def table(self) -> str:
        rows = ["| C | inner-CV accuracy | inner-CV cross-entropy |", "|---|---|---|"]
        for c in sorted(self.scores):
            s = self.scores[c]
            rows.append(f"| {c:g}{' (chosen)' if c == self.c else ''} | {s.accuracy * 100:.1f}% | "
                        f"{s.cross_entropy:.4f} |")
        return "\n".join(rows)


def choose_c(x: np.ndarray, y: np.ndarray, groups: Sequence[str], num_classes: int,
             grid: Sequence[float] = C_GRID, class_weights: str = "none", seed: int = 0,
             folds: Optional[Sequence[tuple[np.ndarray, np.ndarray]]] = None) -> LogisticChoice:
    """C by grouped inner CV on raw features ``x`` (each fold standardises with its own
    training part). Without folds (a class with one recording), the middle of the grid."""
    y = np.asarray(y, int)
    folds = inner_folds(groups, y, num_classes, seed) if folds is None else list(folds)
    if not folds:
        grid = sorted(grid)
        return LogisticChoice(float(grid[len(grid) // 2]), {}, 0)
    probs = cv_probabilities(x, y, num_classes, folds, grid, class_weights)
    scores = {c: scores_of(p, y) for c, p in probs.items()}
    return LogisticChoice(best_c(scores), scores, len(folds))


def fit_standardized(x: np.ndarray, y: np.ndarray, num_classes: int, c: float,
                     class_weights: str = "none") -> tuple[np.ndarray, np.ndarray, LogisticFit]:
    """Standardise with ``x``'s statistics and fit; returns (mean, std, fit)."""
    mean, std = standardization(x)
    z = (np.asarray(x, np.float32) - mean) / std
    return mean, std, fit_logistic(z, y, num_classes, c, class_weights)


# ------------------------------------------------------------------ late fusion

@dataclass
class FusionChoice:
    """One logistic head per feature block (a backbone part), logits averaged."""

    blocks: list[tuple[int, int]]  # [start, stop) of each part's features
    choices: list[LogisticChoice]
    scores: CVScores  # the averaged heads' out-of-fold score (each block at its chosen C)


def late_fusion_cv(x: np.ndarray, y: np.ndarray, blocks: Sequence[tuple[int, int]],
                   num_classes: int, folds, grid: Sequence[float] = C_GRID,
                   class_weights: str = "none",
                   block_grams: Optional[Sequence[Sequence[np.ndarray]]] = None,
                   block_scores: Optional[Sequence[dict]] = None) -> FusionChoice:
    """Inner-CV score of averaging one head per block, each block's C chosen on its own (by
    the same folds). The averaged out-of-fold logits are those of the fused head, since
    log-probabilities differ from logits by a per-example constant. ``block_grams``: each
    block's :func:`fold_grams`; ``block_scores``: each block's ``{C: CVScores}`` with their
    out-of-fold probabilities, when already computed."""
    y = np.asarray(y, int)
    choices, log_probs = [], []
    for b, (start, stop) in enumerate(blocks):
        if block_scores is not None:
            scores = block_scores[b]
        else:
            probs = cv_probabilities(x[:, start:stop], y, num_classes, folds, grid, class_weights,
                                     None if block_grams is None else block_grams[b])
            scores = {c: scores_of(p, y) for c, p in probs.items()}
        c = best_c(scores)
        choices.append(LogisticChoice(c, scores, len(folds)))
        log_probs.append(np.log(np.clip(scores[c].probabilities, 1e-300, 1)))
    fused = softmax(np.mean(log_probs, axis=0))
    return FusionChoice(list(blocks), choices, scores_of(fused, y))


def fit_late_fusion(x: np.ndarray, y: np.ndarray, num_classes: int, choice: FusionChoice,
                    class_weights: str = "none") -> tuple[np.ndarray, np.ndarray, LogisticFit]:
    """The fused head as one layer on all features: each block's standardised weights
    divided by the number of blocks, biases averaged."""
    mean, std = standardization(x)
    z = (np.asarray(x, np.float32) - mean) / std
    w = np.zeros((x.shape[1], num_classes), np.float32)
    b = np.zeros(num_classes, np.float32)
    n = len(choice.blocks)
    iterations, converged = 0, True
    for (start, stop), ch in zip(choice.blocks, choice.choices):
        f = fit_logistic(z[:, start:stop], y, num_classes, ch.c, class_weights)
        w[start:stop] = f.weights / n
        b += f.biases / n
        iterations += f.iterations
        converged &= f.converged
    return mean, std, LogisticFit(w, b, float("nan"), iterations, converged)
