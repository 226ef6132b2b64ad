"""Throughput of the offline backbones on this machine's CPU cores, in one run.

* efficientnet_lite0: images/s with batches of 32 vs. one image per call (retrain.py's
  way), plus the one-time weight conversion vs. a cached load.
* birdnet: 3 s windows/s as the module runs them (embedding patched in as the output,
  one window per invoke) vs. 8 windows per invoke, and vs. reading the embedding with
  experimental_preserve_all_tensors (the usual way).

    .venv/bin/python -m benchmarks.bench_backbones [--images 128] [--windows 64]

Prints a table and writes ``benchmarks/results/bench_backbones.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

from soundretrain import atomic_files

RESULTS = Path(__file__).resolve().parent / "results" / "bench_backbones.json"


def best_rates(fns: Dict[str, Callable[[], int]], repeats: int, echo: bool = False) -> Dict[str, float]:
    """Items per second of each ``fn`` (which returns how many items it processed), best of
    ``repeats``; the functions take turns so that a baseline and its rival see the same
    load from other processes on a shared machine. Also items per CPU-second of this
    process (``<name>_per_cpu_s``), which contention from other processes distorts less.
    ``echo``: print each turn's rates."""
    best: Dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            n = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = max(best.get(name, 0.0), n / wall)
            best[f"{name}_per_cpu_s"] = max(best.get(f"{name}_per_cpu_s", 0.0), n / cpu)
            if echo:
                print(f"  {name}: {n / wall:.2f}/s wall, {n / cpu:.2f}/CPU-s", flush=True)
    return best


def bench_efficientnet(num_images: int, batch_size: int, repeats: int) -> Dict[str, float]:
    from soundretrain.backbones import efficientnet_lite0

    out: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        efficientnet_lite0.load(cache)
        out["first_load_with_conversion_s"] = time.perf_counter() - start
        start = time.perf_counter()
        backbone = efficientnet_lite0.load(cache)
        out["cached_load_s"] = time.perf_counter() - start

    rng = np.random.default_rng(0)
    images = rng.random((num_images, 224, 224, 3), dtype=np.float32)
    backbone.compute(images[:batch_size])  # trace and warm up both shapes
    backbone.compute(images[:1])

    def batched() -> int:
        for s in range(0, num_images, batch_size):
            backbone.compute(images[s:s + batch_size])
        return num_images

    singles = max(8, num_images // 4)

    def one_by_one() -> int:
        for image in images[:singles]:
            backbone.compute(image[None])
        return singles

    key = f"images_per_s_batch{batch_size}"
    out.update(best_rates({key: batched, "images_per_s_one_per_call": one_by_one}, repeats))
    out["speedup_batched_vs_one"] = out[key] / out["images_per_s_one_per_call"]
    return out


def bench_birdnet(num_windows: int, repeats: int) -> Dict[str, float]:
    """The module's way (embedding patched in as the model's output, one window per
    invoke) vs. 8 windows per invoke, and vs. reading the embedding with
    ``experimental_preserve_all_tensors`` (the usual way, and the module's fallback)."""
    from soundretrain.backbones import birdnet
    from soundretrain.backbones.registry import ModuleError

    try:
        module = birdnet.load()
    except ModuleError as err:
        print(f"birdnet skipped: {err}")
        return {}
    grouped = birdnet.BirdNET(module.model_path)
    grouped.max_windows_per_invoke = 8
    preserved = birdnet.BirdNET(module.model_path, patch_output=False)
    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((num_windows, birdnet.WINDOW_SAMPLES))).astype(np.float32)
    out: Dict[str, float] = {}
    for name, backbone, n in (("module", module, 1), ("eight_per_invoke", grouped, 8),
                              ("preserved_tensor", preserved, 1)):
        start = time.perf_counter()
        backbone.embed_windows(windows[:n])
        out[f"{name}_first_invoke_s"] = time.perf_counter() - start

    def timer(backbone):
        def run() -> int:
            backbone.embed_windows(windows)
            return num_windows
        return run

    # A 4 s UrbanSound8K clip is 2 windows (0-3 s and 1-4 s).
    clips = (0.1 * rng.standard_normal((16, 4 * birdnet.SAMPLE_RATE))).astype(np.float32)
    out.update(best_rates({"windows_per_s_module": timer(module),
                           "windows_per_s_eight_per_invoke": timer(grouped),
                           "windows_per_s_preserved_tensor": timer(preserved),
                           "clips_4s_per_s_module": lambda: len(module.compute(clips))}, repeats))
    out["speedup_eight_per_invoke_vs_module"] = (out["windows_per_s_eight_per_invoke"]
                                                 / out["windows_per_s_module"])
    out["speedup_module_vs_preserved_tensor"] = (out["windows_per_s_module"]
                                                 / out["windows_per_s_preserved_tensor"])
    return out


def _table(rows: List[tuple]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:>10.2f}" for name, value in rows)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="images per batched run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--windows", type=int, default=32, help="3 s windows per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings")
    parser.add_argument("--modules", default="efficientnet_lite0,birdnet",
                        help="comma-separated modules to time")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results = {"machine": {"cores": cores, "processor": platform.processor() or platform.machine(),
                           "load_average": list(os.getloadavg())}}
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    # BirdNET first: TensorFlow's thread pools, once started, compete with TFLite's.
    if "birdnet" in modules:
        results["birdnet"] = bench_birdnet(args.windows, args.repeats)
    if "efficientnet_lite0" in modules:
        results["efficientnet_lite0"] = bench_efficientnet(args.images, args.batch_size,
                                                           args.repeats)
    rows = [(f"{m} {k}", v) for m in modules for k, v in results.get(m, {}).items()]
    print(f"\nBackbone throughput on {cores} CPU cores")
    print(_table(rows))

    atomic_files.write_text(args.output, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
