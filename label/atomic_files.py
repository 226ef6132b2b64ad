"""Atomic writes: a reader never sees a half-written artifact.

Files are written under a temporary name in the same folder and moved into place with
``os.replace`` (atomic on POSIX). A folder (a SavedModel) is written to a temporary
sibling folder and swapped in with two renames; between them the old folder stays
complete under a backup name, so a crash leaves either the old or the new one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
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
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
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
