"""Time-stamped detections over long recordings, as tables field recordists open.

A recording is labelled window by window (``label_image``'s windows: the training
duration every ``--hop_seconds``). Every class whose probability in a window reaches
``--min_confidence`` is a detection of that window's time span (never past the
recording's end: a clip shorter than a window is padded to be labelled, not detected
longer than it lasts); with
``--merge_consecutive``, detections of the same class in windows that overlap or touch
become one, from the first window's start to the last one's end, with the highest
confidence among them. Silent windows detect nothing.

Three formats (:data:`FORMATS`), per recording or one combined table:

* ``csv``: ``file,start_s,end_s,label,confidence,windows`` (comma separated, RFC 4180).
* ``audacity``: an Audacity label track (File > Import > Labels): one
  ``start<TAB>end<TAB>text`` line per detection, seconds with six decimals, text
  ``label (confidence)``. A label track belongs to one recording, so it is always one
  file per recording.
* ``raven``: a Raven Pro selection table (File > Open Selection Table): tab-separated,
  header ``Selection, View, Channel, Begin Time (s), End Time (s), Low Freq (Hz),
  High Freq (Hz)`` plus ``Label``, ``Confidence`` and, in a combined table,
  ``Begin Path`` and ``File Offset (s)``; ``Begin Time (s)`` is then the time in the
  recordings played one after another (Raven's file sequence, in the table's order).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from soundretrain import atomic_files
from soundretrain.open_set import OpenSet

FORMATS = ("csv", "audacity", "raven")
#: File name endings, per recording (``<stem><suffix>``) and for the combined tables.
SUFFIXES = {"csv": ".detections.csv", "audacity": ".labels.txt", "raven": ".selections.txt"}
COMBINED = {"csv": "detections.csv", "raven": "detections.selections.txt"}
CSV_COLUMNS = ("file", "start_s", "end_s", "label", "confidence", "windows")
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Label", "Confidence")
RAVEN_COMBINED_COLUMNS = RAVEN_COLUMNS + ("Begin Path", "File Offset (s)")


@dataclass(frozen=True)
class Detection:
    """One class heard from ``start`` to ``end`` seconds into ``source``."""

    source: str
    start: float
    end: float
    label: str
    confidence: float
    windows: int = 1


@dataclass(frozen=True)
class DetectionSettings:
    min_confidence: float = 0.5
    merge_consecutive: bool = False
    open_set: Optional[OpenSet] = None  # the model's: background never detected, threshold applies

    def problems(self) -> list[str]:
        if not 0.0 < self.min_confidence <= 1.0:
            return [f"--min_confidence must be in (0, 1], not {self.min_confidence:g}"]
        return []


def detect(source: str, windows: Sequence, labels: Sequence[str], window_seconds: float,
           settings: DetectionSettings, duration: Optional[float] = None) -> list[Detection]:
    """Detections of one recording from its :class:`label.labeling.WindowResult` s,
    sorted by start time, then label. ``duration`` (seconds of audio) ends every
    detection at the recording's end: a clip shorter than a window is padded to one
    window, but what it detects lasts only as long as the clip."""
    found: list[Detection] = []
    floor = settings.min_confidence
    never: set = set()
    if settings.open_set is not None:  # an unknown sound is no detection, nor is the background
        floor = max(floor, settings.open_set.threshold)
        never = set(settings.open_set.background)
    for w in windows:
        if getattr(w, "silent", False):
            continue
        p = np.asarray(w.probabilities)
        start = float(w.start)
        end = start + window_seconds if duration is None else max(start, min(start + window_seconds, float(duration)))
        for c in np.flatnonzero(p >= floor):
            if c in never:
                continue
            found.append(Detection(source, start, end, labels[c], float(p[c])))
    if settings.merge_consecutive:
        found = merge_consecutive(found)
    return sorted(found, key=lambda d: (d.start, d.label))


def merge_consecutive(detections: Iterable[Detection]) -> list[Detection]:
    """Join detections of one class whose windows overlap or touch."""
    by_label: dict[str, list[Detection]] = {}
    for d in sorted(detections, key=lambda d: (d.label, d.start)):
        run = by_label.setdefault(d.label, [])
        if run and d.start <= run[-1].end + 1e-9:
            last = run[-1]
            run[-1] = Detection(last.source, last.start, max(last.end, d.end), last.label,
                                max(last.confidence, d.confidence), last.windows + d.windows)
        else:
            run.append(d)
    return [d for run in by_label.values() for d in run]


# --- writers ---------------------------------------------------------------------------


def csv_text(detections: Sequence[Detection]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for d in detections:
        writer.writerow([d.source, f"{d.start:.3f}", f"{d.end:.3f}", d.label, f"{d.confidence:.4f}", d.windows])
    return buf.getvalue()


def audacity_text(detections: Sequence[Detection]) -> str:
    """An Audacity label track: ``start<TAB>end<TAB>label (confidence)`` per line."""
    return "".join(f"{d.start:.6f}\t{d.end:.6f}\t{_one_field(d.label)} ({d.confidence:.3f})\n" for d in detections)


def raven_text(detections: Sequence[Detection], low_hz: float, high_hz: float,
               offsets: Optional[dict] = None) -> str:
    """A Raven selection table. ``offsets`` (``{source: seconds}``) makes it a combined
    table over a file sequence: ``Begin Time (s)`` counts from the first recording's start."""
    columns = RAVEN_COMBINED_COLUMNS if offsets is not None else RAVEN_COLUMNS
    lines = ["\t".join(columns)]
    for k, d in enumerate(detections, start=1):
        shift = offsets[d.source] if offsets is not None else 0.0
        row = [str(k), "Spectrogram 1", "1", f"{shift + d.start:.6f}", f"{shift + d.end:.6f}",
               f"{low_hz:.1f}", f"{high_hz:.1f}", _one_field(d.label), f"{d.confidence:.4f}"]
        if offsets is not None:
            row += [_one_field(os.path.abspath(d.source)), f"{d.start:.6f}"]
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def _one_field(text: str) -> str:
    """Tabs and line breaks would break a tab-separated row."""
    return " ".join(str(text).split())


# --- where the files go ----------------------------------------------------------------


@dataclass
class RecordingInfo:
    """What a combined table needs of each recording besides its detections."""

    source: str
    duration: float


def table_stems(sources: Sequence[str], root: Optional[str]) -> list[str]:
    """A unique name (before the format's suffix) for each recording's tables, in order.

    A recording's name is its path below ``root`` without its extension
    (``site1/dawn.wav`` -> ``site1/dawn``); recordings that would share a name keep their
    extension (``rec.wav`` and ``rec.flac`` -> ``rec.wav``, ``rec.flac``), compared
    case-insensitively since macOS and Windows disks are; names that are still equal (the
    same file given twice) are numbered in input order: ``rec.wav (2)``.
    """
    full = [_relative_name(s, root) for s in sources]
    names = [os.path.splitext(f)[0] for f in full]
    while True:  # each pass gives at least one more name its extension, so it ends
        clashing = [i for group in _same_names(names).values() if len({full[j].casefold() for j in group}) > 1
                    for i in group if names[i] != full[i]]
        if not clashing:
            break
        for i in clashing:
            names[i] = full[i]
    taken = {n.casefold() for n in names}
    for group in _same_names(names).values():
        for i in group[1:]:
            k, name = 2, f"{names[i]} (2)"
            while name.casefold() in taken:
                k += 1
                name = f"{names[i]} ({k})"
            taken.add(name.casefold())
            names[i] = name
    return names


def _relative_name(source: str, root: Optional[str]) -> str:
    if root:
        rel = os.path.relpath(os.path.abspath(source), root)
        if not rel.startswith(os.pardir):
            return rel
    return os.path.basename(source)


def _same_names(names: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.casefold(), []).append(i)
    return groups


class DetectionWriter:
    """Writes each recording's tables as soon as it is labelled (a long run killed half
    way keeps what it finished), and the combined tables at the end. Files are written
    atomically; their names (:func:`table_stems`) keep the recordings' folders below
    ``root`` so two ``a/x.wav`` and ``b/x.wav`` do not collide, and their extensions
    where two recordings would share a name. ``sources``: the recordings the run will
    label, in order, so the names are fixed (and checked, :meth:`existing`) before
    labelling starts; a recording not among them gets a name no other table has."""

    def __init__(self, folder: str, formats: Sequence[str], combined: bool, root: Optional[str],
                 low_hz: float, high_hz: float, sources: Sequence[str] = ()) -> None:
        self.folder = folder
        self.formats = tuple(formats)
        self.combined = combined
        self.root = root
        self.low_hz, self.high_hz = low_hz, high_hz
        self.recordings: list[RecordingInfo] = []
        self.detections: list[Detection] = []
        self.written: list[str] = []
        self._planned: dict[str, list[str]] = {}  # source -> its stems, one per time it is given
        for source, stem in zip(sources, table_stems(sources, root)):
            self._planned.setdefault(source, []).append(stem)
        self._used: set = set()  # stems taken this run (casefolded)

    def per_recording_formats(self) -> tuple[str, ...]:
        # A label track belongs to one recording: Audacity is never combined.
        return tuple(f for f in self.formats if not self.combined or f == "audacity")

    def planned_paths(self) -> list[str]:
        """Every table this run will write, for the recordings given as ``sources``."""
        paths = [os.path.join(self.folder, stem + SUFFIXES[fmt]) for stems in self._planned.values()
                 for stem in stems for fmt in self.per_recording_formats()]
        if self.combined:
            paths += [os.path.join(self.folder, COMBINED[f]) for f in self.formats if f in COMBINED]
        return paths

    def existing(self) -> list[str]:
        """The tables this run will replace: an earlier run's, in the same folder."""
        return [p for p in self.planned_paths() if os.path.lexists(p)]

    def stem(self, source: str) -> str:
        """The name of ``source``'s next tables: the planned one, else one not taken yet."""
        planned = self._planned.get(source)
        if planned:
            name = planned.pop(0)
        else:
            base = table_stems([source], self.root)[0]
            name, k = base, 2
            while name.casefold() in self._used or any(name.casefold() == s.casefold()
                                                       for stems in self._planned.values() for s in stems):
                name, k = f"{base} ({k})", k + 1
        if name.casefold() in self._used:  # never silently: table_stems makes planned names unique
            raise RuntimeError(f"two recordings' detection tables would both be named {name!r}")
        self._used.add(name.casefold())
        return name

    def add(self, source: str, duration: float, detections: Sequence[Detection]) -> None:
        self.recordings.append(RecordingInfo(source, duration))
        self.detections.extend(detections)
        stem = self.stem(source)
        for fmt in self.per_recording_formats():
            path = os.path.join(self.folder, stem + SUFFIXES[fmt])
            atomic_files.write_text(path, self._text(fmt, detections))
            self.written.append(path)

    def finish(self) -> list[str]:
        if self.combined:
            offsets, t = {}, 0.0
            for r in self.recordings:
                offsets[r.source] = t
                t += r.duration
            order = {r.source: k for k, r in enumerate(self.recordings)}
            rows = sorted(self.detections, key=lambda d: (order[d.source], d.start, d.label))
            for fmt in self.formats:
                if fmt == "audacity":
                    continue
                path = os.path.join(self.folder, COMBINED[fmt])
                text = csv_text(rows) if fmt == "csv" else raven_text(rows, self.low_hz, self.high_hz, offsets)
                atomic_files.write_text(path, text)
                self.written.append(path)
        return self.written

    def _text(self, fmt: str, detections: Sequence[Detection]) -> str:
        if fmt == "csv":
            return csv_text(detections)
        if fmt == "audacity":
            return audacity_text(detections)
        return raven_text(detections, self.low_hz, self.high_hz)


class DetectionRun:
    """Detections of each labelled recording, written (``writer``) or kept for printing."""

    def __init__(self, labels: Sequence[str], window_seconds: float, settings: DetectionSettings,
                 writer: Optional[DetectionWriter] = None) -> None:
        self.labels = list(labels)
        self.window_seconds = float(window_seconds)
        self.settings = settings
        self.writer = writer
        self.count = 0

    def add(self, result) -> list[Detection]:
        """The detections of a :class:`label.labeling.LabelResult` (written at once)."""
        found = detect(result.source, result.windows, self.labels, self.window_seconds, self.settings,
                       result.duration)
        self.count += len(found)
        if self.writer is not None:
            duration = result.duration
            if duration is None:  # only the windows are known: the last one ends the recording
                duration = max((w.start for w in result.windows), default=0.0) + self.window_seconds
            self.writer.add(result.source, float(duration), found)
        return found

    def finish(self) -> list[str]:
        return self.writer.finish() if self.writer is not None else []


def detection_dict(d: Detection) -> dict:
    return {"start": round(d.start, 3), "end": round(d.end, 3), "label": d.label,
            "confidence": round(d.confidence, 6), "windows": d.windows}


def detection_line(d: Detection) -> str:
    """One detection for the console: ``path<TAB>start<TAB>end<TAB>label<TAB>confidence``."""
    return f"{d.source}\t{d.start:.2f}\t{d.end:.2f}\t{d.label}\t{d.confidence:.3f}"
