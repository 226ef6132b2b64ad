"""Which offline modules carry the most information about UrbanSound8K? A linear probe
on each module set's cached bottlenecks, by the official folds.

For each module set (default: ``efficientnet_lite0``, ``aisfx``, ``soundnet``,
``aisfx,soundnet`` and each of those three with ``efficientnet_lite0`` added) and each
direction (train on fold 1, test on fold 2; and back): scikit-learn's logistic regression
on standardised features, its ``C`` chosen by 5-fold cross-validation *inside the training
fold* (folds grouped by source recording, so slices of one recording never straddle inner
train and validation), refit on the whole training fold, scored once on the test fold.
Nothing is chosen by looking at the test fold.

Bottlenecks come from the toolkit itself (``retrain.core.prepare``: the same audio
windows, resampling and cache as ``retrain``), so a second run is instant.

    .venv/bin/python -m benchmarks.bench_probe --spec_dir /tmp/us8k_spec \\
        [--bottleneck_dir /tmp/us8k_bottlenecks] [--modules "aisfx;aisfx,soundnet"]

``--spec_dir`` must hold what ``spectrograms --flagfile=configs/urbansound8k.cfg`` wrote
for the shared folds (rendered there first when missing). Prints a table and writes
``benchmarks/results/bench_probe.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_probe.json"
SHARED_US8K = ROOT.parent / "shared" / "datasets" / "urbansound8k-folds1-2"
DEFAULT_MODULES = ("efficientnet_lite0;aisfx;soundnet;aisfx,soundnet;aisfx,efficientnet_lite0;"
                   "soundnet,efficientnet_lite0;aisfx,soundnet,efficientnet_lite0")
C_GRID = (0.001, 0.01, 0.1, 1.0)
INNER_FOLDS = 5


def render_if_missing(spec_dir: str, data_dir: str) -> None:
    if os.path.isfile(os.path.join(spec_dir, "manifest.csv")):
        return
    print(f"rendering spectrograms of {data_dir} into {spec_dir} ...", flush=True)
    subprocess.run([sys.executable, "-m", "spectrograms", "--flagfile",
                    str(ROOT / "configs" / "urbansound8k.cfg"), f"--data_dir={data_dir}",
                    f"--output_dir={spec_dir}"], check=True, cwd=ROOT)


def make_probe(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))


def choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, dict]:
    """``C`` with the best mean accuracy over grouped inner folds of the training data."""
    from sklearn.model_selection import GroupKFold, cross_val_score

    scores = {c: float(cross_val_score(make_probe(c), x, y, groups=groups,
                                       cv=GroupKFold(INNER_FOLDS)).mean()) for c in C_GRID}
    return max(scores, key=scores.get), scores


def probe_module_set(modules: str, spec_dir: str, bottleneck_dir: str,
                     module_cache_dir: str | None) -> dict:
    from retrain.core import RetrainSettings, prepare

    settings = RetrainSettings(image_dir=spec_dir, tfhub_module=modules,
                               bottleneck_dir=bottleneck_dir, summaries_dir=None,
                               module_cache_dir=module_cache_dir)
    start = time.perf_counter()
    prepared = prepare(settings, log=lambda line: print(line, flush=True))
    records = prepared.images.records
    folds = np.array([r.fold for r in records])
    groups = np.array([r.group for r in records])
    x, y = prepared.features, prepared.class_ids
    out = {"modules": modules, "feature_size": int(x.shape[1]),
           "bottleneck_s": time.perf_counter() - start, "directions": []}
    for train_fold, test_fold in ((1, 2), (2, 1)):
        train, test = folds == train_fold, folds == test_fold
        t0 = time.perf_counter()
        c, inner = choose_c(x[train], y[train], groups[train])
        probe = make_probe(c).fit(x[train], y[train])
        row = {"train_fold": train_fold, "test_fold": test_fold, "train": int(train.sum()),
               "test": int(test.sum()), "C": c, "inner_cv_accuracy": inner,
               "test_accuracy": float(np.mean(probe.predict(x[test]) == y[test])),
               "probe_s": time.perf_counter() - t0}
        print(json.dumps(row), flush=True)
        out["directions"].append(row)
    out["mean_test_accuracy"] = float(np.mean([r["test_accuracy"] for r in out["directions"]]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_spec")
    parser.add_argument("--data_dir", default=str(SHARED_US8K))
    parser.add_argument("--bottleneck_dir", default="/tmp/us8k_bottlenecks")
    parser.add_argument("--module_cache_dir", default=None)
    parser.add_argument("--modules", default=DEFAULT_MODULES,
                        help="module sets separated by ';' (each a --tfhub_module value)")
    args = parser.parse_args(argv)
    render_if_missing(args.spec_dir, args.data_dir)
    results = [probe_module_set(m.strip(), args.spec_dir, args.bottleneck_dir, args.module_cache_dir)
               for m in args.modules.split(";") if m.strip()]
    print("\n| modules | features | fold 1 -> 2 | fold 2 -> 1 | mean | C chosen (inner CV) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        d = r["directions"]
        print(f"| {r['modules']} | {r['feature_size']} | {100 * d[0]['test_accuracy']:.1f} % | "
              f"{100 * d[1]['test_accuracy']:.1f} % | **{100 * r['mean_test_accuracy']:.1f} %** | "
              f"{d[0]['C']:g}, {d[1]['C']:g} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"protocol": "UrbanSound8K folds 1<->2, logistic regression on "
                                   "standardised features, C by grouped 5-fold CV on the "
                                   "training fold", "results": results}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
