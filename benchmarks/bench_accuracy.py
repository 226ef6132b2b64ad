"""Accuracy on the shared UrbanSound8K folds 1-2 under the official protocol: train on one
fold, test on the other, both ways (never random splits of slices).

Every variant runs retrain's own training path (``retrain.core.train_and_evaluate``) with a
:class:`retrain.settings.RetrainSettings`, on the same cached bottlenecks and the same split:
the test fold, and the training fold minus a 10 % group-aware validation slice (what
``--split folds --test_folds N`` does). Each row is one variant: a base setting with levers
switched on or off (:data:`HEAD_LEVERS`), so any ablation is a list of lever settings:

* ``retrain.py head``: one softmax layer on raw features, SGD 0.01, 4000 steps, last weights;
* ``default``: ``retrain``'s defaults (standardisation; the last step's weights);
* ``default - <lever>`` / ``default + <lever>``: the default with one lever off / on;
* ``default + autotune``: ``--autotune`` (the search scored on the validation slice);
* ``default + fine_tune``: with ``--fine_tune_blocks K`` only (``retrain --fine_tune_blocks``:
  the module's last K blocks trained with the head on cached activation maps);
* ``preset NAME`` (only when asked for): what ``retrain --preset NAME`` trains, on this
  module;
* ``logistic regression``: scikit-learn's probe on standardised features, C chosen by a
  grouped 5-fold cross-validation inside the training fold (training + validation images).

With ``--test_time_shifts N`` the default head is also scored with test-time averaging: the
probabilities of N circularly time-shifted copies of each clip (spectrogram image or
waveform, cached like augmented copies) averaged, on validation and on test.

    .venv/bin/python -m benchmarks.bench_accuracy --spec_dir /tmp/us8k_spec \\
        [--modules "efficientnet_lite0;birdnet"] [--variants "default;default + autotune"] \\
        [--augmentation_copies 1] [--test_time_shifts 4]

``--ablation`` instead measures which parts of the augmentation help (time shift, masks,
mixing, all), with the default head and ``--augmentation_copies`` copies.

``--spec_dir`` must hold what ``spectrograms --preset urbansound8k`` wrote for the shared
folds (the script renders them there first when it is missing). Prints a table (accuracy per
direction, mean, validation, inner CV with ``--cv``, seconds per run) and writes
``benchmarks/results/bench_accuracy.json`` (``--results`` elsewhere).
Other benchmarks build ablations on it: ``evaluate(settings, prepared)`` scores any
``RetrainSettings`` on the two directions.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

# Single-threaded BLAS: on a shared 2-core machine, scikit-learn's multi-threaded BLAS ran the
# probe 30-40x slower than one thread (threads spinning against other jobs).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_accuracy.json"
SHARED_US8K = ROOT.parent / "shared" / "datasets" / "urbansound8k-folds1-2"
DIRECTIONS = ((1, 2), (2, 1))  # (training fold, test fold)


# A lever: (settings, on) -> settings. Defaults are "on" where retrain's default is on.
HEAD_LEVERS: dict[str, Callable] = {
    "standardize": lambda s, on: dataclasses.replace(
        s, head=dataclasses.replace(s.head, standardize=on)),
    "early_stopping": lambda s, on: dataclasses.replace(
        s, head=dataclasses.replace(s.head, early_stopping=on)),
    "autotune": lambda s, on: dataclasses.replace(s, autotune=on),
    # --fine_tune_blocks: the module's last blocks trained with the head (FINE_TUNE_BLOCKS).
    "fine_tune": lambda s, on: dataclasses.replace(
        s, fine_tune=dataclasses.replace(s.fine_tune, blocks=FINE_TUNE_BLOCKS if on else 0)),
    # --augmentation_copies 1: one cached augmented copy of every training example.
    "augmentation": lambda s, on: dataclasses.replace(
        s, augment=dataclasses.replace(s.augment, copies=1 if on else 0)),
    # --head=sgd: retrain.py's softmax layer trained by SGD (off: the logistic head).
    "sgd": lambda s, on: dataclasses.replace(
        s, head=dataclasses.replace(s.head, kind="sgd" if on else "logistic")),
    # --ensemble=parts: one logistic head per backbone part, logits averaged (off: one head).
    "ensemble": lambda s, on: dataclasses.replace(
        s, head=dataclasses.replace(s.head, ensemble="parts" if on else "none")),
    # --class_weights=balanced: every class weighs the same in the logistic head's loss.
    "class_weights": lambda s, on: dataclasses.replace(
        s, head=dataclasses.replace(s.head, class_weights="balanced" if on else "none")),
}
FINE_TUNE_BLOCKS = 5  # the recipe's K, chosen by inner CV (benchmarks/bench_fine_tune.py)


def with_levers(settings, **levers: bool):
    """``settings`` with each named lever of :data:`HEAD_LEVERS` switched on or off."""
    for name, on in levers.items():
        settings = HEAD_LEVERS[name](settings, on)
    return settings


def head_variants(base) -> dict[str, object]:
    """The head ablation: retrain.py's head, the default, each lever off, autotune."""
    return {
        "retrain.py head": with_levers(base, standardize=False, early_stopping=False),
        "default": base,
        "default - standardize": with_levers(base, standardize=False),
        "default + early_stopping": with_levers(base, early_stopping=True),
        "default + autotune": with_levers(base, autotune=True),
    }


def preset_settings(base, name: str):
    """What ``retrain --preset NAME`` trains (its head, steps, augmentation, ...), on
    ``base``'s images, module and bottleneck cache, exporting nothing: the variant
    ``preset NAME``."""
    from retrain.cli import PROG, make_flags, settings_from_flags
    from soundretrain.command_line import parse_flags

    fv = make_flags()
    parse_flags(fv, [PROG, f"--preset={name}", f"--image_dir={base.image_dir}"], PROG,
                lambda: "", presets=PROG)
    return dataclasses.replace(settings_from_flags(fv), tfhub_module=base.tfhub_module,
                               bottleneck_dir=base.bottleneck_dir, summaries_dir=None,
                               output_graph=None, output_labels=None, saved_model_dir=None,
                               output_tflite=None, checkpoint_path=None, progress=False,
                               flags_text="")


def render_if_missing(spec_dir: str, data_dir: str) -> None:
    if os.path.isfile(os.path.join(spec_dir, "manifest.csv")):
        return
    print(f"rendering spectrograms of {data_dir} into {spec_dir} ...", flush=True)
    subprocess.run([sys.executable, "-m", "spectrograms", "--preset=urbansound8k",
                    f"--data_dir={data_dir}", f"--output_dir={spec_dir}"], check=True, cwd=ROOT)


def base_settings(spec_dir: str, module: str, bottleneck_dir: str, steps: int,
                  copies: int = 0):
    """``retrain --split folds`` with the flags' defaults (the test fold is set per direction)."""
    from retrain.augment import AugmentSettings
    from retrain.settings import RetrainSettings

    return RetrainSettings(image_dir=spec_dir, tfhub_module=module, bottleneck_dir=bottleneck_dir,
                           summaries_dir=None, split="folds", test_folds=(2,),
                           how_many_training_steps=steps, progress=False,
                           augment=AugmentSettings(copies=copies))


def split_of(prepared, test_fold: int):
    from retrain.splits import fold_split

    return fold_split(prepared.images.records, [test_fold], (), 10)


def accuracy(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, 1) == y)) if len(y) else float("nan")


def evaluate(settings, prepared, seed: int = 0, shifted: Optional[dict] = None,
             log: Callable[[str], None] = lambda line: None, cv: bool = False) -> dict:
    """Train with ``settings`` on each direction; test and validation accuracy, seconds.
    ``shifted``: {image index: [N-1, features] of time-shifted copies} to also score with
    test-time averaging. ``cv``: also :func:`inner_cv_accuracy` (five more runs each way)."""
    from retrain.core import split_partition, train_and_evaluate

    rows = []
    for train_fold, test_fold in DIRECTIONS:
        split = split_of(prepared, test_fold)
        s = dataclasses.replace(settings, test_folds=(test_fold,))
        start, cpu = time.perf_counter(), time.process_time()
        outcome = train_and_evaluate(s, prepared, split, seed, f"test{test_fold}",
                                     split_partition(s, prepared), log)
        seconds = time.perf_counter() - start
        va, te = list(split.validation), list(split.test)
        features = prepared.features if outcome.features is None else outcome.features  # tuned
        row = {"train_fold": train_fold, "test_fold": test_fold, "seconds": seconds,
               "cpu_seconds": time.process_time() - cpu,  # both cores: what a laptop pays
               "test": outcome.test_accuracy,
               "validation": accuracy(outcome.head.predict(features[va]),
                                      prepared.class_ids[va])}
        if cv:
            row["cv"] = inner_cv_accuracy(settings, prepared, train_fold, seed)
            if shifted is not None:
                row["cv_shifted"] = inner_cv_accuracy(settings, prepared, train_fold, seed,
                                                      shifted=shifted)
        if shifted is not None:
            for name, idx in (("validation", va), ("test", te)):
                row[f"{name}_shifted"] = accuracy(averaged(outcome.head, prepared, idx, shifted),
                                                  prepared.class_ids[idx])
        rows.append(row)
    return summarise(rows)


def inner_cv_accuracy(settings, prepared, train_fold: int, seed: int = 0, k: int = 5,
                      shifted: Optional[dict] = None) -> float:
    """The honest validation score used to choose settings: grouped ``k``-fold CV inside the
    training fold. Each inner run trains on the other groups (minus retrain's 10 % group-aware
    validation slice, which early stopping and autotune may use) and is scored on held-out
    groups it never saw; the test fold is never read. With augmented copies, a copy's mixing
    partner may come from the held-out groups (copies are cached per fold), which can only
    flatter the augmentation rows. ``shifted``: score with test-time averaging over the
    held-out examples' time-shifted copies instead."""
    from sklearn.model_selection import GroupKFold

    from retrain.core import split_partition, train_and_evaluate
    from retrain.splits import Split, which_set

    records = prepared.images.records
    idx = np.array([i for i, r in enumerate(records) if r.fold == train_fold])
    groups = np.array([records[i].group for i in idx])
    s = dataclasses.replace(settings, test_folds=(train_fold,))
    scores = []
    for rest, held in GroupKFold(k).split(idx, groups=groups):
        side = {int(i): which_set(records[i].group, 10, 0) for i in idx[rest]}
        split = Split(tuple(i for i, w in side.items() if w != "validation"),
                      tuple(i for i, w in side.items() if w == "validation"),
                      tuple(int(i) for i in idx[held]))
        outcome = train_and_evaluate(s, prepared, split, seed, f"cv{train_fold}",
                                     split_partition(s, prepared), lambda line: None)
        if shifted is not None:
            test = list(split.test)
            scores.append(accuracy(averaged(outcome.head, prepared, test, shifted),
                                   prepared.class_ids[test]))
        else:
            scores.append(outcome.test_accuracy)
    return float(np.mean(scores))


def summarise(rows: list[dict]) -> dict:
    out = {"directions": rows}
    for key in rows[0]:
        if key not in ("train_fold", "test_fold"):
            out[f"mean_{key}"] = float(np.mean([r[key] for r in rows]))
    return out


# ------------------------------------------------------------------ logistic-regression probe

def logistic_probe(x: np.ndarray, y: np.ndarray, groups: Sequence[str], x_test: np.ndarray,
                   y_test: np.ndarray) -> tuple[float, float, float]:
    """Standardised logistic regression, C chosen by grouped 5-fold CV on ``x``; returns the
    test accuracy, the C chosen and its CV accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
                          {"logisticregression__C": [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3, 10]},
                          cv=GroupKFold(5))
    search.fit(x, y, groups=np.asarray(groups))
    return (float(search.score(x_test, y_test)), float(search.best_params_["logisticregression__C"]),
            float(search.best_score_))


def evaluate_probe(prepared) -> dict:
    rows = []
    groups = np.array([r.group for r in prepared.images.records])
    for train_fold, test_fold in DIRECTIONS:
        split = split_of(prepared, test_fold)
        fold = list(split.train) + list(split.validation)
        start = time.perf_counter()
        acc, c, cv = logistic_probe(prepared.features[fold], prepared.class_ids[fold], groups[fold],
                                prepared.features[list(split.test)],
                                prepared.class_ids[list(split.test)])
        rows.append({"train_fold": train_fold, "test_fold": test_fold, "test": acc, "C": c, "cv": cv,
                     "seconds": time.perf_counter() - start})
    return summarise(rows)


# ------------------------------------------------------------------ test-time shifts

def shifted_features(prepared, indices: Sequence[int], shifts: int, settings) -> dict:
    """{index: [shifts - 1, features]}: bottlenecks of each example circularly shifted in
    time by k/shifts of its length (k = 1 .. shifts-1), cached beside the others."""
    from retrain.bottlenecks import (BottleneckStore, InputMaker, Job, backbone_parts,
                                     run_jobs)

    indices = list(indices)
    records = prepared.images.records
    blocks = []
    for part in backbone_parts(prepared.backbone):
        maker = InputMaker(part, prepared.spectrogram_settings, backbone_parts(prepared.backbone))
        store = BottleneckStore(settings.bottleneck_dir, part.name, part.feature_size)
        axis = 0 if part.input_spec.kind == "waveform" else 1

        def make(i: int, k: int) -> np.ndarray:
            raw = maker.raw(records[i])
            return maker.finish(np.roll(raw, int(round(k * raw.shape[axis] / shifts)), axis=axis))

        jobs = [Job(hashlib.sha1(f"shift|{k}/{shifts}|{maker.key(records[i])}".encode()).hexdigest(),
                    lambda i=i, k=k: make(i, k))
                for i in indices for k in range(1, shifts)]
        feats, _ = run_jobs(part, store, jobs, settings.bottleneck_batch_size, True,
                            desc=f"shifted bottlenecks {part.name}")
        blocks.append(feats)
    feats = np.concatenate(blocks, axis=1).reshape(len(indices), shifts - 1, -1)
    return dict(zip(indices, feats))


def averaged(head, prepared, indices: Sequence[int], shifted: dict) -> np.ndarray:
    """Mean probabilities over each example and its shifted copies."""
    indices = list(indices)
    probs = head.predict(prepared.features[indices])
    extra = head.predict(np.concatenate([shifted[i] for i in indices]))
    extra = extra.reshape(len(indices), -1, probs.shape[1])
    return (probs + extra.sum(1)) / (1 + extra.shape[1])


# ------------------------------------------------------------------ one module

def bench_module(module: str, spec_dir: str, bottleneck_dir: str, steps: int, seed: int,
                 copies: int, variants: Optional[Sequence[str]], shifts: int,
                 probe: bool = True, fine_tune_blocks: int = 0, cv: bool = False) -> dict:
    from retrain.core import prepare

    settings = base_settings(spec_dir, module, bottleneck_dir, steps, copies)
    start = time.perf_counter()
    prepared = prepare(settings, log=lambda line: print(line, flush=True))
    out = {"module": prepared.backbone.name, "bottleneck_s": time.perf_counter() - start,
           "images": len(prepared.images.records), "augmentation_copies": copies,
           "variants": {}}
    shifted = None
    if shifts > 1:
        # Every image: validation and test, and with --cv the training fold's (held out in turn).
        held_out = range(len(prepared.images.records)) if cv else \
            sorted({i for _, t in DIRECTIONS for i in
                    list(split_of(prepared, t).validation) + list(split_of(prepared, t).test)})
        shifted = shifted_features(prepared, held_out, shifts, settings)
    table = head_variants(settings)
    if fine_tune_blocks:
        table["default + fine_tune"] = dataclasses.replace(
            settings, fine_tune=dataclasses.replace(settings.fine_tune, blocks=fine_tune_blocks))
    for name in variants or table:
        if name.startswith("preset ") and name not in table:  # e.g. "preset urbansound8k"
            table[name] = preset_settings(settings, name.split(" ", 1)[1])
        elif name not in table:  # "default + <lever>" / "default - <lever>", any lever
            parts = name.split(" ")
            if len(parts) != 3 or parts[0] != "default" or parts[1] not in ("+", "-") \
                    or parts[2] not in HEAD_LEVERS:
                raise SystemExit(f"unknown variant {name!r}: one of {sorted(table)}, "
                                 f"'preset NAME' or 'default +/- LEVER' ({', '.join(HEAD_LEVERS)})")
            table[name] = with_levers(settings, **{parts[2]: parts[1] == "+"})
        result = evaluate(table[name], prepared, seed, shifted if name == "default" else None,
                          cv=cv)
        out["variants"][name] = result
        print(f"{out['module'][:27]:<28}{name:<28}" + cells(result), flush=True)
        if name == "default" and shifted is not None:
            print(f"{'':<28}{'  (test-time shifts x' + str(shifts) + ')':<28}"
                  + cells(result, "_shifted"), flush=True)
    if probe:
        out["variants"]["logistic regression"] = result = evaluate_probe(prepared)
        print(f"{out['module'][:27]:<28}{'logistic regression':<28}" + cells(result), flush=True)
    return out


def cells(result: dict, suffix: str = "") -> str:
    rows = result["directions"]
    test = [r.get(f"test{suffix}") for r in rows]
    text = "".join(f"{t * 100:>8.1f}%" for t in test) + f"{np.mean(test) * 100:>8.1f}%"
    val = result.get(f"mean_validation{suffix}")
    text += f"{val * 100:>8.1f}%" if val is not None else f"{'-':>9}"
    inner = result.get(f"mean_cv{suffix}")
    text += f"{inner * 100:>8.1f}%" if inner is not None else f"{'-':>9}"
    return text + f"{result['mean_seconds']:>8.1f}"


# ------------------------------------------------------------------ augmentation ablation

ABLATION = {  # which parts of the augmentation help (default head, same split)
    "time shift only": dict(time_shift=True, time_masks=0, freq_masks=0, mix_probability=0.0),
    "masks only": dict(time_shift=False, mix_probability=0.0),
    "mixing only": dict(time_shift=False, time_masks=0, freq_masks=0, mix_probability=1.0),
    "all (default)": dict(),
}


def augmentation_ablation(module: str, spec_dir: str, bottleneck_dir: str, steps: int,
                          seed: int, copies: int) -> dict:
    from retrain.augment import AugmentSettings
    from retrain.core import prepare

    settings = base_settings(spec_dir, module, bottleneck_dir, steps)
    prepared = prepare(settings, log=lambda line: print(line, flush=True))
    out = {"module": prepared.backbone.name, "copies": copies, "variants": {}}
    for name, options in [("none", None)] + list(ABLATION.items()):
        s = settings if options is None else dataclasses.replace(
            settings, augment=AugmentSettings(copies=copies, seed=seed, **options))
        result = evaluate(s, prepared, seed)
        out["variants"][name] = result
        print(f"augmentation {name:<18}" + cells(result), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_folds12_spec")
    parser.add_argument("--data_dir", default=str(SHARED_US8K))
    parser.add_argument("--modules", default="efficientnet_lite0",
                        help="modules separated by ';' (a module may be 'a,b')")
    parser.add_argument("--bottleneck_dir", default="/tmp/bottleneck")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augmentation_copies", type=int, default=0)
    parser.add_argument("--variants", default="",
                        help="';'-separated rows of the head ablation (default: all of "
                             "retrain.py head; default; default - standardize; "
                             "default + early_stopping; default + autotune)")
    parser.add_argument("--test_time_shifts", type=int, default=0,
                        help="also score the default head averaged over N time-shifted copies")
    parser.add_argument("--noprobe", action="store_true", help="leave out the probe")
    parser.add_argument("--cv", action="store_true",
                        help="also score every variant by grouped 5-fold CV inside the training "
                             "fold (column 'cv': the score to choose settings by)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the JSON")
    parser.add_argument("--fine_tune_blocks", type=int, default=0,
                        help=f"add the row 'default + fine_tune' (retrain --fine_tune_blocks K; "
                             f"{FINE_TUNE_BLOCKS} was chosen on validation)")
    parser.add_argument("--ablation", action="store_true",
                        help="instead: which augmentation parts help (first module only)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not os.path.isfile(os.path.join(args.spec_dir, "manifest.csv")) and \
            not os.path.isdir(os.path.join(args.data_dir, "audio")):
        print(f"skipped: neither rendered spectrograms in {args.spec_dir} nor the UrbanSound8K "
              f"folds in {args.data_dir}")
        return
    render_if_missing(args.spec_dir, args.data_dir)
    header = (f"{'module':<28}{'variant':<28}{'1->2':>9}{'2->1':>9}{'mean':>9}{'val':>9}"
              f"{'cv':>9}{'s/run':>8}")
    if args.ablation:
        print(header.replace(f"{'module':<28}{'variant':<28}", f"{'':<31}"))
        result = augmentation_ablation(args.modules.split(";")[0], args.spec_dir,
                                       args.bottleneck_dir, args.steps, args.seed,
                                       max(1, args.augmentation_copies))
        path = RESULTS.with_name("bench_augmentation.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
        return

    variants = [v.strip() for v in args.variants.split(";") if v.strip()] or None
    results = {"protocol": "UrbanSound8K folds 1-2: train on one, test on the other, both ways; "
                           "validation: a 10 % group-aware slice of the training fold",
               "steps": args.steps, "seed": args.seed, "modules": []}
    print(header, flush=True)
    for module in [m.strip() for m in args.modules.split(";") if m.strip()]:
        results["modules"].append(bench_module(
            module, args.spec_dir, args.bottleneck_dir, args.steps, args.seed,
            args.augmentation_copies, variants, args.test_time_shifts, not args.noprobe,
            args.fine_tune_blocks, args.cv))
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
