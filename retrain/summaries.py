"""TensorBoard summaries: one subfolder per run, so runs compare side by side.

``<summaries_dir>/<YYYYmmdd-HHMMSS>-<tag>/train`` and ``.../validation`` (retrain.py
deleted the whole folder at every start). Scalars ``accuracy`` and ``cross_entropy`` at
every evaluation step, ``learning_rate``, histograms of the head's weights, biases and
activations, the flags as text, and at the end a confusion-matrix image and per-class
precision / recall (also as a text table). Watch with
``tensorboard --logdir training_summaries``.
"""
from __future__ import annotations

import io
import os
import re
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from soundretrain import atomic_files


def make_run_dir(summaries_dir: str, tag: str) -> str:
    """A fresh ``<summaries_dir>/<time>-<tag>`` folder (a suffix keeps it unique)."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", tag).strip("_")[:60] or "run"
    base = os.path.join(summaries_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}")
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, int), np.asarray(predictions, int)), 1)
    return cm


def precision_recall(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), np.nan)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), np.nan)
    return precision, recall


def confusion_matrix_png(cm: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        top = cm.max() or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > top / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


class RunSummaries:
    """The writers of one training run."""

    def __init__(self, summaries_dir: str, tag: str, flags_text: str,
                 run_dir: Optional[str] = None) -> None:
        """Writers in a fresh ``<summaries_dir>/<time>-<tag>``, or in ``run_dir`` when given."""
        self.run_dir = run_dir or make_run_dir(summaries_dir, tag)
        os.makedirs(self.run_dir, exist_ok=True)
        self.train = tf.summary.create_file_writer(os.path.join(self.run_dir, "train"))
        self.validation = tf.summary.create_file_writer(os.path.join(self.run_dir, "validation"))
        with self.train.as_default():
            tf.summary.text("flags", flags_text, step=0)

    def scalars(self, step: int, train_accuracy: float, cross_entropy: float,
                learning_rate: float, validation_accuracy: Optional[float] = None,
                validation_cross_entropy: Optional[float] = None) -> None:
        with self.train.as_default():
            tf.summary.scalar("accuracy", train_accuracy, step=step)
            tf.summary.scalar("cross_entropy", cross_entropy, step=step)
            tf.summary.scalar("learning_rate", learning_rate, step=step)
        if validation_accuracy is not None:
            with self.validation.as_default():
                tf.summary.scalar("accuracy", validation_accuracy, step=step)
                if validation_cross_entropy is not None:
                    tf.summary.scalar("cross_entropy", validation_cross_entropy, step=step)

    def histograms(self, step: int, head, features: np.ndarray) -> None:
        with self.train.as_default():
            for v in head.trainable_variables:
                kind = "weights" if "weights" in v.name else "biases"
                name = v.name.split(":")[0].split("/")[-1]
                tf.summary.histogram(f"{kind}/{name}", v, step=step)
            if len(features):
                x = tf.constant(features, tf.float32)
                if head.hidden_units:
                    tf.summary.histogram("activations/hidden", head.hidden(x), step=step)
                tf.summary.histogram("activations/logits", head.logits(x), step=step)

    def final(self, step: int, cm: np.ndarray, labels: Sequence[str], test_accuracy: float) -> str:
        """Confusion matrix image and per-class precision/recall; returns the table text."""
        precision, recall = precision_recall(cm)
        png = confusion_matrix_png(cm, labels, f"test accuracy {test_accuracy * 100:.1f}%")
        atomic_files.write_bytes(os.path.join(self.run_dir, "confusion_matrix.png"), png)
        rows = ["| class | precision | recall | support |", "|---|---|---|---|"]
        for k, label in enumerate(labels):
            rows.append(f"| {label} | {precision[k]:.3f} | {recall[k]:.3f} | {int(cm[k].sum())} |")
        table = "\n".join(rows)
        with self.validation.as_default():
            image = tf.image.decode_png(png, channels=4)[tf.newaxis]
            tf.summary.image("test/confusion_matrix", image, step=step)
            tf.summary.text("test/per_class_precision_recall", table, step=step)
            tf.summary.scalar("test/accuracy", test_accuracy, step=step)
            for k, label in enumerate(labels):
                safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label)
                if not np.isnan(precision[k]):
                    tf.summary.scalar(f"test_precision/{safe}", precision[k], step=step)
                if not np.isnan(recall[k]):
                    tf.summary.scalar(f"test_recall/{safe}", recall[k], step=step)
        return table

    def close(self) -> None:
        self.train.close()
        self.validation.close()
