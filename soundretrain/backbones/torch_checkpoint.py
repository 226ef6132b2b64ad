"""Read a legacy (pre-zip, PyTorch < 1.6) ``torch.save`` checkpoint without PyTorch.

The legacy format is a concatenation of pickles followed by raw storage bytes:

1. magic number, protocol version (1001), system info (endianness, type sizes);
2. the object itself, where each tensor is ``torch._utils._rebuild_tensor_v2(storage,
   offset, size, stride, ...)`` and each storage a persistent id
   ``("storage", StorageType, key, location, numel, view_metadata)``;
3. the list of storage keys, in the order their data follows;
4. for each key: an int64 element count, then the little-endian elements.

The unpickler only resolves the handful of globals a state dict needs, so a hostile
file cannot run code (unlike ``pickle.load``).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

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
    """The file is not a legacy PyTorch checkpoint this reader understands."""


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
        if self.storage.data is None:
            raise CheckpointError(f"storage {self.storage.key} has no data")
        itemsize = self.storage.data.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset:],
            shape=tuple(self.size),
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)  # own the memory, contiguous


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, *extra) -> _PendingTensor:
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride) -> _PendingTensor:
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: Dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which a weights file should not need")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if view_metadata is not None:
            raise CheckpointError("storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unknown storage type {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(str(key), storage_type.dtype, int(numel))
        return self._storages[key]


def _resolve(obj):
    if isinstance(obj, _PendingTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def read_legacy_checkpoint(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Return the checkpoint's state dict as ``{name: numpy array}`` (an OrderedDict)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"PK":
        raise CheckpointError(f"{path} is a zip (PyTorch >= 1.6) checkpoint, not a legacy one")
    f = io.BytesIO(raw)
    try:
        magic = pickle.Unpickler(f).load()
        protocol = pickle.Unpickler(f).load()
        sys_info = _RestrictedUnpickler(f, {}).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint ({err})") from None
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint (bad magic or protocol)")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError(f"{path} was written big-endian, which is not supported")

    storages: Dict[str, _Storage] = {}
    try:
        obj = _RestrictedUnpickler(f, storages).load()
        keys = pickle.Unpickler(f).load()
    except (pickle.UnpicklingError, EOFError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({err})") from None
    for key in keys:
        storage = storages.get(key)
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
    return _resolve(obj)
