"""Bottleneck throughput and head training time, each against a baseline in the same run.

* ``toolkit``: :func:`retrain.bottlenecks.compute_bottlenecks` into an empty cache
  (read + decode PNGs in a background thread, batches of 32, one atomic ``.npy`` each);
* ``retrain.py way``: one image per network call, vector written as comma-separated
  text (what retrain.py did for every image);
* ``floor``: the module's batched forward pass alone, on images already in memory;
* ``cache hit``: the same call again, every vector read from the cache;
* head: 4000 steps of batch 100 as ``retrain`` runs them (an evaluation every 10 steps,
  several steps per ``tf.function`` call) vs. one ``tf.function`` call per step.

Targets (issue 3): toolkit >= 5x the retrain.py way, <= 1.2x the floor's time per image,
4000 steps <= 5 s on 2 cores.

    .venv/bin/python -m benchmarks.bench_bottlenecks [--module efficientnet_lite0|tiny]
        [--images 96] [--image_dir DIR_OF_SPECTROGRAM_PNGS] [--repeats 3]

Prints a table and writes ``benchmarks/results/bench_bottlenecks.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "bench_bottlenecks.json"


def _load_backbone(handle: str, scratch: str):
    from soundretrain.backbones.registry import ModuleError, load_module

    try:
        if handle != "tiny":
            return load_module(handle), handle
    except ModuleError as err:
        print(f"module {handle!r} unavailable ({err}); using the tiny test module", file=sys.stderr)
    if True:  # the tiny test module: per-call overhead dominates, as on a fast accelerator
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_models import make_tiny_image_module

        path = make_tiny_image_module(os.path.join(scratch, "tiny"), image_size=224, feature_size=64)
        return load_module(path), "tiny test module (224 px)"


def _image_records(image_dir: str | None, count: int, size: int, scratch: str):
    """``count`` image records: real spectrograms from ``image_dir`` or generated PNGs."""
    from PIL import Image

    from retrain.images import ImageRecord, list_images

    if image_dir:
        records = list(list_images(image_dir).records)
        step = max(1, len(records) // count)
        return records[::step][:count], f"{image_dir} (every {step}th)"
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        path = os.path.join(scratch, "images", f"img{i}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path, f"x/img{i}.png", "x", f"img{i}"))
    return records, "generated noise PNGs"


def bench_bottlenecks(backbone, records, scratch: str, batch_size: int, repeats: int) -> dict:
    """Seconds for each way, best of ``repeats`` rounds (the ways take turns in each round,
    so a busy neighbour slows them alike)."""
    from retrain.bottlenecks import compute_bottlenecks, image_to_input, read_image

    spec = backbone.input_spec
    n = len(records)
    inputs = np.stack([image_to_input(read_image(r.path), spec.height, spec.width) for r in records])
    backbone.compute(inputs[:batch_size])  # warm up: trace and allocate
    backbone.compute(inputs[:1])

    def floor(_round: int) -> None:
        for s in range(0, n, batch_size):
            backbone.compute(inputs[s:s + batch_size])

    def toolkit(round_: int) -> None:  # into an empty cache each round
        compute_bottlenecks(backbone, records, os.path.join(scratch, f"cache{round_}"),
                            batch_size=batch_size, progress=False)

    def cache_hit(round_: int) -> None:
        compute_bottlenecks(backbone, records, os.path.join(scratch, f"cache{round_}"),
                            batch_size=batch_size, progress=False)

    def one_by_one(round_: int) -> None:  # retrain.py: one run per image, vector saved as text
        text_dir = os.path.join(scratch, f"retrain_py{round_}")
        os.makedirs(text_dir, exist_ok=True)
        for i, r in enumerate(records):
            vec = backbone.compute(image_to_input(read_image(r.path), spec.height, spec.width)[None])[0]
            with open(os.path.join(text_dir, f"{i}.txt"), "w") as f:
                f.write(",".join(str(x) for x in vec))

    ways = {"floor": floor, "toolkit": toolkit, "cache_hit": cache_hit, "retrain_py_way": one_by_one}
    best = {k: float("inf") for k in ways}
    for round_ in range(repeats):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn(round_)
            best[name] = min(best[name], time.perf_counter() - start)
    return {
        "images": n,
        "batch_size": batch_size,
        "repeats": repeats,
        "floor_images_per_s": n / best["floor"],
        "toolkit_images_per_s": n / best["toolkit"],
        "retrain_py_way_images_per_s": n / best["retrain_py_way"],
        "cache_hit_images_per_s": n / best["cache_hit"],
        "speedup_vs_retrain_py_way": best["retrain_py_way"] / best["toolkit"],
        "time_vs_floor": best["toolkit"] / best["floor"],
    }


def bench_head(feature_size: int, steps: int = 4000, classes: int = 10, train: int = 2000) -> dict:
    import tensorflow as tf

    from retrain.head import ClassificationHead, HeadSettings, HeadTrainer

    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, train)
    x = (rng.normal(0, 1, (classes, feature_size))[y] + rng.normal(0, 1, (train, feature_size))
         ).astype(np.float32)
    out = {"steps": steps, "train_batch_size": 100, "feature_size": feature_size,
           "classes": classes}
    # The toolkit's way: retrain's loop, an evaluation every 10 steps (tracing included).
    head = ClassificationHead(feature_size, classes)
    trainer = HeadTrainer(head, x, y, HeadSettings())
    start = time.perf_counter()
    done = 0
    for i in sorted(set(range(0, steps, 10)) | {steps - 1}):
        trainer.train(i + 1 - done)
        done = i + 1
    out["toolkit_s"] = time.perf_counter() - start

    # Baseline: one tf.function call per step (a typical custom loop).
    head2 = ClassificationHead(feature_size, classes)
    xs, ys = tf.constant(x), tf.constant(y.astype(np.int32))

    @tf.function
    def step(idx):
        with tf.GradientTape() as tape:
            logits = head2.logits(tf.gather(xs, idx))
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.gather(ys, idx), logits))
        grads = tape.gradient(loss, head2.trainable_variables)
        for v, g in zip(head2.trainable_variables, grads):
            v.assign_sub(0.01 * g)
        return loss

    start = time.perf_counter()
    for _ in range(steps):
        step(tf.constant(rng.integers(0, train, 100).astype(np.int32)))
    out["one_call_per_step_s"] = time.perf_counter() - start
    out["speedup"] = out["one_call_per_step_s"] / out["toolkit_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_dir", default=None,
                        help="spectrogram images to use (default: generated PNGs)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many rounds")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    with tempfile.TemporaryDirectory(prefix="bench-bottlenecks-") as scratch:
        backbone, module = _load_backbone(args.module, scratch)
        records, source = _image_records(args.image_dir, args.images,
                                         backbone.input_spec.height or 224, scratch)
        bn = bench_bottlenecks(backbone, records, scratch, args.batch_size, args.repeats)
        head = bench_head(backbone.feature_size, args.steps)

    result = {"module": module, "images_from": source, "cpus": os.cpu_count(),
              "machine": platform.machine(), "load_average": os.getloadavg(),
              "bottlenecks": bn, "head": head}
    print(f"module {module}, {bn['images']} images from {source}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, best of {args.repeats} rounds")
    print(f"{'bottlenecks':<34}{'images/s':>10}{'ratio':>10}")
    print(f"{'floor (batched forward only)':<34}{bn['floor_images_per_s']:>10.1f}{'1.00':>10}")
    print(f"{'toolkit (decode+batch+cache)':<34}{bn['toolkit_images_per_s']:>10.1f}"
          f"{bn['time_vs_floor']:>9.2f}x  time vs floor (target <= 1.2)")
    print(f"{'retrain.py way (one per call)':<34}{bn['retrain_py_way_images_per_s']:>10.1f}"
          f"{bn['speedup_vs_retrain_py_way']:>9.2f}x  toolkit speed-up (target >= 5)")
    print(f"{'cache hit':<34}{bn['cache_hit_images_per_s']:>10.1f}")
    print(f"head, {head['steps']} steps of batch 100, {head['feature_size']} features:")
    print(f"{'  toolkit loop (eval every 10)':<34}{head['toolkit_s']:>9.2f}s  (target <= 5 s)")
    print(f"{'  one tf.function call per step':<34}{head['one_call_per_step_s']:>9.2f}s"
          f"{head['speedup']:>9.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
