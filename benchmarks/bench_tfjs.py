"""The audio-in model in the browser (TF.js): size, agreement with label_image, ms per window.

    nice -n 10 .venv/bin/python -m benchmarks.bench_tfjs                # 100 fold-2 clips (~10 min on 2 cores)
    nice -n 10 .venv/bin/python -m benchmarks.bench_tfjs --clips 30 --webgl_clips 5   # a quicker look
    nice -n 10 .venv/bin/python -m benchmarks.bench_tfjs --audio_saved_model models/urbansound8k/model_audio \
        --audio_tflite models/urbansound8k/model_audio.tflite --work /tmp/bench_tfjs_preset   # a model you trained

On the shared UrbanSound8K spectrograms (``/tmp/us8k_spec``: the urbansound8k preset's images of
folds 1-2, and their bottlenecks in ``/tmp/us8k_bn``; skips without them): a head trained on
fold 1 over ``--module`` (efficientnet_lite0 by default), exported as the audio-in TFLite and
as ``--output_tfjs``, then ``label_image --export_web``, served by ``python -m http.server`` on
127.0.0.1 and opened in Debian's headless Chromium. In the same run:

* size: the ``.tflite`` against the TF.js folder (model.json + weight shards);
* agreement on fold-2 clips: each TF.js back-end's top-1 (the page's own ``backend.label``:
  decoding, resampling and windows in JavaScript) against ``label_image``'s (its Python path
  on the audio-in TFLite), and the largest per-class probability difference;
* ms per window (batch 1, warm, median of ``--repeats``): TF.js WASM (SIMD, one thread: a
  static host gives no cross-origin isolation, so no threads) and WebGL (SwiftShader, the
  CPU, where there is no GPU) in Chromium, against the TFLite interpreter in Python on one
  thread (XNNPACK) as the baseline.

Writes ``benchmarks/results/bench_tfjs.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_tfjs.json"


def log(*args) -> None:
    print(*args, flush=True)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def train_and_export(spec_dir: Path, bottleneck_dir: Path, module: str, steps: int, work: Path):
    """A head on fold 1 (cached bottlenecks), exported as audio-in TFLite and TF.js."""
    from retrain.core import RetrainSettings, prepare, sidecar_for
    from retrain.head import ClassificationHead, HeadSettings, HeadTrainer
    from retrain.splits import fold_split
    from soundretrain.export import export_model

    settings = RetrainSettings(image_dir=str(spec_dir), tfhub_module=module, bottleneck_dir=str(bottleneck_dir),
                               summaries_dir=None)
    prepared = prepare(settings, log=log)
    split = fold_split(prepared.images.records, [2], (), 10)
    train_idx = list(split.train) + list(split.validation)
    head = ClassificationHead(prepared.features.shape[1], len(prepared.images.labels), seed=0)
    HeadTrainer(head, prepared.features[train_idx], prepared.class_ids[train_idx], HeadSettings(seed=0)).train(steps)
    t0 = time.perf_counter()
    paths = export_model(prepared.backbone, head, list(prepared.images.labels),
                         sidecar_for(prepared, float("nan"), "final_result"),
                         output_audio_tflite=str(work / "model_audio.tflite"), output_tfjs=str(work / "model_tfjs"))
    log(f"exported audio-in TFLite and TF.js in {time.perf_counter() - t0:.0f} s")
    return paths


def fold_clips(spec_dir: Path, fold: int, count: int) -> list[str]:
    from soundretrain.manifest import read_manifest

    sources = sorted({row.source for row in read_manifest(spec_dir / "manifest.csv") if row.fold == fold})
    step = max(1, len(sources) // count)
    return sources[::step][:count]  # spread over the classes (the manifest is sorted by class)


def label_image_reference(model: str, clips: list[str]) -> dict:
    """label_image's Python path: top-1 and probabilities per clip."""
    from label.labeling import AudioInput, label_files, spectrogram_settings_for
    from label.models import load_labeler

    labeler = load_labeler(model)
    audio_input = AudioInput(spectrogram_settings_for(labeler))
    out = {}
    for path, result, error in label_files(labeler, clips, "audio", audio_input=audio_input):
        if error:
            raise RuntimeError(error)
        out[os.path.basename(path)] = {label: float(p) for label, p in zip(labeler.labels, result.probabilities)}
    return out


def tflite_ms_per_window(model: str, repeats: int) -> float:
    """The TFLite interpreter (ai-edge-litert, else TensorFlow's), one thread, batch 1."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    interpreter = Interpreter(model_path=model, num_threads=1)
    run = interpreter.get_signature_runner("serving_default")
    n = run.get_input_details()["waveform"]["shape"][1]
    x = (0.1 * np.random.default_rng(0).standard_normal((1, n))).astype(np.float32)
    run(waveform=x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(waveform=x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


BROWSER_SCRIPT = """
const [clips, repeats, done] = arguments;
(async () => {
  const { createBackend } = await import(new URL('backend.js', document.baseURI).href);
  const backend = await createBackend();
  const info = await backend.model();
  const n = backend.n;
  const x = Float32Array.from({ length: n }, (_, i) => 0.1 * Math.sin(i * 0.37) * Math.cos(i * 0.011));
  await backend.predict([x]);  // first call: kernels compiled, weights uploaded
  const times = [];
  for (let r = 0; r < repeats; r++) {
    const t0 = performance.now();
    await backend.predict([x]);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const labels = {};
  const t0 = performance.now();
  for (const url of clips) {
    const blob = await (await fetch(url)).blob();
    const name = url.split('/').pop();
    try {
      const answer = await backend.label(blob, name, { display: false, topK: info.labels.length });
      labels[name] = Object.fromEntries(answer.top.map((t) => [t.label, t.score]));
    } catch (e) { labels[name] = { error: e.message }; }
  }
  return { backend: info.tfjs_backend, ms_per_window: times[Math.floor(times.length / 2)],
           labelling_s: (performance.now() - t0) / 1000, labels };
})().then(done, (e) => done({ error: String(e) }));
"""


def in_browser(url: str, clip_urls: list[str], backend: str, repeats: int, profile: Path) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--enable-unsafe-swiftshader", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(3600)
    driver.command_executor.client_config.timeout = 3600  # one script labels every clip
    try:
        driver.get(f"{url}?backend={backend}")
        WebDriverWait(driver, 600).until(lambda d: d.execute_script(
            "return document.body.dataset.ready === 'true' || document.getElementById('model-info').textContent"
            ".startsWith('cannot')"))
        result = driver.execute_async_script(BROWSER_SCRIPT, clip_urls, repeats)
    finally:
        driver.quit()
    if "error" in result:
        raise RuntimeError(f"{backend}: {result['error']}")
    return result


def compare(reference: dict, got: dict) -> dict:
    names = [n for n in got if n in reference]
    errors = [n for n in names if "error" in got[n]]
    ok = [n for n in names if "error" not in got[n]]
    top = lambda d: max(d, key=d.get)  # noqa: E731
    agree = [top(got[n]) == top(reference[n]) for n in ok]
    diff = [max(abs(got[n][k] - reference[n][k]) for k in reference[n]) for n in ok]
    return {"clips": len(names), "errors": len(errors), "top1_agreement": float(np.mean(agree)) if agree else None,
            "max_abs_diff": float(max(diff)) if diff else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", default="/tmp/us8k_spec")
    parser.add_argument("--bottleneck_dir", default="/tmp/us8k_bn")
    parser.add_argument("--module", default="efficientnet_lite0")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--clips", type=int, default=100, help="fold-2 clips labelled with WASM")
    parser.add_argument("--webgl_clips", type=int, default=10, help="of those, labelled with WebGL too (slow on SwiftShader)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backends", default="wasm,webgl", help="TF.js back-ends to measure, in order")
    parser.add_argument("--work", default="/tmp/bench_tfjs")
    parser.add_argument("--reuse", action="store_true", help="keep the models an earlier run left in --work")
    parser.add_argument("--audio_saved_model", help="instead of training: an audio-in SavedModel (converted to "
                        "TF.js here), with --audio_tflite, the same model as TFLite (label_image's reference)")
    parser.add_argument("--audio_tflite")
    args = parser.parse_args(argv)
    spec_dir = Path(args.spec_dir)
    if not (spec_dir / "manifest.csv").is_file():
        log(f"skipped: no spectrograms at {spec_dir} (spectrograms --preset urbansound8k ... --output_dir {spec_dir})")
        return 0
    for tool in ("chromium", "chromedriver"):
        if not shutil.which(tool):
            log(f"skipped: {tool} is not installed (apt-get install chromium chromium-driver)")
            return 0
    work = Path(args.work)
    paths = {"output_audio_tflite": str(work / "model_audio.tflite"), "output_tfjs": str(work / "model_tfjs")}
    if args.audio_saved_model:
        from soundretrain.tfjs_export import convert_audio_saved_model

        if not args.audio_tflite:
            parser.error("--audio_saved_model goes with --audio_tflite")
        work.mkdir(parents=True, exist_ok=True)
        converted = work / "converted_tfjs"
        if args.reuse and (converted / "soundretrain.json").is_file():
            sidecar = json.loads((converted / "soundretrain.json").read_text())
        else:
            t0 = time.perf_counter()
            sidecar = convert_audio_saved_model(args.audio_saved_model, str(converted))
            log(f"converted {args.audio_saved_model} to TF.js in {time.perf_counter() - t0:.0f} s")
        args.module = (sidecar.get("module") or {}).get("name", args.module)
        paths = {"output_audio_tflite": args.audio_tflite, "output_tfjs": str(work / "converted_tfjs")}
    elif not (args.reuse and all(os.path.exists(p) for p in paths.values())):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        paths = train_and_export(spec_dir, Path(args.bottleneck_dir), args.module, args.steps, work)
    for leftover in ("static", "profile-wasm", "profile-webgl"):
        shutil.rmtree(work / leftover, ignore_errors=True)
    load_before = os.getloadavg()[0]

    from label.cli import main as label_image

    root = work / "static"
    root.mkdir()
    if label_image(["label_image", "--graph", paths["output_tfjs"], "--export_web", str(root / "site")]) != 0:
        raise SystemExit("label_image --export_web failed")
    clips = fold_clips(spec_dir, 2, args.clips)
    (root / "clips").mkdir()
    for clip in clips:
        os.symlink(clip, root / "clips" / os.path.basename(clip))

    log(f"label_image on {len(clips)} fold-2 clips (audio-in TFLite) ...")
    reference = label_image_reference(paths["output_audio_tflite"], clips)
    tflite_ms = tflite_ms_per_window(paths["output_audio_tflite"], args.repeats)
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(root)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        base = f"http://127.0.0.1:{port}"
        urls = [f"{base}/clips/{os.path.basename(c)}" for c in clips]
        browser = {}
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            count = args.webgl_clips if backend == "webgl" else len(urls)
            log(f"TF.js {backend} in headless Chromium on {count} clips ...")
            try:
                browser[backend] = in_browser(f"{base}/site/", urls[:count], backend, args.repeats, work / f"profile-{backend}")
            except Exception as e:  # noqa: BLE001 - WebGL may not run here: say so and go on
                log(f"  {backend} failed: {str(e).splitlines()[0]}")
                browser[backend] = {"error": str(e).splitlines()[0]}
    finally:
        server.terminate()
        server.wait(timeout=30)
    tflite_ms_after = tflite_ms_per_window(paths["output_audio_tflite"], args.repeats)

    results = {
        "module": args.module, "clips": len(clips), "load_average": [load_before, os.getloadavg()[0]],
        "size_bytes": {"tflite": os.path.getsize(paths["output_audio_tflite"]),
                       "tfjs": folder_size(Path(paths["output_tfjs"]))},
        "tflite_ms_per_window": [tflite_ms, tflite_ms_after],
        "tfjs": {name: ({"error": r["error"]} if "error" in r else
                        {"ms_per_window": r["ms_per_window"], "labelling_s": r["labelling_s"], **compare(reference, r["labels"])})
                 for name, r in browser.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    mb = lambda b: f"{b / 1e6:.2f} MB"  # noqa: E731
    base_ms = statistics.mean(results["tflite_ms_per_window"])
    log(f"\n{args.module}, {len(clips)} UrbanSound8K fold-2 clips, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    log("| runtime | size | top-1 agreement with label_image | largest probability difference | ms per window (batch 1) | vs TFLite |")
    log("|---|---|---|---|---|---|")
    log(f"| TFLite, Python, 1 thread (label_image) | {mb(results['size_bytes']['tflite'])} | (reference) | | "
        f"{tflite_ms:.1f} / {tflite_ms_after:.1f} (before / after the browser) | 1.0x |")
    for name, r in results["tfjs"].items():
        if "error" in r:
            log(f"| TF.js {name}, Chromium | | failed: {r['error']} | | | |")
            continue
        log(f"| TF.js {name}, Chromium | {mb(results['size_bytes']['tfjs'])} | "
            f"{r['top1_agreement'] * 100:.1f} % of {r['clips'] - r['errors']} | {r['max_abs_diff']:.1e} | "
            f"{r['ms_per_window']:.1f} | {r['ms_per_window'] / base_ms:.1f}x |")
    log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
