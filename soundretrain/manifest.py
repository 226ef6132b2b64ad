"""``manifest.csv``: one row per spectrogram image, with its label, fold and source.

Header: ``image,label,fold,group,source,start,duration,silent,bytes,sha256``

* ``image``: path relative to the output folder (``<label>/<name>.png``)
* ``fold``: the dataset's fold (int) or empty when the layout has none
* ``group``: id of the source recording (slices of one recording share it; keep a
  group on one side of any train/test split)
* ``source``: absolute path of the audio file
* ``start``: window start in seconds within the source
* ``duration``: seconds of real audio in the window, before padding
* ``silent``: 1 when the window is all silence (rendered as the colormap's minimum)
* ``bytes``, ``sha256``: the image file's size and SHA-256, so a truncated or changed image
  is found (:func:`image_problem`). Manifests written before these columns existed leave
  them empty and are still read.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from soundretrain import filesystems

MANIFEST_FILENAME = "manifest.csv"
FIELDS = ("image", "label", "fold", "group", "source", "start", "duration", "silent", "bytes", "sha256")
REQUIRED_FIELDS = FIELDS[:8]  # what every manifest has had; bytes and sha256 came later

# The data sets' own file names carry the recording: UrbanSound8K slices are
# <fsID>-<classID>-<occurrence>-<slice>, ESC-50 clips <fold>-<Freesound clip id>-<take>-<target>
# (both ids are Freesound ids). An optional _w<k> is a spectrograms window of such a clip.
_US8K_NAME = re.compile(r"(\d+)-\d-\d+-\d+(?:_w\d+)?")
_ESC50_NAME = re.compile(r"[1-5]-(\d+)-[A-Z]-\d{1,2}(?:_w\d+)?")


def dataset_recording_id(stem: str) -> Optional[str]:
    """The recording id in an UrbanSound8K or ESC-50 file name (without extension):
    ``162540-1-0-0`` -> ``162540``, ``1-100032-A-0`` -> ``100032``; None for other names."""
    for pattern in (_ESC50_NAME, _US8K_NAME):
        m = pattern.fullmatch(stem)
        if m:
            return m.group(1)
    return None


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
    bytes: Optional[int] = None  # the image file's size; None in older manifests
    sha256: Optional[str] = None  # the image file's SHA-256 (hex); None in older manifests

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
            "" if self.bytes is None else str(self.bytes),
            self.sha256 or "",
        ]

    @classmethod
    def from_csv(cls, record: dict[str, str]) -> "ManifestRow":
        fold = (record["fold"] or "").strip()
        size = (record.get("bytes") or "").strip()
        digest = (record.get("sha256") or "").strip().lower()
        if digest and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"sha256 {digest!r} is not 64 hex digits")
        return cls(
            image=record["image"],
            label=record["label"],
            fold=int(fold) if fold else None,
            group=record["group"],
            source=record["source"],
            start=float(record["start"]),
            duration=float(record["duration"]),
            silent=record["silent"].strip() in ("1", "true", "True"),
            bytes=int(size) if size else None,
            sha256=digest or None,
        )


def _number(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".") or "0"


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read every row of ``manifest.csv`` (a local path or a Beam filesystem URL); raises
    :class:`ManifestError` when malformed."""
    path = os.fspath(path)
    with (io.StringIO(filesystems.read_text(path), newline="") if filesystems.is_remote(path)
          else open(path, newline="", encoding="utf-8")) as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: not a spectrogram manifest (missing columns: {', '.join(missing)})")
        rows = []
        for line_no, record in enumerate(reader, start=2):
            try:
                rows.append(ManifestRow.from_csv(record))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
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
    """Write ``rows`` sorted by image path, atomically and durably (temp name, fsync, rename;
    one upload for a Beam filesystem URL)."""
    filesystems.write_text(path, format_rows(sorted(rows, key=lambda r: r.image)))


def file_digest(data: bytes) -> tuple[int, str]:
    """``(size, SHA-256 hex)`` of an image's bytes, as the manifest records them."""
    return len(data), hashlib.sha256(data).hexdigest()


def image_problem(image_dir: str | os.PathLike, row: ManifestRow) -> Optional[str]:
    """Why the image ``row`` names is not the one ``spectrograms`` wrote (missing, truncated,
    changed), in a few words; None when it is intact (``image_dir`` may be a Beam filesystem URL). Rows of older manifests, without a
    size and hash, are checked for existence only. ``spectrograms`` (to decide what to redo)
    and ``retrain`` (to refuse damaged images) use this same test."""
    path = filesystems.join(os.fspath(image_dir), row.image)
    try:
        found = filesystems.info(path)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if found is None:
        return "missing"
    size = found.size
    if row.bytes is not None and size != row.bytes:
        return f"{size} bytes where the manifest says {row.bytes} (truncated or changed)"
    if row.sha256 is not None:
        try:
            data = filesystems.read_bytes(path)
        except OSError as e:
            return f"unreadable ({e.strerror or e})"
        if file_digest(data)[1] != row.sha256:
            return "its content differs from the manifest's sha256 (damaged or changed)"
    return None
