"""Render a dataset listing into ``<output_dir>/<label>/<name>.png`` + ``manifest.csv``.

Parallel over processes, resumable and safe to kill at any moment:

* every image is written to a temp name in its folder, then renamed into place;
* each finished clip's manifest rows are appended to a journal as they arrive, and
  ``manifest.csv`` is rewritten atomically at the end (a killed run loses nothing it
  finished: the next run folds the journal back in);
* an image is redone only when missing, damaged (its size or SHA-256 differs from the
  manifest's), older than its audio, or ``overwrite`` is set;
* ``spectrogram_config.json`` pins the settings: a run with other settings into the
  same folder is refused unless ``overwrite`` is set;
* one run at a time: the output folder is locked for the run, and a second run into it is
  refused with one line naming the first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import multiprocessing
import os
import re
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from soundretrain import atomic_files, filesystems
from spectrograms.datasets import Clip, DatasetListing
from soundretrain.folder_lock import FolderBusy, folder_lock
from soundretrain.manifest import (
    FIELDS,
    MANIFEST_FILENAME,
    ManifestError,
    ManifestRow,
    file_digest,
    format_rows,
    image_problem,
    read_manifest,
    write_manifest,
)
from soundretrain.audio import AudioReadError, fit_duration, is_silent, load_audio, split_windows
from soundretrain.render import colormap_lut, render_clip, render_clip_indices
from soundretrain.spectrogram_settings import CONFIG_FILENAME, SpectrogramSettings

JOURNAL_FILENAME = ".manifest-journal.csv"
#: A full disk (or quota): every later write fails too, so the run stops at the first one.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
FAILURES_FILENAME = "failures.csv"  # source,reason of each clip that failed or was missing


class OutputError(Exception):
    """The output folder cannot be used as asked; the message is one line."""


@dataclass(frozen=True)
class WriteOptions:
    jobs: int = 0  # worker processes; 0 = all cores
    overwrite: bool = False  # redo every image, even up-to-date ones or other settings
    progress: bool = True  # tqdm bar on stderr (when it is a terminal)
    on_progress: Optional[Callable[[int, int], None]] = None  # (clips done, clips to do): a supervisor's


@dataclass
class SourceResult:
    """What rendering one audio file gave: its manifest rows, or a one-line error."""

    source: str
    rows: list[ManifestRow] = field(default_factory=list)
    error: Optional[str] = None
    no_space: bool = False  # the error is a full disk, not the file's fault


@dataclass
class WriteSummary:
    clips: int = 0  # clips in the listing
    written: int = 0  # images written by this run
    written_clips: int = 0  # clips those images came from (fewer with --long_clips=split)
    up_to_date: int = 0  # clips skipped because their images were up to date
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    missing: list[str] = field(default_factory=list)  # listed in metadata, absent on disk
    silent: int = 0  # images of this listing flagged silent
    images: int = 0  # rows in manifest.csv
    seconds: float = 0.0
    interrupted: bool = False

    def line(self, output_dir: str) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        return (
            f"spectrograms: {self.clips} clips -> {output_dir}: written {self.written}"
            f"{'' if self.written == self.written_clips else f' images of {self.written_clips} clips'}, "
            f"up to date {self.up_to_date}, failed {len(self.failed)}, silent {self.silent}, "
            f"missing {len(self.missing)}; manifest lists {self.images} images "
            f"({self.seconds:.1f} s, {rate:.1f} images/s)"
        )

    def exit_code(self, strict: bool = False) -> int:
        if self.interrupted:
            return 130
        if self.written + self.up_to_date == 0:
            return 1
        if strict and (self.failed or self.missing):
            return 1
        return 0


# ---------------------------------------------------------------- one clip (runs in workers)

def image_name(clip: Clip, settings: SpectrogramSettings, window: Optional[int] = None) -> str:
    """Manifest ``image`` path: ``<label>/<name>.png`` or ``<label>/<name>_w<k>.png``."""
    suffix = "" if window is None else f"_w{window}"
    return f"{clip.label}/{clip.name}{suffix}.{settings.image_format}"


def render_pixels(y: np.ndarray, sr: int, settings: SpectrogramSettings) -> np.ndarray:
    """What :func:`encode_image` stores: colormap indices ``[H, W]`` for one coloured
    channel, else the RGB image ``[H, W, 3]`` of three channels (no palette fits it)."""
    return render_clip_indices(y, sr, settings) if settings.coloured else render_clip(y, sr, settings)


def encode_image(pixels: np.ndarray, settings: SpectrogramSettings) -> bytes:
    """Colormap indices ``[H, W]`` or RGB ``[H, W, 3]`` as PNG or JPEG file bytes.

    Indices are stored as a PNG with the colormap as its palette: it decodes (Pillow
    ``.convert("RGB")``, ``tf.io.decode_png(channels=3)``) to exactly
    ``render_clip``'s RGB pixels; RGB as an RGB PNG. It is left uncompressed on purpose:
    spectrograms are noise-like, zlib saves only ~20% of the bytes (51 -> 40 kB at
    224 px) and would cost more time than decoding the audio.
    """
    from PIL import Image

    buf = io.BytesIO()
    rgb = pixels if pixels.ndim == 3 else None
    if settings.image_format == "png":
        img = Image.fromarray(pixels)  # indices: mode "L"; putpalette makes it "P"
        if rgb is None:
            img.putpalette(colormap_lut(settings.colormap).tobytes())
        img.save(buf, format="PNG", compress_level=0)
    else:
        if rgb is None:
            rgb = np.take(colormap_lut(settings.colormap), pixels, axis=0)
        Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def render_source(clip: Clip, output_dir: str, settings: SpectrogramSettings) -> SourceResult:
    """Decode one clip, write its image(s), return its manifest rows (never raises
    for bad audio: the reason comes back in ``error``). The Beam pipeline runs this same
    function; there the source and ``output_dir`` may be URLs (``gs://...``)."""
    result = SourceResult(clip.source)
    try:
        # cut keeps the first `duration` seconds: decode no more than that (plus a margin)
        cut = settings.duration if settings.long_clips == "cut" else None
        with filesystems.local_file(clip.source) as path:
            y = load_audio(path, settings.sample_rate, max_seconds=cut)
    except AudioReadError as e:
        result.error = e.reason
        return result
    except OSError as e:  # a remote source that cannot be fetched
        result.error = f"cannot read: {' '.join(str(e).split())}"
        return result
    sr = settings.sample_rate
    try:
        if settings.long_clips == "split":
            windows = split_windows(y, sr, settings.duration, settings.hop_seconds, settings.pad_mode)
            named = [(image_name(clip, settings, k), start, w) for k, (start, w) in enumerate(windows)]
        else:
            named = [(image_name(clip, settings), 0.0, fit_duration(y, sr, settings.duration, settings.pad_mode))]
        for image, start, window in named:
            real = min(settings.num_samples, y.shape[0] - int(round(start * sr))) / sr
            data = encode_image(render_pixels(window, sr, settings), settings)
            # No fsync per image (it would double the time per clip); the manifest, written
            # durably, records each image's size and hash, so a torn image is redone.
            filesystems.write_bytes(filesystems.join(output_dir, image), data, durable=False)
            size, sha256 = file_digest(data)
            result.rows.append(ManifestRow(image, clip.label, clip.fold, clip.group, clip.source, start, real,
                                           is_silent(window), size, sha256))
    except Exception as e:  # a full disk or an odd file must not end the run here
        result.error = f"cannot render: {type(e).__name__}: {' '.join(str(e).split())}"
        result.rows = []
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            result.no_space, result.error = True, _os_reason(e)
    return result


# ---------------------------------------------------------------- resuming

def _read_journal(path: str) -> list[ManifestRow]:
    """Rows appended by an earlier (perhaps killed) run; a torn last line is ignored."""
    import csv

    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except OSError:
        return []
    lines = text.split("\n")[:-1]  # the piece after the last newline is torn or empty
    rows = []
    for record in csv.reader(lines):
        try:
            rows.append(ManifestRow.from_csv(dict(zip(FIELDS, record))))
        except (KeyError, ValueError, TypeError):
            continue
    return rows


def _previous_rows(output_dir: str, notes: list[str]) -> dict[str, list[ManifestRow]]:
    """Rows of earlier runs by source: manifest.csv, then the journal (newer) over it."""
    by_source: dict[str, list[ManifestRow]] = {}
    manifest = filesystems.join(output_dir, MANIFEST_FILENAME)
    if filesystems.exists(manifest):
        try:
            for r in read_manifest(manifest):
                by_source.setdefault(r.source, []).append(r)
        except (ManifestError, OSError) as e:
            notes.append(f"ignoring unreadable {MANIFEST_FILENAME} ({e}); its images will be redone")
    journal: dict[str, list[ManifestRow]] = {}
    for r in _read_journal(os.path.join(output_dir, JOURNAL_FILENAME)):
        journal.setdefault(r.source, []).append(r)
    for source, rows in journal.items():
        by_source[source] = list({r.image: r for r in rows}.values())
    return by_source


def _up_to_date_rows(clip: Clip, rows: Sequence[ManifestRow], output_dir: str,
                     settings: SpectrogramSettings) -> Optional[list[ManifestRow]]:
    """The clip's rows when its images are complete, intact and newer than its audio (rows of
    older manifests get their size and hash filled in); None when it must be redone."""
    if not rows:
        return None
    if settings.long_clips == "cut":
        expected = [image_name(clip, settings)]
        if [r.image for r in rows] != expected:
            return None
    else:
        pattern = re.compile(re.escape(f"{clip.label}/{clip.name}_w") + r"\d+" + re.escape(f".{settings.image_format}"))
        if not all(pattern.fullmatch(r.image) for r in rows):
            return None
    if any(r.label != clip.label or r.fold != clip.fold or r.group != clip.group for r in rows):
        return None
    try:
        source = filesystems.info(clip.source)
        images = [filesystems.info(filesystems.join(output_dir, r.image)) for r in rows]
    except OSError:
        return None
    if source is None or any(i is None or i.mtime < source.mtime for i in images):
        return None
    verified = []
    for r in rows:
        if image_problem(output_dir, r) is not None:  # truncated or changed: redo it
            return None
        if r.sha256 is None:
            r = _adopt_unhashed(output_dir, r)
            if r is None:
                return None
        verified.append(r)
    return verified


def _adopt_unhashed(output_dir: str, row: ManifestRow) -> Optional[ManifestRow]:
    """A row of a manifest written before images were hashed: keep it when its image decodes
    whole (a truncated PNG does not), now with its size and hash; None when it is damaged."""
    from PIL import Image

    try:
        data = filesystems.read_bytes(filesystems.join(output_dir, row.image))
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        return None
    size, sha256 = file_digest(data)
    return dataclasses.replace(row, bytes=size, sha256=sha256)


def _remove_stray_temp_files(output_dir: str, labels: set[str]) -> int:
    """Temp files left by a killed run (never complete images: they were not renamed)."""
    return sum(atomic_files.remove_temp_files(folder)
               for folder in [output_dir] + [os.path.join(output_dir, label) for label in labels])


def _remove_replaced_images(output_dir: str, old: Sequence[ManifestRow], keep: set[str]) -> None:
    """Delete the images of ``old`` rows (an earlier run's, of clips this run redid) that the
    new manifest does not list, so a class folder never holds two renderings of one clip."""
    root = os.path.realpath(output_dir)
    for row in old:
        if row.image in keep:
            continue
        path = os.path.realpath(os.path.join(output_dir, row.image))
        if os.path.dirname(os.path.dirname(path)) != root:  # only <output_dir>/<label>/<file>
            continue
        try:
            os.remove(path)
        except OSError:
            pass


def check_config(output_dir: str, settings: SpectrogramSettings, overwrite: bool) -> bool:
    """True when ``output_dir`` already holds images made with ``settings``.

    Raises :class:`OutputError` when it holds other settings and ``overwrite`` is off.
    """
    path = filesystems.join(output_dir, CONFIG_FILENAME)
    if not filesystems.exists(path):
        return False
    try:
        old = SpectrogramSettings.load_json(path)
    except (OSError, ValueError, TypeError) as e:
        if overwrite:
            return False
        raise OutputError(f"{path} is unreadable ({' '.join(str(e).split())}); use --overwrite to redo the images") from None
    if old == settings:
        return True
    if overwrite:
        return False
    new_d, old_d = settings.to_dict(), old.to_dict()
    diff = ", ".join(f"{k} {old_d[k]!r} -> {new_d[k]!r}" for k in new_d if old_d.get(k) != new_d[k])
    raise OutputError(
        f"{output_dir} holds spectrograms made with other settings ({diff}); "
        "use another --output_dir, or --overwrite to redo them all"
    )


# ---------------------------------------------------------------- the run

def _pool_context() -> multiprocessing.context.BaseContext:
    # fork is fastest (workers inherit the warmed-up imports and mel basis), but forking a process
    # that already runs TensorFlow's threads can deadlock: spawn then.
    if "fork" in multiprocessing.get_all_start_methods() and "tensorflow" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _warm_up(settings: SpectrogramSettings) -> None:
    """Import the decoders and build the mel basis (librosa, numba) and LUT once,
    before workers fork (else every worker pays ~1 s for it)."""
    import tempfile

    import soundfile as sf

    y = np.random.default_rng(0).standard_normal(4000).astype(np.float32) * 0.1
    with tempfile.TemporaryDirectory(prefix="spectrograms-warm-") as tmp:
        path = os.path.join(tmp, "warm.wav")
        sf.write(path, y, 16000)
        y = load_audio(path, settings.sample_rate)
    encode_image(render_pixels(y, settings.sample_rate, settings), settings)


def _render_chunk(clips: Sequence[Clip], work: Callable[[Clip], SourceResult]) -> list[SourceResult]:
    return [work(clip) for clip in clips]


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (it keeps finished work and stops
    the pool), and a worker whose parent is gone (killed with -9) exits instead of waiting
    forever on the task queue as an orphan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(os.getppid())


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _results(
    clips: Sequence[Clip],
    output_dir: str,
    settings: SpectrogramSettings,
    jobs: int,
    work: Optional[Callable[[Clip], SourceResult]] = None,
) -> Iterator[SourceResult]:
    """Render ``clips`` over ``jobs`` processes, yielding results as they finish.

    A worker that dies (a decoder crashing on a malicious file, the OOM killer)
    breaks the pool: the clips in flight are then retried one per process, so the
    culprit is found and reported as failed and the run carries on.
    """
    work = work or functools.partial(render_source, output_dir=output_dir, settings=settings)
    if jobs <= 1 or len(clips) <= 1:
        yield from map(work, clips)
        return
    chunk = max(1, min(16, len(clips) // (jobs * 8)))
    chunks = [list(clips[i : i + chunk]) for i in range(0, len(clips), chunk)]
    suspects: list[Clip] = []
    pool = ProcessPoolExecutor(jobs, mp_context=_pool_context(), initializer=_ignore_sigint)
    try:
        futures = {pool.submit(_render_chunk, c, work): c for c in chunks}
        for future in as_completed(futures):
            try:
                results = future.result()
            except BrokenProcessPool:
                suspects.extend(futures[future])
                continue
            yield from results
        pool.shutdown(wait=True)  # reap the workers (and account their CPU time) before returning
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # interrupted: do not wait for chunks in flight
    yield from _retry_suspects(suspects, work, jobs)


def _retry_suspects(
    suspects: list[Clip], work: Callable[[Clip], SourceResult], jobs: int
) -> Iterator[SourceResult]:
    """Clips that were in a pool when a worker died: rerun them one per task; when a
    round makes no progress, run the first alone, which clears or convicts it."""
    alone = False
    while suspects:
        pool = ProcessPoolExecutor(1 if alone else jobs, mp_context=_pool_context(), initializer=_ignore_sigint)
        try:
            batch = suspects[:1] if alone else suspects
            futures = {pool.submit(work, clip): clip for clip in batch}
            unfinished = []
            for future in as_completed(futures):
                try:
                    yield future.result()
                except BrokenProcessPool:
                    unfinished.append(futures[future])
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if alone and unfinished:
            clip = unfinished[0]
            yield SourceResult(clip.source, error="the worker process died while decoding it")
        finished = {c.source for c in batch} - {c.source for c in unfinished}
        suspects = [c for c in suspects if c.source not in finished and not (alone and c is batch[0])]
        alone = not alone and not finished


def write_spectrograms(
    listing: DatasetListing,
    output_dir: str,
    settings: SpectrogramSettings,
    options: WriteOptions = WriteOptions(),
    log=None,
) -> WriteSummary:
    """Render every clip of ``listing`` that is not up to date; return the summary.

    ``log`` receives one-line remarks, without the ``spectrograms:`` prefix (default: print
    them with it on stderr). The output folder is locked for the run: raises
    :class:`OutputError` at once when another run holds it.
    """
    log = log or (lambda line: print(f"spectrograms: {line}", file=sys.stderr))
    t0 = time.perf_counter()
    with locked_output_dir(output_dir):
        summary = _write_locked(listing, output_dir, settings, options, log)
    summary.seconds = time.perf_counter() - t0
    return summary


@contextlib.contextmanager
def locked_output_dir(output_dir: str) -> Iterator[None]:
    """Create the local ``output_dir`` and hold its run lock (both runners);
    :class:`OutputError` when it cannot be created or written, or another run holds it."""
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create --output_dir {output_dir}: {e.strerror or e}") from None
    if not os.access(output_dir, os.W_OK):
        raise OutputError(f"--output_dir {output_dir} is not writable")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(output_dir, "spectrograms run"))
        except FolderBusy as e:
            # Two runs into one folder would each rewrite manifest.csv from their own view (the
            # other's classes vanish) and delete each other's in-flight temp files.
            raise OutputError(f"{e}: runs into one --output_dir go one at a time (their manifests "
                              "would overwrite each other)") from None
        except OSError as e:  # a full disk: the lock file's first line cannot be written
            raise OutputError(f"cannot write in --output_dir {output_dir}: {_os_reason(e)}") from None
        yield


def _os_reason(err: OSError) -> str:
    """``path: No space left on device`` for an OSError, in one line."""
    reason = err.strerror or " ".join(str(err).split())
    return f"{err.filename}: {reason}" if err.filename else reason


def _disk_full(output_dir: str, err: OSError, written: int) -> OutputError:
    kept = (f"the {written} image(s) this run wrote are kept, and a rerun continues from them"
            if written else "nothing was written")
    return OutputError(f"no space left for {output_dir} ({_os_reason(err)}): {kept}; free some "
                       "space and run again")


def _write_locked(listing: DatasetListing, output_dir: str, settings: SpectrogramSettings,
                  options: WriteOptions, log: Callable[[str], None]) -> WriteSummary:
    """:func:`write_spectrograms` with the output folder locked."""
    from tqdm import tqdm

    summary = WriteSummary(clips=len(listing.clips), missing=list(listing.missing),
                           failed=list(listing.rejected))
    same_settings = check_config(output_dir, settings, options.overwrite)
    notes: list[str] = []
    previous = _previous_rows(output_dir, notes) if same_settings else {}
    # Images earlier runs made of the clips redone now; those the new rows no longer name
    # (cut -> split, png -> jpg, a changed label) are removed once their clip is redone.
    earlier = dict(previous) if same_settings else _previous_rows(output_dir, [])
    if not same_settings and os.path.exists(os.path.join(output_dir, MANIFEST_FILENAME)):
        notes.append("settings changed or unknown: every image is redone and the old manifest rows dropped")
    for note in notes:
        log(note)
    if not same_settings:
        # Retire the old manifest and journal before the new settings are recorded: a run
        # killed (-9) after that used to leave the new config beside the old rows, and the
        # next run took the old images for up-to-date renderings with the new settings.
        for name in (MANIFEST_FILENAME, JOURNAL_FILENAME):
            try:
                os.remove(os.path.join(output_dir, name))
            except FileNotFoundError:
                pass
    try:
        settings.save_json(os.path.join(output_dir, CONFIG_FILENAME))
        _prepare_class_folders(output_dir, listing, log)
    except OSError as e:
        raise OutputError(f"cannot write in --output_dir {output_dir}: {_os_reason(e)}") from None

    todo, kept = [], {}
    for clip in listing.clips:
        rows = previous.pop(clip.source, [])
        verified = None if options.overwrite else _up_to_date_rows(clip, rows, output_dir, settings)
        if verified is not None:
            kept[clip.source] = verified
            summary.up_to_date += 1
        else:
            todo.append(clip)
    # Files the listing rejects (listed under two classes): their earlier images go, so no
    # class folder keeps an image the manifest does not list.
    dropped = [r for source, _ in listing.rejected for r in previous.pop(source, [])]
    kept.update(_intact_rows_outside(previous, output_dir, log))

    journal_path = os.path.join(output_dir, JOURNAL_FILENAME)
    done: dict[str, list[ManifestRow]] = dict(kept)
    jobs = options.jobs if options.jobs > 0 else (os.cpu_count() or 1)
    jobs = max(1, min(jobs, len(todo)))
    if todo:
        _warm_up(settings)
    bar = tqdm(total=len(todo), unit="clip", desc="spectrograms", disable=None if options.progress else True,
               file=sys.stderr, dynamic_ncols=True)
    full: Optional[OSError] = None  # the disk filled up: stop, keep what is done
    try:
        with open(journal_path, "a", encoding="utf-8", newline="") as journal:
            for result in _results(todo, output_dir, settings, jobs):
                bar.update(1)
                if options.on_progress is not None:
                    options.on_progress(bar.n, len(todo))
                if result.no_space:
                    full = OSError(errno.ENOSPC, result.error)
                    break
                if result.error is not None:
                    summary.failed.append((result.source, result.error))
                    continue
                done[result.source] = result.rows
                summary.written += len(result.rows)
                summary.written_clips += 1
                journal.write(format_rows(result.rows, header=False))
                journal.flush()  # a torn last line (a full disk) is ignored when read back
    except KeyboardInterrupt:
        summary.interrupted = True
    except OSError as e:  # the journal itself could not be written
        if e.errno not in NO_SPACE:
            raise
        full = OSError(e.errno, e.strerror, e.filename or journal_path)
    finally:
        bar.close()
        rows = [r for source_rows in done.values() for r in source_rows]
        try:
            write_manifest(os.path.join(output_dir, MANIFEST_FILENAME), rows)
        except OSError as e:  # the old manifest and the journal stay: a rerun picks them up
            if e.errno not in NO_SPACE:
                raise
            full = full or e
        else:
            listed_images = {r.image for r in rows}
            _remove_replaced_images(output_dir, [r for source in done if source not in kept
                                                 for r in earlier.get(source, ())] + dropped, listed_images)
            if not summary.interrupted and full is None and os.path.exists(journal_path):
                os.remove(journal_path)
    if full is not None:
        raise _disk_full(output_dir, full, summary.written)
    return finish_summary(summary, listing, rows, output_dir)


def _prepare_class_folders(output_dir: str, listing: DatasetListing, log: Callable[[str], None]) -> None:
    """One folder per class of ``listing`` (local output), cleared of the temp files an
    interrupted run left."""
    labels = {c.label for c in listing.clips}
    for label in labels:
        os.makedirs(os.path.join(output_dir, label), exist_ok=True)
    removed = _remove_stray_temp_files(output_dir, labels)
    if removed:
        log(f"removed {removed} temp file(s) left by an interrupted run")


def _intact_rows_outside(previous: dict[str, list[ManifestRow]], output_dir: str,
                         log: Callable[[str], None]) -> dict[str, list[ManifestRow]]:
    """The rows of clips outside this listing (another --folds run into the same folder):
    they stay as long as their images are intact."""
    intact, damaged = {}, 0
    for source, rows in previous.items():
        if all(image_problem(output_dir, r) is None for r in rows):
            intact[source] = rows
        else:
            damaged += 1
    if damaged:
        log(f"dropped {damaged} clip(s) outside this run from the manifest: their images are missing or "
            "damaged (a run that includes them renders them again)")
    return intact


def finish_summary(summary: WriteSummary, listing: DatasetListing, rows: list[ManifestRow],
                   output_dir: str) -> WriteSummary:
    """Count the manifest's ``rows`` into ``summary`` and write failures.csv (both runners)."""
    listed = {c.source for c in listing.clips}
    summary.silent = sum(r.silent for r in rows if r.source in listed)
    summary.images = len(rows)
    summary.failed.sort()
    write_failures(output_dir, summary)
    return summary


MISSING_REASON = "missing: listed in the metadata, not on disk"


def write_failures(output_dir: str, summary: WriteSummary) -> None:
    """``<output_dir>/failures.csv`` (``source,reason``, sorted) when any clip failed or was
    missing; a stale one is removed when none did. Both runners write it the same way."""
    import csv

    path = filesystems.join(output_dir, FAILURES_FILENAME)
    records = sorted(summary.failed + [(m, MISSING_REASON) for m in summary.missing])
    if not records:
        if filesystems.exists(path):
            filesystems.delete([path])
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("source", "reason"))
    writer.writerows(records)
    try:
        filesystems.write_text(path, buf.getvalue())
    except OSError as e:  # the images and the manifest are written; this list could not be
        raise OutputError(f"cannot write {path} ({_os_reason(e)}); the images and {MANIFEST_FILENAME} "
                          f"are written, only the list of the {len(records)} failed or missing "
                          "file(s) is not") from None
