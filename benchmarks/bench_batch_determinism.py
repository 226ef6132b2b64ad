"""Do a module's features depend on how the images fall into batches? (issue 9, finding 13)

A resumed ``retrain`` computes the images a killed run left in other batches than an
uninterrupted run would. This measures, for the module, how far each image's features
move when it is computed in a batch of n (n = 1 ... 31, at the start and at the end of the
batch, beside other images) against the same image in a batch of 32, and what
``retrain.bottlenecks.compute_batch`` (a lone input computed as a pair) gives.

    .venv/bin/python -m benchmarks.bench_batch_determinism [--module efficientnet_lite0]

Prints one line per batch size and writes ``benchmarks/results/bench_batch_determinism.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from soundretrain import atomic_files

RESULTS = Path(__file__).resolve().parent / "results" / "bench_batch_determinism.json"
SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 31)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default="efficientnet_lite0")
    args = parser.parse_args(argv)

    from retrain.bottlenecks import compute_batch
    from soundretrain.backbones.registry import load_module

    backbone = load_module(args.module)
    spec = backbone.input_spec
    rng = np.random.default_rng(1)
    if spec.kind == "image":
        x = rng.random((32, spec.height, spec.width, 3), dtype=np.float32)
    else:
        x = (rng.standard_normal((32, spec.num_samples or spec.sample_rate)) * 0.1).astype(np.float32)
    reference = backbone.compute(x)
    rows = []
    for n in SIZES:
        first, last = backbone.compute(x[:n]), backbone.compute(x[32 - n:])
        diff = max(float(np.abs(first - reference[:n]).max()), float(np.abs(last - reference[32 - n:]).max()))
        same = bool(np.array_equal(first, reference[:n]) and np.array_equal(last, reference[32 - n:]))
        rows.append({"batch": n, "bit_identical": same, "max_abs_diff": diff})
        print(f"batch of {n:2d} vs 32: {'bit-identical' if same else f'max |diff| {diff:.2g}'}")
    lone = compute_batch(backbone, x[:1])
    lone_same = bool(np.array_equal(lone, reference[:1]))
    print(f"compute_batch of one image (as a pair) vs 32: "
          f"{'bit-identical' if lone_same else f'max |diff| {np.abs(lone - reference[:1]).max():.2g}'}")
    result = {"module": backbone.name, "machine": platform.processor() or platform.machine(),
              "rows": rows, "lone_input_as_pair_bit_identical": lone_same}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_files.write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
