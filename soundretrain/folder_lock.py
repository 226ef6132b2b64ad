"""One writer per folder: an advisory lock that a second run finds busy.

``spectrograms`` holds it on its ``--output_dir`` for the whole run: two runs writing one
folder at once would each rewrite ``manifest.csv`` from their own view (one run's classes
vanish from it) and each would delete the other's in-flight temp files as leftovers.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<folder>/.soundretrain.lock``, which
holds the holder's pid, host and start time for the message. The kernel drops the lock when
the process ends, however it ends (``kill -9`` included), so a lock file left behind never
blocks anyone; worker processes do not inherit it. The holder removes the file when it is
done; a process that locked a file just removed (it opened it a moment before) notices that
the path no longer names its file and locks the new one instead. Where ``fcntl`` does not exist
(Windows), no lock is taken.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
from typing import Iterator

LOCK_FILENAME = ".soundretrain.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class FolderBusy(OSError):
    """Another process holds the folder's lock; the message is one line naming it."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text.splitlines()[0] if text else ""


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire(path: str, folder: str, what: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusy(f"{folder} is in use by another {what}{f' ({holder})' if holder else ''}; "
                             "wait for it to finish or choose another folder") from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the holder removed it as we opened it: lock the new file


@contextlib.contextmanager
def folder_lock(folder: str, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; raise :class:`FolderBusy` at once when another
    process holds it (``what`` names the kind of run in the message, e.g. "spectrograms run").
    Within one process the lock is not exclusive (POSIX record locks belong to processes)."""
    if fcntl is None:
        yield
        return
    path = os.path.join(folder, LOCK_FILENAME)
    fd = _acquire(path, folder, what)
    try:
        started = datetime.datetime.now().isoformat(timespec="seconds")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        except OSError as err:  # a full disk: say where, before any work (the finally unlocks)
            raise OSError(err.errno, err.strerror, path) from None
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still locked: a newcomer that opened it finds it gone and retries
        os.close(fd)  # releases the lock
