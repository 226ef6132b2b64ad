"""``--autotune``: a small, seeded random search over the head's settings, scored on
held-out data only (the test split is never looked at), as BirdNET-Analyzer's trainer tunes
its classifier.

Trial 1 is always the settings given (by default the logistic head, whose strength its own
inner CV chooses); when that is the logistic head, trial 2 is retrain.py's SGD softmax layer;
the others are drawn without replacement from a grid of SGD heads: learning rate (around the
one given), L2, hidden units and dropout. Each trial trains with ``--random_seed``, so the
same seed repeats the whole search.

How trials are scored depends on how much held-out data there is:

* **a validation slice large enough to tell settings apart** (:data:`MIN_VALIDATION` images
  or more): each trial is scored on it; an SGD trial's number of steps is chosen inside it by
  early stopping (the step with the best validation score, whose weights are kept; it stops a
  quarter of the steps after it unless ``--early_stopping_patience`` says otherwise);
* **otherwise, grouped inner cross-validation** on the training and validation images
  together (class-stratified folds, a recording never on both sides, as many folds as the
  smallest class's recordings allow, at most 5): each trial is trained on the other folds
  for the steps given and scored on every image it did not see, so all of them count (a
  validation slice of 35 images has a standard error of 7-9 points: it could never tell 20
  settings apart, and the search always kept the defaults). The logistic trial chooses its
  strength inside each fold (nested), so it is scored as honestly as the others.

The best trial is the highest accuracy (ties: the lower cross-entropy); it replaces the
settings given only when it beats them by more than one standard error of an accuracy on
that many images (the "one-standard-error rule" of model selection): picking the luckiest of
20 settings on few images otherwise chooses noise. The winner is printed and written to
TensorBoard (the HPARAMS tab, one run per trial under ``<run>/autotune/``).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from retrain.head import ClassificationHead, EarlyStopping, HeadTrainer, accuracy_and_xent, fit
from retrain.head_choice import fit_logistic_head, resolve_kind
from retrain.settings import HeadSettings

LEARNING_RATE_FACTORS = (0.3, 1.0, 3.0)  # times the given learning rate
L2_VALUES = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2)
HIDDEN_UNITS = (0, 256, 512, 1024)
DROPOUT_VALUES = (0.0, 0.25, 0.5)
SEARCHED = ("learning_rate", "l2", "hidden_units", "dropout")
#: Fewer validation images than this: trials are scored by grouped inner CV instead (one
#: standard error of an accuracy near 70 % on 400 images is 2.3 points).
MIN_VALIDATION = 400


@dataclass(frozen=True)
class Trial:
    number: int  # 1: the settings given
    settings: HeadSettings
    validation_accuracy: float  # the held-out score: validation slice or inner CV
    validation_cross_entropy: float
    best_step: Optional[int]  # 0-based; None when no step was chosen (inner CV, logistic)
    seconds: float

    def describe(self) -> str:
        return describe_settings(self.settings)


def describe_settings(s: HeadSettings) -> str:
    if resolve_kind(s, 0)[0] == "logistic":
        c = f"C={s.logistic_c:g}" if s.logistic_c else "C by inner CV"
        return f"logistic regression ({c}, class weights {s.class_weights})"
    return (f"learning_rate={s.learning_rate:g} l2={s.l2:g} hidden_units={s.hidden_units} "
            f"dropout={s.dropout:g}")


@dataclass
class AutotuneResult:
    winner: Trial
    trials: list[Trial]
    scoring: str = "validation"  # "validation" or "inner CV"
    scored: int = 0  # images each trial was scored on
    folds: int = 0

    @property
    def settings(self) -> HeadSettings:
        return self.winner.settings

    def table(self) -> str:
        """The trials as a markdown table, best first."""
        where = "validation" if self.scoring == "validation" else "inner-CV"
        rows = [f"| trial | head | learning rate | L2 | hidden units | dropout | best step | "
                f"{where} accuracy | {where} cross-entropy | seconds |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for t in ranked(self.trials):
            s = t.settings
            logistic = resolve_kind(s, 0)[0] == "logistic"
            sgd = ("-", "-", "-", "-") if logistic else \
                (f"{s.learning_rate:g}", f"{s.l2:g}", str(s.hidden_units), f"{s.dropout:g}")
            rows.append(f"| {t.number}{' (winner)' if t is self.winner else ''} | "
                        f"{'logistic' if logistic else 'sgd'} | {' | '.join(sgd)} | "
                        f"{'-' if t.best_step is None else t.best_step} | "
                        f"{t.validation_accuracy * 100:.1f}% | {t.validation_cross_entropy:.4f} | "
                        f"{t.seconds:.1f} |")
        return "\n".join(rows)


def ranked(trials: Sequence[Trial]) -> list[Trial]:
    """Best first: higher accuracy, then lower cross-entropy, then the earlier trial (so the
    settings given win a tie)."""
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
    error of its accuracy on ``validation_count`` images, else the first."""
    given, best = trials[0], ranked(trials)[0]
    if not np.isfinite(given.validation_accuracy):
        return best
    margin = standard_error(best.validation_accuracy, validation_count)
    return best if best.validation_accuracy - given.validation_accuracy > margin else given


def candidates(base: HeadSettings, trials: int, seed: int) -> list[HeadSettings]:
    """``base`` first; when it is the logistic head, retrain.py's SGD head next; then other
    SGD grid points drawn without replacement."""
    if trials < 1:
        raise ValueError(f"--autotune_trials must be >= 1, not {trials}")
    sgd_base = dataclasses.replace(base, kind="sgd")
    if resolve_kind(base, 0)[0] == "logistic":
        first = [dataclasses.replace(base, kind="logistic"), sgd_base][:trials]
    else:
        first = [base]
    grid = [dataclasses.replace(sgd_base, learning_rate=sgd_base.learning_rate * f, l2=l2,
                                hidden_units=h, dropout=d)
            for f, l2, h, d in itertools.product(LEARNING_RATE_FACTORS, L2_VALUES,
                                                 HIDDEN_UNITS, DROPOUT_VALUES)]
    grid = [s for s in grid if all(dataclasses.replace(s, kind=f.kind) != f for f in first)]
    rng = np.random.default_rng([int(seed), 0xA7])
    picks = rng.choice(len(grid), size=min(trials - len(first), len(grid)), replace=False)
    return first + [grid[int(k)] for k in picks]


def _predictor(settings: HeadSettings, x, y, groups, num_classes, steps, blocks,
               x_val=None, y_val=None, eval_interval: int = 10):
    """Train one trial's head; returns ``(predict, best_step)``. With validation data an SGD
    trial stops early on it (its score is its best evaluation)."""
    head = ClassificationHead(x.shape[1], num_classes, settings.hidden_units, settings.dropout,
                              seed=settings.seed)
    if resolve_kind(settings, len(x))[0] == "logistic":
        mean, std, lfit, _ = fit_logistic_head(x, y, groups, num_classes, settings, blocks,
                                               log=lambda line: None)
        head.set_standardization(mean, std)
        head.set_linear(lfit.weights, lfit.biases)
        return head.predict, None
    trainer = HeadTrainer(head, x, y, settings)
    stopper = None
    if x_val is not None and settings.early_stopping:
        stopper = EarlyStopping(head.trainable_variables, settings.early_stopping_patience)
    result = fit(trainer, steps, eval_interval, x_val, y_val, stopper)
    return head.predict, result.best_step


def run_trial(number: int, settings: HeadSettings, x: np.ndarray, y: np.ndarray,
              x_val: np.ndarray, y_val: np.ndarray, num_classes: int, steps: int,
              eval_interval: int, groups: Optional[Sequence[str]] = None,
              blocks: Optional[Sequence[tuple[int, int]]] = None) -> Trial:
    """Train one head on ``x`` and score it on the validation set (an SGD trial: its best
    validation score, the weights kept by early stopping)."""
    start = time.perf_counter()
    groups = list(groups) if groups is not None else [str(i) for i in range(len(y))]
    blocks = list(blocks) if blocks else [(0, x.shape[1])]
    predict, best_step = _predictor(settings, x, y, groups, num_classes, steps, blocks,
                                    x_val, y_val, eval_interval)
    acc, xent = accuracy_and_xent(predict(x_val), y_val)
    return Trial(number, settings, acc, xent, best_step, time.perf_counter() - start)


def cv_trial(number: int, settings: HeadSettings, x: np.ndarray, y: np.ndarray,
             groups: Sequence[str], folds, num_classes: int, steps: int,
             blocks: Sequence[tuple[int, int]]) -> Trial:
    """Score one head by grouped cross-validation: trained on the other folds for ``steps``
    (an SGD head, no early stopping) or with its strength chosen inside them (logistic),
    and scored on every example it did not see."""
    start = time.perf_counter()
    groups = np.asarray(groups)
    probs = np.zeros((len(y), num_classes))
    for train, held in folds:
        predict, _ = _predictor(settings, x[train], y[train], list(groups[train]), num_classes,
                                steps, blocks)
        probs[held] = predict(x[held])
    acc, xent = accuracy_and_xent(probs, y)
    return Trial(number, settings, acc, xent, None, time.perf_counter() - start)


def autotune(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             num_classes: int, base: HeadSettings, steps: int, eval_interval: int,
             trials: int, log: Callable[[str], None] = print,
             log_dir: Optional[str] = None, groups: Optional[Sequence[str]] = None,
             validation_groups: Optional[Sequence[str]] = None,
             blocks: Optional[Sequence[tuple[int, int]]] = None) -> AutotuneResult:
    """Search ``trials`` head settings around ``base`` (whose ``seed`` seeds the search and
    every trial); ``log_dir``: TensorBoard hparams runs. ``groups`` / ``validation_groups``:
    each row's recording; given, a validation slice under :data:`MIN_VALIDATION` images is
    pooled with the training images and trials are scored by grouped inner CV."""
    from retrain import logistic

    blocks = list(blocks) if blocks else [(0, x.shape[1])]
    y, y_val = np.asarray(y, int), np.asarray(y_val, int)
    folds = []
    if groups is not None and len(y_val) < MIN_VALIDATION:
        pool_x = np.concatenate([x, x_val]) if len(y_val) else x
        pool_y = np.concatenate([y, y_val])
        pool_groups = list(groups) + list(validation_groups or [])
        folds = logistic.inner_folds(pool_groups, pool_y, num_classes, base.seed)
    if not folds and not len(y_val):
        raise ValueError("--autotune needs validation images (--validation_percentage > 0 "
                         "or --validation_folds) or two recordings a class to cross-validate")
    # SGD trials scored on a validation slice stop a quarter of the steps after their best
    # evaluation unless a patience was given: wide hidden layers peak early and cost most,
    # and the winner is retrained with the same patience, so it is the trial's head again.
    patience = base.early_stopping_patience or max(eval_interval, steps // 4)
    settings_list = candidates(base, trials, base.seed)
    if not folds:
        settings_list = [s if resolve_kind(s, 0)[0] == "logistic" else dataclasses.replace(
            s, early_stopping=True, early_stopping_patience=patience) for s in settings_list]
        count = len(y_val)
        log(f"Autotune: {len(settings_list)} head settings, each up to {steps} steps with early "
            f"stopping, scored on {count} validation images")
    else:
        count = len(pool_y)
        why = (f"the validation slice ({len(y_val)} images) is too small to tell them apart"
               if len(y_val) else "there is no validation slice")
        log(f"Autotune: {len(settings_list)} head settings, scored by grouped {len(folds)}-fold "
            f"cross-validation on the {count} training and validation images ({why})")
    done: list[Trial] = []
    for number, settings in enumerate(settings_list, 1):
        if folds:
            trial = cv_trial(number, settings, pool_x, pool_y, pool_groups, folds, num_classes,
                             steps, blocks)
        else:
            trial = run_trial(number, settings, x, y, x_val, y_val, num_classes, steps,
                              eval_interval, groups, blocks)
        done.append(trial)
        where = "validation" if not folds else "inner-CV"
        log(f"Autotune trial {number}/{len(settings_list)}: {trial.describe()}: "
            f"{where} accuracy = {trial.validation_accuracy * 100:.1f}%, cross entropy = "
            f"{trial.validation_cross_entropy:.4f}"
            f"{'' if trial.best_step is None else f' at step {trial.best_step}'} "
            f"({trial.seconds:.1f} s)")
    given, best = done[0], ranked(done)[0]
    result = AutotuneResult(choose(done, count), done, "inner CV" if folds else "validation",
                            count, len(folds))
    if result.winner is not best:
        log(f"Autotune: the best trial ({best.number}, {best.validation_accuracy * 100:.1f}%) "
            f"beats the settings given ({given.validation_accuracy * 100:.1f}%) by no more than "
            f"one standard error of an accuracy on {count} images "
            f"({standard_error(best.validation_accuracy, count) * 100:.1f} points): "
            "keeping the settings given")
    w = result.winner
    steps_kept = "" if w.best_step is None else f", {w.best_step + 1} steps"
    log(f"Autotune winner (trial {w.number}): {w.describe()}{steps_kept}: "
        f"{'validation' if not folds else 'inner-CV'} accuracy = "
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

    metrics = [hp.Metric("validation/accuracy", display_name="held-out accuracy"),
               hp.Metric("validation/cross_entropy", display_name="held-out cross-entropy"),
               hp.Metric("best_step", display_name="steps kept")]
    params = [hp.HParam("head", hp.Discrete(["logistic", "sgd"])),
              hp.HParam("learning_rate", hp.RealInterval(0.0, 10.0)),
              hp.HParam("l2", hp.RealInterval(0.0, 10.0)),
              hp.HParam("hidden_units", hp.IntInterval(0, 1 << 20)),
              hp.HParam("dropout", hp.RealInterval(0.0, 1.0))]
    os.makedirs(log_dir, exist_ok=True)
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        hp.hparams_config(hparams=params, metrics=metrics)
        tf.summary.text("autotune/trials", result.table(), step=0)
        tf.summary.text("autotune/winner", f"trial {result.winner.number}: "
                        f"{result.winner.describe()} (scored by {result.scoring} on "
                        f"{result.scored} images)", step=0)
    writer.close()
    for t in result.trials:
        w = tf.summary.create_file_writer(os.path.join(log_dir, f"trial-{t.number:02d}"))
        with w.as_default():
            values = {name: getattr(t.settings, name) for name in SEARCHED}
            values["head"] = resolve_kind(t.settings, 0)[0]
            hp.hparams(values, trial_id=f"trial-{t.number:02d}")
            tf.summary.scalar("validation/accuracy", t.validation_accuracy, step=0)
            tf.summary.scalar("validation/cross_entropy", t.validation_cross_entropy, step=0)
            tf.summary.scalar("best_step", -1 if t.best_step is None else t.best_step, step=0)
        w.close()
