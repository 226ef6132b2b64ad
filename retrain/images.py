"""List the training images: from ``manifest.csv`` (what ``spectrograms`` writes) or from
retrain.py-style class folders (``<image_dir>/<label>/*.jpg|jpeg|png``).

Labels are the folder names (or the manifest's labels), sorted; the class index of a
label is its position in that sorted list, which is also the order of the labels file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from retrain.errors import RetrainError
from soundretrain import filesystems
from soundretrain.manifest import dataset_recording_id

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MANIFEST_FILENAME = "manifest.csv"
CONFIG_FILENAME = "spectrogram_config.json"
_NOHASH = re.compile(r"_nohash_.*$")


@dataclass(frozen=True)
class ImageRecord:
    """One training example: an image, its label and where it came from."""

    path: str  # absolute path of the image
    relpath: str  # path relative to image_dir, '/'-separated (display, misclassified list)
    label: str
    group: str  # source recording: never split across train / validation / test
    fold: Optional[int] = None
    source: Optional[str] = None  # audio file (manifest only), for waveform modules
    start: float = 0.0
    duration: Optional[float] = None
    silent: bool = False
    sha256: Optional[str] = None  # the image file's SHA-256 from the manifest (checked on listing)


@dataclass(frozen=True)
class ImageSet:
    image_dir: str
    records: tuple[ImageRecord, ...]
    labels: tuple[str, ...]
    from_manifest: bool

    def label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def class_ids(self) -> list[int]:
        index = self.label_index()
        return [index[r.label] for r in self.records]

    @property
    def folds(self) -> list[int]:
        return sorted({r.fold for r in self.records if r.fold is not None})

    def spectrogram_config_path(self) -> Optional[str]:
        path = filesystems.join(self.image_dir, CONFIG_FILENAME)
        return path if filesystems.isfile(path) else None


def group_from_filename(file_name: str) -> str:
    """retrain.py's rule: everything from ``_nohash_`` on is ignored, so
    ``bark_nohash_1.png`` and ``bark_nohash_2.png`` form one group ``bark``. UrbanSound8K and
    ESC-50 names group by the recording id they carry (``162540-1-0-0.png`` -> ``162540``),
    so slices of one recording never straddle a split."""
    if "_nohash_" not in file_name:
        recording = dataset_recording_id(os.path.splitext(file_name)[0])
        if recording is not None:
            return recording
    return _NOHASH.sub("", file_name)


def list_images(image_dir: str, verify: bool = True) -> ImageSet:
    """All images under ``image_dir``, from its manifest when there is one.

    ``verify``: refuse the set when a listed image is missing or not the one spectrograms wrote.
    The Beam pipeline lists without it (``image_dir`` may then be a ``gs://`` URL) and checks
    each image on its worker instead, where a bad one is a failure, not a refusal."""
    image_dir = filesystems.abspath(image_dir)
    files = filesystems.Tree(image_dir)
    if not files.isdir(image_dir):
        raise RetrainError(f"image directory {image_dir!r} not found; pass --image_dir with "
                           "the folder that spectrograms wrote (or class folders of images)")
    manifest = files.join(image_dir, MANIFEST_FILENAME)
    has_manifest = files.isfile(manifest)
    records = _from_manifest(image_dir, manifest, verify) if has_manifest \
        else _from_folders(image_dir, files)
    labels = tuple(sorted({r.label for r in records}))
    if not records:
        raise RetrainError(f"no images found in {image_dir!r}; expected class folders "
                           f"holding {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files")
    if len(labels) < 2:
        raise RetrainError(f"only one class ({labels[0]!r}) found in {image_dir!r}; "
                           "a classifier needs at least two class folders")
    return ImageSet(image_dir, tuple(sorted(records, key=lambda r: r.relpath)), labels, has_manifest)


def _from_folders(image_dir: str, files: filesystems.Tree) -> list[ImageRecord]:
    records = []
    for label in sorted(files.listdir(image_dir)):
        folder = files.join(image_dir, label)
        if not files.isdir(folder) or label.startswith("."):
            continue
        names = sorted(n for n in files.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)
                       and files.isfile(files.join(folder, n)))
        if not names:
            raise RetrainError(_no_images_message(image_dir, folder, files))
        for name in names:
            records.append(ImageRecord(path=files.join(folder, name), relpath=f"{label}/{name}",
                                       label=label, group=group_from_filename(name)))
    return records


#: Audio files a user may pass as --image_dir by mistake (spectrograms reads these).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc",
                    ".au", ".caf", ".w64", ".m4a")


def _no_images_message(image_dir: str, folder: str, files: filesystems.Tree) -> str:
    """Why a class folder holds no images: audio (run spectrograms first), or nothing."""
    audio = [n for n in files.listdir(folder) if n.lower().endswith(AUDIO_EXTENSIONS)]
    if audio:
        return (f"{image_dir!r} holds audio ({folder!r} has {len(audio)} audio file(s), no "
                "spectrogram images): run spectrograms first (spectrograms "
                f"--data_dir {image_dir} --output_dir SPEC, then retrain --image_dir SPEC), or "
                f"train in one command: train --audio_dir {image_dir} --output_dir MODEL")
    return (f"class folder {folder!r} holds no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} "
            "images; add images or remove the folder")


def _from_manifest(image_dir: str, manifest: str, verify: bool = True) -> list[ImageRecord]:
    from soundretrain.manifest import ManifestError, image_problem, read_manifest

    try:
        rows = read_manifest(manifest)
    except ManifestError as err:
        raise RetrainError(str(err).splitlines()[0]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise RetrainError(f"cannot read {manifest!r}: {err}") from None
    records, missing, damaged = [], [], []
    for row in rows:
        path = filesystems.join(image_dir, row.image) if filesystems.is_remote(image_dir) \
            else os.path.normpath(os.path.join(image_dir, row.image))
        if verify and not filesystems.isfile(path):
            missing.append(row.image)
            continue
        # The same test spectrograms applies: an image it would redo is not trained on.
        problem = image_problem(image_dir, row) if verify else None
        if problem is not None:
            damaged.append(f"{row.image!r}: {problem}")
            continue
        records.append(ImageRecord(
            path=path, relpath=row.image.replace(os.sep, "/"), label=row.label,
            group=row.group or group_from_filename(os.path.basename(row.image)),
            fold=row.fold, source=row.source or None, start=row.start,
            duration=row.duration, silent=row.silent, sha256=row.sha256))
    if missing:
        raise RetrainError(f"manifest {manifest!r} lists {len(missing)} image(s) that do not exist "
                           f"(first: {missing[0]!r}); re-run spectrograms or fix the manifest")
    if damaged:
        raise RetrainError(f"{len(damaged)} image(s) in {image_dir!r} are not the ones spectrograms "
                           f"wrote (first: {damaged[0]}); re-run spectrograms with the same flags: "
                           "it renders them again")
    return records
