"""The open-set threshold of an exported model (see :mod:`soundretrain.open_set`),
calibrated on predictions of recordings the scoring head never heard: for the logistic
head, a grouped k-fold inside the training recordings by heads of the exported head's own C;
otherwise the k-fold evaluation's out-of-fold predictions when there was one, else the
validation slice's, else those of a grouped k-fold inside the training recordings (k more
heads, seconds on cached bottlenecks). Never on the test set, which only reports."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from retrain.core import (HeldOut, Prepared, TrainOutcome, quiet_tensorflow_retracing,
                          train_and_evaluate)
from retrain.settings import RetrainSettings
from retrain.split_plan import MAX_AUTO_K, SplitPlan
from retrain.splits import Split, recordings_per_class, stratified_group_kfold
from soundretrain.open_set import (BACKGROUND_LABEL, calibrate_threshold, known_scores,
                                   min_calibration_count)

INNER_SEED = 1  # the inner folds' assignment (the evaluation's uses 0)


def inner_held_out(settings: RetrainSettings, prepared: Prepared, train: list[int], seed: int,
                   partition: Callable[[int], object]) -> Optional[HeldOut]:
    """Out-of-fold predictions of a grouped k-fold inside ``train``; None when a class has
    fewer than two recordings there."""
    ids = prepared.class_ids[train]
    groups = [prepared.images.records[i].group for i in train]
    counts = [n for n in recordings_per_class(groups, ids, len(prepared.images.labels)) if n]
    if len(counts) < len(prepared.images.labels) or min(counts) < 2:
        return None
    k = min(MAX_AUTO_K, min(counts))
    quiet = dataclasses.replace(settings, summaries_dir=None, print_misclassified_test_images=False,
                                intermediate_store_frequency=0, test_batch_size=-1, autotune=False)
    quiet_tensorflow_retracing()
    indices, probabilities = [], []
    train = np.asarray(train, int)
    for rest, held in stratified_group_kfold(groups, ids, k, INNER_SEED):
        outcome = train_and_evaluate(quiet, prepared, Split(tuple(train[rest]), (), tuple(train[held])),
                                     seed, "calibration", partition, lambda line: None)
        indices.append(np.asarray(outcome.test_indices, int))
        probabilities.append(outcome.test_probabilities)
    return HeldOut(np.concatenate(indices), np.concatenate(probabilities), [], k,
                   len(set(groups)))


def exported_head_settings(settings: RetrainSettings, outcome: TrainOutcome) -> Optional[RetrainSettings]:
    """Settings that train the exported logistic head again with its chosen C (no inner
    CV), on the module it was trained on; None for other heads, an ensemble of per-part
    heads, or a fine-tuned network (their folds already train what is exported)."""
    report = outcome.head_report
    if not report or report.get("kind") != "logistic" or report.get("ensemble") != "none" \
            or not report.get("c") or settings.fine_tune.enabled:
        return None
    head = dataclasses.replace(settings.head, kind="logistic", logistic_c=float(report["c"]),
                               ensemble="none")
    return dataclasses.replace(settings, head=head)


def calibrate(settings: RetrainSettings, prepared: Prepared, plan: SplitPlan,
              outcome: TrainOutcome, held_out: Optional[HeldOut], seed: int,
              partition: Callable[[int], object], log: Callable[[str], None] = print) -> Optional[dict]:
    """The sidecar's ``open_set`` block, or None with --open_set_reject_rate 0."""
    rate = settings.open_set_reject_rate
    if rate <= 0:
        return None
    labels = prepared.images.labels
    background = [k for k, label in enumerate(labels) if label == BACKGROUND_LABEL]
    fixed = exported_head_settings(settings, outcome)
    inner = None
    if fixed is not None:
        # The exported head's C, not each fold's own: a fold that chose a weaker penalty is
        # more confident, and its scores set a threshold the exported head rarely reaches
        # (half of a test's unseen recordings were "unknown" while all were named right).
        final = dataclasses.replace(prepared, backbone=outcome.backbone, features=outcome.features,
                                    module_candidates=())
        inner = inner_held_out(fixed, final, list(plan.final.train), seed, partition)
    if inner is not None:
        source, idx, probs = (f"out-of-fold predictions of a grouped {inner.k}-fold inside the "
                              f"training recordings, by heads of the exported head's C="
                              f"{outcome.head_report['c']:g}"), inner.indices, inner.probabilities
    elif held_out is not None:
        source, idx, probs = f"out-of-fold predictions of the grouped {held_out.k}-fold evaluation", \
            held_out.indices, held_out.probabilities
    elif plan.final.validation:
        idx = np.asarray(plan.final.validation, int)
        features = prepared.features if outcome.features is None else outcome.features
        source, probs = "the validation slice", outcome.head.predict(features[idx])
    else:
        inner = inner_held_out(settings, prepared, list(plan.final.train), seed, partition)
        if inner is None:
            log("Open set: no threshold (a class has fewer than two training recordings to "
                "calibrate it on); every sound is named after its nearest class")
            return None
        source, idx, probs = (f"out-of-fold predictions of a grouped {inner.k}-fold inside the "
                              "training recordings"), inner.indices, inner.probabilities
    true = prepared.class_ids[idx]
    threshold = calibrate_threshold(probs, true, background, rate)
    known = ~np.isin(true, background)
    scores = known_scores(probs, background)[known]
    if threshold <= 0:
        log(f"Open set: no threshold: {int(known.sum())} held-out predictions ({source}) are too few "
            f"to promise that at most {rate * 100:g}% of known sounds would be called unknown (it "
            f"takes {min_calibration_count(rate)}); every sound is named after its nearest class"
            + (", the background class excepted" if background else ""))
        if not background:
            return None
    else:
        log(f"Open set: threshold {threshold:.3f} on the best class's probability, from {source} "
            f"(N={int(known.sum())}, {np.mean(scores < threshold) * 100:.1f}% of them below it; at most "
            f"{rate * 100:g}% of new known sounds: --open_set_reject_rate); label calls a sound below "
            "it unknown")
    return {"threshold": round(float(threshold), 6), "reject_rate": float(rate),
            "score": "best class probability" + (" (background excluded)" if background else ""),
            "calibrated_on": source, "count": int(known.sum()),
            "background_labels": [labels[k] for k in background]}
