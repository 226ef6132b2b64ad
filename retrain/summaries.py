"""TensorBoard summaries: one subfolder per run, so runs compare side by side.

``<summaries_dir>/<YYYYmmdd-HHMMSS>-<tag>/train``, ``.../validation`` and ``.../test``
(retrain.py deleted the whole folder at every start). Scalars ``accuracy`` and
``cross_entropy`` at every evaluation step, ``learning_rate``, histograms of the head's
weights, biases and activations and the flags as text in ``train``; at the end the test
set's own run: its accuracy on a chart of its own (``test_accuracy``), a confusion-matrix
image (rows normalised, counts in the cells, sized for TensorBoard's Images card) and the
per-class precision / recall table. Run names name every module
(``aisfx+soundnet+efficientnet_lite0-test2``). Watch with
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
    tag = re.sub(r"[^A-Za-z0-9._+-]+", "_", tag).strip("_")[:100] or "run"
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


def _short(label: str, most: int) -> str:
    label = str(label)
    return label if len(label) <= most else label[: most - 1] + "\u2026"


# TensorBoard's Time Series tab (its default) fits an image into a card's 367 x 215 px box.
CARD_WIDTH, CARD_HEIGHT = 360, 212


def confusion_matrix_png(cm: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """The confusion matrix as a PNG readable at TensorBoard's default size. The Time Series
    tab shrinks an image to fit a 367 x 215 px box (a 700-px matrix became 214 px, its text 3 px
    high), so up to 10 classes the picture is laid out for that box: rows ``k name (count)``,
    columns numbered ``k`` (rotated names would take half the height), counts in the cells, the
    colour the share of the row's true class (small classes read as well as large ones). It is
    drawn at twice that size, so TensorBoard's "actual size" and high-density screens get sharp
    text. More classes get cells of at least 12 px and a bigger picture (shrunk in the card)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    counts = np.asarray(cm, np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, counts / np.maximum(totals, 1), 0.0)
    # Geometry in card pixels: title line, grid, column numbers; row names on the left.
    top, bottom, right = 30, 26, 6
    cell_h = max(12.0, min(28.0, (CARD_HEIGHT - top - bottom) / max(n, 1)))
    font = max(7.0, min(11.0, 0.62 * cell_h))  # px
    char = 0.55 * font
    rows = [f"{k} {_short(name, 22)} ({int(t)})" for k, (name, t) in enumerate(zip(labels, totals[:, 0]))]
    left = 8 + char * max(len(r) for r in rows) + 6
    cell_w = max(cell_h, min(34.0, (CARD_WIDTH - left - right) / max(n, 1)))
    width, height = left + n * cell_w + right, top + n * cell_h + bottom
    scale = 2  # drawn at twice the card's pixels
    points = 72 / 100  # px -> pt at 100 dpi
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100 * scale)
    ax = fig.add_axes((left / width, bottom / height, n * cell_w / width, n * cell_h / height))
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n), [str(k) for k in range(n)], fontsize=font * points)
    ax.set_yticks(range(n), rows, fontsize=font * points)
    ax.tick_params(length=2, pad=2)
    ax.set_xlabel("predicted", fontsize=font * points, labelpad=1)
    fig.text(4 / width, 1 - 3 / height, title, ha="left", va="top", fontsize=(font + 2) * points, weight="bold")
    fig.text(4 / width, 1 - (6 + font + 2) / height, "rows: true class (count) · colour: share of the row",
             ha="left", va="top", fontsize=(font - 1) * points, color="#555555")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font * points,
                        color="white" if shares[i, j] > 0.5 else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100 * scale)
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

    def text(self, name: str, markdown: str, step: int = 0) -> None:
        """A Markdown table or note in the train run's Text tab."""
        self._guard(self._text, name, markdown, step)

    def _text(self, name: str, markdown: str, step: int) -> None:
        with self.train.as_default():
            tf.summary.text(name, markdown, step=step)

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
        png = confusion_matrix_png(cm, labels, f"test accuracy {test_accuracy * 100:.1f}% (N={int(cm.sum())})")
        atomic_files.write_bytes(os.path.join(self.run_dir, "confusion_matrix.png"), png)
        self.test = tf.summary.create_file_writer(os.path.join(self.run_dir, "test"))
        with self.test.as_default():
            # Their own charts: one point under "accuracy" sat on the right edge of the
            # train/validation chart, half outside its axis.
            tf.summary.scalar("test_accuracy", test_accuracy, step=step)
            if test_cross_entropy is not None and np.isfinite(test_cross_entropy):
                tf.summary.scalar("test_cross_entropy", test_cross_entropy, step=step)
            image = tf.image.decode_png(png, channels=4)[tf.newaxis]
            tf.summary.image("confusion_matrix", image, step=step)
            headline = f"**test accuracy {test_accuracy * 100:.1f}%** (N={int(cm.sum())}, step {step})\n\n"
            tf.summary.text("per_class_precision_recall", headline + table, step=step)

    def close(self) -> None:
        for writer in (self.train, self.validation, self.test):
            if writer is not None:
                self._guard(writer.close)
