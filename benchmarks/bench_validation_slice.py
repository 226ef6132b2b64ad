"""The validation slice given back (issue 18 item 3): retrain's default head trained on the
training fold with and without its 10 % group-aware validation slice, when nothing reads it
(no early stopping, no autotune). Same test fold either way; UrbanSound8K folds 1 -> 2 and
2 -> 1, three seeds, retrain's own ``train_and_evaluate`` on cached bottlenecks.

    python -m benchmarks.bench_validation_slice --spec_dir /tmp/us8k_spec --bottleneck_dir /tmp/us8k_bn \\
        --modules "aisfx,soundnet,efficientnet_lite0;efficientnet_lite0"
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np


def measure(module: str, spec_dir: str, bottleneck_dir: str, seeds: int) -> dict:
    from retrain.core import prepare, split_partition, train_and_evaluate
    from retrain.settings import RetrainSettings
    from retrain.splits import fold_split, without_validation

    settings = RetrainSettings(image_dir=spec_dir, tfhub_module=module, bottleneck_dir=bottleneck_dir,
                               summaries_dir=None, progress=False, split="folds", test_folds=(2,))
    prepared = prepare(settings, log=lambda line: None)
    out: dict = {"kept": [], "given back": []}
    for seed in range(seeds):
        for test in (2, 1):
            split = fold_split(prepared.images.records, [test], (), 10)
            for name, s in (("kept", split), ("given back", without_validation(split))):
                outcome = train_and_evaluate(settings, prepared, s, seed, "validation-slice",
                                             split_partition(settings, prepared), lambda line: None)
                out[name].append(outcome.test_accuracy)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_spec")
    parser.add_argument("--bottleneck_dir", default="/tmp/us8k_bn")
    parser.add_argument("--modules", default="aisfx,soundnet,efficientnet_lite0;efficientnet_lite0")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'module':<36}{'validation kept':>17}{'given back':>12}{'runs':>6}")
    for module in args.modules.split(";"):
        r = measure(module, args.spec_dir, args.bottleneck_dir, args.seeds)
        print(f"{module:<36}{np.mean(r['kept']) * 100:>16.1f}%{np.mean(r['given back']) * 100:>11.1f}%"
              f"{len(r['kept']):>6}", flush=True)


if __name__ == "__main__":
    main()
