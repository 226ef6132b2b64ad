"""A studio project: the recordings a person collects, in the CLI's class-folder layout.

``label_image --serve --project_dir DIR`` keeps its data where the command-line tools find it::

    DIR/<class>/<clip>.wav        one folder per class (``train --audio_dir DIR`` reads them)
    DIR/.studio/model/            the latest model (written whole by ``train``)
    DIR/.studio/...               training state, its log, a snapshot of the clips it trained on

Hidden entries are no class (the spectrograms stage skips them too). Every change is atomic, so
a ``kill -9`` at any moment leaves the folder as it was before the change or after it:

* a clip is written to ``.studio/incoming/``, fsynced, checked, then linked into its class
  folder under a name no other clip has (``link`` never replaces a file);
* a clip is deleted with one ``unlink`` and moved with one ``rename``;
* a class is created with one ``mkdir``, renamed with one ``rename``, deleted by renaming it
  into ``.studio/trash/`` (then removed; a restart finishes what a kill interrupted).

One process owns a project at a time (a lock on ``.studio``); a second server is refused.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
import secrets
import shutil
import threading
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from soundretrain import atomic_files
from soundretrain.folder_lock import folder_lock
from soundretrain.labels import normalise_label
from soundretrain.sidecar import file_sha256

STUDIO_DIR = ".studio"
MAX_CLASS_NAME = 64
MAX_CLIP_STEM = 80
BACKGROUND_CLASS = "_background_"  # trained on, never reported (the train command's rule)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".m4a")
# libsndfile's format names -> the extension a file of that format is stored with
_SNDFILE_EXTENSIONS = {"WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3",
                       "AIFF": ".aiff", "AU": ".au"}
_MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg",
                ".aiff": "audio/aiff", ".aif": "audio/aiff", ".au": "audio/basic", ".m4a": "audio/mp4"}


_OPEN_ROOTS: set = set()  # projects open in this process
_OPEN_LOCK = threading.Lock()


class ProjectError(Exception):
    """A request the project refuses: an HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DuplicateClip(ProjectError):
    """409: these very bytes are a clip of the project already (``class_name``/``clip``)."""

    def __init__(self, class_name: str, clip: str) -> None:
        super().__init__(409, f"this clip is already in the project, as {class_name}/{clip}: "
                              "the same recording twice adds nothing to train on")
        self.class_name = class_name
        self.clip = clip


def class_label(name: str) -> str:
    """The label a model trained on class folder ``name`` reports (as the spectrograms stage
    makes it): ``dog_bark`` -> ``dog bark``; ``_background_`` stays itself."""
    return BACKGROUND_CLASS if name == BACKGROUND_CLASS else normalise_label(name)


def check_class_name(name: str) -> str:
    """``name`` as a class folder's name (NFC, trimmed), or :class:`ProjectError` (400)."""
    name = unicodedata.normalize("NFC", str(name or "")).strip()
    if not name:
        raise ProjectError(400, "a class needs a name")
    if len(name) > MAX_CLASS_NAME:
        raise ProjectError(400, f"a class name has at most {MAX_CLASS_NAME} characters, not {len(name)}")
    if "/" in name or "\\" in name or name.startswith(".") or not all(c.isprintable() for c in name):
        raise ProjectError(400, f"{name!r} cannot name a class folder: no '/', '\\', leading '.' "
                                "or control characters")
    if not class_label(name):
        raise ProjectError(400, f"{name!r} cannot name a class: it needs a letter or a digit")
    return name


def clip_stem(filename: Optional[str]) -> str:
    """A safe file name stem from an uploaded name (``My Dog!.wav`` -> ``My_Dog``)."""
    base = os.path.basename(str(filename or "").replace("\\", "/"))
    stem = os.path.splitext(base)[0] if os.path.splitext(base)[1].lower() in AUDIO_EXTENSIONS else base
    stem = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", stem)).strip("._-")
    return stem[:MAX_CLIP_STEM] or "clip"


def media_type(clip: str) -> str:
    return _MEDIA_TYPES.get(os.path.splitext(clip)[1].lower(), "application/octet-stream")


def _is_clip(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith(".")


@dataclass(frozen=True)
class Validated:
    """What a clip's check found: its length, the extension its bytes belong under, and the
    file to store when not the upload itself (a format kept as WAV: it had no known name)."""

    seconds: float
    extension: str
    path: Optional[str] = None


class Project:
    """The project folder: list, add, move and delete clips and classes; all thread-safe."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.studio = os.path.join(self.root, STUDIO_DIR)
        self.incoming = os.path.join(self.studio, "incoming")
        self.trash = os.path.join(self.studio, "trash")
        self.model_dir = os.path.join(self.studio, "model")
        self._lock = threading.RLock()
        self._seconds: dict = {}  # (path, size, mtime_ns) -> seconds
        self._digests: dict = {}  # (path, size, mtime_ns) -> SHA-256
        self._owner = contextlib.ExitStack()

    # --- opening -----------------------------------------------------------------------

    def open(self) -> "Project":
        """Create the folders, take the project's lock and finish what a kill interrupted."""
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ProjectError(400, f"--project_dir {self.root} is a file; give a folder")
        try:
            os.makedirs(self.incoming, exist_ok=True)
            os.makedirs(self.trash, exist_ok=True)
        except OSError as e:
            raise ProjectError(500, f"cannot create the project in {self.root}: {e.strerror or e}") from None
        with _OPEN_LOCK:  # a POSIX lock does not stop its own process: this does
            if self.root in _OPEN_ROOTS:
                raise ProjectError(409, f"{self.studio} is in use by another label_image --serve (in this process)")
            self._owner.enter_context(folder_lock(self.studio, "label_image --serve"))
            _OPEN_ROOTS.add(self.root)
            self._owner.callback(_OPEN_ROOTS.discard, self.root)
        self._clean_leftovers()
        return self

    def close(self) -> None:
        with _OPEN_LOCK:
            self._owner.close()

    def __enter__(self) -> "Project":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _clean_leftovers(self) -> None:
        for folder in (self.incoming, self.trash):
            for entry in os.listdir(folder):
                path = os.path.join(folder, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        atomic_files.remove_temp_files(self.root)
        atomic_files.remove_temp_files(self.studio)  # a snapshot or model folder a kill left half-built
        for name in self.class_names():
            atomic_files.remove_temp_files(os.path.join(self.root, name))

    # --- reading -----------------------------------------------------------------------

    def class_names(self) -> list[str]:
        names = []
        with os.scandir(self.root) as entries:
            for e in entries:
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False):
                    names.append(e.name)
        return sorted(names, key=lambda n: (n == BACKGROUND_CLASS, n.lower(), n))

    def _class_dir(self, name: str, must_exist: bool = True) -> str:
        name = check_class_name(name)
        path = os.path.join(self.root, name)
        if must_exist and not os.path.isdir(path):
            raise ProjectError(404, f"no class {name!r}")
        return path

    def clip_path(self, class_name: str, clip: str) -> str:
        folder = self._class_dir(class_name)
        if os.path.basename(clip) != clip or not _is_clip(clip):
            raise ProjectError(404, f"no clip {clip!r} in class {class_name!r}")
        path = os.path.join(folder, clip)
        if not os.path.isfile(path):
            raise ProjectError(404, f"no clip {clip!r} in class {class_name!r}")
        return path

    def _clip_seconds(self, path: str, st: os.stat_result) -> Optional[float]:
        key = (path, st.st_size, st.st_mtime_ns)
        if key not in self._seconds:
            from soundretrain.audio import audio_header  # an MP3's frames, not a header that lies

            try:
                frames, samplerate, _ = audio_header(path)
                self._seconds[key] = round(frames / samplerate, 3) if samplerate > 0 else None
            except Exception:  # a format libsndfile cannot measure (m4a): the decoder read it
                self._seconds[key] = None
        return self._seconds[key]

    def clips(self, class_name: str) -> list[dict]:
        folder = self._class_dir(class_name)
        out = []
        with os.scandir(folder) as entries:
            for e in entries:
                if not _is_clip(e.name) or not e.is_file(follow_symlinks=False):
                    continue
                st = e.stat(follow_symlinks=False)
                out.append({"id": e.name, "bytes": st.st_size, "seconds": self._clip_seconds(e.path, st),
                            "added": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
                            .isoformat(timespec="seconds")})
        return sorted(out, key=lambda c: (c["added"], c["id"]))

    def dataset(self) -> dict:
        """``GET /v1/dataset``: every class with its clips."""
        with self._lock:
            classes = []
            for name in self.class_names():
                try:
                    clips = self.clips(name)
                except ProjectError:  # a folder whose name is no class (made outside the studio)
                    continue
                classes.append({"name": name, "label": class_label(name), "background": name == BACKGROUND_CLASS,
                                "count": len(clips), "seconds": round(sum(c["seconds"] or 0 for c in clips), 3),
                                "clips": clips})
        return {"project": os.path.basename(self.root), "classes": classes,
                "total_clips": sum(c["count"] for c in classes)}

    def counts(self) -> dict[str, int]:
        """Clips per class."""
        with self._lock:
            return {c["name"]: c["count"] for c in self.dataset()["classes"]}

    # --- classes -----------------------------------------------------------------------

    def _check_label_free(self, name: str, ignore: Optional[str] = None) -> None:
        label = class_label(name)
        for other in self.class_names():
            if other != ignore and other != name and class_label(other) == label:
                raise ProjectError(409, f"class {name!r} would train as {label!r}, as class {other!r} does: "
                                        "choose another name")

    def add_class(self, name: str) -> tuple[str, bool]:
        """Create class ``name``; ``(name, created)`` (False when it existed)."""
        with self._lock:
            path = self._class_dir(name, must_exist=False)
            name = os.path.basename(path)
            if os.path.isdir(path):
                return name, False
            if os.path.exists(path):
                raise ProjectError(409, f"{name!r} exists in the project folder and is not a class folder")
            self._check_label_free(name)
            os.mkdir(path)
            atomic_files.fsync_folder(self.root)
            return name, True

    def rename_class(self, name: str, new_name: str) -> str:
        with self._lock:
            source = self._class_dir(name)
            target = self._class_dir(new_name, must_exist=False)
            new_name = os.path.basename(target)
            if new_name == os.path.basename(source):
                return new_name
            if os.path.lexists(target) and not atomic_files.same_entry(source, target):
                raise ProjectError(409, f"class {new_name!r} exists already: move its clips or choose another name")
            self._check_label_free(new_name, ignore=os.path.basename(source))
            atomic_files.move_entry(source, target)  # one step (a case-only rename too)
            return new_name

    def delete_class(self, name: str) -> int:
        """Delete class ``name`` and its clips; the number of clips deleted."""
        with self._lock:
            source = self._class_dir(name)
            count = len(self.clips(name))
            gone = os.path.join(self.trash, f"{os.path.basename(source)}.{secrets.token_hex(4)}")
            atomic_files.move_entry(source, gone)  # out of the dataset in one step; removed below
        shutil.rmtree(gone, ignore_errors=True)
        return count

    # --- clips -------------------------------------------------------------------------

    def add_clip(self, class_name: str, data: bytes, filename: Optional[str],
                 check: Callable[[str, str], Validated]) -> dict:
        """Store ``data`` as a clip of ``class_name`` (created if needed) once ``check(path,
        shown_name)`` accepts it (raising for anything it refuses); the stored clip's entry."""
        shown = os.path.basename(str(filename or "upload").replace("\\", "/")) or "upload"
        suffix = os.path.splitext(shown)[1].lower()
        tmp = os.path.join(self.incoming, f"{secrets.token_hex(8)}{suffix if suffix in AUDIO_EXTENSIONS else ''}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        validated = None
        try:
            validated = check(tmp, shown)
            with self._lock:
                self._refuse_copy(validated.path or tmp)
                self.add_class(class_name)
                folder = self._class_dir(class_name)
                clip = self._link_unique(validated.path or tmp, folder, clip_stem(filename), validated.extension)
                atomic_files.fsync_folder(folder)
        finally:
            for path in (tmp, validated.path if validated else None):
                if path:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        st = os.stat(os.path.join(folder, clip))
        return {"class": os.path.basename(folder), "id": clip, "bytes": st.st_size, "seconds": validated.seconds}

    def _refuse_copy(self, path: str) -> None:
        """409 when a clip with these very bytes is in the project: training counts copies as
        one recording, so a second one adds nothing, and a copy in another class contradicts
        the first. (No microphone records the same bytes twice; a re-upload or a device
        that replays the same start does.)"""
        size = os.path.getsize(path)
        digest = None
        for name in self.class_names():
            with os.scandir(os.path.join(self.root, name)) as entries:
                for e in entries:
                    if not _is_clip(e.name) or not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                    if st.st_size != size:
                        continue
                    key = (e.path, st.st_size, st.st_mtime_ns)
                    if key not in self._digests:
                        self._digests[key] = file_sha256(e.path)
                    digest = digest or file_sha256(path)
                    if self._digests[key] == digest:
                        raise DuplicateClip(name, e.name)

    @staticmethod
    def _link_unique(source: str, folder: str, stem: str, extension: str) -> str:
        """Hard-link ``source`` into ``folder`` as ``stem.ext``, ``stem-2.ext``, ...: the
        first name no file has (``link`` fails rather than replace one)."""
        for n in range(1, 100000):
            name = f"{stem}{extension}" if n == 1 else f"{stem}-{n}{extension}"
            try:
                os.link(source, os.path.join(folder, name))
                return name
            except FileExistsError:
                continue
        raise ProjectError(409, f"too many clips named {stem}")

    def delete_clip(self, class_name: str, clip: str) -> None:
        with self._lock:
            path = self.clip_path(class_name, clip)
            os.unlink(path)
            atomic_files.fsync_folder(os.path.dirname(path))

    def move_clip(self, class_name: str, clip: str, new_class: str) -> dict:
        """Move a clip to another class (created if needed): a wrong label, corrected."""
        with self._lock:
            path = self.clip_path(class_name, clip)
            self.add_class(new_class)
            folder = self._class_dir(new_class)
            if os.path.dirname(path) == folder:
                return {"class": os.path.basename(folder), "id": clip}
            stem, extension = os.path.splitext(clip)
            name = self._link_unique(path, folder, stem, extension)
            os.unlink(path)  # a kill between the two leaves the clip in both; a restart keeps the new one
            atomic_files.fsync_folder(folder)
            atomic_files.fsync_folder(os.path.dirname(path))
            return {"class": os.path.basename(folder), "id": name}

    # --- training and export ----------------------------------------------------------

    def snapshot(self, target: str, min_clips: int = 1) -> dict[str, int]:
        """Hard links of every clip, in class folders under ``target`` (replaced whole): what
        training reads, so clips added, moved or deleted meanwhile change nothing under it.
        Classes with fewer than ``min_clips`` clips are left out. Clips per class copied."""
        with self._lock:
            counts = {}
            staging = atomic_files.new_temp_folder(target)
            try:
                for name in self.class_names():
                    try:
                        clips = self.clips(name)
                    except ProjectError:
                        continue
                    if len(clips) < min_clips:
                        continue
                    os.mkdir(os.path.join(staging, name))
                    for c in clips:
                        _link_or_copy(os.path.join(self.root, name, c["id"]), os.path.join(staging, name, c["id"]))
                    counts[name] = len(clips)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        if os.path.isdir(target):
            gone = os.path.join(self.trash, f"snapshot.{secrets.token_hex(4)}")
            atomic_files.move_entry(target, gone, durable=False)
            shutil.rmtree(gone, ignore_errors=True)
        atomic_files.move_entry(staging, target)
        return counts

    def write_zip(self, target: str, extra: Iterator[tuple[str, str]] = ()) -> None:
        """A zip of the class folders (as ``<project>/<class>/<clip>``) and of ``extra``
        ``(path, name in the zip)`` pairs (the model folder), written to ``target``."""
        top = os.path.basename(self.root) or "project"
        with self._lock:
            entries = [(os.path.join(self.root, name, c["id"]), f"{top}/{name}/{c['id']}")
                       for name in self.class_names() for c in self._safe_clips(name)]
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
            for path, arcname in entries:
                with contextlib.suppress(FileNotFoundError):  # deleted since the listing
                    z.write(path, arcname, compress_type=zipfile.ZIP_STORED if path.endswith(".flac")
                            or path.endswith(".mp3") or path.endswith(".ogg") else zipfile.ZIP_DEFLATED)
            for path, arcname in extra:
                z.write(path, f"{top}/{arcname}")

    def _safe_clips(self, name: str) -> list[dict]:
        try:
            return self.clips(name)
        except ProjectError:
            return []


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


def extension_of(path: str, name: str) -> Optional[str]:
    """The extension ``path``'s bytes belong under: the uploaded name's when it is an audio
    extension, else the one libsndfile's reading of the header gives (None: unknown)."""
    extension = os.path.splitext(name)[1].lower()
    if extension in AUDIO_EXTENSIONS:
        return extension
    from soundretrain.audio import open_audio  # the opener audio_header and the decoder use

    try:
        with open_audio(path, warn=False) as f:
            return _SNDFILE_EXTENSIONS.get(f.format)
    except Exception:
        return None
