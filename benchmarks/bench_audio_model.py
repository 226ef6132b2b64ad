"""Audio-in models on real audio: the same model as the image path? how big, how fast?

    .venv/bin/python -m benchmarks.bench_audio_model                   # everything (~10-20 min on 2 cores)
    .venv/bin/python -m benchmarks.bench_audio_model --clips 100 --no_hour   # a quicker look
    .venv/bin/python -m benchmarks.bench_audio_model --preset urbansound8k --parts agreement,litert,warm \
        --spec_dir /tmp/us8k_spec --bottleneck_dir /tmp/us8k_bn     # the presets' model (aisfx,soundnet,efficientnet_lite0)

With ``--preset``, the head is trained on fold 1 exactly as ``retrain --preset NAME
--test_folds=2`` trains it (the preset's flags, seed 0), and the reference is
``label_image``'s Python path for it: the head-only TFLite, each module run in Python on
the window resampled to its rate (``label_files``, what ``label_image --audio_dir`` runs).
``litert``: the issue's judge, a process that can import only ai-edge-litert, numpy and
soundfile labels every clip with the float32 audio-in TFLite (the README's lines); its top-1
against label_image's. Results go to ``bench_audio_model_<preset>.json``.

On the shared UrbanSound8K folds 1-2 (skips without them): spectrograms of both folds
(rendered by this checkout's ``render_clip``), ``efficientnet_lite0`` bottlenecks, a head
trained on fold 1 with retrain.py's defaults, exported as image TFLite and as audio-in
SavedModel and TFLite (float32, float16, dynamic range). Then, on every fold-2 clip:

* agreement: each audio-in model against the Python path (``load_audio`` -> windows ->
  ``render_clip`` -> image model in memory, i.e. what ``label_image`` does): top-1
  agreement and the largest per-class probability difference (targets: >= 99.5 % and
  0.01), and each variant's accuracy against the true labels;
* size of each ``.tflite``;
* latency per 4 s window, warm (model loaded; batch 1; median of ``--repeats``, the two
  paths taking turns call by call) and cold (a new process labelling one clip, median of
  ``--cold_repeats``): image TFLite through ``label_image`` (decode, ``render_clip``,
  network) against the audio-in TFLite through ``label_image`` and through the README's
  numpy + ai-edge-litert lines;
* a one-hour recording (fold-2 clips end to end) through ``label_image --min_confidence
  0.5 --merge_consecutive --detections_dir``: wall time and peak memory (max RSS),
  against a process that only decodes the hour whole.

Writes ``benchmarks/results/bench_audio_model.json`` and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_US8K = ROOT.parent / "shared" / "datasets" / "urbansound8k-folds1-2"
RESULTS = ROOT / "benchmarks" / "results" / "bench_audio_model.json"
VARIANTS = ("none", "float16", "dynamic")


def log(*args) -> None:
    print(*args, flush=True)


def fold_clips(spec_dir: Path, fold: int) -> list[tuple[str, str]]:
    """``(source audio, label)`` of a fold, from the spectrograms' manifest (its labels are
    the model's)."""
    from soundretrain.manifest import read_manifest

    return sorted({(row.source, row.label) for row in read_manifest(spec_dir / "manifest.csv") if row.fold == fold})


def train(work: Path, module: str, steps: int, bottleneck_dir: Optional[Path] = None):
    """Spectrograms, bottlenecks and a head trained on fold 1 (retrain.py's defaults)."""
    from retrain.core import RetrainSettings, prepare
    from retrain.head import ClassificationHead, HeadSettings, HeadTrainer
    from retrain.splits import fold_split

    spec_dir = work / "spec"
    if not (spec_dir / "manifest.csv").is_file():
        log(f"rendering spectrograms of {SHARED_US8K} into {spec_dir} ...")
        subprocess.run([sys.executable, "-m", "spectrograms", "--preset=urbansound8k", f"--data_dir={SHARED_US8K}",
                        f"--output_dir={spec_dir}"], check=True, cwd=ROOT)
    settings = RetrainSettings(image_dir=str(spec_dir), tfhub_module=module, bottleneck_dir=str(bottleneck_dir or work / "bn"),
                               summaries_dir=None)
    prepared = prepare(settings, log=log)
    split = fold_split(prepared.images.records, [2], (), 10)
    train_idx = list(split.train) + list(split.validation)
    head = ClassificationHead(prepared.features.shape[1], len(prepared.images.labels), seed=0)
    HeadTrainer(head, prepared.features[train_idx], prepared.class_ids[train_idx], HeadSettings(seed=0)).train(steps)
    test_idx = list(split.test)
    acc = float(np.mean(head.predict(prepared.features[test_idx]).argmax(1) == prepared.class_ids[test_idx]))
    log(f"head trained on fold 1: {acc * 100:.1f} % on fold 2's cached bottlenecks")
    return prepared, head, acc


def train_preset(work: Path, preset: str, spec_dir: Path, bottleneck_dir: Path):
    """The head ``retrain --preset PRESET --test_folds=2 --random_seed=0`` trains (fold 1),
    through the same functions (no export: :func:`export_all` writes every variant)."""
    from retrain.cli import make_flags, settings_from_flags
    from retrain.core import make_split, prepare, split_partition, train_and_evaluate
    from soundretrain.command_line import parse_flags

    fv = make_flags()
    parse_flags(fv, ["retrain", "--preset", preset, f"--image_dir={spec_dir}", "--test_folds=2",
                     f"--bottleneck_dir={bottleneck_dir}", "--summaries_dir=", "--checkpoint_path=",
                     "--output_graph=", "--output_labels=", "--output_tflite=", "--saved_model_dir=",
                     "--output_audio_tflite=", "--noprogress"], "retrain", lambda: "", presets="retrain")
    settings = settings_from_flags(fv)
    prepared = prepare(settings, log=log)
    split = make_split(settings, prepared.images)
    outcome = train_and_evaluate(settings, prepared, split, 0, "bench", split_partition(settings, prepared), log=log)
    log(f"preset head trained on fold 1: {outcome.test_accuracy * 100:.1f} % on fold 2's cached bottlenecks")
    return prepared, outcome.head, outcome.test_accuracy


def export_all(work: Path, prepared, head) -> dict:
    from retrain.core import sidecar_for
    from soundretrain.export import export_model

    out = {}
    sidecar = sidecar_for(prepared, float("nan"), "final_result")
    labels = list(prepared.images.labels)
    image_in = prepared.backbone.input_spec.kind == "image" and not getattr(prepared.backbone, "parts", None)
    for q in VARIANTS:
        t0 = time.perf_counter()
        # Image-in exports of every variant; for a model of several modules, the head alone
        # (float32): label_image's Python path runs the modules.
        head_tflite = image_in or q == "none"
        paths = export_model(prepared.backbone, head, labels, sidecar,
                             output_tflite=str(work / f"image_{q}.tflite") if head_tflite else None,
                             output_audio_tflite=str(work / f"audio_{q}.tflite"),
                             audio_saved_model_dir=str(work / "audio_saved_model") if q == "none" else None,
                             tflite_quantization=q)
        log(f"exported {q} in {time.perf_counter() - t0:.0f} s")
        out[f"audio_{q}"] = paths["output_audio_tflite"]
        if head_tflite:
            out[f"image_{q}"] = paths["output_tflite"]
        if q == "none":
            out["audio_saved_model"] = paths["audio_saved_model_dir"]
    return out


def agreement_label_image(prepared, models: dict, clips: list) -> dict:
    """A model of several modules: every audio-in variant against label_image's Python path
    (the head-only TFLite behind the modules run in Python), clip by clip as ``label_image
    --audio_dir`` labels them (windows, silent windows left out of the mean)."""
    from label.labeling import AudioInput, label_files, spectrogram_settings_for
    from label.models import load_labeler

    labels = list(prepared.images.labels)
    paths = [p for p, _ in clips]
    truth = np.asarray([labels.index(label) for _, label in clips])
    probabilities, seconds = {}, {}
    for name, path in {"python_path": models["image_none"], **models}.items():
        if name == "image_none":
            continue
        labeler = load_labeler(path)
        audio_input = AudioInput(spectrogram_settings_for(labeler))
        t0 = time.perf_counter()
        rows = []
        for k, (source, result, error) in enumerate(label_files(labeler, paths, "audio", audio_input=audio_input)):
            if error:
                raise RuntimeError(f"{source}: {error}")
            rows.append(result.probabilities)
            if (k + 1) % 200 == 0:
                log(f"  {name}: {k + 1}/{len(paths)} clips, {time.perf_counter() - t0:.0f} s")
        probabilities[name], seconds[name] = np.stack(rows), time.perf_counter() - t0
        log(f"  {name}: {len(rows)} clips in {seconds[name]:.0f} s")
    reference = probabilities.pop("python_path")
    out = {"clips": len(clips), "python_path_accuracy": float(np.mean(reference.argmax(1) == truth)),
           "python_path_seconds": seconds["python_path"]}
    for name, ps in probabilities.items():
        diff = np.abs(ps - reference).max(axis=1)
        out[name] = {
            "top1_agreement": float(np.mean(ps.argmax(1) == reference.argmax(1))),
            "top1_disagreements": int(np.sum(ps.argmax(1) != reference.argmax(1))),
            "max_abs_diff": float(diff.max()),
            "p99_abs_diff": float(np.quantile(diff, 0.99)),
            "clips_within_0.01": float(np.mean(diff <= 0.01)),
            "accuracy": float(np.mean(ps.argmax(1) == truth)),
            "seconds": seconds[name],
        }
        if name != "audio_none":  # quantised variants: against the float32 audio-in model too
            base = probabilities["audio_none"]
            out[name]["top1_agreement_with_float32"] = float(np.mean(ps.argmax(1) == base.argmax(1)))
            out[name]["max_abs_diff_with_float32"] = float(np.abs(ps - base).max())
    return out


def agreement(prepared, head, models: dict, clips: list) -> dict:
    """Every audio-in variant against the Python path, and each one's accuracy."""
    from label.labeling import AudioInput, audio_windows, resolve_image_input
    from label.models import load_labeler
    from soundretrain.audio import load_audio
    from soundretrain.render import render_clip

    settings = prepared.spectrogram_settings
    labels = list(prepared.images.labels)
    labelers = {name: load_labeler(path) for name, path in models.items()}
    truth, reference, got = [], [], {name: [] for name in labelers}
    t0 = time.perf_counter()
    for k, (path, label) in enumerate(clips):
        y = load_audio(path, settings.sample_rate)
        starts, silent, windows = audio_windows({settings.sample_rate: y}, AudioInput(settings))
        wins = [w for _, w in windows[settings.sample_rate]]
        keep = [i for i, s in enumerate(silent) if not s] or list(range(len(wins)))
        images = np.stack([render_clip(w, settings.sample_rate, settings) for w in wins]).astype(np.float32) / 255.0
        reference.append(head.predict(prepared.backbone.compute(images))[keep].mean(0))
        batch = np.stack(wins).astype(np.float32)
        for name, labeler in labelers.items():
            if labeler.audio_in:
                p = labeler.predict(batch)
            else:  # an image TFLite: the same rendered images
                p = labeler.predict(images)
            got[name].append(p[keep].mean(0))
        truth.append(labels.index(label))
        if (k + 1) % 100 == 0:
            log(f"  {k + 1}/{len(clips)} clips, {time.perf_counter() - t0:.0f} s")
    truth, reference = np.asarray(truth), np.stack(reference)
    out = {"clips": len(clips), "python_path_accuracy": float(np.mean(reference.argmax(1) == truth))}
    for name, ps in got.items():
        ps = np.stack(ps)
        diff = np.abs(ps - reference).max(axis=1)
        out[name] = {
            "top1_agreement": float(np.mean(ps.argmax(1) == reference.argmax(1))),
            "max_abs_diff": float(diff.max()),
            "p99_abs_diff": float(np.quantile(diff, 0.99)),
            "clips_within_0.01": float(np.mean(diff <= 0.01)),
            "accuracy": float(np.mean(ps.argmax(1) == truth)),
        }
    return out


#: What an app does with nothing but ai-edge-litert, numpy and soundfile: the README's
#: lines, reading any file soundfile reads. Prints one "path<TAB>class index<TAB>score" per file.
LITERT_ONLY = """
import sys
import numpy as np
import soundfile as sf
from ai_edge_litert.interpreter import Interpreter

model = Interpreter(model_path=sys.argv[1], num_threads=1)
meta = model.get_signature_runner("sidecar")(unused=np.int32(0))
sr, n, hop = int(meta["sample_rate"]), int(meta["num_samples"]), int(meta["hop_samples"])
serve = model.get_signature_runner("serving_default")
for path in sys.stdin.read().splitlines():
    y, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == sr, f"{path}: {rate} Hz, the model takes {sr} Hz"
    y = y.mean(1)
    starts = list(range(0, max(len(y) - n, 0) + 1, hop))
    starts += [len(y) - n] if starts[-1] + n < len(y) else []
    windows = np.stack([np.resize(y[s:s + n], n) for s in starts]).astype(np.float32)
    p = serve(waveform=windows)["probabilities"]
    loud = np.abs(windows).max(1) >= 1e-4
    p = p[loud].mean(0) if loud.any() else p.mean(0)
    print(f"{path}\t{int(p.argmax())}\t{float(p.max()):.6f}", flush=True)
"""


def litert_only_path(folder: Path) -> Path:
    """A folder exposing numpy, ai_edge_litert and soundfile (with its cffi back-end and
    typing_extensions), and
    nothing else of site-packages."""
    import ai_edge_litert
    import soundfile

    site = Path(np.__file__).resolve().parents[1]
    folder.mkdir(parents=True, exist_ok=True)
    names = ["numpy", "numpy.libs", "soundfile.py", "_soundfile.py", "_soundfile_data", "cffi", "typing_extensions.py"]
    names += [p.name for p in site.glob("_cffi_backend*.so")]
    for name in names:
        if (site / name).exists() and not (folder / name).exists():
            (folder / name).symlink_to(site / name)
    if not (folder / "ai_edge_litert").exists():
        (folder / "ai_edge_litert").symlink_to(Path(ai_edge_litert.__file__).resolve().parent)
    assert Path(soundfile.__file__).resolve().parent == site
    return folder


def litert_only_agreement(models: dict, clips: list, work: Path, labels: list) -> dict:
    """The issue's judge: a process with only ai-edge-litert, numpy and soundfile labels the
    clips from their waveforms with the float32 audio-in model; its top-1 against
    label_image's (the audio-in model through label_image, and the Python path)."""
    from label.labeling import AudioInput, label_files, spectrogram_settings_for
    from label.models import load_labeler

    path = litert_only_path(work / "only_litert_numpy_soundfile")
    guard = ("import sys\n"
             f"sys.path[:0] = [{str(path)!r}]\n"
             "for banned in ('tensorflow', 'librosa', 'soxr', 'scipy', 'soundretrain', 'label'):\n"
             "    try:\n"
             "        __import__(banned)\n"
             "    except ImportError:\n"
             "        continue\n"
             "    raise SystemExit(f'{banned} is importable: the process is not isolated')\n")
    paths = [p for p, _ in clips]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-I", "-S", "-c", guard + LITERT_ONLY, models["audio_none"]],
                          input="\n".join(paths), capture_output=True, text=True, cwd=work,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(work)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-800:])
    seconds = time.perf_counter() - t0
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    litert = np.asarray([int(r[1]) for r in rows])
    out = {"clips": len(rows), "seconds": seconds}
    for name in ("image_none", "audio_none"):  # the Python path (head only), the audio-in model
        labeler = load_labeler(models[name])
        audio_input = AudioInput(spectrogram_settings_for(labeler))
        top = np.asarray([int(r.probabilities.argmax()) for _, r, _ in label_files(labeler, paths, "audio",
                                                                                 audio_input=audio_input)])
        key = "python_path" if name == "image_none" else "label_image_audio_tflite"
        out[f"top1_agreement_with_{key}"] = float(np.mean(top == litert))
        out[f"disagreements_with_{key}"] = int(np.sum(top != litert))
    truth = np.asarray([labels.index(label) for _, label in clips])
    out["accuracy"] = float(np.mean(litert == truth))
    return out


def warm_latency(models: dict, clip: str, settings, repeats: int) -> dict:
    """ms per 4 s window with the model loaded: image path (render_clip + image TFLite)
    against each audio-in TFLite; the variants take turns call by call."""
    from label.labeling import prepare_image, ImageInput
    from label.models import load_labeler
    from soundretrain.audio import fit_duration, load_audio
    from soundretrain.render import render_clip

    y = fit_duration(load_audio(clip, settings.sample_rate), settings.sample_rate, settings.duration)
    labelers = {name: load_labeler(path, num_threads=1) for name, path in models.items()}
    image_input = ImageInput(settings.image_size, settings.image_size)

    def call(name):
        labeler = labelers[name]
        if labeler.audio_in:
            return labeler.predict(y[None])
        return labeler.predict(prepare_image(render_clip(y, settings.sample_rate, settings), image_input)[None])

    times = {name: [] for name in labelers}
    for name in labelers:
        call(name)  # first invoke: allocation, delegate set-up
    for _ in range(repeats):
        for name in labelers:
            t0 = time.perf_counter()
            call(name)
            times[name].append((time.perf_counter() - t0) * 1e3)
    render = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        render_clip(y, settings.sample_rate, settings)
        render.append((time.perf_counter() - t0) * 1e3)
    out = {name: statistics.median(v) for name, v in times.items()}
    out["render_clip_only"] = statistics.median(render)
    return out


def warm_latency_audio(models: dict, clip: str, sample_rate: int, duration: float, repeats: int) -> dict:
    """ms per window with the model loaded, on one core (``num_threads=1``, batch 1),
    the variants taking turns call by call; ratios to the float32 model of the same run."""
    from label.models import load_labeler
    from soundretrain.audio import fit_duration, load_audio

    y = fit_duration(load_audio(clip, sample_rate), sample_rate, duration)[None]
    labelers = {name: load_labeler(path, num_threads=1) for name, path in models.items()}
    times = {name: [] for name in labelers}
    for labeler in labelers.values():
        labeler.predict(y)  # first invoke: allocation, delegate set-up
    for _ in range(repeats):
        for name, labeler in labelers.items():
            t0 = time.perf_counter()
            labeler.predict(y)
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {name: {"median_ms": statistics.median(v), "min_ms": min(v)} for name, v in times.items()}
    base = out["audio_none"]["median_ms"]
    for name in out:
        out[name]["ratio_to_float32"] = out[name]["median_ms"] / base
    return out


def time_process(args: list, cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed: {done.stderr.strip()[-400:]}")
    return time.perf_counter() - t0


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"<!-- litert-example[^>]*-->\s*```python\n(.*?)```", text, re.S).group(1)


def isolated_path(folder: Path) -> Path:
    import ai_edge_litert

    site = Path(np.__file__).resolve().parents[1]
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists() and not (folder / name).exists():
            (folder / name).symlink_to(site / name)
    if not (folder / "ai_edge_litert").exists():
        (folder / "ai_edge_litert").symlink_to(Path(ai_edge_litert.__file__).resolve().parent)
    return folder


def cold(models: dict, clip: str, work: Path, settings, repeats: int) -> dict:
    """A new process labelling one 4 s clip: label_image with the image TFLite and with the
    audio-in TFLite, and the README's numpy + ai-edge-litert lines (16-bit WAV at 22,050 Hz)."""
    import shutil

    import soundfile as sf

    from soundretrain.audio import load_audio

    app = work / "app"
    app.mkdir(exist_ok=True)
    shutil.copy(models["audio_none"], app / "model_audio.tflite")
    sf.write(app / "recording.wav", load_audio(clip, settings.sample_rate), settings.sample_rate, subtype="PCM_16")
    path = isolated_path(work / "only_numpy_litert")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    full_env = dict(os.environ, PYTHONPATH=str(ROOT))
    commands = {
        "label_image_image_tflite": ([sys.executable, "-m", "label.cli", "--graph", models["image_none"],
                                      "--audio", str(app / "recording.wav")], ROOT, full_env),
        "label_image_audio_tflite": ([sys.executable, "-m", "label.cli", "--graph", models["audio_none"],
                                      "--audio", str(app / "recording.wav")], ROOT, full_env),
        "readme_numpy_litert_only": ([sys.executable, "-I", "-S", "-c",
                                      f"import sys; sys.path[:0] = [{str(path)!r}]\n" + readme_snippet()], app, env),
    }
    times = {name: [] for name in commands}
    for _ in range(repeats):
        for name, (args, cwd, e) in commands.items():
            times[name].append(time_process(args, cwd, e))
    return {name: statistics.median(v) for name, v in times.items()}


def hour(models: dict, clips: list, work: Path, settings) -> dict:
    """One hour of real audio through label_image's detections, in bounded memory."""
    import soundfile as sf

    from soundretrain.atomic_files import replacing_file
    from soundretrain.audio import load_audio

    wav = work / "hour.wav"
    seconds = 0.0
    if not wav.is_file():
        with replacing_file(wav, durable=False) as tmp, \
                sf.SoundFile(tmp, "w", settings.sample_rate, 1, "PCM_16", format="WAV") as f:
            k = 0
            while seconds < 3600:
                y = load_audio(clips[k % len(clips)][0], settings.sample_rate)
                y = y[: int(min(len(y), (3600 - seconds) * settings.sample_rate))]
                f.write(y)
                seconds += len(y) / settings.sample_rate
                k += 1
    info = sf.info(str(wav))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out_dir = work / "detections"

    def run(code: str) -> tuple[float, float, str]:
        """Wall seconds, the child's own peak RSS (MB) and its stderr. The peak is VmHWM read
        by the child at exit: wait4's ru_maxrss keeps the high-water mark of the forked copy
        of this (large) process from before exec."""
        report = ("import atexit, sys\n"
                  "atexit.register(lambda: print('VmHWM', open('/proc/self/status').read()"
                  ".split('VmHWM:')[1].split()[0], file=sys.stderr))\n")
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", report + code], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-500:])
        peak_kb = int(re.findall(r"VmHWM (\d+)", done.stderr)[-1])
        return wall, peak_kb / 1024, done.stderr

    def label_image(*argv: str) -> str:
        return ("import runpy, sys\n"
                f"sys.argv = ['label_image', *{list(argv)!r}]\n"
                "runpy.run_module('label.cli', run_name='__main__')\n")

    wall, peak, err = run(label_image("--graph", models["audio_none"], "--audio", str(wav), "--min_confidence",
                                      "0.5", "--merge_consecutive", "--detections_dir", str(out_dir)))
    detections = sum(1 for _ in open(out_dir / "hour.detections.csv")) - 1
    # Bounded means: the peak does not grow with the recording. The first 10 minutes, same flags;
    # and the hour with smaller batches (the front-end's activations scale with --batch_size).
    ten = work / "ten_minutes.wav"
    if not ten.is_file():
        y, sr = sf.read(str(wav), frames=600 * settings.sample_rate, dtype="int16")
        sf.write(str(ten), y, sr, subtype="PCM_16")
    _, ten_peak, _ = run(label_image("--graph", models["audio_none"], "--audio", str(ten), "--min_confidence", "0.5",
                                     "--merge_consecutive", "--detections_dir", str(work / "detections_ten")))
    small_wall, small_peak, _ = run(label_image("--graph", models["audio_none"], "--audio", str(wav), "--batch_size",
                                                "4", "--min_confidence", "0.5", "--merge_consecutive",
                                                "--detections_dir", str(work / "detections_b4")))
    short_wall, short_peak, _ = run(label_image("--graph", models["audio_none"], "--audio", clips[0][0]))
    decode_wall, decode_peak, _ = run("from soundretrain.audio import load_audio\n"
                                      f"y = load_audio({str(wav)!r}, {settings.sample_rate})\n")
    err = "\n".join(line for line in err.splitlines() if not line.startswith("VmHWM"))
    return {"seconds": info.duration, "label_image_wall_s": wall, "label_image_max_rss_mb": peak,
            "ten_minutes_max_rss_mb": ten_peak, "batch_size_4_max_rss_mb": small_peak,
            "batch_size_4_wall_s": small_wall,
            "detections": detections, "stderr_tail": err.strip().splitlines()[-1:],
            "one_clip_label_image_max_rss_mb": short_peak,
            "decode_whole_max_rss_mb": decode_peak, "decode_whole_wall_s": decode_wall,
            "realtime_factor": info.duration / wall}


def main() -> None:
    global SHARED_US8K
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench_audio_model", help="scratch folder (spectrograms, caches, models)")
    parser.add_argument("--module", default="efficientnet_lite0")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--clips", type=int, default=0, help="fold-2 clips to compare (0: all)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cold_repeats", type=int, default=3)
    parser.add_argument("--no_hour", action="store_true", help="skip the one-hour recording")
    parser.add_argument("--parts", default="agreement,warm,cold,hour,litert",
                        help="which measurements (others are kept from the last results file)")
    parser.add_argument("--reuse_models", action="store_true", help="keep models exported by an earlier run")
    parser.add_argument("--preset", default="", help="train the head as retrain --preset NAME does (its modules)")
    parser.add_argument("--spec_dir", default="", help="spectrograms of the shared folds already rendered "
                        "with the preset (default: rendered into --work)")
    parser.add_argument("--bottleneck_dir", default="", help="bottleneck cache (default: in --work)")
    parser.add_argument("--data_dir", default=str(SHARED_US8K), help="the shared UrbanSound8K folds 1-2")
    args = parser.parse_args()
    SHARED_US8K = Path(args.data_dir)
    parts = set(args.parts.split(","))
    if args.no_hour:
        parts.discard("hour")
    if not (SHARED_US8K / "metadata" / "UrbanSound8K.csv").is_file():
        log(f"skipped: {SHARED_US8K} not found")
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = RESULTS.with_name(f"bench_audio_model_{args.preset}.json") if args.preset else RESULTS
    result = json.loads(results.read_text()) if results.is_file() and parts != {"agreement", "warm", "cold", "hour", "litert"} else {}
    result.update({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "module": args.module,
                   "load_average_start": os.getloadavg()[0]})
    spec_dir = Path(args.spec_dir) if args.spec_dir else work / "spec"
    if spec_dir != work / "spec" and not (work / "spec").exists():
        (work / "spec").symlink_to(spec_dir.resolve())
    if args.preset:
        if not (spec_dir / "manifest.csv").is_file():
            log(f"rendering spectrograms of {SHARED_US8K} into {spec_dir} ...")
            subprocess.run([sys.executable, "-m", "spectrograms", f"--preset={args.preset}",
                            f"--data_dir={SHARED_US8K}", f"--output_dir={spec_dir}"], check=True, cwd=ROOT)
        prepared, head, acc = train_preset(work, args.preset, spec_dir,
                                           Path(args.bottleneck_dir) if args.bottleneck_dir else work / "bn")
        result["module"] = prepared.backbone.name
        result["preset"] = args.preset
    else:
        prepared, head, acc = train(work, args.module, args.steps, Path(args.bottleneck_dir) if args.bottleneck_dir else None)
    result["head_fold2_accuracy_cached_bottlenecks"] = acc
    several = bool(getattr(prepared.backbone, "parts", None))
    names = [f"{kind}_{q}" for q in VARIANTS for kind in ("image", "audio") if not several or kind == "audio" or q == "none"]
    if args.reuse_models and all((work / f"{n}.tflite").is_file() for n in names):
        models = {n: str(work / f"{n}.tflite") for n in names}
        models["audio_saved_model"] = str(work / "audio_saved_model")
    else:
        models = export_all(work, prepared, head)
    result["size_bytes"] = {name: os.path.getsize(p) for name, p in models.items() if p.endswith(".tflite")}
    clips = fold_clips(work / "spec", 2)
    if args.clips:
        clips = clips[: args.clips]
    if "agreement" in parts:
        log(f"agreement on {len(clips)} fold-2 clips ...")
        if several:
            result["agreement"] = agreement_label_image(
                prepared, {k: models[k] for k in ("image_none", "audio_none", "audio_float16", "audio_dynamic")}, clips)
        else:
            compared = {k: v for k, v in models.items() if k != "image_none"}
            result["agreement"] = agreement(prepared, head, compared, clips)
    settings = prepared.spectrogram_settings
    import soundfile as sf

    clip = next(p for p, _ in clips if sf.info(p).duration >= settings.duration)
    if several and "litert" in parts:
        log(f"a process with only ai-edge-litert, numpy and soundfile, {len(clips)} clips ...")
        result["litert_only"] = litert_only_agreement(models, clips, work, list(prepared.images.labels))
    if several and "warm" in parts:
        log("warm latency, one core ...")
        from label.models import load_labeler

        rate = load_labeler(models["audio_none"]).sample_rate
        result["warm_one_core"] = warm_latency_audio({k: v for k, v in models.items() if k.startswith("audio_")
                                                      and k != "audio_saved_model"}, clip, rate,
                                                     settings.duration, args.repeats)
        parts.discard("warm")
    if several:
        parts -= {"cold", "hour"}  # the efficientnet_lite0 model's measurements (run without --preset)
    if "warm" in parts:
        log("warm latency ...")
        result["warm_ms"] = warm_latency({k: v for k, v in models.items() if k.startswith(("image_", "audio_"))
                                          and k != "audio_saved_model"}, clip, settings, args.repeats)
    if "cold" in parts:
        log("cold latency ...")
        result["cold_s"] = cold(models, clip, work, settings, args.cold_repeats)
    if "hour" in parts:
        log("one hour of audio ...")
        result["hour"] = hour(models, fold_clips(work / "spec", 2), work, settings)
    result["load_average_end"] = os.getloadavg()[0]
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    log(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
