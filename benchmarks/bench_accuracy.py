"""Accuracy on the shared UrbanSound8K folds 1-2 under the official protocol: train on one
fold, test on the other, both ways (never random splits of slices).

For each module, on the same cached bottlenecks and the same split (the test fold; the
training fold minus a 10 % group-aware validation slice), it compares:

* ``head default``: the toolkit's head with retrain.py's settings (one softmax layer,
  SGD, learning rate 0.01, 4000 steps of batch 100);
* ``head tuned``: the best of a few head settings, chosen on the validation slice only;
* ``head tuned + augmentation``: the tuned head with ``--augmentation_copies`` cached
  augmented copies of each training image (time shift, masks, mixing within the fold);
* ``logistic regression``: scikit-learn's probe on standardised features.

    .venv/bin/python -m benchmarks.bench_accuracy --spec_dir /tmp/us8k_spec \\
        [--modules "efficientnet_lite0;birdnet"] [--augmentation_copies 1]

``--ablation`` instead measures which parts of the augmentation help (time shift, masks,
mixing, all), with the default head and ``--augmentation_copies`` copies.

``--spec_dir`` must hold what ``spectrograms --preset urbansound8k`` wrote
for the shared folds (the script renders them there first when it is missing). Prints a
table and writes ``benchmarks/results/bench_accuracy.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_accuracy.json"
SHARED_US8K = ROOT.parent / "shared" / "datasets" / "urbansound8k-folds1-2"

CANDIDATES = {  # head settings tried; the validation slice picks one per split
    "sgd lr0.01 (retrain.py)": dict(),
    "sgd lr0.1": dict(learning_rate=0.1),
    "adam lr0.001": dict(optimizer="adam", learning_rate=0.001),
    "adam lr0.001 ls0.1 l2 1e-4": dict(optimizer="adam", learning_rate=0.001,
                                       label_smoothing=0.1, l2=1e-4),
    "adam lr0.001 hidden256 dropout0.5": dict(optimizer="adam", learning_rate=0.001,
                                               hidden_units=256, dropout=0.5),
}


def render_if_missing(spec_dir: str, data_dir: str) -> None:
    if os.path.isfile(os.path.join(spec_dir, "manifest.csv")):
        return
    print(f"rendering spectrograms of {data_dir} into {spec_dir} ...", flush=True)
    subprocess.run([sys.executable, "-m", "spectrograms", "--preset=urbansound8k", f"--data_dir={data_dir}",
                    f"--output_dir={spec_dir}"], check=True, cwd=ROOT)


def train_head(x, y, num_classes, steps, seed, **options):
    from retrain.head import ClassificationHead, HeadSettings, HeadTrainer

    settings = HeadSettings(seed=seed, **options)
    head = ClassificationHead(x.shape[1], num_classes, settings.hidden_units, settings.dropout,
                              seed=seed)
    HeadTrainer(head, x, y, settings).train(steps)
    return head


def accuracy(head, x, y) -> float:
    return float(np.mean(np.argmax(head.predict(x), 1) == y))


def logistic_probe(x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def bench_module(module: str, spec_dir: str, bottleneck_dir: str, steps: int, seed: int,
                 copies: int) -> dict:
    from retrain.augment import AugmentSettings
    from retrain.core import RetrainSettings, prepare, split_partition, training_data
    from retrain.splits import fold_split

    settings = RetrainSettings(image_dir=spec_dir, tfhub_module=module,
                               bottleneck_dir=bottleneck_dir, summaries_dir=None)
    start = time.perf_counter()
    prepared = prepare(settings, log=lambda line: print(line, flush=True))
    out = {"module": prepared.backbone.name, "bottleneck_s": time.perf_counter() - start,
           "images": len(prepared.images.records), "directions": []}
    labels, ids, feats = prepared.images.labels, prepared.class_ids, prepared.features
    for train_fold, test_fold in ((1, 2), (2, 1)):
        split = fold_split(prepared.images.records, [test_fold], (), 10)
        tr, va, te = list(split.train), list(split.validation), list(split.test)
        row = {"train_fold": train_fold, "test_fold": test_fold,
               "train": len(tr), "validation": len(va), "test": len(te)}
        t0 = time.perf_counter()
        head = train_head(feats[tr], ids[tr], len(labels), steps, seed)
        row["head_default"] = accuracy(head, feats[te], ids[te])
        row["head_train_s"] = time.perf_counter() - t0
        best, best_val = None, -1.0
        for name, options in CANDIDATES.items():
            head = train_head(feats[tr], ids[tr], len(labels), steps, seed, **options)
            val = accuracy(head, feats[va], ids[va])
            row.setdefault("validation_accuracy", {})[name] = val
            if val > best_val:
                best, best_val, best_head = name, val, head
        row["tuned_choice"] = best
        row["head_tuned"] = accuracy(best_head, feats[te], ids[te])
        if copies > 0:
            aug_settings = dataclasses.replace(settings, augment=AugmentSettings(copies=copies))
            x_aug, y_aug = training_data(aug_settings, prepared, tr,
                                         split_partition(aug_settings, prepared),
                                         log=lambda line: print(line, flush=True))
            head = train_head(x_aug, y_aug, len(labels), steps, seed, **CANDIDATES[best])
            row["head_tuned_augmented"] = accuracy(head, feats[te], ids[te])
            head = train_head(x_aug, y_aug, len(labels), steps, seed)
            row["head_default_augmented"] = accuracy(head, feats[te], ids[te])
        row["logistic_regression"] = logistic_probe(feats[tr], ids[tr], feats[te], ids[te])
        print(json.dumps(row), flush=True)
        out["directions"].append(row)
    for key in ("head_default", "head_tuned", "head_tuned_augmented", "head_default_augmented",
                "logistic_regression"):
        values = [r[key] for r in out["directions"] if key in r]
        if values:
            out[f"mean_{key}"] = float(np.mean(values))
    return out


ABLATION = {  # which parts of the augmentation help (default head, same split)
    "time shift only": dict(time_shift=True, time_masks=0, freq_masks=0, mix_probability=0.0),
    "masks only": dict(time_shift=False, mix_probability=0.0),
    "mixing only": dict(time_shift=False, time_masks=0, freq_masks=0, mix_probability=1.0),
    "all (default)": dict(),
}


def augmentation_ablation(module: str, spec_dir: str, bottleneck_dir: str, steps: int,
                          seed: int, copies: int) -> dict:
    from retrain.augment import AugmentSettings
    from retrain.core import RetrainSettings, prepare, split_partition, training_data
    from retrain.splits import fold_split

    settings = RetrainSettings(image_dir=spec_dir, tfhub_module=module,
                               bottleneck_dir=bottleneck_dir, summaries_dir=None)
    prepared = prepare(settings, log=lambda line: print(line, flush=True))
    ids, feats, n = prepared.class_ids, prepared.features, len(prepared.images.labels)
    out = {"module": prepared.backbone.name, "copies": copies, "variants": {}}
    for name, options in [("none", None)] + list(ABLATION.items()):
        accs = []
        for train_fold, test_fold in ((1, 2), (2, 1)):
            split = fold_split(prepared.images.records, [test_fold], (), 10)
            tr, te = list(split.train), list(split.test)
            if options is None:
                x, y = feats[tr], ids[tr]
            else:
                aug = dataclasses.replace(settings, augment=AugmentSettings(copies=copies, **options))
                x, y = training_data(aug, prepared, tr, split_partition(aug, prepared),
                                     log=lambda line: None)
            accs.append(accuracy(train_head(x, y, n, steps, seed), feats[te], ids[te]))
        out["variants"][name] = {"1->2": accs[0], "2->1": accs[1], "mean": float(np.mean(accs))}
        print(f"augmentation {name:<18} 1->2 {accs[0] * 100:5.1f}%  2->1 {accs[1] * 100:5.1f}%  "
              f"mean {np.mean(accs) * 100:5.1f}%", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_folds12_spec")
    parser.add_argument("--data_dir", default=str(SHARED_US8K))
    parser.add_argument("--modules", default="efficientnet_lite0")
    parser.add_argument("--bottleneck_dir", default="/tmp/bottleneck")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augmentation_copies", type=int, default=1)
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
    if args.ablation:
        result = augmentation_ablation(args.modules.split(";")[0], args.spec_dir,
                                       args.bottleneck_dir, args.steps, args.seed,
                                       max(1, args.augmentation_copies))
        path = RESULTS.with_name("bench_augmentation.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
        return

    results = {"protocol": "UrbanSound8K folds 1-2: train on one, test on the other, both ways",
               "steps": args.steps, "seed": args.seed, "modules": []}
    for module in [m.strip() for m in args.modules.split(";") if m.strip()]:
        results["modules"].append(bench_module(module, args.spec_dir, args.bottleneck_dir,
                                               args.steps, args.seed, args.augmentation_copies))
    print(f"\n{'module':<28}{'direction':<12}{'head':>8}{'tuned':>8}{'+aug':>8}{'logreg':>8}")
    for m in results["modules"]:
        for r in m["directions"] + [dict(m, train_fold="mean", test_fold="")]:
            pre = "" if r["train_fold"] != "mean" else "mean_"
            cells = [r.get(f"{pre}{k}") for k in
                     ("head_default", "head_tuned", "head_tuned_augmented", "logistic_regression")]
            text = "".join(f"{c * 100:>7.1f}%" if c is not None else f"{'-':>8}" for c in cells)
            where = f"{r['train_fold']}->{r['test_fold']}" if pre == "" else "mean"
            print(f"{m['module'][:27]:<28}{where:<12}{text}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
