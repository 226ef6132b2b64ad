"""Run every benchmark in turn (`make benchmark`), each in its own process so one
benchmark's warm caches and threads never flatter the next.

Each script prints its table and writes JSON to benchmarks/results/. The accuracy
benchmarks (bench_accuracy, bench_probe) and bench_audio_backbones need the shared
UrbanSound8K folds and take several minutes (bench_probe computes the aisfx, soundnet and
efficientnet_lite0 bottlenecks of 1,761 clips once); pass --skip bench_accuracy,bench_probe
to leave them out.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

BENCHMARKS = ["bench_spectrograms", "bench_manifest_checks", "bench_backbones", "bench_bottlenecks",
              "bench_batch_determinism", "bench_label", "bench_serve", "bench_beam", "bench_audio_backbones",
              "bench_accuracy", "bench_probe"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    args = parser.parse_args(argv)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    failed = []
    for name in BENCHMARKS:
        if name in skip:
            continue
        print(f"\n=== {name}", flush=True)
        if subprocess.call([sys.executable, "-m", f"benchmarks.{name}"]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
