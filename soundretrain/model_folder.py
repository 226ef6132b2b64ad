"""A model folder: one export's artifacts, swapped in whole, with a manifest of their digests.

An export writes several artifacts (a frozen graph, a SavedModel, TFLite files, the
labels, their sidecars). Each is written atomically, but a run killed between two of them
used to leave a mixed set: a new ``.pb`` beside the old TFLite, SavedModel and labels.
When an export's outputs share one folder, that folder is built as a whole in a hidden
temp folder beside it and exchanged with the old one in one atomic step
(:func:`soundretrain.atomic_files.replacing_folder`), so a kill at any moment leaves the
old set or the new one. The new folder holds :data:`MANIFEST_FILENAME`: the export's id
and every file's size and SHA-256, which ``label_image`` checks before it labels with any
artifact in the folder (a mix of two exports, put together by hand, is refused in one
line).

For a caller that writes a model folder itself (the ``train`` flow, the studio)::

    with staged_model_folder(output_dir) as stage:   # a new folder beside output_dir
        export_model(..., output_labels=os.path.join(stage, "labels.txt"), ...,
                     whole_folder=False)
        write_text(os.path.join(stage, "report.json"), ...)
    # output_dir now holds exactly what was written into ``stage``, and the manifest

An exception (or Ctrl-C, or SIGTERM turned into one) inside the block leaves
``output_dir`` untouched. Files of the old folder that its manifest does not list (a
user's notes) are carried into the new one as hard links; files the old export wrote and
this one did not are gone with the old set.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import uuid
from typing import Iterable, Iterator, Optional

from soundretrain import atomic_files
from soundretrain.sidecar import file_sha256

MANIFEST_FILENAME = "soundretrain_manifest.json"
MANIFEST_FORMAT = 1


class ModelFolderError(ValueError):
    """A model folder's files are not the set its manifest lists; the message is one line."""


def new_export_id() -> str:
    """An id shared by every artifact (and the manifest) of one export."""
    return uuid.uuid4().hex


def read_manifest(folder: str) -> Optional[dict]:
    """The manifest of ``folder``, or None when it has none. A manifest that cannot be read
    is a :class:`ModelFolderError`."""
    path = os.path.join(folder, MANIFEST_FILENAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
            for v in files.values()):
        raise ModelFolderError(f"{path} is not a model manifest (no files with their sha256 and bytes)")
    return manifest


def _files_under(folder: str) -> list[str]:
    """Every file under ``folder`` as '/'-separated relative paths, the manifest excluded."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel != MANIFEST_FILENAME:
                out.append(rel)
    return out


def write_manifest(folder: str, export_id: Optional[str] = None) -> dict:
    """Record every file now in ``folder`` (size and SHA-256) in its manifest; return it."""
    files = {}
    for rel in _files_under(folder):
        path = os.path.join(folder, *rel.split("/"))
        files[rel] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "export_id": export_id or new_export_id(),
                "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "files": files}
    atomic_files.write_text(os.path.join(folder, MANIFEST_FILENAME),
                            json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


SMALL_FILE = 1 << 20  # sidecars, labels, reports: always hashed (cheap)


def verify(folder: str, manifest: Optional[dict] = None,
           used: Optional[Iterable[str]] = None) -> None:
    """Raise :class:`ModelFolderError` (one line naming the first file) unless every file
    the manifest of ``folder`` lists is there with its recorded size and SHA-256. With
    ``used`` (relative paths of what is about to be loaded: a file, or a SavedModel folder),
    large files outside them are checked by size only: their sidecars, which are hashed,
    name their export, and each large file is hashed against its sidecar when it is loaded."""
    manifest = manifest if manifest is not None else read_manifest(folder)
    if manifest is None:
        return
    used = None if used is None else [u.rstrip("/") for u in used]
    for rel, entry in sorted(manifest["files"].items()):
        path = os.path.join(folder, *rel.split("/"))
        deep = (used is None or entry["bytes"] <= SMALL_FILE
                or any(rel == u or rel.startswith(u + "/") for u in used))
        try:
            same = os.path.getsize(path) == entry["bytes"] and (
                not deep or file_sha256(path) == entry["sha256"])
        except OSError:
            raise ModelFolderError(f"{path} is missing from model folder {folder}: its manifest lists "
                                   "it (files were removed or moved by hand); export the model again") from None
        if not same:
            raise ModelFolderError(f"{path} is not the file the manifest of {folder} lists: the folder "
                                   "mixes two exports; export the model again (all its outputs into "
                                   f"this folder), or delete {MANIFEST_FILENAME} to use the files as they are")


def folder_of(artifact: str) -> Optional[str]:
    """The model folder whose manifest covers ``artifact`` (a file or a SavedModel folder
    in it), or None when there is none."""
    parent = os.path.dirname(os.path.abspath(artifact.rstrip(os.sep) or artifact))
    return parent if os.path.isfile(os.path.join(parent, MANIFEST_FILENAME)) else None


def check_artifact(artifact: str, *others: Optional[str]) -> None:
    """Before labelling with ``artifact`` (and ``others``, e.g. a labels file): when it sits
    in a model folder, that folder must be the set its manifest lists, ``artifact`` one of
    them. Raises :class:`ModelFolderError` with one line."""
    for path in (artifact, *others):
        if not path:
            continue
        folder = folder_of(path)
        if folder is None:
            continue
        manifest = read_manifest(folder)
        rel = os.path.relpath(os.path.abspath(path), folder).replace(os.sep, "/")
        listed = rel in manifest["files"] or any(f.startswith(rel + "/") for f in manifest["files"])
        if not listed:
            raise ModelFolderError(f"{path} is not part of the export in {folder} (its manifest does "
                                   "not list it): keep other models out of a model folder")
        verify(folder, manifest, used=[rel])


def replaceable(folder: str, owned: Iterable[str] = ()) -> bool:
    """Whether ``folder`` may be replaced whole: it does not exist, or is empty, or is a
    model folder (has a manifest), or holds nothing but the ``owned`` names, their
    ``.json`` sidecars and their writers' temp leftovers."""
    if not os.path.lexists(folder):
        return True
    if os.path.islink(folder) or not os.path.isdir(folder) or os.path.ismount(folder):
        return False
    if os.path.isfile(os.path.join(folder, MANIFEST_FILENAME)):
        return True
    owned = set(owned)
    ours = owned | {n + ".json" for n in owned}
    return all(e in ours or any(atomic_files.is_leftover_of(e, n) for n in owned)
               for e in os.listdir(folder))


def other_exports_beside(artifact: str, sidecar: Optional[dict]) -> list[str]:
    """For an artifact of an export whose outputs were scattered (no model folder): the other
    artifacts that export wrote (its sidecar's ``export_artifacts``) that now carry another
    export's id: an export interrupted half-way, or some outputs exported again alone."""
    from soundretrain.sidecar import SidecarError, read_sidecar

    sidecar = sidecar or {}
    own, listed = sidecar.get("export_id"), sidecar.get("export_artifacts")
    if not own or not isinstance(listed, dict):
        return []
    others = []
    for path in listed.values():
        if not isinstance(path, str) or os.path.abspath(path) == os.path.abspath(artifact):
            continue
        try:
            other = read_sidecar(path) if os.path.exists(path) else None
        except SidecarError:
            continue
        if other and other.get("export_id") not in (None, own):
            others.append(path)
    return others


def swappable_folder(paths: Iterable[Optional[str]]) -> Optional[str]:
    """The one folder that holds every path of an export, when it can be replaced whole
    (:func:`replaceable`); None otherwise (outputs in several folders, or in a folder with
    other things in it, such as /tmp)."""
    paths = [os.path.abspath(p) for p in paths if p]
    folders = {os.path.dirname(p) for p in paths}
    if len(folders) != 1:
        return None
    folder = folders.pop()
    if folder == os.path.dirname(folder):
        return None  # / cannot be renamed
    return folder if replaceable(folder, [os.path.basename(p) for p in paths]) else None


def _carry_over(old: str, new: str) -> None:
    """Hard-link into ``new`` the files of ``old`` that its manifest does not list (a user's
    own files) and that ``new`` does not have; copies where links cannot be made."""
    try:
        manifest = read_manifest(old)
    except ModelFolderError:
        manifest = None
    if manifest is None:
        return  # a folder without a manifest is only replaced when it held nothing else
    listed = set(manifest["files"])
    for rel in _files_under(old):
        target = os.path.join(new, *rel.split("/"))
        if rel in listed or os.path.lexists(target) or atomic_files.is_temp_name(os.path.basename(rel)):
            continue
        source = os.path.join(old, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError:
            shutil.copy2(source, target, follow_symlinks=False)


@contextlib.contextmanager
def staged_model_folder(path: str | os.PathLike, export_id: Optional[str] = None,
                        owned: Iterable[str] = ()) -> Iterator[str]:
    """Yield a new, empty folder beside ``path``; when the block ends normally, the files
    written into it (with a manifest of their digests, and the old folder's own files that
    its manifest did not list) replace ``path`` in one atomic step. On an exception nothing
    changes. Only a missing path, an empty folder, a model folder or a folder of nothing
    but ``owned`` names is replaced (:class:`FileExistsError` otherwise, before the block
    runs)."""
    path = os.path.abspath(os.fspath(path))
    if not replaceable(path, owned):
        raise FileExistsError(f"{path} exists and is not a model folder (no {MANIFEST_FILENAME}); "
                              "not replacing it: choose a new or empty folder")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    # One writer of this folder at a time; under that lock, the temp folders of killed
    # exports beside it are removed.
    with atomic_files.exclusive_folders(parent):
        atomic_files.remove_leftovers_of(path)
        with atomic_files.replacing_folder(path, check=False) as stage:
            yield stage
            write_manifest(stage, export_id)  # what this export wrote, not the carried files
            if os.path.isdir(path):
                _carry_over(path, stage)
