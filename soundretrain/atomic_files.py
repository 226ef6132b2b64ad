"""Atomic writes: a reader never sees a half-written artifact, and a crash leaves the old
version or the new one, never a mix. Every stage writes its files through this module.

* A file is written under a temporary name in the target's own folder (so the rename is
  atomic: same filesystem), flushed and fsynced, then moved over the target with
  ``os.replace``; the folder is fsynced too, so the rename itself survives a power cut.
  ``durable=False`` skips both fsyncs for bulk writes of many small files (spectrogram
  images, bottleneck entries): the rename is still atomic for every process, and those
  files are checked on reading (the manifest records each image's size and hash).
* A folder (a SavedModel) is built in a temporary sibling and swapped in with one atomic
  exchange (Linux ``renameat2(RENAME_EXCHANGE)``), so a kill at any moment leaves the old or
  the new folder at the path, never none. Where the system cannot exchange, two renames;
  between them the old folder stays complete under a backup name.
* Temporary entries are hidden and named ``.<name>.<random>.tmp``, so listings of images
  skip them and :func:`remove_temp_files` can clear those a killed process left.
* Permissions are those a plain ``open()``/``mkdir()`` would give: entries are created with
  mode 0666/0777 and the umask applies; replacing an existing file keeps its mode.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import re
import secrets
import shutil
import stat
from typing import Iterator, Optional

# What a SavedModel folder holds; a folder without any of these is not replaced.
SAVED_MODEL_MARKERS = ("saved_model.pb", "saved_model.pbtxt", "soundretrain.json")

# ".<name>.<8 random chars>.tmp" (this module, and tempfile's mkstemp/mkdtemp before it), and
# "<name>.tmp-<pid>", the older writers' pattern, so their leftovers are cleaned too.
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp|old)$|\.tmp-\d+$")
_MAX_NAME_BYTES = 200  # of the target's name kept in a temp name (file names stop at 255)


def is_temp_name(name: str) -> bool:
    """True for the name of a temporary entry this module (or an older writer) made."""
    return bool(_TEMP_NAME.search(name))


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


def _temp_name(target_name: str, suffix: str = "tmp") -> str:
    name = target_name
    while len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        name = name[:-1]
    return f".{name}.{secrets.token_hex(4)}.{suffix}"


def _create_temp_file(folder: str, target_name: str) -> tuple[str, int]:
    """A new, empty temp file in ``folder``: ``(path, fd open for writing)``."""
    while True:
        tmp = os.path.join(folder, _temp_name(target_name))
        try:  # 0o666 and the umask: what open(path, "w") creates
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


def _keep_mode(tmp: str, path: str) -> None:
    """Replacing an existing file keeps its permissions, as writing into it would."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode):
        with contextlib.suppress(OSError):
            os.chmod(tmp, stat.S_IMODE(st.st_mode))


def fsync_folder(folder: str) -> None:
    """Make a rename or creation inside ``folder`` durable (a no-op where folders cannot be
    opened or synced, e.g. Windows and some network filesystems)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def replacing_file(path: str | os.PathLike, *, durable: bool = True) -> Iterator[str]:
    """Yield the path of a new, empty temp file beside ``path`` for a writer that takes a
    path (``soundfile.write``, ``savefig``, ...). When the block ends normally the temp
    file replaces ``path``; on an exception it is removed and ``path`` is left untouched.
    Give writers an explicit format: the temp name ends in ``.tmp``."""
    path = os.fspath(path)
    check_file_target(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp, fd = _create_temp_file(folder, os.path.basename(path))
    os.close(fd)
    try:
        _keep_mode(tmp, path)
        yield tmp
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        fsync_folder(folder)


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (``durable``: fsync the file and its folder)."""
    path = os.fspath(path)
    check_file_target(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp, fd = _create_temp_file(folder, os.path.basename(path))
    try:
        _keep_mode(tmp, path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _unlink_quietly(tmp)
        if isinstance(err, OSError) and err.filename is None and err.errno:
            # A full disk says only "No space left on device": name the file it was for.
            raise OSError(err.errno, err.strerror, path) from None
        raise
    if durable:
        fsync_folder(folder)


def write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"), durable=durable)


def fsync_tree(root: str) -> None:
    """fsync every file and folder under ``root`` (before renaming it into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                _fsync_path(os.path.join(folder, name))
        fsync_folder(folder)


def new_temp_folder(target: str | os.PathLike, suffix: str = "tmp") -> str:
    """A new, empty hidden temp folder beside ``target`` (``.<name>.<random>.<suffix>``), for
    building something to rename into place; the umask applies, as for a plain mkdir()."""
    target = os.path.abspath(os.fspath(target))
    return _make_temp_folder(os.path.dirname(target), os.path.basename(target), suffix)


def _make_temp_folder(parent: str, target_name: str, suffix: str = "tmp") -> str:
    while True:
        tmp = os.path.join(parent, _temp_name(target_name, suffix))
        try:
            os.mkdir(tmp, 0o777)  # the umask applies, as for a plain mkdir()
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike, *, durable: bool = True,
                     check: bool = True) -> Iterator[str]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path``.

    On an exception the temporary folder is removed and ``path`` is left untouched.
    Only a missing path, an empty folder or a SavedModel folder is replaced
    (:func:`check_folder_target`), unless the caller made its own check (``check=False``:
    :mod:`soundretrain.model_folder`).
    """
    path = os.path.abspath(os.fspath(path))
    if check:
        check_folder_target(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = _make_temp_folder(parent, os.path.basename(path))
    try:
        yield tmp
        if durable:
            fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(path):
        if exchange_paths(tmp, path):  # one atomic step: ``tmp`` now holds the old folder
            backup = tmp
        else:
            backup = os.path.join(parent, _temp_name(os.path.basename(path), "old"))
            os.replace(path, backup)
            os.replace(tmp, path)
        if os.path.isdir(backup) and not os.path.islink(backup):
            shutil.rmtree(backup, ignore_errors=True)
        else:
            _unlink_quietly(backup)
    else:
        os.replace(tmp, path)
    if durable:
        fsync_folder(parent)


def remove_temp_files(folder: str, older_than_s: Optional[float] = None) -> int:
    """Remove the temp files and folders writers killed mid-write left in ``folder`` (never
    complete artifacts: they were not renamed into place); return how many. Only call it
    while no other process writes there (hold the folder's lock), or pass ``older_than_s``
    to spare entries younger than that."""
    import time

    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not is_temp_name(name):
            continue
        full = os.path.join(folder, name)
        try:
            if older_than_s is not None and time.time() - os.lstat(full).st_mtime < older_than_s:
                continue
        except OSError:
            continue
        removed += _remove_entry(full)
    return removed


def _remove_entry(full: str) -> bool:
    """Remove a file, link or folder; False when it cannot be (gone already, permissions)."""
    try:
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)
        return True
    except OSError:
        return False


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange_paths(a: str, b: str) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``): every process sees either both old or both new names. Returns
    False, changing nothing, where the system or the filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False  # not supported here: the caller falls back on two renames
    raise OSError(code, os.strerror(code), b)


_RENAME_NOREPLACE = 1  # linux/fs.h


def move_entry(source: str, target: str, *, durable: bool = True) -> None:
    """Give a file or folder a new name on the same filesystem in one atomic step that never
    replaces an existing ``target`` (``FileExistsError``): Linux ``renameat2`` with
    ``RENAME_NOREPLACE``; elsewhere a check then ``rename`` (callers serialise their own
    moves). A case-only rename of one entry (``Dog`` -> ``dog`` on a case-insensitive disk)
    is allowed. Both folders are fsynced unless ``durable=False``."""
    same = os.path.lexists(target) and same_entry(source, target)
    if os.path.lexists(target) and not same:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    if same or not _rename_noreplace(source, target):
        os.rename(source, target)
    if durable:
        for folder in {os.path.dirname(os.path.abspath(source)), os.path.dirname(os.path.abspath(target))}:
            fsync_folder(folder)


def same_entry(a: str, b: str) -> bool:
    """``a`` and ``b`` name one file or folder (a case-only rename on a case-insensitive disk)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _rename_noreplace(source: str, target: str) -> bool:
    """``renameat2(RENAME_NOREPLACE)``; False (nothing done) where it is not supported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), target)


@contextlib.contextmanager
def exclusive_folders(*folders: str) -> Iterator[None]:
    """Hold an exclusive lock on each folder (``flock`` on the folder itself: no lock file),
    waiting for other holders; the kernel releases it when the process ends, however it ends.
    Writers of one set of artifacts hold it, so one can clean another's leftovers safely and
    two never interleave. Where ``fcntl`` does not exist, no lock is taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fds = []
    try:
        for folder in sorted({os.path.abspath(f) for f in folders}):  # one order: no deadlock
            os.makedirs(folder, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # releases the lock


def is_leftover_of(entry: str, target_name: str) -> bool:
    """Whether ``entry`` is a temp file or folder a writer of ``target_name`` (or of its
    ``.json`` sidecar) made beside it."""
    return bool(re.match(rf"^\.{re.escape(target_name)}(\.json)?\.[A-Za-z0-9_]{{8}}\.(tmp|old)$", entry))


def remove_leftovers_of(target: str) -> int:
    """Remove the temp files and folders that writers of ``target`` (and of its ``.json``
    sidecar) killed mid-write left beside it; return how many. Hold
    :func:`exclusive_folders` on its folder while calling it."""
    folder, name = os.path.split(os.path.abspath(target))
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for entry in names:
        if not is_leftover_of(entry, name):
            continue
        removed += _remove_entry(os.path.join(folder, entry))
    return removed
