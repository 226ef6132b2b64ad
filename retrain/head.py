"""The new classification head, trained on cached bottlenecks.

retrain.py's head at its core: one fully connected layer (weights from a truncated normal
with stddev 0.001, zero biases) and a softmax. In front of it, the features are
standardised with the training split's per-feature mean and standard deviation, held in
the head itself so every exported model (.pb, SavedModel, TFLite) carries them. Options:
one hidden ReLU layer, dropout, label smoothing, L2, SGD or Adam, class-balanced batches.

Training runs many steps inside one ``tf.function`` call (a graph ``while`` loop that
samples its batches with stateless random ops), so 4000 steps take about a second
instead of 4000 Python round trips; a fixed ``seed`` reproduces a run exactly.
:func:`fit` runs the steps with evaluations in between and, given an
:class:`EarlyStopping`, stops when the validation score no longer improves and restores
the best weights. Both work on any list of variables (fine-tuning reuses them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrain.settings import OPTIMIZERS, HeadSettings  # noqa: F401 - re-exported


def feature_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of ``x [N, feature_size]`` (the training
    split's features: never validation or test, whose statistics would leak into the
    model). A feature that barely varies in training (std under 1/1000 of the typical
    feature's) keeps that floor, so a tiny difference at test time is not blown up into a
    huge input; a constant feature maps to 0."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"feature statistics need a non-empty [N, features] array, not {x.shape}")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    typical = float(np.mean(std))
    floor = 1e-3 * typical if typical > 0 else 1.0
    std = np.where(std > 0, np.maximum(std, floor), 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


class ClassificationHead(tf.Module):
    """``features [N, feature_size] -> class probabilities [N, num_classes]``.

    ``head.__call__`` is a ``tf.function`` with input signature
    ``[None, feature_size] float32`` (set per instance, since the size differs per
    backbone); ``head(x)`` calls it. The first op standardises the features with
    ``feature_mean`` and ``feature_scale`` (1 / std), non-trainable variables that are
    the identity until :meth:`set_standardization` is called, and frozen into the graph
    on export like the weights.
    """

    def __init__(self, feature_size: int, num_classes: int, hidden_units: int = 0,
                 dropout: float = 0.0, seed: int = 0, name: str = "final_retrain_ops") -> None:
        super().__init__(name=name)
        rng = np.random.default_rng(seed)
        self.feature_size = int(feature_size)
        self.num_classes = int(num_classes)
        self.hidden_units = int(hidden_units)
        self.dropout = float(dropout)
        self.feature_mean = tf.Variable(np.zeros(self.feature_size, np.float32),
                                        trainable=False, name="feature_mean")
        self.feature_scale = tf.Variable(np.ones(self.feature_size, np.float32),
                                         trainable=False, name="feature_scale")
        width = self.feature_size
        if self.hidden_units:
            scale = np.sqrt(2.0 / self.feature_size)  # He init for the ReLU layer
            self.hidden_weights = tf.Variable(
                (rng.standard_normal((width, self.hidden_units)) * scale).astype(np.float32),
                name="hidden_weights")
            self.hidden_biases = tf.Variable(np.zeros(self.hidden_units, np.float32),
                                             name="hidden_biases")
            width = self.hidden_units
        self.final_weights = tf.Variable(_truncated_normal(rng, (width, self.num_classes), 0.001),
                                         name="final_weights")
        self.final_biases = tf.Variable(np.zeros(self.num_classes, np.float32), name="final_biases")
        self.__call__ = tf.function(
            self._probabilities,
            input_signature=[tf.TensorSpec([None, self.feature_size], tf.float32,
                                           name="bottleneck_input")])

    def __call__(self, features):  # noqa: D401 - Python's call syntax looks up the class
        return self.__dict__["__call__"](features)

    def set_standardization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardise inputs as ``(x - mean) / std`` from now on (see
        :func:`feature_statistics`)."""
        mean = np.asarray(mean, np.float32).reshape(-1)
        std = np.asarray(std, np.float32).reshape(-1)
        if mean.shape != (self.feature_size,) or std.shape != (self.feature_size,) \
                or not np.all(std > 0) or not np.all(np.isfinite(mean)):
            raise ValueError(f"standardisation needs a finite mean and a positive std of "
                             f"{self.feature_size} features")
        self.feature_mean.assign(mean)
        self.feature_scale.assign(1.0 / std)

    def set_linear(self, weights: np.ndarray, biases: np.ndarray) -> None:
        """Set the final layer (a head without a hidden layer): ``logits = standardised
        features @ weights + biases``, e.g. a logistic regression fitted outside
        TensorFlow (:mod:`retrain.logistic`)."""
        if self.hidden_units:
            raise ValueError("set_linear needs a head without a hidden layer")
        weights = np.asarray(weights, np.float32)
        biases = np.asarray(biases, np.float32).reshape(-1)
        if weights.shape != (self.feature_size, self.num_classes) or biases.shape != (self.num_classes,) \
                or not (np.all(np.isfinite(weights)) and np.all(np.isfinite(biases))):
            raise ValueError(f"a linear head needs finite weights [{self.feature_size}, "
                             f"{self.num_classes}] and biases [{self.num_classes}]")
        self.final_weights.assign(weights)
        self.final_biases.assign(biases)

    @property
    def standardized(self) -> bool:
        return bool(np.any(self.feature_mean.numpy() != 0) or np.any(self.feature_scale.numpy() != 1))

    def standardize(self, features):
        return (features - self.feature_mean) * self.feature_scale

    def hidden(self, features, training: bool = False, dropout_seed=None):
        """The activations the final layer sees."""
        x = self.standardize(features)
        if self.hidden_units:
            x = tf.nn.relu(tf.matmul(x, self.hidden_weights) + self.hidden_biases)
        if training and self.dropout > 0:
            x = tf.nn.experimental.stateless_dropout(x, rate=self.dropout, seed=dropout_seed)
        return x

    def logits(self, features, training: bool = False, dropout_seed=None):
        return tf.matmul(self.hidden(features, training, dropout_seed),
                         self.final_weights) + self.final_biases

    def _probabilities(self, features):
        return tf.nn.softmax(self.logits(features), name="final_result")

    def weight_matrices(self) -> list[tf.Variable]:
        return [self.hidden_weights, self.final_weights] if self.hidden_units else [self.final_weights]

    def predict(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Probabilities for a numpy array of features."""
        if len(features) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate([self(tf.constant(features[s:s + batch_size], tf.float32)).numpy()
                               for s in range(0, len(features), batch_size)])


def _truncated_normal(rng: np.random.Generator, shape, stddev: float) -> np.ndarray:
    x = rng.standard_normal(shape)
    while np.any(np.abs(x) > 2):  # redraw beyond two standard deviations, like TF's
        bad = np.abs(x) > 2
        x[bad] = rng.standard_normal(int(bad.sum()))
    return (x * stddev).astype(np.float32)


class HeadTrainer:
    """Trains ``head`` on in-memory bottlenecks ``x`` with integer labels ``y``. With
    ``settings.standardize`` the head's standardisation is set from ``x`` (the training
    data, so never from validation or test)."""

    def __init__(self, head: ClassificationHead, x: np.ndarray, y: Sequence[int],
                 settings: HeadSettings) -> None:
        self.head = head
        self.settings = settings
        if settings.standardize:
            head.set_standardization(*feature_statistics(x))
        y = np.asarray(y, np.int32)
        order = np.argsort(y, kind="stable")
        counts = np.bincount(y, minlength=head.num_classes)
        self._x = tf.constant(np.asarray(x, np.float32))
        self._y = tf.constant(y)
        self._order = tf.constant(order.astype(np.int32))
        self._counts = tf.constant(counts.astype(np.float32))
        self._offsets = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32))
        self._present = tf.constant(np.flatnonzero(counts).astype(np.int32))
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.variables_to_train = list(head.trainable_variables)
        self._lr = tf.constant(settings.learning_rate, tf.float32)
        if settings.optimizer == "adam":
            self._m = [tf.Variable(tf.zeros_like(v)) for v in self.variables_to_train]
            self._v = [tf.Variable(tf.zeros_like(v)) for v in self.variables_to_train]
        self._run = tf.function(self._run_steps)

    @property
    def learning_rate(self) -> float:
        return self.settings.learning_rate

    def _sample(self, step):
        s = self.settings
        seed = tf.stack([tf.cast(s.seed, tf.int64), step])
        n = tf.shape(self._x)[0]
        if not s.balanced_batches:
            return tf.random.stateless_uniform([s.train_batch_size], seed, 0, n, dtype=tf.int32)
        # Uniform over the classes present, then uniform within the class.
        k = tf.random.stateless_uniform([s.train_batch_size], seed, 0,
                                        tf.shape(self._present)[0], dtype=tf.int32)
        c = tf.gather(self._present, k)
        u = tf.random.stateless_uniform([s.train_batch_size], seed + 1)
        pos = tf.cast(u * tf.gather(self._counts, c), tf.int32)
        pos = tf.minimum(pos, tf.cast(tf.gather(self._counts, c), tf.int32) - 1)
        return tf.gather(self._order, tf.gather(self._offsets, c) + pos)

    def loss(self, logits, labels):
        s = self.settings
        if not s.label_smoothing:
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        onehot = tf.one_hot(labels, self.head.num_classes)
        onehot = onehot * (1 - s.label_smoothing) + s.label_smoothing / self.head.num_classes
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))

    def _apply(self, grads) -> None:
        s = self.settings
        if s.optimizer == "sgd":
            for v, g in zip(self.variables_to_train, grads):
                v.assign_sub(self._lr * g)
            return
        b1, b2, eps = 0.9, 0.999, 1e-7
        t = tf.cast(self.step, tf.float32)
        lr = self._lr * tf.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for v, g, m, w in zip(self.variables_to_train, grads, self._m, self._v):
            m.assign(b1 * m + (1 - b1) * g)
            w.assign(b2 * w + (1 - b2) * tf.square(g))
            v.assign_sub(lr * m / (tf.sqrt(w) + eps))

    def _run_steps(self, n):
        xent = tf.constant(0.0)
        logits = tf.zeros([self.settings.train_batch_size, self.head.num_classes])
        yb = tf.zeros([self.settings.train_batch_size], tf.int32)
        for _ in tf.range(n):
            step = self.step.assign_add(1)
            idx = self._sample(step)
            xb, yb = tf.gather(self._x, idx), tf.gather(self._y, idx)
            with tf.GradientTape() as tape:
                logits = self.head.logits(xb, training=True,
                                          dropout_seed=tf.stack([step, tf.cast(self.settings.seed, tf.int64) + 7]))
                xent = self.loss(logits, yb)
                total = xent
                if self.settings.l2:
                    total += self.settings.l2 * tf.add_n(
                        [tf.nn.l2_loss(w) for w in self.head.weight_matrices()])
            grads = tape.gradient(total, self.variables_to_train)
            self._apply(grads)
        # The last batch's accuracy, as retrain.py reports it (computed once, not per step).
        accuracy = tf.reduce_mean(tf.cast(
            tf.equal(tf.argmax(logits, 1, output_type=tf.int32), yb), tf.float32))
        return accuracy, xent

    def train(self, steps: int) -> tuple[float, float]:
        """Run ``steps`` training steps; return the last batch's accuracy and cross entropy."""
        acc, xent = self._run(tf.constant(int(steps), tf.int32))
        return float(acc), float(xent)


def accuracy_and_xent(probabilities: np.ndarray, labels: Sequence[int]) -> tuple[float, float]:
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan"), float("nan")
    acc = float(np.mean(np.argmax(probabilities, 1) == labels))
    xent = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1))))
    return acc, xent


# ------------------------------------------------------------------ early stopping and fit

class EarlyStopping:
    """Remembers the values of ``variables`` at the best validation score seen so far and
    says when to stop: after ``patience`` steps without a better score (0: never early).

    "Better" is a higher validation accuracy, ties broken by a lower cross-entropy, so a
    small validation set (where many steps share one accuracy) still prefers the more
    confident model; ``min_delta`` ignores smaller cross-entropy gains."""

    def __init__(self, variables: Sequence[tf.Variable], patience: int,
                 min_delta: float = 1e-4) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, not {patience}")
        self.variables = list(variables)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.best_step: Optional[int] = None
        self.best_accuracy = -math.inf
        self.best_cross_entropy = math.inf
        self._best_values: Optional[list[np.ndarray]] = None

    def is_better(self, accuracy: float, cross_entropy: float) -> bool:
        if accuracy > self.best_accuracy + 1e-12:
            return True
        return abs(accuracy - self.best_accuracy) <= 1e-12 and \
            cross_entropy < self.best_cross_entropy - self.min_delta

    def update(self, step: int, accuracy: float, cross_entropy: float) -> bool:
        """Record the score at ``step``; True when it is the best so far (then the
        variables' values are kept)."""
        if not (math.isfinite(accuracy) and math.isfinite(cross_entropy)):
            return False
        if not self.is_better(accuracy, cross_entropy):
            return False
        self.best_step, self.best_accuracy, self.best_cross_entropy = step, accuracy, cross_entropy
        self._best_values = [v.numpy().copy() for v in self.variables]
        return True

    def should_stop(self, step: int) -> bool:
        return self.patience > 0 and self.best_step is not None \
            and step - self.best_step >= self.patience

    def restore(self) -> bool:
        """Put the best values back; False when there were none."""
        if self._best_values is None:
            return False
        for v, value in zip(self.variables, self._best_values):
            v.assign(value)
        return True


@dataclass
class Evaluation:
    """One evaluation point of :func:`fit`: the last batch's training accuracy and
    cross-entropy, and the whole validation set's when there is one."""

    step: int
    train_accuracy: float
    train_cross_entropy: float
    validation_accuracy: Optional[float] = None
    validation_cross_entropy: Optional[float] = None
    improved: bool = False
    is_evaluation: bool = True  # False: an extra step (an intermediate graph), no evaluation


@dataclass
class FitResult:
    steps_run: int  # the training steps actually run (fewer when stopped early)
    best_step: Optional[int]  # 0-based step whose weights were kept (None: the last)
    best_validation_accuracy: Optional[float]
    best_validation_cross_entropy: Optional[float]
    stopped_early: bool
    evaluations: list[Evaluation]


def eval_steps(total: int, eval_interval: int, extra: Sequence[int] = ()) -> list[int]:
    """retrain.py's 0-based step indices after which something happens: evaluations
    (every ``eval_interval`` and the last) and ``extra`` ones (intermediate graphs)."""
    steps = set(range(0, total, eval_interval)) | {total - 1}
    steps |= {s for s in extra if 0 <= s < total}
    return sorted(steps)


def fit(trainer, steps: int, eval_interval: int,
        x_val: Optional[np.ndarray] = None, y_val: Optional[Sequence[int]] = None,
        early_stopping: Optional[EarlyStopping] = None, extra_steps: Sequence[int] = (),
        on_step: Optional[Callable[[int, Evaluation], None]] = None,
        predict: Optional[Callable] = None) -> FitResult:
    """Train ``steps`` steps, evaluating every ``eval_interval`` (and at the last step).

    ``trainer``: a :class:`HeadTrainer`, or anything whose ``train(n)`` runs ``n`` more
    steps and returns the last batch's accuracy and cross-entropy; ``predict`` maps a
    float32 tensor of validation inputs to probabilities (default ``trainer.head``), so a
    model that fine-tunes more than the head stops early the same way.

    With ``early_stopping`` and a validation set, every evaluation scores the whole
    validation set; training stops once the score has not improved for the patience,
    and the best weights are restored. ``on_step(i, evaluation)`` is called after step
    ``i`` at every evaluation and every ``extra_steps`` entry (``evaluation.is_evaluation``
    False there: only the last batch's numbers), for logging, summaries, intermediate graphs
    and stopping a diverged run (an exception from it ends training)."""
    validate = x_val is not None and y_val is not None and len(y_val) > 0
    if validate and early_stopping is not None:
        x_val_t = tf.constant(np.asarray(x_val, np.float32))  # converted once, not per evaluation
        y_val = np.asarray(y_val)
        predict = predict or trainer.head
    evaluations: list[Evaluation] = []
    done, stopped = 0, False
    for i in eval_steps(steps, eval_interval, extra_steps):
        train_acc, xent = trainer.train(i + 1 - done)
        done = i + 1
        evaluation = Evaluation(i, train_acc, xent,
                                is_evaluation=i % eval_interval == 0 or i == steps - 1)
        if evaluation.is_evaluation:
            if validate and early_stopping is not None:
                evaluation.validation_accuracy, evaluation.validation_cross_entropy = \
                    accuracy_and_xent(np.asarray(predict(x_val_t)), y_val)
                evaluation.improved = early_stopping.update(
                    i, evaluation.validation_accuracy, evaluation.validation_cross_entropy)
            evaluations.append(evaluation)
        if on_step is not None:
            on_step(i, evaluation)
        if evaluation.is_evaluation and early_stopping is not None and early_stopping.should_stop(i):
            stopped = i < steps - 1
            break
    best = None
    if validate and early_stopping is not None and early_stopping.restore():
        best = early_stopping.best_step
    return FitResult(done, best,
                     early_stopping.best_accuracy if best is not None else None,
                     early_stopping.best_cross_entropy if best is not None else None,
                     stopped, evaluations)
