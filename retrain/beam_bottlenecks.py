"""``retrain --runner=...``: the bottleneck cache filled by an Apache Beam pipeline.

    list the images (here) -> work list of units, ``--bottleneck_batch_size`` consecutive
    images each -> [Beam: read, reshuffle, per unit and module part: read each image (or its
    audio window), check it against the manifest, look its entry up in the cache, run the
    missing ones through the backbone as one batch (``compute_batch``, the local path's) and
    write their entries (``BottleneckStore``, the local format)] -> (here) the summary and
    ``failures.csv``.

The entries are the local path's byte for byte: the same key (the image's SHA-1, or the
audio window's), the same one-record ``.npy``, the same batches on a cold cache (a unit is
the batch the local path would form), so a ``retrain`` run that follows finds every vector
cached and cannot tell which wrote them. Entries are written atomically one by one, so a
pipeline killed mid-way and run again computes only what is missing. A bad image (missing,
damaged, unreadable) or unreadable audio is a failure record, never a failed pipeline.
Augmented copies (``--augmentation_copies``) depend on the split and are computed by the
training run, from the same cache.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from retrain.bottlenecks import (BottleneckStore, InputMaker, backbone_parts, compute_batch,
                                 image_to_input, part_key)
from retrain.errors import RetrainError
from retrain.images import ImageRecord, list_images
from soundretrain import filesystems
from soundretrain.beam_runner import (JournalShards, RunnerSettings, ShardProgress, import_beam,
                                      make_pipeline, new_run_id, read_shards, run_pipeline,
                                      shard_paths)

beam = import_beam()

RUNS_DIRNAME = ".beam-runs"  # in --bottleneck_dir: work lists and journal shards of pipeline runs
FAILURES_FILENAME = "failures.csv"  # in --bottleneck_dir: the last pipeline run's failures
WORK_SUFFIX = ".work"
STALE_SECONDS = 7 * 24 * 3600  # leftovers of killed runs older than this are removed


@dataclass
class BottleneckSummary:
    images: int = 0
    parts: int = 1
    computed: int = 0
    cached: int = 0
    damaged: int = 0  # cache entries that failed their check and were recomputed
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    failures_path: Optional[str] = None
    seconds: float = 0.0
    interrupted: bool = False

    def line(self, module: str, bottleneck_dir: str) -> str:
        return (f"Bottlenecks of {self.images} images ({module}, {self.parts} part(s)) -> {bottleneck_dir}: "
                f"{self.computed} computed, {self.cached} from the cache, {len(self.failed)} image(s) "
                f"failed ({self.seconds:.1f} s)")


# ---------------------------------------------------------------- one unit (runs on the workers)

def decode_image_bytes(data: bytes) -> np.ndarray:
    """An image file's bytes as uint8 RGB ``[H, W, 3]`` (what ``read_image`` gives for the file)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _image_job(record: ImageRecord, part) -> tuple[str, Callable[[], np.ndarray]]:
    """(cache key, input maker) of an image record; raises RetrainError with the reason
    when the image is missing, unreadable or not the one the manifest lists."""
    try:
        data = filesystems.read_bytes(record.path)
    except FileNotFoundError:
        raise RetrainError("missing (listed in manifest.csv, not on disk); re-run spectrograms") from None
    except OSError as err:
        raise RetrainError(f"unreadable ({err.strerror or _reason(err)})") from None
    if record.sha256 is not None and hashlib.sha256(data).hexdigest() != record.sha256:
        raise RetrainError("not the image spectrograms wrote (its SHA-256 differs from the "
                           "manifest's); re-run spectrograms with the same flags")
    spec = part.input_spec

    def make() -> np.ndarray:
        try:
            pixels = decode_image_bytes(data)
        except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
            raise RetrainError(f"cannot read image ({_reason(err)})") from None
        return image_to_input(pixels, int(spec.height), int(spec.width))

    return part_key(part, hashlib.sha1(data).hexdigest()), make


def process_unit(parts, records: list[ImageRecord], bottleneck_dir: str, spectrogram_settings=None) -> dict:
    """The cache entries of one unit of records, for every module part; a journal record with
    the counts and the failed images. Never raises for a bad input."""
    failed: dict[str, str] = {}
    computed = cached = damaged = 0
    for part in parts:
        store = BottleneckStore(bottleneck_dir, part.name, part.feature_size)
        maker = InputMaker(part, spectrogram_settings, parts)
        jobs = []
        for r in records:
            if r.relpath in failed:
                continue
            try:
                if part.input_spec.kind == "waveform":
                    key = maker.key(r)
                    make = (lambda r=r: maker.finish(maker.raw(r)))
                else:
                    key, make = _image_job(r, part)
            except RetrainError as err:
                failed[r.relpath] = _reason(err)
                continue
            if store.get(key) is not None:
                cached += 1
                continue
            jobs.append((r, key, make))
        inputs, keys = [], []
        for r, key, make in jobs:
            try:
                inputs.append(make())
                keys.append(key)
            except (RetrainError, OSError, ValueError) as err:
                failed[r.relpath] = _reason(err)
        if not inputs:
            continue
        try:
            out = compute_batch(part, np.stack(inputs))
            if out.shape != (len(inputs), store.feature_size):
                raise RetrainError(f"module {part.name} returned features of shape {out.shape}, "
                                   f"expected {(len(inputs), store.feature_size)}")
        except Exception as err:  # noqa: BLE001 - one batch must not fail the pipeline
            for r, _, _ in jobs:
                failed.setdefault(r.relpath, f"module {part.name} failed on its batch: {_reason(err)}")
            continue
        for key, vec in zip(keys, out):
            store.put(key, vec)
            computed += 1
        damaged += store.damaged
    return {"computed": computed, "cached": cached, "damaged": damaged, "failed": sorted(failed.items())}


def _records(items: list[dict]) -> list[ImageRecord]:
    return [ImageRecord(**item) for item in items]


class _Held:
    """A loaded backbone, held weakly by Beam's Shared (one per worker process)."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone


class ComputeBottlenecks(beam.DoFn):
    """Work-list lines in (a unit of records each); their cache entries written and journaled."""

    def __init__(self, module: str, module_cache_dir: Optional[str], bottleneck_dir: str,
                 spectrogram_settings: Optional[dict], journal_dir: str, prefix: str) -> None:
        from apache_beam.utils import shared

        self.module = module
        self.module_cache_dir = module_cache_dir
        self.bottleneck_dir = bottleneck_dir
        self.spectrogram_settings = spectrogram_settings
        self.journal_dir = journal_dir
        self.prefix = prefix
        self._shared = shared.Shared()  # one backbone per worker process, not per thread
        self.counters = {s: beam.metrics.Metrics.counter("bottlenecks", s) for s in ("computed", "cached", "failed")}

    def setup(self) -> None:
        from soundretrain.backbones.registry import load_module
        from soundretrain.command_line import import_tensorflow_quietly

        import_tensorflow_quietly()
        self.held = self._shared.acquire(lambda: _Held(load_module(self.module, self.module_cache_dir)))
        self.parts = backbone_parts(self.held.backbone)
        self.settings = None
        if self.spectrogram_settings is not None:
            from soundretrain.spectrogram_settings import SpectrogramSettings

            self.settings = SpectrogramSettings.from_dict(self.spectrogram_settings)

    def start_bundle(self) -> None:
        self.journal = JournalShards(self.journal_dir, self.prefix)

    def process(self, line: str):
        item = json.loads(line)
        records = _records(item["records"])
        try:
            record = process_unit(self.parts, records, self.bottleneck_dir, self.settings)
        except Exception as err:  # noqa: BLE001 - e.g. a cache that cannot be written
            record = {"computed": 0, "cached": 0,
                      "failed": [(r.relpath, f"cannot compute: {_reason(err)}") for r in records]}
        record["unit"] = item["unit"]
        record["images"] = len(records)
        self.journal.add(record)
        for name in ("computed", "cached"):
            self.counters[name].inc(record[name])
        self.counters["failed"].inc(len(record["failed"]))
        yield record["unit"]

    def finish_bundle(self) -> None:
        self.journal.flush()


# ---------------------------------------------------------------- the run (the launcher)

def _remove_stale(runs_dir: str) -> None:
    """Work lists and shards that killed runs left over a week ago (a live run's are younger)."""
    now = time.time()
    stale = []
    for path in _listing(runs_dir):
        found = filesystems.info(path)
        if found is not None and now - found.mtime > STALE_SECONDS:
            stale.append(path)
    filesystems.delete(stale)


def _listing(folder: str) -> list[str]:
    try:
        return filesystems.list_files(folder)
    except OSError:
        return []


def write_failures(path: str, failed: list[tuple[str, str]]) -> None:
    """``image,reason`` rows, sorted; a stale file is removed when nothing failed."""
    if not failed:
        if filesystems.exists(path):
            filesystems.delete([path])
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("image", "reason"))
    writer.writerows(sorted(failed))
    filesystems.write_text(path, buf.getvalue())


def compute_bottlenecks_beam(image_dir: str, module: str, bottleneck_dir: str, runner: RunnerSettings,
                             module_cache_dir: Optional[str] = None, batch_size: int = 32,
                             progress: bool = True, log: Callable[[str], None] = print) -> BottleneckSummary:
    """Fill ``bottleneck_dir`` with the vectors of every image in ``image_dir`` for ``module``,
    as a Beam pipeline on ``runner``. Raises RetrainError / ModuleError before the pipeline
    starts (no images, unknown module) and :class:`soundretrain.beam_runner.BeamError` when
    the pipeline itself fails."""
    from retrain.core import load_spectrogram_settings
    from soundretrain.backbones.registry import load_module

    t0 = time.perf_counter()
    images = list_images(image_dir, verify=False)
    log(f"Found {len(images.records)} images in {len(images.labels)} classes in {images.image_dir} "
        f"({'manifest.csv' if images.from_manifest else 'class folders'})")
    spectrogram_settings = load_spectrogram_settings(images)
    backbone = load_module(module, module_cache_dir)  # an unknown module fails here, not on a cluster
    parts = backbone_parts(backbone)
    summary = BottleneckSummary(images=len(images.records), parts=len(parts))
    runs_dir = filesystems.join(filesystems.abspath(bottleneck_dir), RUNS_DIRNAME)
    _remove_stale(runs_dir)
    run_id = new_run_id()
    prefix = f"{run_id}-"
    records = images.records
    units = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    work_path = filesystems.join(runs_dir, f"{run_id}{WORK_SUFFIX}")
    filesystems.write_text(work_path, "".join(
        json.dumps({"unit": k, "records": [dataclasses.asdict(r) for r in unit]}, separators=(",", ":")) + "\n"
        for k, unit in enumerate(units)))
    log(f"Module {backbone.name}: {backbone.feature_size} features; running the pipeline on "
        f"{runner.describe()}: {len(records)} images in {len(units)} batches of up to {batch_size}")
    pipeline = make_pipeline(runner)
    _ = (pipeline
         | "Read the work list" >> beam.io.ReadFromText(work_path)
         | "Spread the batches" >> beam.Reshuffle()
         | "Compute" >> beam.ParDo(ComputeBottlenecks(
             module, module_cache_dir, bottleneck_dir,
             None if spectrogram_settings is None else spectrogram_settings.to_dict(), runs_dir, prefix)))
    try:
        with ShardProgress(runs_dir, prefix, len(records), f"bottlenecks {backbone.name}",
                           lambda r: int(r.get("images", 0)), progress):
            run_pipeline(pipeline, runner)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        by_unit = {r.get("unit"): r for r in read_shards(runs_dir, prefix)}
        failed: dict[str, str] = {}
        for k, unit in enumerate(units):
            record = by_unit.get(k)
            if record is None:
                if not summary.interrupted:
                    for r in unit:
                        failed[r.relpath] = "the pipeline finished without a result for it (run again)"
                continue
            summary.computed += int(record.get("computed", 0))
            summary.cached += int(record.get("cached", 0))
            summary.damaged += int(record.get("damaged", 0))
            for relpath, reason in record.get("failed", []):
                failed[relpath] = reason
        summary.failed = sorted(failed.items())
        summary.failures_path = filesystems.join(filesystems.abspath(bottleneck_dir), FAILURES_FILENAME)
        write_failures(summary.failures_path, summary.failed)  # removes a stale one when none failed
        filesystems.delete(shard_paths(runs_dir, prefix) + [work_path])
        if not filesystems.is_remote(runs_dir):
            try:
                os.rmdir(runs_dir)  # only when no other run is using it
            except OSError:
                pass
    summary.seconds = time.perf_counter() - t0
    return summary


__all__ = ["compute_bottlenecks_beam", "process_unit", "ComputeBottlenecks", "BottleneckSummary"]
