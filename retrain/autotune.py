"""``--autotune``: a small, seeded random search over the head's settings, scored on the
validation split only (the test split is never looked at), as BirdNET-Analyzer's trainer
tunes its classifier.

Searched: learning rate (around the one given), L2, hidden units and dropout. The number
of steps is chosen inside every trial by early stopping (the step with the best validation
score, whose weights are kept; a trial stops a quarter of the steps after it unless
``--early_stopping_patience`` says otherwise). Trial 1 is always the settings given, so the
winner is never worse on validation than not tuning. Every other trial is drawn without
replacement from the grid with ``--random_seed``, and each trains with that seed, so the
same seed repeats the whole search. The best trial is the highest validation accuracy
(ties: the lower validation cross-entropy); it replaces the settings given only when it beats
them by more than one standard error of an accuracy on that many validation images (the
"one-standard-error rule" of model selection): on a validation slice of 85 clips that is
about 5 points, and picking the luckiest of 20 settings on so few clips chose heads that did
worse on new folds. The winner is printed and written to TensorBoard (the HPARAMS tab, one
run per trial under ``<run>/autotune/``).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from retrain.head import ClassificationHead, EarlyStopping, HeadTrainer, fit
from retrain.settings import HeadSettings

LEARNING_RATE_FACTORS = (0.3, 1.0, 3.0)  # times the given learning rate
L2_VALUES = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2)
HIDDEN_UNITS = (0, 256, 512, 1024)
DROPOUT_VALUES = (0.0, 0.25, 0.5)
SEARCHED = ("learning_rate", "l2", "hidden_units", "dropout")


@dataclass(frozen=True)
class Trial:
    number: int  # 1: the settings given
    settings: HeadSettings
    validation_accuracy: float
    validation_cross_entropy: float
    best_step: Optional[int]  # 0-based; None when there was no finite validation score
    seconds: float

    def describe(self) -> str:
        return describe_settings(self.settings)


def describe_settings(s: HeadSettings) -> str:
    return (f"learning_rate={s.learning_rate:g} l2={s.l2:g} hidden_units={s.hidden_units} "
            f"dropout={s.dropout:g}")


@dataclass
class AutotuneResult:
    winner: Trial
    trials: list[Trial]

    @property
    def settings(self) -> HeadSettings:
        return self.winner.settings

    def table(self) -> str:
        """The trials as a markdown table, best first."""
        rows = ["| trial | learning rate | L2 | hidden units | dropout | best step | "
                "validation accuracy | validation cross-entropy | seconds |",
                "|---|---|---|---|---|---|---|---|---|"]
        for t in ranked(self.trials):
            s = t.settings
            rows.append(f"| {t.number}{' (winner)' if t is self.winner else ''} | "
                        f"{s.learning_rate:g} | {s.l2:g} | {s.hidden_units} | {s.dropout:g} | "
                        f"{'-' if t.best_step is None else t.best_step} | "
                        f"{t.validation_accuracy * 100:.1f}% | {t.validation_cross_entropy:.4f} | "
                        f"{t.seconds:.1f} |")
        return "\n".join(rows)


def ranked(trials: Sequence[Trial]) -> list[Trial]:
    """Best first: higher validation accuracy, then lower cross-entropy, then the earlier
    trial (so the settings given win a tie)."""
    def key(t: Trial):
        acc = t.validation_accuracy if np.isfinite(t.validation_accuracy) else -1.0
        xent = t.validation_cross_entropy if np.isfinite(t.validation_cross_entropy) else np.inf
        return (-acc, xent, t.number)
    return sorted(trials, key=key)


def standard_error(accuracy: float, n: int) -> float:
    """The binomial standard error of an accuracy measured on ``n`` images."""
    if n <= 0 or not np.isfinite(accuracy):
        return float("inf")
    return float(np.sqrt(max(accuracy * (1 - accuracy), 1.0 / n) / n))


def choose(trials: Sequence[Trial], validation_count: int) -> Trial:
    """The best trial if it beats the first (the settings given) by more than one standard
    error of its validation accuracy, else the first."""
    given, best = trials[0], ranked(trials)[0]
    if not np.isfinite(given.validation_accuracy):
        return best
    margin = standard_error(best.validation_accuracy, validation_count)
    return best if best.validation_accuracy - given.validation_accuracy > margin else given


def candidates(base: HeadSettings, trials: int, seed: int) -> list[HeadSettings]:
    """``base`` first, then ``trials - 1`` other grid points drawn without replacement."""
    if trials < 1:
        raise ValueError(f"--autotune_trials must be >= 1, not {trials}")
    grid = [dataclasses.replace(base, learning_rate=base.learning_rate * f, l2=l2,
                                hidden_units=h, dropout=d)
            for f, l2, h, d in itertools.product(LEARNING_RATE_FACTORS, L2_VALUES,
                                                 HIDDEN_UNITS, DROPOUT_VALUES)]
    grid = [s for s in grid if s != base]
    rng = np.random.default_rng([int(seed), 0xA7])
    picks = rng.choice(len(grid), size=min(trials - 1, len(grid)), replace=False)
    return [base] + [grid[int(k)] for k in picks]


def run_trial(number: int, settings: HeadSettings, x: np.ndarray, y: np.ndarray,
              x_val: np.ndarray, y_val: np.ndarray, num_classes: int, steps: int,
              eval_interval: int) -> tuple[Trial, ClassificationHead]:
    """Train one head with early stopping on the validation set; its score is the best
    validation score (the weights kept)."""
    start = time.perf_counter()
    head = ClassificationHead(x.shape[1], num_classes, settings.hidden_units, settings.dropout,
                              seed=settings.seed)
    trainer = HeadTrainer(head, x, y, settings)
    stopper = EarlyStopping(head.trainable_variables, settings.early_stopping_patience)
    result = fit(trainer, steps, eval_interval, x_val, y_val, stopper)
    acc = result.best_validation_accuracy
    xent = result.best_validation_cross_entropy
    trial = Trial(number, settings, float("nan") if acc is None else acc,
                  float("nan") if xent is None else xent, result.best_step,
                  time.perf_counter() - start)
    return trial, head


def autotune(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             num_classes: int, base: HeadSettings, steps: int, eval_interval: int,
             trials: int, log: Callable[[str], None] = print,
             log_dir: Optional[str] = None) -> AutotuneResult:
    """Search ``trials`` head settings around ``base`` (whose ``seed`` seeds the search and
    every trial) on the validation set; ``log_dir``: TensorBoard hparams runs."""
    if len(y_val) == 0:
        raise ValueError("--autotune needs validation images (--validation_percentage > 0 "
                         "or --validation_folds)")
    # Trials stop a quarter of the steps after their best evaluation unless a patience was
    # given: wide hidden layers peak early and cost most, and the winner is retrained with
    # the same patience, so it is the trial's head again.
    patience = base.early_stopping_patience or max(eval_interval, steps // 4)
    base = dataclasses.replace(base, early_stopping=True, early_stopping_patience=patience)
    settings_list = candidates(base, trials, base.seed)
    log(f"Autotune: {len(settings_list)} head settings, each up to {steps} steps with early "
        f"stopping, scored on {len(y_val)} validation images")
    done: list[Trial] = []
    for number, settings in enumerate(settings_list, 1):
        trial, _ = run_trial(number, settings, x, y, x_val, y_val, num_classes, steps,
                             eval_interval)
        done.append(trial)
        log(f"Autotune trial {number}/{len(settings_list)}: {trial.describe()}: "
            f"validation accuracy = {trial.validation_accuracy * 100:.1f}%, cross entropy = "
            f"{trial.validation_cross_entropy:.4f} at step "
            f"{'-' if trial.best_step is None else trial.best_step} ({trial.seconds:.1f} s)")
    given, best = done[0], ranked(done)[0]
    result = AutotuneResult(choose(done, len(y_val)), done)
    if result.winner is not best:
        log(f"Autotune: the best trial ({best.number}, {best.validation_accuracy * 100:.1f}%) "
            f"beats the settings given ({given.validation_accuracy * 100:.1f}%) by no more than "
            f"one standard error of a validation accuracy on {len(y_val)} images "
            f"({standard_error(best.validation_accuracy, len(y_val)) * 100:.1f} points): "
            "keeping the settings given")
    w = result.winner
    log(f"Autotune winner (trial {w.number}): {w.describe()}, "
        f"{'-' if w.best_step is None else w.best_step + 1} steps: validation accuracy = "
        f"{w.validation_accuracy * 100:.1f}% (the settings given: "
        f"{given.validation_accuracy * 100:.1f}%)")
    if log_dir:
        write_hparams(log_dir, result)
    return result


def write_hparams(log_dir: str, result: AutotuneResult) -> None:
    """One TensorBoard run per trial with its hyperparameters and scores (HPARAMS tab),
    and the ranked table as text."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    metrics = [hp.Metric("validation/accuracy", display_name="validation accuracy"),
               hp.Metric("validation/cross_entropy", display_name="validation cross-entropy"),
               hp.Metric("best_step", display_name="steps kept")]
    params = [hp.HParam("learning_rate", hp.RealInterval(0.0, 10.0)),
              hp.HParam("l2", hp.RealInterval(0.0, 10.0)),
              hp.HParam("hidden_units", hp.IntInterval(0, 1 << 20)),
              hp.HParam("dropout", hp.RealInterval(0.0, 1.0))]
    os.makedirs(log_dir, exist_ok=True)
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        hp.hparams_config(hparams=params, metrics=metrics)
        tf.summary.text("autotune/trials", result.table(), step=0)
        tf.summary.text("autotune/winner", f"trial {result.winner.number}: "
                        f"{result.winner.describe()}", step=0)
    writer.close()
    for t in result.trials:
        w = tf.summary.create_file_writer(os.path.join(log_dir, f"trial-{t.number:02d}"))
        with w.as_default():
            hp.hparams({name: getattr(t.settings, name) for name in SEARCHED},
                       trial_id=f"trial-{t.number:02d}")
            tf.summary.scalar("validation/accuracy", t.validation_accuracy, step=0)
            tf.summary.scalar("validation/cross_entropy", t.validation_cross_entropy, step=0)
            tf.summary.scalar("best_step", -1 if t.best_step is None else t.best_step, step=0)
        w.close()
