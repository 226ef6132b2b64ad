"""Atomic writes: a reader never sees a half-written artifact.

Files are written under a temporary name in the same folder and moved into place with
``os.replace`` (atomic on POSIX). A folder (a SavedModel) is written to a temporary
sibling folder and swapped in with two renames; between them the old folder stays
complete under a backup name, so a crash leaves either the old or the new one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from typing import Iterator

# What a SavedModel folder holds; a folder without any of these is not replaced.
SAVED_MODEL_MARKERS = ("saved_model.pb", "saved_model.pbtxt", "soundretrain.json")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_if_created(path: str, mode: int) -> None:
    """``mkstemp``/``mkdtemp`` create private (0600/0700) entries; give the artifact the
    permissions a plain ``open()``/``mkdir()`` would (``mode`` minus the umask)."""
    os.chmod(path, mode & ~_umask())


def check_file_target(path: str) -> None:
    """Refuse a file target that is an existing folder (one clear OSError)."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file name", path)


def check_folder_target(path: str) -> None:
    """Refuse to replace anything but a missing path, an empty folder or a SavedModel
    folder: replacing removes the old folder, so ``--saved_model_dir=.`` or a typo naming
    a folder of recordings must never delete it."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise FileExistsError(errno.EEXIST, "exists and is not a folder; not replacing it", path)
    entries = os.listdir(path)
    if entries and not any(m in entries for m in SAVED_MODEL_MARKERS):
        raise FileExistsError(errno.EEXIST, "exists and is not a SavedModel folder; not replacing "
                              "it (choose a new or empty folder)", path)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    check_file_target(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        _as_if_created(tmp, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def replacing_folder(path: str) -> Iterator[str]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path``.

    On an exception the temporary folder is removed and ``path`` is left untouched.
    Only a missing path, an empty folder or a SavedModel folder is replaced
    (:func:`check_folder_target`).
    """
    path = os.path.abspath(path)
    check_folder_target(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        _as_if_created(tmp, 0o777)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(path):
        backup = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
        os.rmdir(backup)
        os.replace(path, backup)
        os.replace(tmp, path)
        if os.path.isdir(backup) and not os.path.islink(backup):
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.unlink(backup)
    else:
        os.replace(tmp, path)
