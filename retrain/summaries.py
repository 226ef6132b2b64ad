"""TensorBoard summaries: one subfolder per run, so runs compare side by side.

``<summaries_dir>/<YYYYmmdd-HHMMSS>-<tag>/train``, ``.../validation`` and ``.../test``
(retrain.py deleted the whole folder at every start). Scalars ``accuracy`` and
``cross_entropy`` at every evaluation step, ``learning_rate``, histograms of the head's
weights, biases and activations and the flags as text in ``train``; at the end the test
set's own run: its accuracy, a confusion-matrix image (rows normalised, counts in the cells)
and the per-class precision / recall table. Watch with
``tensorboard --logdir training_summaries``.
"""
from __future__ import annotations

import errno
import io
import os
import re
import sys
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
    """The confusion matrix as a PNG meant to be read in TensorBoard's Images tab: each row
    normalised (the colour is the share of that true class, so small classes read as well as
    large ones), each cell annotated with its count and share, and large enough for the
    labels: about 70 px per class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    counts = np.asarray(cm, np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, counts / np.maximum(totals, 1), 0.0)
    cell = 0.7 if n <= 20 else 0.5  # inches
    longest = max((len(str(label)) for label in labels), default=1)
    margin = 1.5 + 0.075 * min(longest, 40)  # room for the tick labels
    side = min(60.0, max(7.0, cell * n + margin))
    fig, ax = plt.subplots(figsize=(side, side * 0.92), dpi=100)
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=10 if n <= 20 else 8)
    ax.set_yticks(range(n), [f"{label} ({int(t)})" for label, t in zip(labels, totals[:, 0])],
                  fontsize=10 if n <= 20 else 8)
    ax.set_xlabel("predicted", fontsize=12)
    ax.set_ylabel("true (test images)", fontsize=12)
    ax.set_title(f"{title}\nrows normalised: share of each true class; count and share per cell",
                 fontsize=12)
    for i in range(n):
        for j in range(n):
            if counts[i, j] == 0:
                continue
            text = f"{counts[i, j]}\n{shares[i, j] * 100:.0f}%" if n <= 30 else str(counts[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=9 if n <= 20 else 6,
                    color="white" if shares[i, j] > 0.5 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def precision_recall_table(cm: np.ndarray, labels: Sequence[str]) -> str:
    """Per-class precision, recall and support as a Markdown table (TensorBoard's Text tab)."""
    precision, recall = precision_recall(cm)

    def show(x: float) -> str:
        return "n/a" if np.isnan(x) else f"{x:.3f}"

    rows = ["| class | precision | recall | support |", "|---|---|---|---|"]
    for k, label in enumerate(labels):
        rows.append(f"| {label} | {show(precision[k])} | {show(recall[k])} | {int(cm[k].sum())} |")
    return "\n".join(rows)


def os_error_of(err: BaseException) -> Optional[OSError]:
    """TensorFlow reports a failed write (a full disk) as an OpError whose message holds the
    path and the system's reason; the equivalent OSError, or None for other errors."""
    if isinstance(err, OSError):
        return err
    text = str(err)
    for code, reason in ((errno.ENOSPC, "No space left on device"), (errno.EDQUOT, "Disk quota exceeded"),
                         (errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system")):
        if reason in text:
            match = re.search(r"(/[^\s;]+)[;:]\s*" + re.escape(reason), text)
            return OSError(code, reason, match.group(1) if match else None)
    return None


class RunSummaries:
    """The writers of one training run: ``train/``, ``validation/`` and, at the end, ``test/``.

    TensorBoard summaries are a view of training, not its result: when writing them fails (a
    full disk), one warning says where and why, the summaries stop, and training and the
    export go on.
    """

    def __init__(self, summaries_dir: str, tag: str, flags_text: str,
                 run_dir: Optional[str] = None, warn=None) -> None:
        """Writers in a fresh ``<summaries_dir>/<time>-<tag>``, or in ``run_dir`` when given."""
        self.run_dir = run_dir or make_run_dir(summaries_dir, tag)
        os.makedirs(self.run_dir, exist_ok=True)
        self._warn = warn or (lambda line: print(line, file=sys.stderr))
        self.failed: Optional[str] = None
        self.train = self.validation = self.test = None
        self._guard(self._open, flags_text)

    def _open(self, flags_text: str) -> None:
        self.train = tf.summary.create_file_writer(os.path.join(self.run_dir, "train"))
        self.validation = tf.summary.create_file_writer(os.path.join(self.run_dir, "validation"))
        with self.train.as_default():
            tf.summary.text("flags", flags_text, step=0)

    def _guard(self, write, *args):
        """Run one write; on a write error warn once and stop writing summaries."""
        if self.failed:
            return None
        try:
            return write(*args)
        except (tf.errors.OpError, OSError) as err:
            os_error = os_error_of(err)
            if os_error is None:
                raise
            where = os_error.filename or self.run_dir
            self.failed = f"{where}: {os_error.strerror}"
            self._warn(f"retrain: warning: TensorBoard summaries stopped ({self.failed}); training "
                       "and the export go on")
            return None

    def scalars(self, step: int, train_accuracy: float, cross_entropy: float,
                learning_rate: float, validation_accuracy: Optional[float] = None,
                validation_cross_entropy: Optional[float] = None) -> None:
        self._guard(self._scalars, step, train_accuracy, cross_entropy, learning_rate,
                    validation_accuracy, validation_cross_entropy)

    def _scalars(self, step, train_accuracy, cross_entropy, learning_rate, validation_accuracy,
                 validation_cross_entropy) -> None:
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
        self._guard(self._histograms, step, head, features)

    def _histograms(self, step: int, head, features: np.ndarray) -> None:
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

    def final(self, step: int, cm: np.ndarray, labels: Sequence[str], test_accuracy: float,
              test_cross_entropy: Optional[float] = None) -> str:
        """The test set's run (``test/``, beside ``train/`` and ``validation/``): accuracy
        (and cross entropy), the confusion matrix image and the per-class precision/recall
        table. Returns the table."""
        table = precision_recall_table(cm, labels)
        self._guard(self._final, step, cm, labels, test_accuracy, test_cross_entropy, table)
        return table

    def _final(self, step, cm, labels, test_accuracy, test_cross_entropy, table) -> None:
        png = confusion_matrix_png(cm, labels, f"test accuracy {test_accuracy * 100:.1f}%")
        atomic_files.write_bytes(os.path.join(self.run_dir, "confusion_matrix.png"), png)
        self.test = tf.summary.create_file_writer(os.path.join(self.run_dir, "test"))
        with self.test.as_default():
            tf.summary.scalar("accuracy", test_accuracy, step=step)
            if test_cross_entropy is not None and np.isfinite(test_cross_entropy):
                tf.summary.scalar("cross_entropy", test_cross_entropy, step=step)
            image = tf.image.decode_png(png, channels=4)[tf.newaxis]
            tf.summary.image("confusion_matrix", image, step=step)
            tf.summary.text("per_class_precision_recall", table, step=step)

    def close(self) -> None:
        for writer in (self.train, self.validation, self.test):
            if writer is not None:
                self._guard(writer.close)
