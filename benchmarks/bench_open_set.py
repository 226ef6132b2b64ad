""""I don't know", measured: clips of classes left out of training, and what the open-set
threshold costs the classes that were trained.

Data: the shared UrbanSound8K folds (what ``spectrograms --preset urbansound8k`` wrote,
``--spec_dir``). Each draw leaves ``--unknown_classes`` of the 10 classes out of training
(draws rotate through the classes). The head is ``retrain``'s, trained as the ``train``
flow trains it, on fold 1's recordings of the other classes: all of them, and (the small-data
case) ``--per_class`` recordings a class, one clip each. Its threshold is calibrated as
``retrain`` calibrates it: on out-of-fold predictions of a grouped k-fold inside the
training recordings, at each ``--reject_rates`` value. Reported:

* ``inner``, training data only (how the default rate is chosen): inside fold 1, the known
  classes' recordings split in two by recording (train / held-out known), and the left-out
  classes' fold-1 clips as the unknown sounds;
* ``test``, fold 2: the known classes' clips (accuracy with no threshold, accuracy when
  "unknown" counts as wrong, share called unknown) and the left-out classes' clips (share
  called unknown), plus the AUROC of the score (known vs unknown clips).

``--background_classes B``: B more classes (the next ones in the rotation) are merged into one
``_background_`` class, trained on and never reported: does training on other sounds teach
the model to say "unknown" for sounds it never heard?

    python -m benchmarks.bench_open_set --spec_dir /tmp/us8k_spec --bottleneck_dir /tmp/us8k_bn

Writes ``benchmarks/results/bench_open_set.json`` (``--results`` elsewhere).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_open_set.json"
DEFAULT_MODULE = "aisfx,soundnet,efficientnet_lite0"  # the train flow's


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known clip scores above an unknown one), ties half: the score's separability."""
    if not len(known) or not len(unknown):
        return float("nan")
    scores = np.concatenate([known, unknown])
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable").astype(float) + 1
    for value in np.unique(scores):  # average ranks of ties
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    r_known = ranks[: len(known)].sum()
    return float((r_known - len(known) * (len(known) + 1) / 2) / (len(known) * len(unknown)))


def subset(prepared, indices: Sequence[int], labels: Sequence[str], rename: Optional[dict] = None):
    """A Prepared of ``indices`` only, its classes ``labels`` (ids renumbered); ``rename``:
    original label -> label (classes merged into the background)."""
    from retrain.core import Prepared
    from retrain.images import ImageSet

    indices = np.asarray(indices, int)
    rename = rename or {}
    records = tuple(dataclasses.replace(r, label=rename.get(r.label, r.label))
                    for r in (prepared.images.records[i] for i in indices))
    images = ImageSet(prepared.images.image_dir, records, tuple(labels), prepared.images.from_manifest)
    return Prepared(images, prepared.backbone, prepared.spectrogram_settings,
                    prepared.features[indices], np.asarray(images.class_ids(), np.int32))


def fit_and_calibrate(settings, prepared, known_labels, train: Sequence[int], seed: int,
                      rename: Optional[dict] = None):
    """retrain's head on ``train`` (indices into ``prepared``) and the out-of-fold scores
    its threshold is calibrated on; None when a class has too few recordings."""
    from retrain.calibration import inner_held_out
    from retrain.core import train_and_evaluate
    from retrain.splits import Split

    sub = subset(prepared, train, known_labels, rename)
    everything = list(range(len(train)))
    held = inner_held_out(settings, sub, everything, seed, lambda i: "all")
    if held is None:
        return None
    outcome = train_and_evaluate(settings, sub, Split(tuple(everything), (), ()), seed, "open-set",
                                 lambda i: "all", lambda line: None)
    return outcome.head, held.probabilities, sub.class_ids[held.indices]


def measure(head, known_x, known_y, unknown_x, oof_p, oof_y, rates, background=()) -> dict:
    """Known clips (their class ids) and unknown clips through label's decision at each
    calibrated threshold; ``background``: the class ids never reported."""
    from soundretrain.open_set import OpenSet, calibrate_threshold, known_scores

    p_known, p_unknown = head.predict(known_x), head.predict(unknown_x)
    s_known, s_unknown = known_scores(p_known, background), known_scores(p_unknown, background)
    closed = float(np.mean(p_known.argmax(1) == known_y))
    out = {"closed_set_accuracy": closed, "auroc": auroc(s_known, s_unknown),
           "known": int(len(known_y)), "unknown": int(len(unknown_x)), "rates": {}}
    for rate in rates:
        t = calibrate_threshold(oof_p, oof_y, background, rate)
        decide = OpenSet(t, tuple(background))
        said_known = np.asarray([-1 if k is None else k for k, _ in map(decide.decide, p_known)])
        said_unknown = np.asarray([-1 if k is None else k for k, _ in map(decide.decide, p_unknown)])
        out["rates"][f"{rate:g}"] = {
            "threshold": t,
            "known_called_unknown": float(np.mean(said_known < 0)),
            "known_accuracy_with_unknown": float(np.mean(said_known == known_y)),
            "unknown_called_unknown": float(np.mean(said_unknown < 0)),
        }
    return out


def draws(labels: Sequence[str], unknown_count: int, count: int, extra: int = 0) -> list[list[str]]:
    """Left-out class sets rotating through the classes (``unknown_count`` a draw), each
    followed by the ``extra`` next classes (the background's)."""
    order = list(labels)
    return [[order[(d * unknown_count + j) % len(order)] for j in range(unknown_count + extra)]
            for d in range(count)]


def pick_recordings(prepared, pool: Sequence[int], per_class: Optional[int], rng) -> list[int]:
    """``per_class`` recordings a class from ``pool``, one clip each (None: every clip)."""
    if per_class is None:
        return list(pool)
    records, ids = prepared.images.records, prepared.class_ids
    chosen = []
    for c in sorted({int(ids[i]) for i in pool}):
        groups: dict[str, list[int]] = {}
        for i in pool:
            if ids[i] == c:
                groups.setdefault(records[i].group, []).append(i)
        for g in rng.choice(sorted(groups), min(per_class, len(groups)), replace=False):
            chosen.append(int(rng.choice(groups[g])))
    return chosen


def run_draw(settings, prepared, left_out: list[str], per_class: Optional[int], rates, seed: int,
             background: Sequence[str] = ()) -> dict:
    from retrain.splits import stratified_group_kfold
    from soundretrain.open_set import BACKGROUND_LABEL

    labels = prepared.images.labels
    rename = {l: BACKGROUND_LABEL for l in background}
    known_labels = sorted({rename.get(l, l) for l in labels if l not in left_out})
    bg = tuple(k for k, l in enumerate(known_labels) if l == BACKGROUND_LABEL)
    records, ids = prepared.images.records, prepared.class_ids
    is_known = np.asarray([labels[c] not in left_out for c in ids])
    remap = {labels.index(l): known_labels.index(rename.get(l, l)) for l in labels if l not in left_out}
    out = {"left_out": left_out, "background": list(background)}
    is_reported = np.asarray([labels[c] not in left_out and labels[c] not in background for c in ids])
    fold = np.asarray([r.fold for r in records])
    rng = np.random.default_rng(seed)

    def scored(train: Sequence[int], known: np.ndarray, unknown: np.ndarray) -> Optional[dict]:
        fitted = fit_and_calibrate(settings, prepared, known_labels, train, seed, rename)
        if fitted is None:
            return None
        head, oof_p, oof_y = fitted
        return measure(head, prepared.features[known], np.asarray([remap[c] for c in ids[known]]),
                       prepared.features[unknown], oof_p, oof_y, rates, bg)

    # inner: fold 1 only. Known recordings split in two by recording (one part trains).
    pool = np.flatnonzero(is_known & (fold == 1))
    part_train, part_held = stratified_group_kfold([records[i].group for i in pool], ids[pool], 2, seed)[0]
    held = pool[part_held]
    inner = scored(pick_recordings(prepared, pool[part_train], per_class, rng), held[is_reported[held]],
                   np.flatnonzero(~is_known & (fold == 1)))
    if inner is not None:
        out["inner"] = inner
    # test: train on fold 1's known classes, fold 2 reports.
    test = scored(pick_recordings(prepared, np.flatnonzero(is_known & (fold == 1)), per_class, rng),
                  np.flatnonzero(is_reported & (fold == 2)), np.flatnonzero(~is_known & (fold == 2)))
    if test is not None:
        out["test"] = test
    return out


def summary(results: list[dict], where: str, rates) -> dict:
    rows = [r[where] for r in results if where in r]
    mean = lambda xs: float(np.nanmean(xs)) if xs else float("nan")  # noqa: E731
    out = {"draws": len(rows), "closed_set_accuracy": mean([r["closed_set_accuracy"] for r in rows]),
           "auroc": mean([r["auroc"] for r in rows]), "rates": {}}
    for rate in rates:
        key = f"{rate:g}"
        out["rates"][key] = {m: mean([r["rates"][key][m] for r in rows])
                             for m in ("known_called_unknown", "known_accuracy_with_unknown",
                                       "unknown_called_unknown", "threshold")}
    return out


def print_table(name: str, s: dict) -> None:
    print(f"\n{name}: {s['draws']} draws, closed-set accuracy {s['closed_set_accuracy'] * 100:.1f}%, "
          f"AUROC known vs unknown {s['auroc']:.3f}")
    print(f"{'reject rate':>12}{'threshold':>11}{'known -> unknown':>18}{'known accuracy':>16}"
          f"{'unknown -> unknown':>20}")
    for rate, r in s["rates"].items():
        print(f"{rate:>12}{r['threshold']:>11.3f}{r['known_called_unknown'] * 100:>17.1f}%"
              f"{r['known_accuracy_with_unknown'] * 100:>15.1f}%{r['unknown_called_unknown'] * 100:>19.1f}%")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_spec")
    parser.add_argument("--bottleneck_dir", default="/tmp/us8k_bn")
    parser.add_argument("--module", default=DEFAULT_MODULE)
    parser.add_argument("--unknown_classes", type=int, default=3)
    parser.add_argument("--background_classes", type=int, default=0,
                        help="more classes merged into one _background_ class (trained, never reported)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--per_class", default="all,6", help="recordings a class: 'all' and/or numbers")
    parser.add_argument("--reject_rates", default="0.01,0.02,0.05,0.1,0.2")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)

    from retrain.core import prepare
    from retrain.settings import RetrainSettings

    rates = [float(r) for r in args.reject_rates.split(",")]
    settings = RetrainSettings(image_dir=args.spec_dir, tfhub_module=args.module,
                               bottleneck_dir=args.bottleneck_dir, summaries_dir=None, progress=False,
                               how_many_training_steps=args.steps)
    start = time.perf_counter()
    prepared = prepare(settings, log=lambda line: print(line, flush=True))
    print(f"bottlenecks ready in {time.perf_counter() - start:.0f} s", flush=True)
    report = {"module": prepared.backbone.name, "unknown_classes": args.unknown_classes,
              "background_classes": args.background_classes, "reject_rates": rates, "regimes": {}}
    labels = list(prepared.images.labels)
    for regime in args.per_class.split(","):
        per_class = None if regime == "all" else int(regime)
        results = []
        for d, chosen in enumerate(draws(labels, args.unknown_classes, args.draws, args.background_classes)):
            left_out, background = chosen[:args.unknown_classes], chosen[args.unknown_classes:]
            t0 = time.perf_counter()
            results.append(run_draw(settings, prepared, left_out, per_class, rates, args.seed + d, background))
            print(f"[{regime} a class] draw {d + 1}/{args.draws}: left out {', '.join(left_out)}"
                  + (f"; background: {', '.join(background)}" if background else "")
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        report["regimes"][regime] = {"draws": results, "inner": summary(results, "inner", rates),
                                     "test": summary(results, "test", rates)}
        for where in ("inner", "test"):
            print_table(f"{regime} recordings a class, {where}", report["regimes"][regime][where])
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=float)
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
