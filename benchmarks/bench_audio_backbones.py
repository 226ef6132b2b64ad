"""Throughput of the licence-clean audio modules (aisfx, soundnet) against
efficientnet_lite0 in the same run, and what all of UrbanSound8K's bottlenecks would cost.

Two measurements, each module and its baseline taking turns (best of ``--repeats``):

* the networks alone, on batches of 4 s clips (aisfx at 44.1 kHz, also with the
  package's overlapping 100-frame blocks; soundnet at 22.05 kHz) vs. efficientnet_lite0 on
  batches of 224x224 images;
* the bottleneck stage as ``retrain`` runs it (``compute_bottlenecks``: decoding and
  resampling the source audio, or reading the PNG, then the network and the cache) on the
  first ``--clips`` clips of the shared UrbanSound8K folds, for ``aisfx,soundnet`` vs.
  ``efficientnet_lite0``, each into a fresh bottleneck folder.

Rates are given per wall-clock second and per CPU-second of this process (which other
processes on a shared machine distort less); the projection for UrbanSound8K's 8,732
clips uses both.

    .venv/bin/python -m benchmarks.bench_audio_backbones --spec_dir /tmp/us8k_spec [--clips 128]

Prints a table and writes ``benchmarks/results/bench_audio_backbones.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np

from benchmarks.bench_backbones import best_rates

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_audio_backbones.json"
SHARED_US8K = ROOT.parent / "shared" / "datasets" / "urbansound8k-folds1-2"
US8K_CLIPS = 8732
TARGET_MINUTES = 20.0


def bench_networks(cache_dir: str, batch_size: int, batches: int, repeats: int) -> Dict[str, float]:
    from soundretrain.backbones import aisfx, efficientnet_lite0, soundnet

    lite0 = efficientnet_lite0.load(cache_dir)
    clip, blocks = aisfx.load(cache_dir), aisfx.load(cache_dir, windowing="blocks")
    snet = soundnet.load(cache_dir)
    rng = np.random.default_rng(0)
    images = rng.random((batch_size, 224, 224, 3), dtype=np.float32)
    y44 = rng.uniform(-0.5, 0.5, (batch_size, 4 * aisfx.SAMPLE_RATE)).astype(np.float32)
    y22 = rng.uniform(-0.5, 0.5, (batch_size, 4 * soundnet.SAMPLE_RATE)).astype(np.float32)

    def timer(backbone, x):
        backbone.compute(x)  # trace

        def run() -> int:
            for _ in range(batches):
                backbone.compute(x)
            return batches * len(x)
        return run

    return best_rates({"efficientnet_lite0_images": timer(lite0, images),
                       "aisfx_clips": timer(clip, y44), "aisfx_blocks_clips": timer(blocks, y44),
                       "soundnet_clips": timer(snet, y22)}, repeats, echo=True)


def bench_stage(spec_dir: str, cache_dir: str, clips: int, batch_size: int,
                repeats: int) -> Dict[str, float]:
    from retrain.bottlenecks import compute_bottlenecks
    from retrain.core import load_spectrogram_settings
    from retrain.images import list_images
    from soundretrain.backbones.registry import load_module

    images = list_images(spec_dir)
    records = images.records[:clips]
    settings = load_spectrogram_settings(images)
    modules = {"efficientnet_lite0": load_module("efficientnet_lite0", cache_dir),
               "aisfx,soundnet": load_module("aisfx,soundnet", cache_dir)}

    def timer(backbone, subset):
        def run() -> int:
            folder = tempfile.mkdtemp(prefix="bench-bottlenecks-")
            try:
                compute_bottlenecks(backbone, subset, folder, settings, batch_size, progress=False)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return len(subset)
        return run

    for backbone in modules.values():  # warm up: trace every part once
        timer(backbone, records[:batch_size])()
    return best_rates({f"stage_{name}": timer(b, records) for name, b in modules.items()}, repeats, echo=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_spec")
    parser.add_argument("--data_dir", default=str(SHARED_US8K))
    parser.add_argument("--clips", type=int, default=128, help="clips for the bottleneck stage")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2, help="batches per network timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--module_cache_dir", default=None,
                        help="converted models (default: a fresh temp folder)")
    args = parser.parse_args(argv)
    from benchmarks.bench_probe import render_if_missing

    render_if_missing(args.spec_dir, args.data_dir)
    cache_dir = args.module_cache_dir or tempfile.mkdtemp(prefix="bench-audio-cache-")
    out: Dict[str, object] = {"machine": platform.processor() or platform.machine(),
                              "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    print("networks alone:", flush=True)
    nets = bench_networks(cache_dir, args.batch_size, args.batches, args.repeats)
    print(f"bottleneck stage, {args.clips} clips:", flush=True)
    stage = bench_stage(args.spec_dir, cache_dir, args.clips, args.batch_size, args.repeats)
    out.update(networks=nets, stage=stage, load_average_after=os.getloadavg())
    cpus = os.cpu_count() or 1
    for key in ("stage_aisfx,soundnet", "stage_efficientnet_lite0"):
        out[f"{key}_us8k_minutes_wall"] = US8K_CLIPS / stage[key] / 60
        # With the machine to itself the stage keeps every core busy: CPU-seconds / cores.
        out[f"{key}_us8k_minutes_all_cores"] = US8K_CLIPS / (stage[f"{key}_per_cpu_s"] * cpus) / 60

    rows = [
        ("efficientnet_lite0 network, images/s (baseline)", nets["efficientnet_lite0_images"],
         nets["efficientnet_lite0_images_per_cpu_s"]),
        ("aisfx network, 4 s clips/s (one pass per clip)", nets["aisfx_clips"], nets["aisfx_clips_per_cpu_s"]),
        ("aisfx network, 4 s clips/s (package's 100-frame blocks, hop 50)", nets["aisfx_blocks_clips"],
         nets["aisfx_blocks_clips_per_cpu_s"]),
        ("soundnet network, 4 s clips/s", nets["soundnet_clips"], nets["soundnet_clips_per_cpu_s"]),
        ("bottleneck stage efficientnet_lite0, clips/s", stage["stage_efficientnet_lite0"],
         stage["stage_efficientnet_lite0_per_cpu_s"]),
        ("bottleneck stage aisfx,soundnet, clips/s", stage["stage_aisfx,soundnet"],
         stage["stage_aisfx,soundnet_per_cpu_s"]),
    ]
    print(f"\nload average {out['load_average']} -> {out['load_average_after']} on {cpus} CPUs")
    print("| what | per wall second | per CPU-second |")
    print("|---|---|---|")
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    print(f"\naisfx vs efficientnet_lite0 per item (network): "
          f"{nets['efficientnet_lite0_images'] / nets['aisfx_clips']:.1f}x the time; "
          f"blocks vs one pass: {nets['aisfx_clips'] / nets['aisfx_blocks_clips']:.2f}x")
    print(f"stage aisfx,soundnet vs efficientnet_lite0: "
          f"{stage['stage_efficientnet_lite0'] / stage['stage_aisfx,soundnet']:.1f}x the time")
    for key in ("stage_aisfx,soundnet", "stage_efficientnet_lite0"):
        print(f"all {US8K_CLIPS} UrbanSound8K clips, {key[6:]}: "
              f"{out[f'{key}_us8k_minutes_wall']:.1f} min at this run's wall rate, "
              f"{out[f'{key}_us8k_minutes_all_cores']:.1f} min with all {cpus} cores "
              f"(target <= {TARGET_MINUTES:g} min for aisfx,soundnet)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")
    if not args.module_cache_dir:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
