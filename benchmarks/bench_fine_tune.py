"""Fine-tuning the backbone's last blocks (``--fine_tune_blocks``) on the shared
UrbanSound8K folds 1-2: train on one fold, test on the other, both ways.

Two modes:

* ``--select``: the choice of K, learning rate, steps and augmentation, made on the
  training fold only. Each setting is trained on 70 % of the training fold's recordings
  and scored on the other 30 % (a larger validation slice than the runs' 10 %, so the
  choice rests on ~260 clips instead of ~120); the test fold is never read.
* default: the chosen setting under the official protocol (training fold minus a 10 %
  validation slice, test on the other fold), beside the same head without fine-tuning;
  CPU time per run (process time, both cores) and the activation cache's size.

    python -m benchmarks.bench_fine_tune --spec_dir /tmp/us8k_spec --select \\
        --grid '{"blocks": [1, 4]}'
    python -m benchmarks.bench_fine_tune --spec_dir /tmp/us8k_spec --fine_tune_blocks 4

``benchmarks/bench_accuracy.py --fine_tune_blocks K`` adds the same lever to its table.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_fine_tune.json"
SELECTION_VALIDATION_PERCENTAGE = 30


def _accuracy(head, x, y) -> float:
    return float(np.mean(np.argmax(head.predict(x), 1) == y)) if len(y) else float("nan")


def cache_megabytes(bottleneck_dir: str, prepared, blocks) -> float:
    """Size on disk of the activation cache of this cut (0 for full fine-tuning)."""
    cut = prepared.backbone.split(blocks)
    if not cut.cached:
        return 0.0
    from retrain.bottlenecks import BottleneckStore

    root = Path(BottleneckStore(bottleneck_dir, cut.cache_name, 0).root)
    return sum(f.stat().st_size for f in root.rglob("*.npy")) / 1e6


def _head(settings, prepared, train, seed: int, steps: int, features=None):
    """The head as ``retrain`` trains it on the training part's features."""
    from retrain.head import ClassificationHead, HeadTrainer

    features = prepared.features if features is None else features
    head_settings = dataclasses.replace(settings.head, seed=seed)
    head = ClassificationHead(features.shape[1], len(prepared.images.labels),
                              head_settings.hidden_units, head_settings.dropout, seed=seed)
    HeadTrainer(head, features[train], prepared.class_ids[train], head_settings).train(steps)
    return head


def run_direction(settings, prepared, split, seed: int, steps: int, log=lambda line: None) -> dict:
    """One direction: the head alone, then the same head fine-tuned with the backbone's
    last blocks; validation and test accuracy of both (test is NaN when ``split.test``
    is empty), and the fine-tuning's CPU time."""
    from retrain.fine_tune import fine_tune

    ids = prepared.class_ids
    tr, va, te = list(split.train), list(split.validation), list(split.test)
    head = _head(settings, prepared, tr, seed, steps)
    row = {"train": len(tr), "validation": len(va), "test": len(te),
           "head_validation": _accuracy(head, prepared.features[va], ids[va]),
           "head_test": _accuracy(head, prepared.features[te], ids[te])}
    if settings.fine_tune.enabled:
        cpu, wall = time.process_time(), time.perf_counter()
        outcome = fine_tune(settings, prepared, split, head, seed, log)
        row.update({
            "fine_tuned_validation": _accuracy(head, outcome.features[va], ids[va]),
            "fine_tuned_test": _accuracy(head, outcome.features[te], ids[te]),
            "fine_tune_cpu_s": time.process_time() - cpu,
            "fine_tune_wall_s": time.perf_counter() - wall,
            "activations_computed": outcome.activations_computed})
    return row


def fine_tune_row(settings, prepared, split, seed: int, steps: int, fine_tune: dict) -> dict:
    """For bench_accuracy: the default head, then fine-tuning with ``fine_tune``
    (FineTuneSettings fields) on the split's training part; test accuracy and CPU time
    (the head's training included)."""
    from retrain.fine_tune import fine_tune as run_fine_tune
    from retrain.settings import FineTuneSettings

    settings = dataclasses.replace(settings, fine_tune=FineTuneSettings(**fine_tune),
                                   progress=False)
    cpu = time.process_time()
    head = _head(settings, prepared, list(split.train), seed, steps)
    outcome = run_fine_tune(settings, prepared, split, head, seed, log=lambda line: None)
    te = list(split.test)
    return {"head_default_fine_tuned": _accuracy(head, outcome.features[te], prepared.class_ids[te]),
            "fine_tune_cpu_s": time.process_time() - cpu}


def make_settings(spec_dir: str, bottleneck_dir: str, fine_tune: dict, augment: dict | None = None,
                  head: dict | None = None):
    from retrain.core import RetrainSettings
    from retrain.settings import FineTuneSettings

    settings = RetrainSettings(image_dir=spec_dir, bottleneck_dir=bottleneck_dir,
                               summaries_dir=None, progress=False,
                               fine_tune=FineTuneSettings(**fine_tune))
    return dataclasses.replace(
        settings, augment=dataclasses.replace(settings.augment, **(augment or {})),
        head=dataclasses.replace(settings.head, **(head or {})))


def evaluate(spec_dir: str, bottleneck_dir: str, fine_tune: dict, seed: int, steps: int,
             validation_percentage: float, with_test: bool, augment: dict | None = None,
             head: dict | None = None, log=print) -> dict:
    """Both directions of the two-fold protocol for one setting, and their means."""
    from retrain.core import prepare
    from retrain.splits import fold_split

    settings = make_settings(spec_dir, bottleneck_dir, fine_tune, augment, head)
    prepared = prepare(settings, log=lambda line: None)
    rows = []
    for train_fold, test_fold in ((1, 2), (2, 1)):
        split = fold_split(prepared.images.records, [test_fold], (), validation_percentage)
        if not with_test:  # choosing a setting: the test fold is not even scored
            split = dataclasses.replace(split, test=[])
        row = dict(direction=f"{train_fold}->{test_fold}",
                   **run_direction(settings, prepared, split, seed, steps, log))
        log(json.dumps(row))
        rows.append(row)
    means = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]
             if isinstance(rows[0][k], float)}
    out = {"fine_tune": fine_tune, "augment": augment or {}, "head": head or {},
           "validation_percentage": validation_percentage, "directions": rows, "mean": means}
    if settings.fine_tune.enabled:
        out["activation_cache_mb"] = cache_megabytes(bottleneck_dir, prepared, settings.fine_tune.blocks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_folds12_spec")
    parser.add_argument("--bottleneck_dir", default="/tmp/bottleneck")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000, help="head training steps")
    parser.add_argument("--fine_tune_blocks", default="4")
    parser.add_argument("--fine_tune", default="{}",
                        help="other FineTuneSettings fields as JSON, e.g. '{\"steps\": 600}'")
    parser.add_argument("--select", action="store_true",
                        help="choose settings on a 30%% validation slice of the training fold")
    parser.add_argument("--grid", default='{"blocks": [1, 4]}',
                        help="with --select: FineTuneSettings fields -> lists of values (JSON)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from soundretrain.backbones.split import parse_blocks

    if not os.path.isfile(os.path.join(args.spec_dir, "manifest.csv")):
        print(f"skipped: no rendered spectrograms in {args.spec_dir} (see bench_accuracy.py)")
        return
    base = dict(json.loads(args.fine_tune), blocks=parse_blocks(args.fine_tune_blocks))
    results = {"protocol": "UrbanSound8K folds 1-2: train on one, test on the other, both ways",
               "seed": args.seed, "runs": []}
    if args.select:
        grid = json.loads(args.grid)
        names = sorted(grid)
        for values in itertools.product(*(grid[k] for k in names)):
            fine_tune = dict(base, **dict(zip(names, values)))
            run = evaluate(args.spec_dir, args.bottleneck_dir, fine_tune, args.seed, args.steps,
                           SELECTION_VALIDATION_PERCENTAGE, with_test=False)
            results["runs"].append(run)
            m = run["mean"]
            print(f"SELECT {json.dumps(fine_tune)}: validation head {m['head_validation'] * 100:.1f}% "
                  f"fine-tuned {m['fine_tuned_validation'] * 100:.1f}%, "
                  f"{m['fine_tune_cpu_s']:.0f} CPU s per run", flush=True)
        best = max(results["runs"], key=lambda r: r["mean"]["fine_tuned_validation"])
        print(f"chosen on validation: {json.dumps(best['fine_tune'])}")
        path = RESULTS.with_name("bench_fine_tune_selection.json")
    else:
        run = evaluate(args.spec_dir, args.bottleneck_dir, base, args.seed, args.steps, 10,
                       with_test=True)
        results["runs"].append(run)
        print(f"\n{'direction':<10}{'head':>8}{'+ fine-tuning':>15}{'CPU s':>8}")
        for r in run["directions"] + [dict(run["mean"], direction="mean")]:
            print(f"{r['direction']:<10}{r['head_test'] * 100:>7.1f}%"
                  f"{r['fine_tuned_test'] * 100:>14.1f}%{r['fine_tune_cpu_s']:>8.0f}")
        print(f"activation cache: {run.get('activation_cache_mb', 0):.0f} MB")
        path = RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
