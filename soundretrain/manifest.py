"""``manifest.csv``: one row per spectrogram image, with its label, fold and source.

Header: ``image,label,fold,group,source,start,duration,silent``

* ``image``: path relative to the output folder (``<label>/<name>.png``)
* ``fold``: the dataset's fold (int) or empty when the layout has none
* ``group``: id of the source recording (slices of one recording share it; keep a
  group on one side of any train/test split)
* ``source``: absolute path of the audio file
* ``start``: window start in seconds within the source
* ``duration``: seconds of real audio in the window, before padding
* ``silent``: 1 when the window is all silence (rendered as the colormap's minimum)
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Iterable, Optional

from soundretrain import atomic_files

MANIFEST_FILENAME = "manifest.csv"
FIELDS = ("image", "label", "fold", "group", "source", "start", "duration", "silent")


class ManifestError(ValueError):
    """The manifest file is malformed; the message is one line."""


@dataclass(frozen=True)
class ManifestRow:
    image: str
    label: str
    fold: Optional[int]
    group: str
    source: str
    start: float
    duration: float
    silent: bool

    def to_csv(self) -> list[str]:
        return [
            self.image,
            self.label,
            "" if self.fold is None else str(self.fold),
            self.group,
            self.source,
            _number(self.start),
            _number(self.duration),
            "1" if self.silent else "0",
        ]

    @classmethod
    def from_csv(cls, record: dict[str, str]) -> "ManifestRow":
        fold = (record["fold"] or "").strip()
        return cls(
            image=record["image"],
            label=record["label"],
            fold=int(fold) if fold else None,
            group=record["group"],
            source=record["source"],
            start=float(record["start"]),
            duration=float(record["duration"]),
            silent=record["silent"].strip() in ("1", "true", "True"),
        )


def _number(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".") or "0"


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read every row of ``manifest.csv``; raises :class:`ManifestError` when malformed."""
    path = os.fspath(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: not a spectrogram manifest (missing columns: {', '.join(missing)})")
        rows = []
        for line_no, record in enumerate(reader, start=2):
            try:
                rows.append(ManifestRow.from_csv(record))
            except (KeyError, TypeError, ValueError) as e:
                raise ManifestError(f"{path}: line {line_no} is malformed ({e})") from None
        return rows


def format_rows(rows: Iterable[ManifestRow], header: bool = True) -> str:
    """CSV text for ``rows`` (with the header line unless ``header=False``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(FIELDS)
    for row in rows:
        writer.writerow(row.to_csv())
    return buf.getvalue()


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> None:
    """Write ``rows`` sorted by image path, atomically (temp name, then rename)."""
    atomic_files.write_text(path, format_rows(sorted(rows, key=lambda r: r.image)))
