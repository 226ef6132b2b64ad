"""The new classification head, trained on cached bottlenecks.

By default retrain.py's head: one fully connected layer (weights from a truncated normal
with stddev 0.001, zero biases) and a softmax. Options: one hidden ReLU layer, dropout,
label smoothing, L2, SGD or Adam, class-balanced batches.

Training runs many steps inside one ``tf.function`` call (a graph ``while`` loop that
samples its batches with stateless random ops), so 4000 steps take about a second
instead of 4000 Python round trips; a fixed ``seed`` reproduces a run exactly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from retrain.settings import OPTIMIZERS, HeadSettings  # noqa: F401 - re-exported


class ClassificationHead(tf.Module):
    """``features [N, feature_size] -> class probabilities [N, num_classes]``.

    ``head.__call__`` is a ``tf.function`` with input signature
    ``[None, feature_size] float32`` (set per instance, since the size differs per
    backbone); ``head(x)`` calls it.
    """

    def __init__(self, feature_size: int, num_classes: int, hidden_units: int = 0,
                 dropout: float = 0.0, seed: int = 0, name: str = "final_retrain_ops") -> None:
        super().__init__(name=name)
        rng = np.random.default_rng(seed)
        self.feature_size = int(feature_size)
        self.num_classes = int(num_classes)
        self.hidden_units = int(hidden_units)
        self.dropout = float(dropout)
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

    def hidden(self, features, training: bool = False, dropout_seed=None):
        """The activations the final layer sees."""
        x = features
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
    """Trains ``head`` on in-memory bottlenecks ``x`` with integer labels ``y``."""

    def __init__(self, head: ClassificationHead, x: np.ndarray, y: Sequence[int],
                 settings: HeadSettings) -> None:
        self.head = head
        self.settings = settings
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
