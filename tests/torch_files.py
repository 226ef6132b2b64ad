"""Writers of PyTorch checkpoint files (legacy and zip layouts) without PyTorch, for tests."""
from __future__ import annotations

import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np

from soundretrain.backbones.torch_checkpoint import LEGACY_MAGIC, LEGACY_PROTOCOL


# Stand-ins pickled under harmless module names, renamed to torch's in the byte stream
# (protocol 2 writes globals as text lines), so the test never fakes a `torch` module.
FAKE_UTILS, FAKE_TORCH = "_ckpt_test_torch_utils", "_ckpt_test_torch"


def rebuild_tensor_v2(*args):  # pragma: no cover - only pickled by reference
    raise AssertionError


rebuild_tensor_v2.__name__ = rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"  # torch's name


class FloatStorage:
    """Stand-in pickled by reference only."""


for _fake, _name, _obj in ((FAKE_UTILS, "_rebuild_tensor_v2", rebuild_tensor_v2),
                           (FAKE_TORCH, "FloatStorage", FloatStorage)):
    _obj.__module__ = _fake
    setattr(sys.modules.setdefault(_fake, types.ModuleType(_fake)), _name, _obj)


class FakeStorage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class FakeTensor:
    def __init__(self, storage: FakeStorage, shape):
        self.storage, self.shape = storage, tuple(shape)

    def __reduce__(self):
        strides = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (rebuild_tensor_v2, (self.storage, 0, self.shape, strides, False, OrderedDict()))


class LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel, None)
        return None


def write_legacy(arrays: dict, rebuild: bytes = b"torch._utils\n_rebuild_tensor_v2\n") -> bytes:
    """The legacy torch.save layout for a dict of float32 arrays."""
    f = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL,
                                                   "little_endian": True}):
        pickle.dump(header, f, protocol=2)
    storages = {k: FakeStorage(str(i), v.size) for i, (k, v) in enumerate(arrays.items())}
    body = io.BytesIO()
    LegacyPickler(body, protocol=2).dump(
        OrderedDict((k, FakeTensor(storages[k], v.shape)) for k, v in arrays.items()))
    body = body.getvalue().replace(f"c{FAKE_UTILS}\n_rebuild_tensor_v2\n".encode(), b"c" + rebuild)
    f.write(body.replace(f"c{FAKE_TORCH}\n".encode(), b"ctorch\n"))
    pickle.dump([s.key for s in storages.values()], f, protocol=2)
    for v in arrays.values():
        f.write(struct.pack("<q", v.size))
        f.write(np.ascontiguousarray(v, "<f4").tobytes())
    return f.getvalue()


def write_zip(arrays: dict, extra=None, data_pkl: bytes | None = None) -> bytes:
    """The zip torch.save layout (PyTorch >= 1.6) for a dict of float32 arrays, optionally
    saved as ``(state_dict, extra)`` as aiSFX does."""
    storages = {k: FakeStorage(str(i), v.size) for i, (k, v) in enumerate(arrays.items())}
    state = OrderedDict((k, FakeTensor(storages[k], v.shape)) for k, v in arrays.items())
    body = io.BytesIO()

    class ZipPickler(LegacyPickler):
        def persistent_id(self, obj):
            if isinstance(obj, FakeStorage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    ZipPickler(body, protocol=2).dump(state if extra is None else (state, extra))
    body = body.getvalue().replace(f"c{FAKE_UTILS}\n".encode(), b"ctorch._utils\n")
    body = body.replace(f"c{FAKE_TORCH}\n".encode(), b"ctorch\n")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", data_pkl if data_pkl is not None else body)
        z.writestr("archive/version", "3\n")
        for k, v in arrays.items():
            z.writestr(f"archive/data/{storages[k].key}", np.ascontiguousarray(v, "<f4").tobytes())
    return out.getvalue()
