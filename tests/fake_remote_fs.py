"""A Beam filesystem with a URL scheme, for tests: ``fakeremote://bucket/key`` is the file
``$FAKE_REMOTE_ROOT/bucket/key``.

It behaves like an object store (gs://, s3://): no folders, a listing is by key prefix, an
object appears whole when its upload is closed. A real ``apache_beam.io.filesystem.FileSystem``
subclass, so the toolkit's remote code paths (``soundretrain.filesystems`` with a scheme)
run through Beam's ``FileSystems`` exactly as with a bucket, without a network. Importing
this module registers it (Beam finds filesystems among FileSystem's subclasses).
"""
from __future__ import annotations

import os
import shutil

from apache_beam.io.filesystem import BeamIOError, FileMetadata, FileSystem
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "fakeremote"
PREFIX = f"{SCHEME}://"


def _root() -> str:
    return os.environ["FAKE_REMOTE_ROOT"]


def to_local(url: str) -> str:
    assert url.startswith(PREFIX), url
    return os.path.join(_root(), url[len(PREFIX):])


def to_url(path: str) -> str:
    return PREFIX + os.path.relpath(path, _root()).replace(os.sep, "/")


class FakeRemoteFileSystem(FileSystem):
    def __init__(self, pipeline_options=None) -> None:
        super().__init__(pipeline_options)
        self._local = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        out = basepath
        for p in paths:
            out = out.rstrip("/") + "/" + p.lstrip("/")
        return out

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass  # an object store has no folders

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        local = to_local(dir_or_prefix)
        top = local if os.path.isdir(local) else os.path.dirname(local)
        for folder, _, files in os.walk(top):
            for name in files:
                full = os.path.join(folder, name)
                if full.startswith(local):
                    yield FileMetadata(to_url(full), os.path.getsize(full), os.path.getmtime(full))

    def create(self, path, mime_type="application/octet-stream", compression_type=None):
        local = to_local(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        return _Upload(local)

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        return open(to_local(path), "rb")

    def copy(self, source_file_names, destination_file_names):
        for s, d in zip(source_file_names, destination_file_names):
            os.makedirs(os.path.dirname(to_local(d)), exist_ok=True)
            shutil.copyfile(to_local(s), to_local(d))

    def rename(self, source_file_names, destination_file_names):
        for s, d in zip(source_file_names, destination_file_names):
            os.makedirs(os.path.dirname(to_local(d)), exist_ok=True)
            os.replace(to_local(s), to_local(d))

    def exists(self, path):
        return os.path.isfile(to_local(path))

    def size(self, path):
        return os.path.getsize(to_local(path))

    def last_updated(self, path):
        return os.path.getmtime(to_local(path))

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        local = to_local(path)
        try:
            return FileMetadata(path, os.path.getsize(local), os.path.getmtime(local))
        except OSError as err:
            raise BeamIOError("Metadata operation failed", {path: err}) from None

    def delete(self, paths):
        errors = {}
        for p in paths:
            try:
                os.remove(to_local(p))
            except OSError as err:
                errors[p] = err
        if errors:
            raise BeamIOError("Delete operation failed", errors)

    def report_lineage(self, path, lineage):
        pass


class _Upload:
    """Written to a hidden part file, renamed into place on close: like an object upload,
    the object appears whole or not at all."""

    def __init__(self, local: str) -> None:
        self.local = local
        self.part = os.path.join(os.path.dirname(local), f".{os.path.basename(local)}.upload")
        self.f = open(self.part, "wb")

    def write(self, data):
        return self.f.write(data)

    def close(self):
        self.f.close()
        os.replace(self.part, self.local)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
