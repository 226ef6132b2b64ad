"""``--cross_validate``: the official protocol of fold-based datasets.

One run per fold as the test fold (10 for UrbanSound8K, 5 for ESC-50), validation a
group-aware slice of the other folds; bottlenecks (and augmented copies, whose mixing
partners stay within a fold) are computed once and shared by all runs. Reports per-fold
and mean ± std accuracy, as CSV and JSON.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from retrain.core import (RetrainSettings, _default_tag, check_fine_tune, draw_seed, prepare, split_partition,
                          train_and_evaluate)
from retrain.errors import RetrainError
from retrain.split_plan import needs_validation
from retrain.splits import cross_validation_splits, missing_classes, without_validation
from retrain.summaries import make_run_dir
from soundretrain import atomic_files


@dataclass
class CrossValidationResult:
    folds: list[int]
    accuracies: list[float]
    counts: list[int]
    mean: float
    std: float
    csv_path: Optional[str]
    json_path: Optional[str]
    seed: int


def cross_validate(settings: RetrainSettings, seed: Optional[int] = None,
                   folds: Optional[Sequence[int]] = None, report_dir: Optional[str] = None,
                   log: Callable[[str], None] = print) -> CrossValidationResult:
    """Train and test once per fold; write ``cross_validation.csv`` / ``.json`` into
    ``report_dir`` (default: this cross-validation's folder
    ``<summaries_dir>/<time>-<tag>-cv/``, which also holds one TensorBoard run per fold)."""
    problems = [p for p in settings.problems() if "--test_folds" not in p]
    if problems:
        raise RetrainError(problems[0])
    if seed is None:
        seed = draw_seed()
        log(f"Random seed: {seed} (pass --random_seed={seed} to repeat this run)")
    # One seed for everything random, the augmented copies included (as for the head,
    # which takes ``seed`` below), so the printed seed repeats the run exactly.
    settings = dataclasses.replace(settings, augment=dataclasses.replace(settings.augment, seed=seed))
    prepared = prepare(settings, log, check=lambda images: _check_folds(settings, images, folds),
                       check_backbone=lambda backbone, spectrogram: check_fine_tune(settings, backbone,
                                                                                 spectrogram))
    runs = cross_validation_splits(prepared.images.records, settings.validation_percentage, folds)
    if needs_validation(settings) is None and not settings.keep_validation:
        # Nothing reads a validation slice: its recordings train each fold's head (the test
        # folds are the official ones either way).
        runs = [(fold, without_validation(split)) for fold, split in runs]
        log("Validation: no validation slice: nothing reads it (--early_stopping and --autotune "
            "are off), so its recordings train each fold's head; --validation_percentage N keeps one")
    partition = split_partition(settings, prepared)
    base_tag = settings.run_tag or _default_tag(dataclasses.replace(settings, split="hash"),
                                                prepared).replace("-hash", "")
    # One folder per cross-validation: a TensorBoard run per test fold, and the report.
    cv_dir = make_run_dir(settings.summaries_dir, f"{base_tag}-cv") if settings.summaries_dir else None
    accuracies, counts = [], []
    for fold, split in runs:
        log(f"=== Cross-validation: test fold {fold} ({split.describe()}) ===")
        outcome = train_and_evaluate(settings, prepared, split, seed, f"test{fold}", partition, log,
                                     run_dir=os.path.join(cv_dir, f"test{fold}") if cv_dir else None)
        accuracies.append(outcome.test_accuracy)
        counts.append(outcome.test_count)
    acc = np.asarray(accuracies, float)
    mean, std = float(np.nanmean(acc)), float(np.nanstd(acc))
    fold_ids = [f for f, _ in runs]
    for f, a, n in zip(fold_ids, accuracies, counts):
        log(f"Fold {f}: test accuracy = {a * 100:.1f}% (N={n})")
    log(f"Cross-validation accuracy = {mean * 100:.1f}% ± {std * 100:.1f}% "
        f"over {len(fold_ids)} folds")
    report_dir = report_dir or cv_dir
    csv_path = json_path = None
    if report_dir:
        os.makedirs(report_dir, exist_ok=True)
        csv_path = os.path.join(report_dir, "cross_validation.csv")
        json_path = os.path.join(report_dir, "cross_validation.json")
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["test_fold", "accuracy", "num_test_images"])
        for f, a, n in zip(fold_ids, accuracies, counts):
            writer.writerow([f, f"{a:.6f}", n])
        writer.writerow(["mean", f"{mean:.6f}", sum(counts)])
        writer.writerow(["std", f"{std:.6f}", ""])
        _atomic_write(csv_path, buf.getvalue())
        report = {
            "module": prepared.backbone.name,
            "image_dir": prepared.images.image_dir,
            "seed": seed,
            "folds": [{"test_fold": f, "accuracy": a, "num_test_images": n}
                      for f, a, n in zip(fold_ids, accuracies, counts)],
            "mean_accuracy": mean,
            "std_accuracy": std,
            "settings": settings.flags_text,
        }
        _atomic_write(json_path, json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
        log(f"Cross-validation report: {csv_path}, {json_path}")
    return CrossValidationResult(fold_ids, accuracies, counts, mean, std, csv_path, json_path, seed)


def _check_folds(settings: RetrainSettings, images, folds: Optional[Sequence[int]]) -> None:
    """Before any bottleneck: every class must have training images in every fold's split
    (a head that never saw a class scores 0 % on it, and the mean hides why)."""
    for fold, split in cross_validation_splits(images.records, settings.validation_percentage, folds):
        missing_classes(dataclasses.replace(split, test=()), images.class_ids(), images.labels,
                        f"the split with test fold {fold}")


def _finite(value):
    """The report with NaN (a fold without test images) as null: strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _atomic_write(path: str, text: str) -> None:
    atomic_files.write_text(path, text)
