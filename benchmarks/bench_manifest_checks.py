"""What checking every image against the manifest's size and SHA-256 costs.

    .venv/bin/python -m benchmarks.bench_manifest_checks --spec_dir /tmp/us8k_spec
    .venv/bin/python -m benchmarks.bench_manifest_checks                # generated images

``spectrograms`` (to decide what is up to date) and ``retrain`` (to refuse damaged images)
both call ``soundretrain.manifest.image_problem``, which reads and hashes each image. The
baseline, in the same process, is the check before it: the image exists. Timed on the same
folder, the two ways taking turns (ABAB), best and median of ``--repeats`` each:

* ``retrain``'s listing: ``retrain.images.list_images(spec_dir)``;
* a ``spectrograms`` run with every image up to date (needs ``--data_dir``, the audio the
  images were rendered from; without ``--spec_dir`` both are generated).

Prints a table and writes ``benchmarks/results/bench_manifest_checks.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable
from unittest import mock

from soundretrain import atomic_files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_manifest_checks.json"


def _exists_only(image_dir, row):
    """The check before sizes and hashes were recorded: the file exists."""
    return None if os.path.isfile(os.path.join(image_dir, row.image)) else "missing"


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _ab(fn: Callable[[], object], repeats: int) -> dict[str, list[float]]:
    import soundretrain.manifest as manifest  # retrain.images imports image_problem from it per call
    import spectrograms.writer as writer

    out: dict[str, list[float]] = {"hash": [], "exists": []}
    fn()  # warm the page cache and imports
    for _ in range(repeats):
        out["hash"] += _timed(fn, 1)
        with mock.patch.object(manifest, "image_problem", _exists_only), \
                mock.patch.object(writer, "image_problem", _exists_only):
            out["exists"] += _timed(fn, 1)
    return out


def _generate(root: Path, clips: int) -> tuple[str, str]:
    from spectrograms.datasets import list_dataset
    from spectrograms.example import write_example
    from spectrograms.writer import WriteOptions, write_spectrograms
    from soundretrain.spectrogram_settings import SpectrogramSettings

    data, spec = root / "audio", root / "spec"
    write_example(str(data), clips_per_class=max(1, clips // 5))
    write_spectrograms(list_dataset(str(data)), str(spec), SpectrogramSettings(),
                       WriteOptions(progress=False), log=lambda line: None)
    return str(spec), str(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec_dir", help="what spectrograms wrote (default: generate 200 clips)")
    parser.add_argument("--data_dir", help="the audio of --spec_dir, for the spectrograms timing")
    parser.add_argument("--dataset", default="auto", help="layout of --data_dir")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from retrain.images import list_images
    from spectrograms.datasets import list_dataset
    from spectrograms.writer import WriteOptions, write_spectrograms
    from soundretrain.spectrogram_settings import CONFIG_FILENAME, SpectrogramSettings

    with tempfile.TemporaryDirectory(prefix="bench_manifest_checks-") as scratch:
        spec, data = (args.spec_dir, args.data_dir) if args.spec_dir else _generate(Path(scratch), 200)
        images = len(list_images(spec).records)
        sizes = [os.path.getsize(r.path) for r in list_images(spec).records]
        runs = {"retrain list_images": _ab(lambda: list_images(spec), args.repeats)}
        if data:
            listing = list_dataset(data, args.dataset)
            settings = SpectrogramSettings.load_json(os.path.join(spec, CONFIG_FILENAME))

            def up_to_date() -> None:
                summary = write_spectrograms(listing, spec, settings, WriteOptions(jobs=1, progress=False),
                                             log=lambda line: None)
                assert summary.written == 0, summary.line(spec)

            runs["spectrograms, all up to date"] = _ab(up_to_date, args.repeats)

    results = {"machine": {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "load_average": list(os.getloadavg())},
               "images": images, "mean_image_bytes": int(statistics.mean(sizes)), "runs": {}}
    print(f"{images} images of {results['mean_image_bytes'] / 1000:.0f} kB on average; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'what':30s} {'check':8s} {'best s':>8s} {'median s':>9s}")
    for what, timings in runs.items():
        results["runs"][what] = {}
        for check, times in timings.items():
            best, median = min(times), statistics.median(times)
            results["runs"][what][check] = {"best_s": best, "median_s": median, "times_s": times}
            print(f"{what:30s} {check:8s} {best:8.3f} {median:9.3f}")
        extra = (min(timings["hash"]) - min(timings["exists"])) / images * 1000
        results["runs"][what]["extra_ms_per_image"] = extra
        print(f"{what:30s} hashing adds {extra:.2f} ms per image (best against best)")
    atomic_files.write_text(args.output, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
