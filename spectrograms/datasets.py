"""Listing a dataset's clips: UrbanSound8K, ESC-50, or folders of labelled recordings.

Every reader returns :class:`Clip` records (source path, label, fold, group, output
name). Labels are normalised the way TensorFlow's ``retrain.py`` turns a folder name
into a label (lowercase, runs of non-alphanumerics -> one space), for every layout,
so the output folder name, the manifest's label and the label ``retrain`` derives
from the folder all agree: UrbanSound8K's ``dog_bark`` becomes ``dog bark``. Letters of
every script count as alphanumerics (``Bär`` -> ``bär``), and two class names that would
make one label are refused, never merged.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from soundretrain.filesystems import Tree
from soundretrain.labels import folder_label, normalise_label  # noqa: F401  (the spectrograms stage's name for it)
from soundretrain.manifest import dataset_recording_id

LAYOUTS = ("urbansound8k", "esc50", "folders")
AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64",
)
US8K_CSV = os.path.join("metadata", "UrbanSound8K.csv")
ESC50_CSV = os.path.join("meta", "esc50.csv")
DISPLAY = {"urbansound8k": "an UrbanSound8K folder", "esc50": "an ESC-50 folder"}
US8K_COLUMNS = ("slice_file_name", "fsID", "fold", "class")
ESC50_COLUMNS = ("filename", "fold", "category", "esc10", "src_file")


class DatasetError(Exception):
    """The data folder or its metadata cannot be used; the message is one line."""


@dataclass(frozen=True)
class Clip:
    """One audio file to render."""

    source: str  # absolute path of the audio file
    label: str
    fold: Optional[int]
    group: str  # source-recording id: clips sharing it must stay on one side of a split
    name: str  # output file stem, unique within the label


@dataclass
class DatasetListing:
    layout: str
    root: str
    how: str  # one line saying which layout was used and why
    clips: list[Clip]
    missing: list[str] = field(default_factory=list)  # listed in metadata, absent on disk
    notes: list[str] = field(default_factory=list)  # other one-line remarks (ignored files, ...)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (source, reason): not rendered


def group_of(file_name: str) -> str:
    """The recording a file in a class folder comes from: retrain.py's rule (the part of
    the name before ``_nohash_``), then UrbanSound8K's and ESC-50's own file names
    (``162540-1-0-0.wav`` -> ``162540``, ``1-100032-A-0.wav`` -> ``100032``), else the stem."""
    base = os.path.basename(file_name)
    if "_nohash_" in base:
        return re.sub(r"_nohash_.*$", "", base)
    stem = os.path.splitext(base)[0]
    return dataset_recording_id(stem) or stem


def is_audio_file(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith(".")


def _find_root(data_dir: str, marker: str, files: Tree) -> Optional[str]:
    """``data_dir`` or its only matching sub-folder (archives unpack into one) holding ``marker``."""
    if files.isfile(files.join(data_dir, marker)):
        return data_dir
    for entry in sorted(files.listdir(data_dir)):
        sub = files.join(data_dir, entry)
        if files.isdir(sub) and files.isfile(files.join(sub, marker)):
            return sub
    return None


def _class_dirs(data_dir: str, files: Tree) -> list[str]:
    return sorted(
        e for e in files.listdir(data_dir)
        if not e.startswith(".") and files.isdir(files.join(data_dir, e))
    )


def _has_class_folders(data_dir: str, files: Tree) -> bool:
    for d in _class_dirs(data_dir, files):
        try:
            if any(is_audio_file(f) for f in files.listdir(files.join(data_dir, d))):
                return True
        except OSError:
            continue
    return False


def detect_layout(data_dir: str, dataset: str = "auto", files: Optional[Tree] = None) -> tuple[str, str, str]:
    """Return ``(layout, root, how)``; raise :class:`DatasetError` when it does not fit.
    ``data_dir`` may be a URL of a Beam filesystem (``gs://...``; see :mod:`soundretrain.filesystems`)."""
    files = files or Tree(data_dir)
    if not files.exists(data_dir):
        raise DatasetError(f"--data_dir {data_dir} does not exist")
    if not files.isdir(data_dir):
        raise DatasetError(f"--data_dir {data_dir} is not a folder")
    markers = {"urbansound8k": US8K_CSV, "esc50": ESC50_CSV}
    if dataset in markers:
        root = _find_root(data_dir, markers[dataset], files)
        if root is None:
            raise DatasetError(f"{data_dir} is not {DISPLAY[dataset]}: {markers[dataset]} not found in it")
        return dataset, root, f"dataset {dataset} (as asked) in {root}"
    if dataset == "folders":
        if not _has_class_folders(data_dir, files):
            raise DatasetError(
                f"{data_dir} has no class folders with audio files "
                f"(expected <data_dir>/<class>/<file>{AUDIO_EXTENSIONS[0]} and the like)"
            )
        return "folders", data_dir, f"dataset folders (as asked) in {data_dir}"
    if dataset != "auto":
        raise DatasetError(f"--dataset must be auto or one of {', '.join(LAYOUTS)}, not {dataset!r}")
    for layout, marker in markers.items():
        root = _find_root(data_dir, marker, files)
        if root is not None:
            return layout, root, f"dataset auto-detected as {layout} (found {files.join(root, marker)})"
    if _has_class_folders(data_dir, files):
        return "folders", data_dir, f"dataset auto-detected as folders (class sub-folders with audio in {data_dir})"
    raise DatasetError(
        f"cannot tell what dataset {data_dir} holds: expected {US8K_CSV} (UrbanSound8K), "
        f"{ESC50_CSV} (ESC-50) or <class>/<audio file> sub-folders (folders)"
    )


def _read_csv(path: str, columns: Sequence[str], files: Tree) -> list[dict[str, str]]:
    try:
        with files.open_text(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            absent = [c for c in columns if c not in (reader.fieldnames or [])]
            if absent:
                raise DatasetError(f"{path} lacks the column(s) {', '.join(absent)}")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None


def _int(value: str, what: str, path: str, line: int) -> int:
    try:
        return int(float(value))
    except ValueError:
        raise DatasetError(f"{path} line {line}: {what} {value!r} is not a number") from None


def resolve_audio(path: str, files: Optional[Tree] = None) -> Optional[str]:
    """``path`` if it exists, else the same stem with another audio extension
    (the shared UrbanSound8K copy stores .flac where the official one has .wav)."""
    files = files or Tree(path)
    if files.isfile(path):
        return path
    stem = os.path.splitext(path)[0]
    for ext in AUDIO_EXTENSIONS:
        for candidate in (stem + ext, stem + ext.upper()):
            if files.isfile(candidate):
                return candidate
    return None


@dataclass
class MetadataClips:
    clips: list[Clip]  # present on disk
    missing: list[Clip]  # listed, absent from disk
    rejected: list[tuple[list[Clip], str]]  # (its entries, reason): listed under two classes, ...
    notes: list[str]


def _metadata_clips(rows: Iterable[tuple[str, str, int, str, int]], path: str, files: Tree) -> MetadataClips:
    """(listed path, label, fold, group, line) -> the clips of ``path``'s rows.

    A file listed twice with the same class, fold and recording is kept once; a file listed
    under two classes (or folds, or recordings) is rejected with a reason: one of the rows is
    wrong, and rendering it under both labels would teach the head a contradiction."""
    by_source: dict[str, list[tuple[Clip, bool, int]]] = {}
    for listed, label, fold, group, line in rows:
        found = resolve_audio(listed, files)
        name = os.path.splitext(os.path.basename(listed))[0]
        clip = Clip(files.abspath(found or listed), label, fold, group, name)
        by_source.setdefault(clip.source, []).append((clip, found is not None, line))
    out = MetadataClips([], [], [], [])
    duplicates = 0
    for source, listed in by_source.items():
        kinds = {(c.label, c.fold, c.group) for c, _, _ in listed}
        if len(kinds) > 1:
            what = "; ".join(f"line {line}: class {c.label!r}, fold {c.fold}, recording {c.group}"
                             for c, _, line in listed)
            out.rejected.append(([c for c, _, _ in listed], f"listed {len(listed)} times in {path} with "
                                                            f"different entries ({what}); fix the metadata"))
            continue
        duplicates += len(listed) - 1
        clip, present, _ = listed[0]
        (out.clips if present else out.missing).append(clip)
    if duplicates:
        out.notes.append(f"{path} lists {duplicates} file(s) twice with the same entries; each is rendered once")
    return out


def _check_labels(raw_labels: dict[str, tuple[str, int]], column: str, path: str, line: int, value: str) -> str:
    """The label of a metadata row; two different class names that make one label are refused."""
    label = _label(value, column, path, line)
    first = raw_labels.setdefault(label, (value, line))
    if first[0] != value:
        raise DatasetError(f"{path}: {column} {first[0]!r} (line {first[1]}) and {value!r} (line {line}) "
                           f"both make the label {label!r} (labels ignore case and punctuation); "
                           "use one spelling")
    return label


def _label(value: str, column: str, path: str, line: int) -> str:
    """A metadata row's label; one that normalises to nothing would put its images in
    ``<output_dir>/`` + ``/<name>.png``, the filesystem root."""
    label = normalise_label(value)
    if not label:
        raise DatasetError(f"{path} line {line}: {column} {value!r} has no letters or digits to make a label from")
    return label


def read_urbansound8k(root: str, files: Optional[Tree] = None) -> MetadataClips:
    """``metadata/UrbanSound8K.csv`` + ``audio/fold<N>/<slice_file_name>``; group = fsID."""
    files = files or Tree(root)
    path = files.join(root, US8K_CSV)
    rows = []
    labels: dict[str, tuple[str, int]] = {}
    for line, r in enumerate(_read_csv(path, US8K_COLUMNS, files), start=2):
        fold = _int(r["fold"], "fold", path, line)
        audio = files.join(root, "audio", f"fold{fold}", r["slice_file_name"])
        rows.append((audio, _check_labels(labels, "class", path, line, r["class"]), fold, r["fsID"].strip(), line))
    return _metadata_clips(rows, path, files)


def read_esc50(root: str, esc10: bool = False, files: Optional[Tree] = None) -> MetadataClips:
    """``meta/esc50.csv`` + ``audio/<filename>``; group = src_file; ``esc10`` keeps ESC-10."""
    files = files or Tree(root)
    path = files.join(root, ESC50_CSV)
    rows = []
    labels: dict[str, tuple[str, int]] = {}
    for line, r in enumerate(_read_csv(path, ESC50_COLUMNS, files), start=2):
        if esc10 and r["esc10"].strip().lower() not in ("true", "1"):
            continue
        fold = _int(r["fold"], "fold", path, line)
        rows.append((files.join(root, "audio", r["filename"]),
                     _check_labels(labels, "category", path, line, r["category"]), fold, r["src_file"].strip(), line))
    return _metadata_clips(rows, path, files)


def read_folders(root: str, files: Optional[Tree] = None) -> tuple[list[Clip], list[str]]:
    """``<root>/<class>/<file>``: label = normalised folder name, no folds,
    group = name before ``_nohash_`` (else the stem). Returns clips and notes."""
    files = files or Tree(root)
    clips: list[Clip] = []
    notes: list[str] = []
    ignored = 0
    nested: list[str] = []
    folder_of: dict[str, str] = {}
    by_pattern = 0
    for d in _class_dirs(root, files):
        # _background_ (noise, silence) is kept as it is: retrain learns it, label never reports it.
        label = folder_label(d)
        if not label:
            notes.append(f"skipped folder {d!r}: no letters or digits to make a label from")
            continue
        if label in folder_of:  # merging them would silently mix two classes
            raise DatasetError(f"class folders {folder_of[label]!r} and {d!r} in {root} both make the "
                               f"label {label!r} (labels ignore case and punctuation); rename one of them")
        folder_of[label] = d
        folder = files.join(root, d)
        for f in sorted(files.listdir(folder)):
            full = files.join(folder, f)
            if not files.isfile(full) and not files.islink(full):
                if files.isdir(full):
                    nested.append(f"{d}/{f}")
                continue
            if not is_audio_file(f):
                ignored += 1
                continue
            group = group_of(f)
            if "_nohash_" not in f and group != os.path.splitext(f)[0]:
                by_pattern += 1
            clips.append(Clip(files.abspath(full), label, None, group, os.path.splitext(f)[0]))
    if by_pattern:  # say so: it decides which clips stay together in every split
        notes.append(f"grouped {by_pattern} file(s) by the recording id in their UrbanSound8K or ESC-50 "
                     "name (162540-1-0-0.wav -> 162540, 1-100032-A-0.wav -> 100032), so slices of one "
                     "recording stay on one side of every split")
    if ignored:
        notes.append(f"ignored {ignored} file(s) without an audio extension ({', '.join(AUDIO_EXTENSIONS)})")
    if nested:  # their audio would otherwise vanish without a word
        notes.append(f"ignored {len(nested)} sub-folder(s) of class folders, e.g. {nested[0]}: "
                     "only files directly in <data_dir>/<class>/ are read")
    return clips, notes


def _unique_names(clips: list[Clip]) -> list[Clip]:
    """Give clips that would land on the same ``<label>/<name>`` distinct names."""
    seen: set[tuple[str, str]] = set()
    out = []
    for c in clips:
        name = c.name
        if (c.label, name) in seen:
            ext = os.path.splitext(c.source)[1].lstrip(".").lower()
            name = f"{c.name}_{ext}"
            k = 2
            while (c.label, name) in seen:
                name = f"{c.name}_{ext}{k}"
                k += 1
            c = Clip(c.source, c.label, c.fold, c.group, name)
        seen.add((c.label, name))
        out.append(c)
    return out


def list_dataset(
    data_dir: str,
    dataset: str = "auto",
    *,
    classes: Optional[Sequence[str]] = None,
    folds: Optional[Sequence[int]] = None,
    esc10: bool = False,
) -> DatasetListing:
    """Every clip of ``data_dir`` (optionally only ``classes`` / ``folds``), sorted by label and name.
    ``data_dir`` may be a URL of a Beam filesystem (``gs://bucket/UrbanSound8K``): it is listed once."""
    files = Tree(data_dir)
    layout, root, how = detect_layout(data_dir, dataset, files)
    notes: list[str] = []
    rejected: list[tuple[list[Clip], str]] = []
    if esc10 and layout != "esc50":
        raise DatasetError(f"--esc10 applies to ESC-50 only, but {root} is {layout}")
    if layout in ("urbansound8k", "esc50"):
        listed = read_urbansound8k(root, files) if layout == "urbansound8k" else read_esc50(root, esc10, files)
        clips, missing, rejected, notes = listed.clips, listed.missing, listed.rejected, listed.notes
    else:
        clips, notes = read_folders(root, files)
        missing = []
        if folds:
            raise DatasetError("the folders layout has no folds: drop --folds")
    all_folds = sorted({c.fold for c in clips + missing + [c for e, _ in rejected for c in e] if c.fold is not None})
    if classes:
        wanted = {normalise_label(c) for c in classes}
        present = {c.label for c in clips + missing} | {c.label for entries, _ in rejected for c in entries}
        unknown = sorted(wanted - present)
        if unknown:
            raise DatasetError(
                f"--classes {', '.join(unknown)} not in {root} (classes: {', '.join(sorted(present))})"
            )
        clips = [c for c in clips if c.label in wanted]
        missing = [c for c in missing if c.label in wanted]
        rejected = [(e, why) for e, why in rejected if any(c.label in wanted for c in e)]
    if folds:
        absent = sorted(set(folds) - set(all_folds))
        if absent:
            raise DatasetError(
                f"--folds {', '.join(map(str, absent))} not in {root} "
                f"(folds present: {', '.join(map(str, all_folds)) or 'none'})"
            )
        clips = [c for c in clips if c.fold in set(folds)]
        missing = [c for c in missing if c.fold in set(folds)]
        rejected = [(e, why) for e, why in rejected if any(c.fold in set(folds) for c in e)]
    clips = _unique_names(sorted(clips, key=lambda c: (c.label, c.name, c.source)))
    return DatasetListing(layout, root, how, clips, [c.source for c in missing], notes,
                          sorted((entries[0].source, why) for entries, why in rejected))
