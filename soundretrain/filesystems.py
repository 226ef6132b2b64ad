"""Paths that are local files or URLs of Apache Beam's filesystems (``gs://``, ``s3://``,
``hdfs://``, ``azfs://``, ...), behind one small set of functions.

A local path (no ``scheme://``) goes straight to ``os`` and :mod:`soundretrain.atomic_files`,
exactly as the stages did before, and never imports Apache Beam. A URL goes through
``apache_beam.io.filesystems.FileSystems``, so it works wherever the matching Beam extra is
installed (``apache-beam[gcp]`` for ``gs://``, ``[aws]`` for ``s3://``, ...). The Beam pipelines
of both stages (:mod:`spectrograms.beam_pipeline`, :mod:`retrain.beam_bottlenecks`) read and
write through here; listing code reads a folder through a :class:`Tree`, which lists a
remote folder once (one ``match`` of ``<root>/**``) instead of asking about every file.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass
from typing import Iterator, Optional

from soundretrain import atomic_files

_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][-a-zA-Z0-9+.]*)://")
# Object stores make an upload visible only when it is complete: written in place. Other
# filesystems (hdfs://, ...) get a temp name and a rename, as local files do.
ATOMIC_UPLOAD_SCHEMES = ("gs", "s3", "azfs")


def scheme(path: str) -> Optional[str]:
    """``gs`` for ``gs://bucket/x``; None for a local path."""
    m = _SCHEME.match(os.fspath(path))
    return m.group("scheme").lower() if m else None


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL of a Beam filesystem, False for a local path."""
    return scheme(os.fspath(path)) is not None


def _beam():
    try:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
    except ImportError:
        raise OSError("paths with a scheme:// need Apache Beam's filesystems: "
                      "pip install 'soundretrain[beam]' (and apache-beam[gcp] for gs://, "
                      "apache-beam[aws] for s3://)") from None
    return FileSystems, CompressionTypes


def _io_error(err: Exception, path: str) -> OSError:
    """Beam raises its BeamIOError (or the client library's own errors): one OSError naming
    the path, so callers handle local and remote failures alike."""
    if isinstance(err, OSError) and getattr(err, "filename", None):
        return err
    text = " ".join(str(err).split()) or type(err).__name__
    return OSError(f"{path}: {text}")


def join(base: str, *parts: str) -> str:
    """``os.path.join`` for local paths; ``/``-joined for URLs."""
    if not is_remote(base):
        return os.path.join(base, *parts)
    out = base
    for part in parts:
        out = out.rstrip("/") + "/" + part.lstrip("/")
    return out


def dirname(path: str) -> str:
    if not is_remote(path):
        return os.path.dirname(path)
    head = posixpath.dirname(path.rstrip("/"))
    return head if "://" in head and not head.endswith(":/") else path


def basename(path: str) -> str:
    return os.path.basename(path) if not is_remote(path) else posixpath.basename(path.rstrip("/"))


def abspath(path: str) -> str:
    """Local: absolute, ``~`` expanded. A URL is returned as it is."""
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class FileInfo:
    size: int
    mtime: float  # seconds since the epoch
    mtime_ns: int  # the same in nanoseconds (os.stat's st_mtime_ns for local files)


def _remote_info(size, seconds) -> FileInfo:
    seconds = float(seconds or 0.0)
    return FileInfo(int(size), seconds, int(round(seconds * 1e9)))


def info(path: str) -> Optional[FileInfo]:
    """Size and modification time of a file; None when it does not exist."""
    if not is_remote(path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return FileInfo(st.st_size, st.st_mtime, st.st_mtime_ns)
    FileSystems, _ = _beam()
    try:
        found = FileSystems.match([path])[0].metadata_list
    except Exception as err:  # noqa: BLE001 - BeamIOError wraps the client's error
        if "not found" in str(err).lower() or "no such" in str(err).lower():
            return None
        raise _io_error(err, path) from None
    for meta in found:
        if meta.path == path:
            return _remote_info(meta.size_in_bytes, meta.last_updated_in_seconds)
    return None


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    return info(path) is not None


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    return info(path) is not None


def read_bytes(path: str) -> bytes:
    """The whole file. Raises FileNotFoundError when it is absent, OSError otherwise."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    FileSystems, CompressionTypes = _beam()
    try:
        # UNCOMPRESSED: the default (AUTO) would gunzip a file whose name ends in .gz
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()
    except Exception as err:  # noqa: BLE001
        if info(path) is None:
            raise FileNotFoundError(2, "No such file", path) from None
        raise _io_error(err, path) from None


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees half of it: locally with
    :func:`soundretrain.atomic_files.write_bytes` (temp name, rename; ``durable`` fsyncs);
    on object stores by one upload (an object appears only when complete); elsewhere under a
    temp name renamed into place."""
    if not is_remote(path):
        atomic_files.write_bytes(path, data, durable=durable)
        return
    FileSystems, CompressionTypes = _beam()
    target = path
    if scheme(path) not in ATOMIC_UPLOAD_SCHEMES:
        target = join(dirname(path), f".{basename(path)}.{os.urandom(4).hex()}.tmp")
    try:
        with FileSystems.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
        if target != path:
            with contextlib.suppress(Exception):
                FileSystems.delete([path])
            FileSystems.rename([target], [path])
    except Exception as err:  # noqa: BLE001
        if target != path:
            with contextlib.suppress(Exception):
                FileSystems.delete([target])
        raise _io_error(err, path) from None


def write_text(path: str, text: str, *, durable: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), durable=durable)


def delete(paths: list[str]) -> None:
    """Delete files; absent ones are not an error."""
    local = [p for p in paths if not is_remote(p)]
    remote = [p for p in paths if is_remote(p)]
    for p in local:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
    if remote:
        FileSystems, _ = _beam()
        for p in remote:  # one by one: a missing one must not stop the others
            try:
                FileSystems.delete([p])
            except Exception as err:  # noqa: BLE001
                if info(p) is not None:
                    raise _io_error(err, p) from None


def list_files(folder: str) -> list[str]:
    """Every file below ``folder`` (recursive), as full paths; [] when there is none."""
    if not is_remote(folder):
        out = []
        for top, _, files in os.walk(folder):
            out += [os.path.join(top, f) for f in files]
        return sorted(out)
    return sorted(_remote_listing(folder))


def _remote_listing(folder: str) -> dict[str, FileInfo]:
    FileSystems, _ = _beam()
    root = folder.rstrip("/")
    try:
        found = FileSystems.match([root + "/**"])[0].metadata_list
    except Exception as err:  # noqa: BLE001
        text = str(err).lower()
        if "not found" in text or "no such" in text:
            return {}
        raise _io_error(err, folder) from None
    return {m.path: _remote_info(m.size_in_bytes, m.last_updated_in_seconds)
            for m in found if not m.path.endswith("/")}  # "folder" placeholder objects


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """A local path holding ``path``'s bytes: ``path`` itself when it is local, else a
    temporary copy with the same name (decoders pick the format by its extension), removed
    afterwards."""
    if not is_remote(path):
        yield path
        return
    data = read_bytes(path)
    with tempfile.TemporaryDirectory(prefix="soundretrain-") as tmp:
        copy = os.path.join(tmp, basename(path) or "file")
        with open(copy, "wb") as f:
            f.write(data)
        yield copy


class Tree:
    """Read-only questions about the files below ``root``, for listing code (data sets, image
    folders): local paths ask ``os`` each time, as before; a remote root is listed once.

    Every path given to it must lie below ``root``.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.remote = is_remote(root)
        self._files: Optional[dict[str, FileInfo]] = None
        self._dirs: Optional[set[str]] = None

    def _listing(self) -> dict[str, FileInfo]:
        if self._files is None:
            self._files = _remote_listing(self.root)
            dirs = set()
            for p in self._files:
                head = p.rsplit("/", 1)[0]
                while len(head) >= len(self.root.rstrip("/")) and head not in dirs:
                    dirs.add(head)
                    head = head.rsplit("/", 1)[0]
            self._dirs = dirs
        return self._files

    def join(self, base: str, *parts: str) -> str:
        return join(base, *parts)

    def exists(self, path: str) -> bool:
        return os.path.exists(path) if not self.remote else (self.isfile(path) or self.isdir(path))

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path) if not self.remote else path in self._listing()

    def islink(self, path: str) -> bool:
        return not self.remote and os.path.islink(path)

    def isdir(self, path: str) -> bool:
        if not self.remote:
            return os.path.isdir(path)
        self._listing()
        return path.rstrip("/") in self._dirs

    def listdir(self, path: str) -> list[str]:
        """Names directly in ``path`` (files and folders), unsorted as ``os.listdir``."""
        if not self.remote:
            return os.listdir(path)
        if not self.isdir(path):
            raise FileNotFoundError(2, "No such folder", path)
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/", 1)[0] for p in self._listing() if p.startswith(prefix)}
        return sorted(n for n in names if n)

    def info(self, path: str) -> Optional[FileInfo]:
        return info(path) if not self.remote else self._listing().get(path)

    def read_bytes(self, path: str) -> bytes:
        return read_bytes(path)

    def open_text(self, path: str, encoding: str = "utf-8", newline: Optional[str] = None):
        """A text file object (``csv`` reads it)."""
        if not self.remote:
            return open(path, encoding=encoding, newline=newline)
        import io

        return io.TextIOWrapper(io.BytesIO(read_bytes(path)), encoding=encoding, newline=newline)

    def abspath(self, path: str) -> str:
        return abspath(path)
