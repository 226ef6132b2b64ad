"""``spectrograms --runner=...``: the writer as an Apache Beam pipeline.

    list the data set (here) -> work list -> [Beam: read, reshuffle, per clip: up to date? else
    decode + render + write its image(s) with writer.render_source, the local writer's own
    function; one journal record] -> (here) manifest.csv, failures.csv and the summary,
    written exactly as the local writer writes them.

So the two runners give the same files byte for byte (images, manifest, config, failures), and
``retrain`` cannot tell which wrote a folder. Paths may be URLs of Beam's filesystems
(``gs://``, ``s3://``, ``hdfs://``): the workers read and write through
:mod:`soundretrain.filesystems`.

Safe to kill and resumable, as the local writer: each worker journals the clips it finished
(:class:`soundretrain.beam_runner.JournalShards` in ``<output_dir>/.beam-journal/``), the next
run folds those records in and skips clips whose images are intact, and ``manifest.csv`` is
written once, at the end. A bad file is a journal record with its reason, never a failed
pipeline. A local ``--output_dir`` is locked for the run, as by the local writer.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, Optional

from soundretrain import filesystems
from soundretrain.beam_runner import (BeamError, JournalShards, RunnerSettings, ShardProgress, import_beam,
                                      make_pipeline, new_run_id, read_shard, read_shards, run_pipeline,
                                      shard_paths)
from soundretrain.manifest import FIELDS, MANIFEST_FILENAME, ManifestRow, write_manifest
from soundretrain.spectrogram_settings import CONFIG_FILENAME, SpectrogramSettings
from spectrograms.datasets import Clip, DatasetListing
from spectrograms.writer import (JOURNAL_FILENAME, WriteOptions, WriteSummary, _intact_rows_outside,
                                 _prepare_class_folders, _previous_rows, _remove_replaced_images,
                                 _up_to_date_rows, _warm_up, check_config, finish_summary,
                                 locked_output_dir, render_source)

beam = import_beam()

JOURNAL_DIRNAME = ".beam-journal"
WORK_SUFFIX = ".work"


# ---------------------------------------------------------------- one clip (runs on the workers)

def process_clip(clip: Clip, rows: list[ManifestRow], output_dir: str, settings: SpectrogramSettings,
                 overwrite: bool) -> dict:
    """What the local writer does with one clip, as a journal record: ``kept`` (its images are
    up to date), ``written`` (rendered now) with its manifest rows, or ``failed`` with a reason.
    Never raises: a file that breaks something unforeseen is a failure, not a failed pipeline."""
    record = {"source": clip.source}
    try:
        verified = None if overwrite else _up_to_date_rows(clip, rows, output_dir, settings)
        if verified is not None:
            return {**record, "status": "kept", "rows": [r.to_csv() for r in verified]}
        result = render_source(clip, output_dir, settings)
    except Exception as e:  # noqa: BLE001 - render_source catches the expected ones
        return {**record, "status": "failed", "reason": f"cannot render: {type(e).__name__}: {' '.join(str(e).split())}"}
    if result.error is not None:
        return {**record, "status": "failed", "reason": result.error}
    return {**record, "status": "written", "rows": [r.to_csv() for r in result.rows]}


def _rows(records: list) -> list[ManifestRow]:
    return [ManifestRow.from_csv(dict(zip(FIELDS, r))) for r in records]


class RenderClips(beam.DoFn):
    """Work-list lines in; each clip rendered (or found up to date) and journaled."""

    def __init__(self, output_dir: str, settings: SpectrogramSettings, overwrite: bool, journal_dir: str,
                 prefix: str, journal_every: int = 64) -> None:
        self.output_dir = output_dir
        self.journal_every = journal_every
        self.settings = settings
        self.overwrite = overwrite
        self.journal_dir = journal_dir
        self.prefix = prefix
        self.counters = {s: beam.metrics.Metrics.counter("spectrograms", s) for s in ("kept", "written", "failed")}

    def setup(self) -> None:
        _warm_up(self.settings)  # imports and the mel basis, once per worker process

    def start_bundle(self) -> None:
        self.journal = JournalShards(self.journal_dir, self.prefix, every=self.journal_every)

    def process(self, line: str):
        item = json.loads(line)
        record = process_clip(Clip(**item["clip"]), _rows(item["rows"]), self.output_dir, self.settings,
                              self.overwrite)
        self.journal.add(record)
        self.counters[record["status"]].inc()
        yield record["status"]

    def finish_bundle(self) -> None:
        self.journal.flush()


# ---------------------------------------------------------------- the run (the launcher)

def write_spectrograms_beam(
    listing: DatasetListing,
    output_dir: str,
    settings: SpectrogramSettings,
    runner: RunnerSettings,
    options: WriteOptions = WriteOptions(),
    log: Optional[Callable[[str], None]] = None,
    journal_every: int = 64,
) -> WriteSummary:
    """:func:`spectrograms.writer.write_spectrograms`, run as a Beam pipeline on ``runner``.

    Raises :class:`OutputError` when the output folder cannot be used (another run holds it,
    other settings) and :class:`soundretrain.beam_runner.BeamError` when the pipeline itself
    fails (never for a bad file: that is a failure in the summary and in failures.csv).
    ``journal_every``: clips a worker renders between two journal shards (at most 10 s apart)."""
    log = log or (lambda line: print(f"spectrograms: {line}", file=sys.stderr))
    t0 = time.perf_counter()
    if filesystems.is_remote(output_dir):
        summary = _run(listing, output_dir.rstrip("/"), settings, runner, options, log, journal_every)
    else:
        with locked_output_dir(output_dir):
            summary = _run(listing, output_dir, settings, runner, options, log, journal_every)
    summary.seconds = time.perf_counter() - t0
    return summary


def _journal_rows(journal_dir: str, output_dir: str) -> dict[str, list[ManifestRow]]:
    """Rows that an earlier pipeline (killed, or failed) journaled after the last manifest was
    written; older shards are superseded by that manifest."""
    manifest = filesystems.info(filesystems.join(output_dir, MANIFEST_FILENAME))
    by_source: dict[str, list[ManifestRow]] = {}
    for path in sorted(shard_paths(journal_dir)):
        shard = filesystems.info(path)
        if manifest is not None and shard is not None and shard.mtime < manifest.mtime:
            continue
        for record in read_shard(path):
            if record.get("status") in ("kept", "written"):
                try:
                    by_source[record["source"]] = _rows(record["rows"])
                except (KeyError, TypeError, ValueError):
                    continue
    return by_source


def _clear_journal(journal_dir: str, output_dir: str) -> None:
    """Remove every shard and work list (this run's and older ones) and the local writer's journal."""
    paths = shard_paths(journal_dir) + [p for p in _list(journal_dir) if p.endswith(WORK_SUFFIX)]
    filesystems.delete(paths + [filesystems.join(output_dir, JOURNAL_FILENAME)])
    if not filesystems.is_remote(journal_dir):
        try:
            os.rmdir(journal_dir)
        except OSError:
            pass


def _list(folder: str) -> list[str]:
    try:
        return filesystems.list_files(folder)
    except OSError:
        return []


def _remove_replaced(output_dir: str, old: list[ManifestRow], keep: set[str]) -> None:
    if not filesystems.is_remote(output_dir):
        _remove_replaced_images(output_dir, old, keep)
        return
    stale = [filesystems.join(output_dir, r.image) for r in old
             if r.image not in keep and r.image.count("/") == 1 and ".." not in r.image]
    filesystems.delete(stale)


def _run(listing: DatasetListing, output_dir: str, settings: SpectrogramSettings, runner: RunnerSettings,
         options: WriteOptions, log: Callable[[str], None], journal_every: int) -> WriteSummary:
    """:func:`write_spectrograms_beam` with the output folder locked (when local)."""
    remote = filesystems.is_remote(output_dir)
    journal_dir = filesystems.join(output_dir, JOURNAL_DIRNAME)
    summary = WriteSummary(clips=len(listing.clips), missing=list(listing.missing),
                           failed=list(listing.rejected))
    same_settings = check_config(output_dir, settings, options.overwrite)
    notes: list[str] = []
    previous = _previous_rows(output_dir, notes) if same_settings else {}
    if same_settings:
        previous.update(_journal_rows(journal_dir, output_dir))
    earlier = dict(previous) if same_settings else {**_previous_rows(output_dir, []),
                                                     **_journal_rows(journal_dir, output_dir)}
    manifest_path = filesystems.join(output_dir, MANIFEST_FILENAME)
    if not same_settings and filesystems.exists(manifest_path):
        notes.append("settings changed or unknown: every image is redone and the old manifest rows dropped")
    for note in notes:
        log(note)
    if not same_settings:  # as the local writer: retire the old rows before the new settings
        filesystems.delete([manifest_path])
        _clear_journal(journal_dir, output_dir)
    settings.save_json(filesystems.join(output_dir, CONFIG_FILENAME))
    if not remote:
        _prepare_class_folders(output_dir, listing, log)

    work = [(clip, previous.pop(clip.source, [])) for clip in listing.clips]
    dropped = [r for source, _ in listing.rejected for r in previous.pop(source, [])]
    kept_outside = _intact_rows_outside(previous, output_dir, log)

    run_id = new_run_id()
    prefix = f"{run_id}-"
    records: dict[str, dict] = {}
    try:
        if work:
            work_path = filesystems.join(journal_dir, f"{run_id}{WORK_SUFFIX}")
            filesystems.write_text(work_path, "".join(
                json.dumps({"clip": dataclasses.asdict(clip), "rows": [r.to_csv() for r in rows]},
                           separators=(",", ":")) + "\n" for clip, rows in work))
            log(f"running the pipeline on {runner.describe()}: {len(work)} clips")
            pipeline = make_pipeline(runner)
            _ = (pipeline
                 | "Read the work list" >> beam.io.ReadFromText(work_path)
                 | "Spread the clips" >> beam.Reshuffle()
                 | "Render" >> beam.ParDo(RenderClips(output_dir, settings, options.overwrite, journal_dir, prefix,
                                                    journal_every)))
            with ShardProgress(journal_dir, prefix, len(work), "spectrograms", lambda r: 1, options.progress):
                run_pipeline(pipeline, runner)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        # What the workers finished, also when interrupted or failed: it goes into the manifest.
        for record in read_shards(journal_dir, prefix):
            records[record.get("source")] = record
        done: dict[str, list[ManifestRow]] = dict(kept_outside)
        for clip, earlier_rows in work:
            record = records.get(clip.source)
            if record is None:  # not reached (interrupted, failed): its rows stay, checked next run
                if earlier_rows:
                    done[clip.source] = earlier_rows
                continue
            status = record.get("status")
            if status == "failed":
                summary.failed.append((clip.source, str(record.get("reason"))))
            elif status in ("kept", "written"):
                done[clip.source] = _rows(record["rows"])
                if status == "kept":
                    summary.up_to_date += 1
                else:
                    summary.written += len(done[clip.source])
                    summary.written_clips += 1
        rows = [r for source_rows in done.values() for r in source_rows]
        write_manifest(manifest_path, rows)
        redone = [s for s, record in records.items() if record.get("status") == "written"]
        _remove_replaced(output_dir, [r for s in redone for r in earlier.get(s, ())] + dropped,
                         {r.image for r in rows})
    unfinished = [clip.source for clip, _ in work if clip.source not in records]
    if unfinished and not summary.interrupted:
        # The runner said done but a worker's last records are absent: never silently drop a clip.
        summary.failed += [(s, "the pipeline finished without a result for it (run again)") for s in unfinished]
    if not summary.interrupted and not unfinished:
        _clear_journal(journal_dir, output_dir)
    return finish_summary(summary, listing, rows, output_dir)


__all__ = ["write_spectrograms_beam", "process_clip", "RenderClips", "BeamError"]
