"""Fine-tuning the backbone's last blocks (``retrain --fine_tune_blocks``) on the shared
UrbanSound8K folds 1-2: train on one fold, test on the other, both ways. Every run is
retrain's own training path (``retrain.core.train_and_evaluate``), with and without the
lever, so "what fine-tuning adds" is measured over the very same head.

Two modes:

* ``--select``: the choice of K, learning rate, steps and augmentation, made on the
  training fold only. Each setting is trained on 70 % of the training fold's recordings
  and scored on the other 30 % (a larger validation slice than the runs' 10 %, so the
  choice rests on ~500 clips over the two directions instead of ~130); the test fold is
  not scored at all.
* default: the official protocol (training fold minus a 10 % validation slice, test on
  the other fold), the default head with and without fine-tuning; test and validation
  accuracy, CPU seconds per run (process time: both cores, what a laptop pays) and the
  activation cache's size on disk.

    python -m benchmarks.bench_fine_tune --spec_dir /tmp/us8k_spec --select \\
        --grid '{"blocks": [1, 4], "learning_rate": [1e-4, 3e-4]}'
    python -m benchmarks.bench_fine_tune --spec_dir /tmp/us8k_spec --fine_tune_blocks 1

``benchmarks/bench_accuracy.py --fine_tune_blocks K`` adds the row to its head ablation.
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


def cache_megabytes(settings, prepared) -> float:
    """Size on disk of the activation cache of this cut (0 for full fine-tuning)."""
    from retrain.bottlenecks import BottleneckStore

    cut = prepared.backbone.split(settings.fine_tune.blocks)
    if not cut.cached:
        return 0.0
    root = Path(BottleneckStore(settings.bottleneck_dir, cut.cache_name, 0).root)
    return sum(f.stat().st_size for f in root.rglob("*.npy")) / 1e6


def with_fine_tune(settings, **fields):
    return dataclasses.replace(settings, fine_tune=dataclasses.replace(settings.fine_tune, **fields))


def validation_score(settings, prepared, seed: int) -> dict:
    """Both directions trained on 70 % of the training fold, scored on the other 30 %."""
    from retrain.core import split_partition, train_and_evaluate
    from retrain.splits import fold_split

    from benchmarks.bench_accuracy import DIRECTIONS, accuracy

    rows = []
    for train_fold, test_fold in DIRECTIONS:
        split = fold_split(prepared.images.records, [test_fold], (),
                           SELECTION_VALIDATION_PERCENTAGE)
        split = dataclasses.replace(split, test=[])  # choosing: the test fold is not scored
        s = dataclasses.replace(settings, test_folds=(test_fold,))
        cpu = time.process_time()
        outcome = train_and_evaluate(s, prepared, split, seed, f"select{test_fold}",
                                     split_partition(s, prepared), lambda line: None)
        va = list(split.validation)
        rows.append({"train_fold": train_fold, "validation_images": len(va),
                     "validation": accuracy(outcome.head.predict(outcome.features[va]),
                                            prepared.class_ids[va]),
                     "cpu_seconds": time.process_time() - cpu})
    return {"directions": rows,
            "mean_validation": float(np.mean([r["validation"] for r in rows])),
            "mean_cpu_seconds": float(np.mean([r["cpu_seconds"] for r in rows]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_folds12_spec")
    parser.add_argument("--bottleneck_dir", default="/tmp/bottleneck")
    parser.add_argument("--module", default="efficientnet_lite0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000, help="head training steps")
    parser.add_argument("--fine_tune_blocks", default="1")
    parser.add_argument("--fine_tune", default="{}",
                        help="other FineTuneSettings fields as JSON, e.g. '{\"steps\": 600}'")
    parser.add_argument("--select", action="store_true",
                        help="choose settings on a 30%% validation slice of the training fold")
    parser.add_argument("--ablation", action="store_true",
                        help="also fine-tune without augmenting the maps, and keeping the best "
                             "validation step instead of the last (--fine_tune_keep_best)")
    parser.add_argument("--grid", default='{"blocks": [1, 4]}',
                        help="with --select: FineTuneSettings fields -> lists of values (JSON)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from retrain.core import prepare
    from soundretrain.backbones.split import parse_blocks

    from benchmarks.bench_accuracy import base_settings, cells, evaluate

    if not os.path.isfile(os.path.join(args.spec_dir, "manifest.csv")):
        print(f"skipped: no rendered spectrograms in {args.spec_dir} (see bench_accuracy.py)")
        return
    settings = base_settings(args.spec_dir, args.module, args.bottleneck_dir, args.steps)
    settings = with_fine_tune(settings, **json.loads(args.fine_tune))
    prepared = prepare(settings, log=lambda line: print(line, flush=True))
    results = {"protocol": "UrbanSound8K folds 1-2: train on one, test on the other, both ways",
               "module": prepared.backbone.name, "seed": args.seed}
    if args.select:
        grid = json.loads(args.grid)
        names = sorted(grid)
        base = validation_score(settings, prepared, args.seed)
        print(f"SELECT head alone: validation {base['mean_validation'] * 100:.1f}%", flush=True)
        results["head"], results["runs"] = base, []
        for values in itertools.product(*(grid[k] for k in names)):
            fields = dict(zip(names, values))
            fields["blocks"] = parse_blocks(fields.get("blocks", args.fine_tune_blocks))
            run = dict(validation_score(with_fine_tune(settings, **fields), prepared, args.seed),
                       fine_tune=fields)
            results["runs"].append(run)
            print(f"SELECT {json.dumps(fields)}: validation {run['mean_validation'] * 100:.1f}%, "
                  f"{run['mean_cpu_seconds']:.0f} CPU s per run", flush=True)
        best = max(results["runs"], key=lambda r: r["mean_validation"])
        print(f"chosen on validation: {json.dumps(best['fine_tune'])}")
        path = RESULTS.with_name("bench_fine_tune_selection.json")
    else:
        tuned = with_fine_tune(settings, blocks=parse_blocks(args.fine_tune_blocks))
        print(f"{'':<24}{'1->2':>9}{'2->1':>9}{'mean':>9}{'val':>9}{'s/run':>8}{'CPU s':>8}")
        rows = [("head alone", settings), ("head + fine-tuning", tuned)]
        if args.ablation:
            rows += [("  maps not augmented", with_fine_tune(tuned, augment=False)),
                     ("  best validation step kept", with_fine_tune(tuned, keep_best=True))]
        for name, s in rows:
            result = evaluate(s, prepared, args.seed)
            results[name] = result
            print(f"{name:<24}" + cells(result) + f"{result['mean_cpu_seconds']:>8.0f}", flush=True)
        results["activation_cache_mb"] = cache_megabytes(tuned, prepared)
        print(f"activation cache: {results['activation_cache_mb']:.0f} MB on disk")
        path = RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
