"""Which spectrogram image suits the ImageNet backbone (efficientnet_lite0) best?

Each variant is a :class:`SpectrogramSettings` (the built-in defaults at UrbanSound8K's 4 s
with one lever changed, a combination, or what ``configs/urbansound8k.cfg`` renders),
rendered with ``render_clip`` over the shared UrbanSound8K folds 1-2, turned into
efficientnet_lite0 bottlenecks, and scored by a fast, fixed evaluator, both ways (train on
fold 1 -> test on fold 2, and back):

* validation (what a choice may look at): 5-fold group-aware cross-validation inside the
  training fold (``GroupKFold`` on the recording id, so slices of one recording never
  straddle it), mean over both training folds;
* test (reported, never used to choose): train on the whole training fold, test on the
  other fold, mean over both directions.

Two evaluators on the same features: a standardised logistic-regression probe (its C is
chosen once, by the validation score of the default image, then fixed for every variant),
and the toolkit head with retrain.py's settings (one softmax layer, SGD, learning rate 0.01,
4000 steps of batch 100, seed 0). Time per variant: render (``--jobs`` processes) and
bottlenecks (the network, batch 32), both against the default image in the same run.

    .venv/bin/python -m benchmarks.bench_images                       # every variant
    .venv/bin/python -m benchmarks.bench_images --variants "default;db/pcen/delta"

Bottlenecks are cached in ``--work_dir`` by the settings and a fingerprint of what the
rendering code makes of them, so a rerun only scores. Prints a table and writes ``benchmarks/results/bench_images.json``.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # rendering workers: no BLAS threads fighting for cores
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_images.json"
SHARED_US8K = ROOT.parent / "shared" / "datasets" / "urbansound8k-folds1-2"
INNER_FOLDS = 5
PROBE_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
HEAD_STEPS = 4000

# name -> changes to the built-in settings (at UrbanSound8K's 4 s). Grouped by lever;
# "default" is the image before this comparison, the built-in defaults (one viridis log-mel,
# 128 mels, n_fft 2048, hop 512, 0 Hz to Nyquist, 224 px); "configs/urbansound8k.cfg" is what
# the preset renders now (the variant chosen on validation).
VARIANTS: dict[str, dict] = {
    "default": {},
    # three channels instead of one coloured log-mel
    "3 windows 1024/2048/4096": dict(channels="db@1024,db@2048,db@4096"),
    "db/delta/delta2": dict(channels="db,delta,delta2"),
    "pcen (viridis)": dict(channels="pcen"),
    "db/pcen/delta": dict(channels="db,pcen,delta"),
    "3 windows 512/2048/8192": dict(channels="db@512,db@2048,db@8192"),
    "3 windows pcen": dict(channels="pcen@1024,pcen@2048,pcen@4096"),
    # image height and time resolution
    "n_mels 224": dict(n_mels=224),
    "n_mels 64": dict(n_mels=64),
    "n_mels 256, 448x224 image": dict(n_mels=256, image_height=448),
    "hop 256": dict(hop_length=256),
    # frequency range
    "fmin 20": dict(fmin=20.0),
    "fmax 8000": dict(fmax=8000.0),
    "fmin 50 fmax 10000": dict(fmin=50.0, fmax=10000.0),
    # colour and range
    "gray": dict(colormap="gray"),
    "magma": dict(colormap="magma"),
    "top_db 60": dict(top_db=60.0),
    # the frequency range, lever by lever, and combinations of what helped on validation
    "fmin 50": dict(fmin=50.0),
    "fmax 10000": dict(fmax=10000.0),
    "db/pcen/delta, fmin 50 fmax 10000": dict(channels="db,pcen,delta", fmin=50.0, fmax=10000.0),
    "db/pcen/delta, 50-10000 Hz, n_mels 224": dict(channels="db,pcen,delta", fmin=50.0,
                                                   fmax=10000.0, n_mels=224),
    "magma, fmin 50 fmax 10000": dict(colormap="magma", fmin=50.0, fmax=10000.0),
    "magma, 50-10000 Hz, n_mels 224": dict(colormap="magma", fmin=50.0, fmax=10000.0, n_mels=224),
    "configs/urbansound8k.cfg": dict(config=True),
}
# ``image_height`` is not a setting: a taller-than-wide image is measured here only, by
# running the (fully convolutional) network on it directly; the toolkit's modules take
# their declared input size, and the bottleneck stage resizes to it.


# ---------------------------------------------------------------- data

@dataclasses.dataclass
class Clips:
    labels: list[str]  # class names, sorted
    y: np.ndarray  # class index per clip
    fold: np.ndarray
    group: np.ndarray  # recording id (fsID)
    audio: list  # decoded audio at 22,050 Hz, first 4 s (render_clip fits the duration)


def load_clips(data_dir: str, limit: int = 0) -> Clips:
    from soundretrain.audio import load_audio
    from spectrograms.datasets import list_dataset

    listing = list_dataset(data_dir, "urbansound8k")
    clips = listing.clips if not limit else listing.clips[::max(1, len(listing.clips) // limit)]
    labels = sorted({c.label for c in clips})
    index = {name: i for i, name in enumerate(labels)}
    audio = [load_audio(c.source, 22050, max_seconds=4.0) for c in clips]
    return Clips(labels, np.array([index[c.label] for c in clips]), np.array([c.fold for c in clips]),
                 np.array([c.group for c in clips]), audio)


def base_settings():
    """The built-in settings at UrbanSound8K's clip length (4 s, as the config)."""
    from soundretrain.spectrogram_settings import SpectrogramSettings

    return SpectrogramSettings(duration=4.0)


def config_settings():
    """What ``spectrograms --preset urbansound8k`` renders."""
    from soundretrain.spectrogram_settings import SpectrogramSettings

    values = {}
    for line in (ROOT / "configs" / "urbansound8k.cfg").read_text().splitlines():
        line = line.strip()
        if line.startswith("--") and "=" in line:
            key, value = line[2:].split("=", 1)
            values[key] = value
    fields = {f.name: f for f in dataclasses.fields(SpectrogramSettings)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            continue  # --dataset
        default = getattr(SpectrogramSettings(), key)
        if isinstance(default, (str, tuple)):
            kwargs[key] = value
        else:
            kwargs[key] = type(default)(value) if default is not None else float(value)
    return SpectrogramSettings(**kwargs)


# ---------------------------------------------------------------- images and bottlenecks

_AUDIO: list = []  # the workers' view of the decoded clips (inherited by fork)


def render_tall(y: np.ndarray, settings, height: int) -> np.ndarray:
    """``render_clip`` of one coloured log-mel channel, ``height`` x ``image_size``."""
    from soundretrain.audio import fit_duration
    from soundretrain.render import channel_plane, colormap_lut, resize_plane

    y = fit_duration(y, settings.sample_rate, settings.duration, settings.pad_mode)
    plane = channel_plane(y, settings.sample_rate, settings, "db")[::-1] * np.float32(255.0)
    indices = resize_plane(plane + np.float32(0.5), height, settings.image_size).astype(np.uint8)
    return np.take(colormap_lut(settings.colormap), indices, axis=0)


def _render_chunk(args) -> np.ndarray:
    from soundretrain.render import render_clip

    indices, settings, height = args
    if height:
        return np.stack([render_tall(_AUDIO[i], settings, height) for i in indices])
    return np.stack([render_clip(_AUDIO[i], 22050, settings) for i in indices])


def render_all(audio: list, settings, jobs: int, height: Optional[int] = None) -> np.ndarray:
    """uint8 ``[N, size, size, 3]``, ``render_clip`` of every clip, ``jobs`` processes."""
    global _AUDIO
    _AUDIO = audio
    chunks = [list(range(s, min(s + 64, len(audio)))) for s in range(0, len(audio), 64)]
    if jobs <= 1:
        return np.concatenate([_render_chunk((c, settings, height)) for c in chunks])
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return np.concatenate(pool.map(_render_chunk, [(c, settings, height) for c in chunks]))


def bottlenecks(backbone, images: np.ndarray, batch: int = 32) -> np.ndarray:
    compute = backbone.compute
    if images.shape[1:3] != (backbone.input_spec.height, backbone.input_spec.width):
        import tensorflow as tf

        forward = tf.function(backbone.tf_callable())  # the same ops at another input size
        compute = lambda x: forward(tf.constant(x)).numpy()  # noqa: E731
    out = [compute(images[s:s + batch].astype(np.float32) / 255.0)
           for s in range(0, len(images), batch)]
    return np.concatenate(out)


def rendering_fingerprint(settings, clips: "Clips", height: Optional[int]) -> str:
    """What cached features depend on: the settings and what the rendering code makes of
    them (three clips rendered now), so a change of render.py is never served stale."""
    h = hashlib.sha1(json.dumps([settings.to_dict(), height, len(clips.y)], sort_keys=True).encode())
    for i in (0, len(clips.audio) // 2, len(clips.audio) - 1):
        h.update(_render_chunk(([i], settings, height)).tobytes())
    return h.hexdigest()[:16]


def features_for(name: str, settings, clips: Clips, backbone, work_dir: Path, jobs: int,
                 height: Optional[int] = None) -> tuple[np.ndarray, dict]:
    global _AUDIO
    _AUDIO = clips.audio
    key = rendering_fingerprint(settings, clips, height)
    path = work_dir / f"features-{key}.npy"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        return np.load(path), json.loads(meta_path.read_text())
    t0 = time.perf_counter()
    images = render_all(clips.audio, settings, jobs, height)
    t1, c1 = time.perf_counter(), time.process_time()
    feats = bottlenecks(backbone, images)
    t2, c2 = time.perf_counter(), time.process_time()
    meta = {"variant": name, "render_s": t1 - t0, "bottleneck_s": t2 - t1,
            "bottleneck_cpu_ms": (c2 - c1) * 1000 / len(images), "settings": settings.to_dict()}
    work_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    meta_path.write_text(json.dumps(meta, indent=1))
    return feats, meta


def render_cpu_ms(settings, clips: Clips, height: Optional[int], n: int = 60) -> float:
    """CPU milliseconds per clip to render (one process, ``n`` clips spread over the set):
    CPU time, unlike wall time, hardly depends on what else the machine is running."""
    picks = list(range(0, len(clips.audio), max(1, len(clips.audio) // n)))[:n]
    _render_chunk((picks[:2], settings, height))  # warm: mel bases, windows, imports
    start = time.process_time()
    _render_chunk((picks, settings, height))
    return (time.process_time() - start) * 1000 / len(picks)


# ---------------------------------------------------------------- evaluators

def probe_predict(x_tr, y_tr, x_te, C: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))
    probe.fit(x_tr, y_tr)
    return probe.predict(x_te)


def head_predict(x_tr, y_tr, x_te, num_classes: int) -> np.ndarray:
    from retrain.head import ClassificationHead, HeadSettings, HeadTrainer

    settings = HeadSettings(seed=0, learning_rate=0.01, optimizer="sgd", train_batch_size=100)
    for name in ("standardize", "early_stopping"):  # retrain.py's head: neither
        if hasattr(settings, name):
            settings = dataclasses.replace(settings, **{name: False})
    head = ClassificationHead(x_tr.shape[1], num_classes, seed=0)
    HeadTrainer(head, x_tr, y_tr, settings).train(HEAD_STEPS)
    return np.argmax(head.predict(x_te), 1)


def inner_splits(groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    n = len(groups)
    return list(GroupKFold(n_splits=INNER_FOLDS).split(np.zeros(n), groups=groups))


def directions(clips: Clips) -> list[tuple[int, int]]:
    folds = sorted(set(clips.fold.tolist()))
    return [(a, b) for a in folds for b in folds if a != b]


def score(feats: np.ndarray, clips: Clips, evaluator) -> tuple[dict, np.ndarray]:
    """Validation (inner group CV on the training fold) and test accuracy, both directions,
    and whether each clip was right when it was a validation clip (for paired comparisons).
    ``evaluator(x_train, y_train, x_eval, y_eval)`` returns the predicted classes."""
    out = {"validation": {}, "test": {}}
    right = np.zeros(len(clips.y), bool)
    for train_fold, test_fold in directions(clips):
        tr, te = np.flatnonzero(clips.fold == train_fold), np.flatnonzero(clips.fold == test_fold)
        for a, b in inner_splits(clips.group[tr]):
            right[tr[b]] = evaluator(feats[tr[a]], clips.y[tr[a]], feats[tr[b]]) == clips.y[tr[b]]
        where = f"{train_fold}->{test_fold}"
        out["validation"][where] = float(np.mean(right[tr]))
        out["test"][where] = float(np.mean(evaluator(feats[tr], clips.y[tr], feats[te]) == clips.y[te]))
    for part in ("validation", "test"):
        out[f"mean_{part}"] = float(np.mean(list(out[part].values())))
    return out, right


def paired_difference(right: np.ndarray, base: np.ndarray, clips: Clips) -> tuple[float, float]:
    """Validation accuracy minus the default's, and its standard error, over the same clips
    (mean of the two directions, as the accuracies are)."""
    diffs, variances = [], []
    for train_fold, _ in directions(clips):
        d = right[clips.fold == train_fold].astype(float) - base[clips.fold == train_fold]
        diffs.append(d.mean())
        variances.append(d.var(ddof=1) / len(d))
    return float(np.mean(diffs)), float(np.sqrt(np.sum(variances)) / len(diffs))


def choose_probe_c(feats: np.ndarray, clips: Clips) -> tuple[float, dict]:
    """The probe's C, by the default image's validation score only."""
    scores = {C: score(feats, clips, lambda *a, C=C: probe_predict(*a, C=C))[0]["mean_validation"]
              for C in PROBE_C_GRID}
    return max(scores, key=scores.get), scores


# ---------------------------------------------------------------- main

def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(SHARED_US8K))
    parser.add_argument("--work_dir", default="/tmp/bench_images")
    parser.add_argument("--variants", default="", help="';'-separated names (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="rendering processes")
    parser.add_argument("--limit", type=int, default=0, help="only about this many clips (smoke test)")
    parser.add_argument("--no_head", action="store_true", help="score with the probe only")
    parser.add_argument("--head_variants", default="",
                        help="';'-separated names scored by the head too (default: all)")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_dir, "audio")):
        print(f"skipped: the UrbanSound8K folds are not in {args.data_dir}")
        return
    names = [n.strip() for n in args.variants.split(";") if n.strip()] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if "default" not in names:
        names.insert(0, "default")

    import tensorflow as tf

    import soundretrain.render  # noqa: F401 - imported once here: forked workers share it
    from soundretrain.backbones.efficientnet_lite0 import load

    tf.get_logger().setLevel("ERROR")  # one head per fold retraces its tf.function: expected

    t0 = time.perf_counter()
    clips = load_clips(args.data_dir, args.limit)
    print(f"decoded {len(clips.y)} clips in {time.perf_counter() - t0:.1f} s", flush=True)
    backbone = load()
    backbone.compute(np.zeros((2, 224, 224, 3), np.float32))  # trace once, outside the timings
    base = base_settings()
    work_dir = Path(args.work_dir)
    results = {"protocol": "UrbanSound8K folds 1-2; validation: 5-fold GroupKFold inside the "
                           "training fold; test: the other fold; mean of both directions",
               "clips": len(clips.y), "variants": {}}
    probe_c, right_by_variant = None, {}
    for name in names:
        changes = dict(VARIANTS[name])
        height = changes.pop("image_height", None)
        settings = config_settings() if changes.pop("config", False) else dataclasses.replace(base, **changes)
        feats, meta = features_for(name, settings, clips, backbone, work_dir, args.jobs, height)
        if probe_c is None:  # "default" comes first
            probe_c, c_scores = choose_probe_c(feats, clips)
            results["probe_C"] = probe_c
            results["probe_C_validation"] = {str(k): v for k, v in c_scores.items()}
            print(f"probe C = {probe_c} (validation of the default image: "
                  + ", ".join(f"C={k}: {v * 100:.1f}%" for k, v in c_scores.items()) + ")", flush=True)
        row = {"changes": VARIANTS[name], "render_s": meta["render_s"],
               "bottleneck_s": meta["bottleneck_s"],
               "render_cpu_ms": render_cpu_ms(settings, clips, height),
               "bottleneck_cpu_ms": meta["bottleneck_cpu_ms"],
               }
        row["probe"], right = score(feats, clips, lambda *a: probe_predict(*a, C=probe_c))
        right_by_variant[name] = right
        row["probe"]["validation_vs_default"] = paired_difference(right, right_by_variant["default"],
                                                                  clips)
        head_names = [n.strip() for n in args.head_variants.split(";") if n.strip()]
        if not args.no_head and (not head_names or name in head_names):
            n = len(clips.labels)
            row["head"], _ = score(feats, clips, lambda *a: head_predict(*a, num_classes=n))
        results["variants"][name] = row
        print(json.dumps({name: row}), flush=True)

    base_row = results["variants"]["default"]
    print(f"\n{'variant':<40}{'probe val':>10}{'vs default':>14}{'probe test':>11}{'head val':>9}"
          f"{'head test':>10}{'render ms':>10}{'bottl. ms':>10}   (CPU per clip; x default)")
    for name, r in results["variants"].items():
        cells = [r["probe"]["mean_validation"], r["probe"]["mean_test"]]
        cells += [r["head"]["mean_validation"], r["head"]["mean_test"]] if "head" in r else [None, None]
        text = "".join(f"{c * 100:>{w}.1f}%" if c is not None else f"{'-':>{w + 1}}"
                       for c, w in zip(cells, (9, 10, 8, 9)))
        d, se = r["probe"]["validation_vs_default"]
        text = text[:10] + f"{d * 100:>+8.1f} ±{se * 100:>3.1f}" + text[10:]
        print(f"{name[:39]:<40}{text}{r['render_cpu_ms']:>10.1f}{r['bottleneck_cpu_ms']:>10.1f}"
              f"   ({r['render_cpu_ms'] / base_row['render_cpu_ms']:.1f}x, "
              f"{r['bottleneck_cpu_ms'] / base_row['bottleneck_cpu_ms']:.1f}x)")
    best = max(results["variants"], key=lambda n: results["variants"][n]["probe"]["mean_validation"])
    d, se = results["variants"][best]["probe"]["validation_vs_default"]
    results["best_on_validation"] = best
    print(f"best on validation: {best} ({d * 100:+.1f} ± {se * 100:.1f} points against the default)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
