"""The class folders a user hands to ``train``, checked before anything heavy: every
problem is one line naming the folder or file and what would work.

Refused: a missing folder, audio without class folders, a class folder without audio, a
class of one recording (slices of one recording count once), a single class. Warned about:
files that are not audio (ignored), the same bytes in two classes (the model would be
taught a contradiction) or twice in one class (the copies are kept as one recording, so
they never sit on both sides of a split).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from soundretrain.open_set import BACKGROUND_LABEL
from soundretrain.sidecar import file_sha256
from soundretrain.labels import folder_label
from spectrograms.datasets import group_of, is_audio_file

STAGING_FOLDER = "input"  # in the work folder: class folders linked, _background_ added


class FlowError(ValueError):
    """Bad input to a flow; the message is one line saying what and how to fix it."""


@dataclass
class ClassFolder:
    name: str  # the folder's name
    label: str  # the label spectrograms gives it
    path: str
    files: list[str]  # audio files, sorted
    recordings: int  # distinct recordings among them (retrain.py's _nohash_ rule and the datasets' names)
    ignored: list[str] = field(default_factory=list)  # files that are not audio


@dataclass
class AudioFolders:
    """What ``train`` will render and train on."""

    root: str  # the folder spectrograms reads (the staging folder when one is needed)
    classes: list[ClassFolder]
    notes: list[str]  # one-line warnings for the user
    duplicate_groups: dict[str, str]  # audio file -> the recording it is a copy of

    @property
    def labels(self) -> list[str]:
        return sorted(c.label for c in self.classes)


def _one(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_class_folder(name: str, path: str) -> ClassFolder:
    files, ignored, nested = [], [], []
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if entry.startswith("."):
            continue
        if os.path.isdir(full):
            nested.append(entry)
        elif is_audio_file(entry):
            files.append(full)
        else:
            ignored.append(entry)
    label = folder_label(name)
    folder = ClassFolder(name, label, path, files, len({group_of(f) for f in files}), ignored)
    if nested:
        folder.ignored += [f"{n}/" for n in nested]
    return folder


def check_audio_folders(audio_dir: str, background_dir: Optional[str] = None,
                        allow_single_recordings: bool = False) -> AudioFolders:
    """The class folders of ``audio_dir`` (plus ``background_dir`` as ``_background_``), or
    :class:`FlowError`. ``allow_single_recordings``: a class of one recording is trained on
    (no evaluation can test it)."""
    if not os.path.exists(audio_dir):
        raise FlowError(f"--audio_dir {audio_dir} does not exist")
    if not os.path.isdir(audio_dir):
        raise FlowError(f"--audio_dir {audio_dir} is not a folder: give the folder that holds one "
                        "folder of recordings per class")
    names = sorted(e for e in os.listdir(audio_dir)
                   if not e.startswith(".") and os.path.isdir(os.path.join(audio_dir, e)))
    loose = sorted(e for e in os.listdir(audio_dir) if is_audio_file(e))
    if not names:
        if loose:
            raise FlowError(f"{audio_dir} holds {len(loose)} audio file(s) but no class folders: put "
                            f"each class's recordings in a folder named after it ({audio_dir}/dog/"
                            f"{loose[0]}, {audio_dir}/siren/...)")
        raise FlowError(f"{audio_dir} has no class folders: expected {audio_dir}/<class>/<recording>.wav")
    classes = [_read_class_folder(n, os.path.join(audio_dir, n)) for n in names]
    if background_dir is not None:
        if not os.path.isdir(background_dir):
            raise FlowError(f"--background_dir {background_dir} is not a folder of noise and "
                            "silence recordings")
        if BACKGROUND_LABEL in names:
            raise FlowError(f"{audio_dir} has a {BACKGROUND_LABEL} folder and --background_dir is "
                            f"given too; use one of them")
        classes.append(_read_class_folder(BACKGROUND_LABEL, background_dir))
    notes: list[str] = []
    if loose:
        notes.append(f"ignored {len(loose)} audio file(s) directly in {audio_dir} ({_one(loose)}): "
                     "only files in class folders are trained on")
    seen_labels: dict[str, str] = {}
    for c in classes:
        if not c.label:
            raise FlowError(f"class folder {c.path}: its name has no letters or digits to make a "
                            "label from; rename it")
        if c.label in seen_labels:
            raise FlowError(f"class folders {seen_labels[c.label]!r} and {c.name!r} both make the label "
                            f"{c.label!r} (labels ignore case and punctuation); rename one of them")
        seen_labels[c.label] = c.name
    for c in classes:
        if not c.files:
            what = (f"holds no audio files (only {_one(c.ignored)})" if c.ignored else "is empty")
            raise FlowError(f"class folder {c.path} {what}: add recordings of {c.label!r} "
                            "(wav, flac, ogg, mp3, ...) or remove the folder")
        if c.ignored:
            notes.append(f"ignored {len(c.ignored)} file(s) in {c.path} that are not audio "
                         f"({_one(c.ignored)})")
    known = [c for c in classes if c.label != BACKGROUND_LABEL]
    if len(known) < 2:
        only = f"only one class ({known[0].label!r})" if known else "no class besides the background"
        raise FlowError(f"{only} in {audio_dir}: a classifier needs at least two class folders of "
                        "recordings (a _background_ folder of noise and silence can be one of them)")
    for c in classes:
        if c.recordings < 2 and not allow_single_recordings:
            if len(c.files) == 1:
                has = f"1 recording ({os.path.basename(c.files[0])})"
            else:
                has = (f"1 recording ({len(c.files)} files named <recording>_nohash_<k>: slices of one "
                       "recording count once)")
            raise FlowError(f"class {c.label!r} has {has}: a class needs at least 2 recordings, one to "
                            "train on and one to test on; add a recording to "
                            f"{c.path}, or train without any evaluation with --evaluation none")
    duplicates, dup_notes = _duplicates(classes, audio_dir)
    notes += dup_notes
    return AudioFolders(audio_dir, classes, notes, duplicates)


def _duplicates(classes: list[ClassFolder], audio_dir: str) -> tuple[dict[str, str], list[str]]:
    """Files with the same bytes: one line per set; copies within a class are one recording
    (``{file: group}``), so they never straddle a split."""
    by_digest: dict[str, list[tuple[ClassFolder, str]]] = {}
    for c in classes:
        for f in c.files:
            try:
                by_digest.setdefault(file_sha256(f), []).append((c, f))
            except OSError as err:
                raise FlowError(f"cannot read {f}: {err.strerror or err}") from None
    groups: dict[str, str] = {}
    notes = []
    for digest, copies in sorted(by_digest.items(), key=lambda kv: kv[1][0][1]):
        if len(copies) < 2:
            continue
        shown = ", ".join(os.path.relpath(f, os.path.dirname(c.path)) for c, f in copies[:4])
        labels = sorted({c.label for c, _ in copies})
        if len(labels) > 1:
            notes.append(f"the same audio is in {len(labels)} classes ({shown}): identical bytes "
                         f"under {', '.join(repr(x) for x in labels)} teach the model a contradiction; "
                         "keep it in one class")
        else:
            notes.append(f"the same audio is in class {labels[0]!r} {len(copies)} times ({shown}): the "
                         "copies count as one recording")
        for _, f in copies:
            groups[f] = f"same-bytes-{digest[:16]}"
    return groups, notes
