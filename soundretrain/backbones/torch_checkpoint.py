"""Read ``torch.save`` checkpoints (legacy and zip formats) without PyTorch.

The legacy format is a concatenation of pickles followed by raw storage bytes:

1. magic number, protocol version (1001), system info (endianness, type sizes);
2. the object itself, where each tensor is ``torch._utils._rebuild_tensor_v2(storage,
   offset, size, stride, ...)`` and each storage a persistent id
   ``("storage", StorageType, key, location, numel, view_metadata)``;
3. the list of storage keys, in the order their data follows;
4. for each key: an int64 element count, then the little-endian elements.

The zip format (PyTorch >= 1.6) stores the object as ``<archive>/data.pkl`` (persistent
ids ``("storage", StorageType, key, location, numel)``) and each storage's bytes as
``<archive>/data/<key>``.

Every pickle in either format (headers and key lists too) goes through the restricted
unpickler of :mod:`soundretrain.backbones.restricted_pickle`, which resolves only the
handful of globals a state dict needs (plus numpy's numeric scalars, which some
checkpoints keep beside it), so a hostile file cannot run code (unlike ``pickle.load``):
it is refused with a one-line :class:`CheckpointError`.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

from soundretrain.backbones.restricted_pickle import (
    NUMPY_SCALARS, RestrictedUnpickler, UnsafePickleError, resolve)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands, or it was refused;
    the message is one line."""


@dataclass(frozen=True)
class _StorageType:
    dtype: Any


@dataclass
class _Storage:
    key: str
    dtype: Any
    numel: int
    data: np.ndarray | None = None


@dataclass
class _PendingTensor:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def materialise(self) -> np.ndarray:
        storage = self.storage
        if not isinstance(storage, _Storage):
            raise CheckpointError("a tensor without a storage")
        if storage.data is None:
            raise CheckpointError(f"storage {storage.key} has no data")
        size, stride, offset = self.size, self.stride, self.offset
        if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0
                                               for v in (offset, *size, *stride)):
            raise CheckpointError(f"tensor of storage {storage.key} has a bad size or stride")
        # as_strided does not check bounds: the last element must lie inside the storage.
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
        if last >= len(storage.data):
            raise CheckpointError(f"tensor reaches past the end of storage {storage.key}")
        itemsize = storage.data.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage.data[offset:],
            shape=tuple(size),
            strides=tuple(s * itemsize for s in stride),
            writeable=False,
        )
        return np.array(view, dtype=storage.data.dtype.newbyteorder("="))  # own, contiguous


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, *extra) -> _PendingTensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride) -> _PendingTensor:
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
        raise CheckpointError("a tensor with a bad size or stride")
    return _PendingTensor(storage, storage_offset, tuple(size), tuple(stride))


def _storage_type(name: str) -> _StorageType:
    return _StorageType(_STORAGE_DTYPES[name])


#: Everything a PyTorch state dict pickles, as stand-ins (see restricted_pickle).
_TORCH_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    **{("torch", name): _storage_type(name) for name in _STORAGE_DTYPES},
}
#: A checkpoint may also pickle numpy integers and floats beside its state dict (aiSFX's
#: ``(state_dict, {dataset: (np.int64 index, classes)})``): those scalars and nothing more
#: of numpy (no arrays, no object dtypes).
_CHECKPOINT_GLOBALS = {**_TORCH_GLOBALS, **NUMPY_SCALARS}


def _unpickler(f, storages: Dict[str, _Storage] | None = None, zip_reader=None):
    """The one unpickler for every pickle of a checkpoint (headers and storage-key lists
    included): only the globals above resolve."""
    def persistent_load(pid):
        if storages is None:
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        return _storage_for(pid, storages, zip_reader)
    return RestrictedUnpickler(f, _CHECKPOINT_GLOBALS, persistent_load=persistent_load)


def _storage_for(pid, storages: Dict[str, _Storage], zip_reader) -> _Storage:
    # legacy: ("storage", type, key, location, numel, view_metadata); zip: the first five
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise CheckpointError(f"unsupported persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid[:5]
    if len(pid) == 6 and pid[5] is not None:
        raise CheckpointError("storage views are not supported")
    if not isinstance(storage_type, _StorageType):
        raise CheckpointError(f"unknown storage type {storage_type!r}")
    if not isinstance(numel, int) or numel < 0:
        raise CheckpointError(f"bad storage size {numel!r}")
    key = str(key)
    if key not in storages:
        storage = _Storage(key, storage_type.dtype, numel)
        if zip_reader is not None:
            storage.data = zip_reader(storage)
        storages[key] = storage
    return storages[key]


def _resolve(obj):
    def tensor(o):
        return o.materialise() if isinstance(o, _PendingTensor) else o
    return resolve(obj, tensor)


_LOAD_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError)


def _refused(path, err: UnsafePickleError) -> CheckpointError:
    return CheckpointError(f"{path} {err}")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Whatever ``torch.load(path)`` returns, with tensors as numpy arrays: a legacy
    (pre-1.6) or zip (PyTorch >= 1.6) checkpoint, read without PyTorch."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return read_zip_checkpoint(path)
    return _read_legacy(path)


def read_legacy_checkpoint(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Return a legacy checkpoint's state dict as ``{name: numpy array}`` (an OrderedDict)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        raise CheckpointError(f"{path} is a zip (PyTorch >= 1.6) checkpoint, not a legacy one")
    return _read_legacy(path)


def _read_legacy(path) -> Any:
    with open(path, "rb") as f:
        raw = f.read()
    f = io.BytesIO(raw)
    try:
        magic = _unpickler(f).load()
        protocol = _unpickler(f).load()
        sys_info = _unpickler(f).load()
    except UnsafePickleError as err:
        raise _refused(path, err) from None
    except (CheckpointError, *_LOAD_ERRORS) as err:
        raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint ({err})") from None
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint (bad magic or protocol)")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError(f"{path} was written big-endian, which is not supported")

    storages: Dict[str, _Storage] = {}
    try:
        obj = _unpickler(f, storages).load()
        keys = _unpickler(f).load()
    except UnsafePickleError as err:
        raise _refused(path, err) from None
    except CheckpointError:
        raise
    except _LOAD_ERRORS as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({err})") from None
    if not isinstance(keys, list):
        raise CheckpointError(f"{path} is corrupt (no list of storage keys)")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CheckpointError(f"{path}: storage {key} listed but never used")
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError(f"{path} is truncated (storage {key})")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * np.dtype(storage.dtype).itemsize
        data = f.read(nbytes)
        if numel != storage.numel or len(data) != nbytes:
            raise CheckpointError(f"{path} is truncated or corrupt (storage {key})")
        storage.data = np.frombuffer(data, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    try:
        return _resolve(obj)
    except UnsafePickleError as err:
        raise _refused(path, err) from None


def read_zip_checkpoint(path: str | os.PathLike) -> Any:
    """A zip checkpoint (``torch.save`` since PyTorch 1.6): ``<archive>/data.pkl`` holds the
    object, ``<archive>/data/<key>`` each storage's raw bytes (little-endian unless
    ``<archive>/byteorder`` says otherwise)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({err})") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint "
                                  "(no <archive>/data.pkl)")
        prefix = pickles[0][:-len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
            raise CheckpointError(f"{path} was written big-endian, which is not supported")

        def read_storage(storage: _Storage) -> np.ndarray:
            dtype = np.dtype(storage.dtype).newbyteorder("<")
            try:
                data = archive.read(f"{prefix}data/{storage.key}")
            except KeyError:
                raise CheckpointError(f"{path} lacks storage {storage.key}") from None
            if len(data) != storage.numel * dtype.itemsize:
                raise CheckpointError(f"{path} is truncated or corrupt (storage {storage.key})")
            return np.frombuffer(data, dtype=dtype)

        try:
            obj = _unpickler(io.BytesIO(archive.read(pickles[0])), {}, read_storage).load()
            return _resolve(obj)
        except UnsafePickleError as err:
            raise _refused(path, err) from None
        except CheckpointError:
            raise
        except (*_LOAD_ERRORS, zipfile.BadZipFile) as err:
            raise CheckpointError(f"{path} is truncated or corrupt ({err})") from None
