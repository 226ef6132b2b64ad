"""Spectrogram writer throughput vs the seeds' method vs the floor, on the same clips.

    .venv/bin/python -m benchmarks.bench_spectrograms            # 200 clips of the shared folds
    .venv/bin/python -m benchmarks.bench_spectrograms --all      # all 1,761 clips of folds 1-2

Three ways over the same real UrbanSound8K clips, each with the same ``--jobs``
worker processes (fork, chunks, unordered), in one run:

* writer: ``spectrograms.writer.write_spectrograms`` end to end (listing to manifest);
* seeds:  what the seed scripts did per clip: ``librosa.load`` + ``melspectrogram`` +
  ``power_to_db`` + ``librosa.display.specshow`` into a matplotlib figure + ``savefig``;
* floor:  decode + log-mel only (``load_audio`` + ``fit_duration`` + ``log_mel``, the
  writer's own decode and mel), nothing written.

BLAS is held to one thread in every worker (set before numpy loads): on a small
shared machine OpenBLAS threads in each of several processes make the seeds' dense
mel product ~50x slower, which would flatter the ratio unfairly.
Prints a table and writes ``benchmarks/results/bench_spectrograms.json``.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from spectrograms.datasets import DatasetListing, list_dataset  # noqa: E402
from soundretrain.audio import fit_duration, load_audio
from soundretrain.render import log_mel  # noqa: E402
from soundretrain.spectrogram_settings import SpectrogramSettings  # noqa: E402
from spectrograms.writer import WriteOptions, _warm_up, write_spectrograms  # noqa: E402

SHARED_US8K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "urbansound8k-folds1-2"
RESULTS = Path(__file__).resolve().parent / "results" / "bench_spectrograms.json"


# ---------------------------------------------------------------- per-clip work (in workers)

def floor_one(source: str, settings: SpectrogramSettings) -> int:
    y = fit_duration(load_audio(source, settings.sample_rate), settings.sample_rate, settings.duration)
    return int(log_mel(y, settings.sample_rate, settings).shape[1])


def seeds_one(task: tuple[str, str], settings: SpectrogramSettings) -> int:
    """The seed scripts' way, as the widespread "UrbanSound8K spectrogram CNN" recipe
    does it: a small borderless figure per clip, ``specshow``, ``savefig`` with a
    tight bounding box at a dpi that gives about ``image_size`` pixels."""
    import librosa
    import librosa.display  # noqa: F401 (registers librosa.display.specshow)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source, out_path = task
    y, sr = librosa.load(source, sr=settings.sample_rate, mono=True)
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=settings.n_fft, hop_length=settings.hop_length,
                                       n_mels=settings.n_mels)
    fig = plt.figure(figsize=[0.72, 0.72])
    ax = fig.add_subplot(111)
    ax.axes.get_xaxis().set_visible(False)
    ax.axes.get_yaxis().set_visible(False)
    ax.set_frame_on(False)
    librosa.display.specshow(librosa.power_to_db(S, ref=np.max, top_db=settings.top_db), sr=sr,
                             hop_length=settings.hop_length, ax=ax, cmap=settings.colormap)
    fig.savefig(out_path, dpi=settings.image_size / 0.72, bbox_inches="tight", pad_inches=0)
    plt.close(fig)
    return 1


def _seeds_warm_up() -> None:
    import librosa.display  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def _pool_map(fn, items, jobs: int) -> None:
    if jobs <= 1:
        for item in items:
            fn(item)
        return
    chunksize = max(1, min(16, len(items) // (jobs * 8)))
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for _ in pool.imap_unordered(fn, items, chunksize=chunksize):
            pass


# ---------------------------------------------------------------- the three methods

def _cpu_seconds() -> float:
    """CPU time of this process and its reaped workers: less swayed than wall time by
    other people's jobs on a shared machine."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn(*args)``."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0, _cpu_seconds() - c0


def run_writer(listing: DatasetListing, out: Path, settings, jobs: int) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)

    def work():
        summary = write_spectrograms(listing, str(out), settings, WriteOptions(jobs=jobs, progress=False),
                                     log=lambda line: None)
        if summary.failed or summary.written != len(listing.clips):
            raise SystemExit(f"writer wrote {summary.written} of {len(listing.clips)}: {summary.failed[:3]}")

    return timed(work)


def run_floor(listing: DatasetListing, settings, jobs: int) -> tuple[float, float]:
    import functools

    def work():
        _warm_up(settings)  # what the writer does before forking, so both pay it
        _pool_map(functools.partial(floor_one, settings=settings), [c.source for c in listing.clips], jobs)

    return timed(work)


def run_seeds(listing: DatasetListing, out: Path, settings, jobs: int) -> tuple[float, float]:
    import functools

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tasks = [(c.source, str(out / f"{i}.png")) for i, c in enumerate(listing.clips)]

    def work():
        _seeds_warm_up()
        _pool_map(functools.partial(seeds_one, settings=settings), tasks, jobs)

    return timed(work)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=str(SHARED_US8K), help="UrbanSound8K folder (default: the shared folds 1-2)")
    p.add_argument("--clips", type=int, default=200, help="clips, spread evenly over the folds (default 200)")
    p.add_argument("--all", action="store_true", help="every clip (1,761 for the shared folds)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes for all three")
    p.add_argument("--repeats", type=int, default=5, help="runs of writer and floor (median and best reported)")
    p.add_argument("--seed_clips", type=int, default=0,
                   help="run the (slow) seeds' method on only the first N of the clips (0: all of them)")
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args(argv)

    settings = SpectrogramSettings()  # the UrbanSound8K defaults: 22,050 Hz, 4 s, 128 mels, 224 px
    listing = list_dataset(args.data_dir, "urbansound8k")
    clips = listing.clips
    if not args.all and args.clips < len(clips):
        step = len(clips) / args.clips
        clips = [clips[int(i * step)] for i in range(args.clips)]
    listing = DatasetListing(listing.layout, listing.root, listing.how, clips)
    seed_listing = listing
    if args.seed_clips and args.seed_clips < len(clips):
        seed_listing = DatasetListing(listing.layout, listing.root, listing.how, clips[: args.seed_clips])
    for c in clips:  # warm the page cache so no method pays for the first disk read
        Path(c.source).read_bytes()
    # One-off costs (imports, numba JIT, first matplotlib draw) paid here, untimed, for all.
    warm_dir = Path(tempfile.mkdtemp(prefix="bench_warm_"))
    _warm_up(settings)
    _seeds_warm_up()
    seeds_one((clips[0].source, str(warm_dir / "w.png")), settings)
    floor_one(clips[0].source, settings)
    shutil.rmtree(warm_dir, ignore_errors=True)

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_spectrograms_"))
    try:
        writer_runs, floor_runs = [], []
        for i in range(args.repeats):  # interleaved ABBA, so busy moments and drift hit both
            if i % 2 == 0:
                floor_runs.append(run_floor(listing, settings, args.jobs))
                writer_runs.append(run_writer(listing, tmp / "writer", settings, args.jobs))
            else:
                writer_runs.append(run_writer(listing, tmp / "writer", settings, args.jobs))
                floor_runs.append(run_floor(listing, settings, args.jobs))
        seeds_s, seeds_cpu = run_seeds(seed_listing, tmp / "seeds", settings, args.jobs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    n, n_seed = len(clips), len(seed_listing.clips)
    writer_s, writer_cpu = [w for w, _ in writer_runs], [c for _, c in writer_runs]
    floor_s, floor_cpu = [w for w, _ in floor_runs], [c for _, c in floor_runs]
    writer_rate = n / statistics.median(writer_s)
    floor_rate = n / statistics.median(floor_s)
    seeds_rate = n_seed / seeds_s
    cpu_ms = {
        "writer": 1000 * statistics.median(writer_cpu) / n,
        "floor": 1000 * statistics.median(floor_cpu) / n,
        "seeds": 1000 * seeds_cpu / n_seed,
    }
    result = {
        "clips": n,
        "seed_clips": n_seed,
        "jobs": args.jobs,
        "cpu_count": os.cpu_count(),
        "settings": settings.to_dict(),
        "seconds": {"writer": writer_s, "floor": floor_s, "seeds": seeds_s},
        "cpu_seconds": {"writer": writer_cpu, "floor": floor_cpu, "seeds": seeds_cpu},
        "cpu_ms_per_clip": cpu_ms,
        "cpu_writer_vs_seeds_speedup": cpu_ms["seeds"] / cpu_ms["writer"],
        "cpu_writer_over_floor": cpu_ms["writer"] / cpu_ms["floor"],
        "clips_per_second": {"writer": writer_rate, "floor": floor_rate, "seeds": seeds_rate},
        "best_clips_per_second": {"writer": n / min(writer_s), "floor": n / min(floor_s)},
        "best_writer_time_over_floor_time": min(writer_s) / min(floor_s),
        "writer_vs_seeds_speedup": writer_rate / seeds_rate,
        "writer_time_over_floor_time": floor_rate / writer_rate,
        "writer_seconds_for_1761_clips_estimate": 1761 / writer_rate,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": sys.version.split()[0],
        "command": "python -m benchmarks.bench_spectrograms " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(f"spectrograms benchmark: {n} UrbanSound8K clips, {args.jobs} jobs, "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"{'method':<8} {'clips/s':>9} {'seconds':>9} {'CPU ms/clip':>12}  ratio (wall; CPU)")
    print(f"{'writer':<8} {writer_rate:9.1f} {statistics.median(writer_s):9.2f} {cpu_ms['writer']:12.1f}  1.00")
    print(f"{'floor':<8} {floor_rate:9.1f} {statistics.median(floor_s):9.2f} {cpu_ms['floor']:12.1f}  "
          f"writer time / floor time = {floor_rate / writer_rate:.2f}; "
          f"{cpu_ms['writer'] / cpu_ms['floor']:.2f} (target <= 1.2)")
    print(f"{'seeds':<8} {seeds_rate:9.1f} {seeds_s:9.2f} {cpu_ms['seeds']:12.1f}  "
          f"writer is {writer_rate / seeds_rate:.1f}x; {cpu_ms['seeds'] / cpu_ms['writer']:.1f}x faster "
          f"(target >= 20x){'' if n_seed == n else f'; seeds timed on {n_seed} of the clips'}")
    print(f"best of {args.repeats}: writer {n / min(writer_s):.1f} clips/s, floor {n / min(floor_s):.1f} clips/s, "
          f"writer time / floor time = {min(writer_s) / min(floor_s):.2f}")
    print(f"all 1,761 clips at the median rate: {1761 / writer_rate:.1f} s (target < 60 s on 2 cores)")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
