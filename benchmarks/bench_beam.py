"""The Beam runners against the local writers on one machine, and the per-clip CPU cost that
docs/scale.md turns into a time and cost estimate for AudioSet and FSD50K.

    .venv/bin/python -m benchmarks.bench_beam                      # all 1,761 clips of the shared folds
    .venv/bin/python -m benchmarks.bench_beam --clips 400 --repeats 1

1. Wall time and CPU time of the command lines, each in its own process, taking turns (ABAB)
   in one run, on the same clips, with the same number of workers:
   ``spectrograms --jobs W`` against ``spectrograms --runner=DirectRunner`` (W worker
   processes), and ``retrain --bottlenecks_only`` against the same with ``--runner``. Both
   include their start-up (imports, TensorFlow, the module), as a user pays it. Every
   pipeline's files are checked to be the local run's, byte for byte.
2. Per-clip CPU seconds of the work itself, in one warm process: ``render_source`` on the
   UrbanSound8K clips (4 s) and on 10 s clips made from them (AudioSet's length), and the
   EfficientNet-Lite0 bottleneck per image (batches of 32, TensorFlow's threads included).
3. The estimate: those costs times the clip counts, plus the measured overhead of the Beam
   runner, at the vCPU and memory prices given (Dataflow batch list prices by default).

Prints tables and writes ``benchmarks/results/bench_beam.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED_US8K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "urbansound8k-folds1-2"
RESULTS = Path(__file__).resolve().parent / "results" / "bench_beam.json"

# Data sets of the estimate.
AUDIOSET_CLIPS, AUDIOSET_SECONDS = 2_000_000, 10.0
FSD50K_CLIPS = 51_197  # Fonseca et al. 2021, dev + eval: 108.3 h, clips of 0.3-30 s
# Dataflow batch workers, list prices (us-central1) when this was written: check
# https://cloud.google.com/dataflow/pricing before relying on them.
VCPU_HOUR_USD, GB_HOUR_USD, GB_PER_VCPU = 0.056, 0.003557, 3.75  # n1-standard: 3.75 GB per vCPU


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and everything it waited for)."""
    cpu0, t0 = _cpu_children(), time.perf_counter()
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"failed ({result.returncode}): {' '.join(args)}")
    return wall, cpu


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith(skip)}


def subset(data_dir: Path, clips: int, root: Path) -> Path:
    """The first ``clips`` rows of the UrbanSound8K metadata, as a data folder of symlinks."""
    if clips <= 0:
        return data_dir
    out = root / "data"
    (out / "metadata").mkdir(parents=True)
    lines = (data_dir / "metadata" / "UrbanSound8K.csv").read_text().splitlines()
    kept = [lines[0]]
    for line in lines[1:]:
        name, fold = line.split(",")[0], line.split(",")[5]
        src = data_dir / "audio" / f"fold{fold}"
        matches = sorted(src.glob(os.path.splitext(name)[0] + ".*"))
        if not matches:
            continue
        (out / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        target = out / "audio" / f"fold{fold}" / matches[0].name
        if not target.exists():
            target.symlink_to(matches[0])
        kept.append(line)
        if len(kept) > clips:
            break
    (out / "metadata" / "UrbanSound8K.csv").write_text("\n".join(kept) + "\n")
    return out


def compare_runners(data: Path, work: Path, workers: int, repeats: int, module: str, env: dict,
                    skip_bottlenecks: bool) -> dict:
    bin_dir = Path(sys.executable).parent
    spectrograms = [sys.executable, "-m", "spectrograms"] if not (bin_dir / "spectrograms").exists() \
        else [str(bin_dir / "spectrograms")]
    retrain = [sys.executable, "-m", "retrain"]
    direct = [f"--runner=DirectRunner", f"--beam_pipeline_args=--direct_num_workers={workers}"]
    out: dict = {"spectrograms": {"local": [], "beam": []}, "bottlenecks": {"local": [], "beam": []}}
    reference_spec = None
    for r in range(repeats):
        for kind in ("local", "beam"):
            target = work / f"spec-{kind}-{r}"
            args = [*spectrograms, "--preset=urbansound8k", f"--data_dir={data}", f"--output_dir={target}"]
            args += [f"--jobs={workers}"] if kind == "local" else direct
            wall, cpu = run_command(args, env)
            out["spectrograms"][kind].append({"wall": wall, "cpu": cpu})
            print(f"spectrograms {kind:5s} run {r}: {wall:6.1f} s wall, {cpu:6.1f} s CPU", flush=True)
            files = tree(target)
            if reference_spec is None:
                reference_spec = files
            elif files != reference_spec:
                raise SystemExit(f"{target} differs from the first run's files")
            if r or kind == "beam":
                shutil.rmtree(target)
    spec = work / "spec-local-0"
    out["images"] = sum(1 for k in reference_spec if k.endswith(".png"))
    if skip_bottlenecks:
        return out
    reference_cache = None
    for r in range(repeats):
        for kind in ("local", "beam"):
            cache = work / f"bn-{kind}-{r}"
            args = [*retrain, f"--image_dir={spec}", f"--bottleneck_dir={cache}", f"--tfhub_module={module}",
                    "--bottlenecks_only", "--noprogress"]
            args += [] if kind == "local" else direct
            wall, cpu = run_command(args, env)
            out["bottlenecks"][kind].append({"wall": wall, "cpu": cpu})
            print(f"bottlenecks  {kind:5s} run {r}: {wall:6.1f} s wall, {cpu:6.1f} s CPU", flush=True)
            files = tree(cache)
            if reference_cache is None:
                reference_cache = files
            elif files != reference_cache:
                raise SystemExit(f"{cache} differs from the first run's cache")
            shutil.rmtree(cache)
    return out


def ten_second_clips(data: Path, root: Path, count: int) -> list[Path]:
    """``count`` 10 s FLAC files at 44.1 kHz, each made of consecutive UrbanSound8K clips."""
    import soundfile as sf

    from soundretrain.audio import load_audio

    sources = sorted((data / "audio").rglob("*.*"))
    out, buffer, k = [], [], 0
    sr = 44100
    while len(out) < count:
        buffer.append(load_audio(str(sources[k % len(sources)]), sr))
        k += 1
        y = np.concatenate(buffer)
        if len(y) >= 10 * sr:
            path = root / f"ten_{len(out)}.flac"
            sf.write(path, y[:10 * sr], sr)
            out.append(path)
            buffer = []
    return out


def per_clip_cpu(data: Path, work: Path, clips: int, module: str, skip_bottlenecks: bool) -> dict:
    """CPU seconds per clip of the work alone (warm, one process), for the estimate."""
    from soundretrain.spectrogram_settings import SpectrogramSettings
    from spectrograms.datasets import Clip, list_dataset
    from spectrograms.writer import _warm_up, render_source

    listing = list_dataset(str(data))
    chosen = listing.clips[:clips]
    settings = SpectrogramSettings()  # the UrbanSound8K preset: 22,050 Hz, 4 s, 128 mels, 224 px
    _warm_up(settings)
    target = work / "cpu-spec"
    t0 = time.process_time()
    results = [render_source(clip, str(target), settings) for clip in chosen]
    us8k = (time.process_time() - t0) / len(chosen)
    seconds = float(np.mean([min(r.duration, settings.duration) for res in results for r in res.rows]))

    ten = ten_second_clips(data, work, max(20, clips // 10))
    settings10 = SpectrogramSettings(duration=10.0)
    _warm_up(settings10)
    t0 = time.process_time()
    for path in ten:
        render_source(Clip(str(path), "x", None, path.stem, path.stem), str(work / "cpu-spec10"), settings10)
    ten_s = (time.process_time() - t0) / len(ten)
    out = {"render_us8k_cpu_s": us8k, "render_us8k_audio_s": seconds, "render_10s_cpu_s": ten_s,
           "render_clips": len(chosen), "render_10s_clips": len(ten)}
    if not skip_bottlenecks:
        from retrain.bottlenecks import compute_bottlenecks
        from retrain.images import list_images
        from soundretrain.backbones.registry import load_module

        backbone = load_module(module)
        records = list_images(str(target)).records
        compute_bottlenecks(backbone, records[:32], str(work / "cpu-bn-warm"), progress=False)  # warm up
        t0 = time.process_time()
        compute_bottlenecks(backbone, records, str(work / "cpu-bn"), progress=False)
        out["bottleneck_cpu_s"] = (time.process_time() - t0) / len(records)
        out["bottleneck_images"] = len(records)
    return out


def estimate(cpu: dict, overhead: dict, vcpu_usd: float, gb_usd: float, gb_per_vcpu: float,
             vcpus: int) -> dict:
    """vCPU-hours, hours on ``vcpus`` vCPUs, and dollars, per data set and stage."""
    # Every clip is charged as a 10 s clip: exact for AudioSet, an upper bound for FSD50K
    # (0.3-30 s, mean 7.6 s, cut at 10 s: --duration 10 --long_clips cut).
    c10 = cpu["render_10s_cpu_s"]
    bottleneck = cpu.get("bottleneck_cpu_s")
    sets = {
        "AudioSet (2,000,000 x 10 s)": (AUDIOSET_CLIPS, AUDIOSET_CLIPS * c10),
        "FSD50K (51,197 clips, cut at 10 s)": (FSD50K_CLIPS, FSD50K_CLIPS * c10),
    }
    out = {}
    for name, (clips, spec_cpu) in sets.items():
        stages = {"spectrograms": spec_cpu * overhead.get("spectrograms", 1.0)}
        if bottleneck is not None:
            stages["bottlenecks (EfficientNet-Lite0)"] = clips * bottleneck * overhead.get("bottlenecks", 1.0)
        rows = {}
        for stage, cpu_s in stages.items():
            vcpu_h = cpu_s / 3600
            rows[stage] = {"vcpu_hours": vcpu_h, "hours_on_cluster": vcpu_h / vcpus,
                           "usd": vcpu_h * (vcpu_usd + gb_usd * gb_per_vcpu)}
        out[name] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(SHARED_US8K))
    parser.add_argument("--clips", type=int, default=0, help="first N clips (0: all)")
    parser.add_argument("--repeats", type=int, default=2, help="ABAB rounds of local vs Beam")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--module", default="efficientnet_lite0")
    parser.add_argument("--cpu_clips", type=int, default=300, help="clips timed for the per-clip CPU cost")
    parser.add_argument("--skip_bottlenecks", action="store_true")
    parser.add_argument("--vcpu_hour_usd", type=float, default=VCPU_HOUR_USD)
    parser.add_argument("--gb_hour_usd", type=float, default=GB_HOUR_USD)
    parser.add_argument("--cluster_vcpus", type=int, default=400, help="vCPUs of the cluster in the estimate")
    args = parser.parse_args(argv)
    data = Path(args.data_dir)
    if not (data / "metadata" / "UrbanSound8K.csv").is_file():
        print(f"bench_beam: no UrbanSound8K folder at {data}", file=sys.stderr)
        return 1
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_beam-") as tmp:
        work = Path(tmp)
        data_used = subset(data, args.clips, work)
        runs = compare_runners(data_used, work, args.workers, args.repeats, args.module, env,
                               args.skip_bottlenecks)
        cpu = per_clip_cpu(data_used, work, args.cpu_clips, args.module, args.skip_bottlenecks)
    summary = {}
    for stage in ("spectrograms", "bottlenecks"):
        local, beam = runs[stage]["local"], runs[stage]["beam"]
        if not local:
            continue
        summary[stage] = {
            "local_wall_s": min(r["wall"] for r in local), "beam_wall_s": min(r["wall"] for r in beam),
            "local_cpu_s": min(r["cpu"] for r in local), "beam_cpu_s": min(r["cpu"] for r in beam)}
        s = summary[stage]
        s["wall_ratio"] = s["beam_wall_s"] / s["local_wall_s"]
        s["cpu_ratio"] = s["beam_cpu_s"] / s["local_cpu_s"]
    overhead = {stage: s["cpu_ratio"] for stage, s in summary.items()}
    est = estimate(cpu, overhead, args.vcpu_hour_usd, args.gb_hour_usd, GB_PER_VCPU, args.cluster_vcpus)

    print(f"\n{runs['images']} images, {args.workers} workers, load average {load:.1f} at the start "
          f"({os.getloadavg()[0]:.1f} at the end)")
    print(f"{'stage':14s} {'local wall':>11s} {'Beam wall':>10s} {'ratio':>6s} {'local CPU':>10s} {'Beam CPU':>9s} {'ratio':>6s}")
    for stage, s in summary.items():
        print(f"{stage:14s} {s['local_wall_s']:10.1f}s {s['beam_wall_s']:9.1f}s {s['wall_ratio']:6.2f} "
              f"{s['local_cpu_s']:9.1f}s {s['beam_cpu_s']:8.1f}s {s['cpu_ratio']:6.2f}")
    print(f"\nper clip, CPU seconds (warm, one process): render 4 s UrbanSound8K clip "
          f"{cpu['render_us8k_cpu_s'] * 1000:.1f} ms, 10 s clip {cpu['render_10s_cpu_s'] * 1000:.1f} ms"
          + (f", EfficientNet-Lite0 bottleneck {cpu['bottleneck_cpu_s'] * 1000:.1f} ms"
             if "bottleneck_cpu_s" in cpu else ""))
    print(f"\nestimate ({args.cluster_vcpus} vCPUs, ${args.vcpu_hour_usd}/vCPU-h + ${args.gb_hour_usd}/GB-h "
          f"x {GB_PER_VCPU} GB/vCPU; Beam's CPU overhead included):")
    for name, rows in est.items():
        for stage, r in rows.items():
            print(f"  {name:44s} {stage:34s} {r['vcpu_hours']:9.1f} vCPU-h {r['hours_on_cluster']:7.2f} h "
                  f"${r['usd']:9.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_start": load,
                    "load_end": os.getloadavg()[0]},
        "images": runs["images"], "workers": args.workers, "runs": runs, "summary": summary,
        "per_clip_cpu": cpu, "estimate": est,
        "prices": {"vcpu_hour_usd": args.vcpu_hour_usd, "gb_hour_usd": args.gb_hour_usd,
                   "gb_per_vcpu": GB_PER_VCPU, "cluster_vcpus": args.cluster_vcpus}}, indent=2))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
