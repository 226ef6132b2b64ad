"""The torch-free reader of legacy (pre-zip) PyTorch checkpoints."""
from __future__ import annotations

import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from soundretrain.backbones.efficientnet_lite0 import checkpoint_path
from soundretrain.backbones.torch_checkpoint import (
    LEGACY_MAGIC, LEGACY_PROTOCOL, CheckpointError, read_legacy_checkpoint)


# Stand-ins pickled under harmless module names, renamed to torch's in the byte stream
# (protocol 2 writes globals as text lines), so the test never fakes a `torch` module.
_FAKE_UTILS, _FAKE_TORCH = "_ckpt_test_torch_utils", "_ckpt_test_torch"


def _rebuild_tensor_v2(*args):  # pragma: no cover - only pickled by reference
    raise AssertionError


class FloatStorage:
    """Stand-in pickled by reference only."""


for _fake, _name, _obj in ((_FAKE_UTILS, "_rebuild_tensor_v2", _rebuild_tensor_v2),
                           (_FAKE_TORCH, "FloatStorage", FloatStorage)):
    _obj.__module__ = _fake
    setattr(sys.modules.setdefault(_fake, types.ModuleType(_fake)), _name, _obj)


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage, shape):
        self.storage, self.shape = storage, tuple(shape)

    def __reduce__(self):
        strides = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (_rebuild_tensor_v2, (self.storage, 0, self.shape, strides, False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel, None)
        return None


def write_legacy(arrays: dict, rebuild: bytes = b"torch._utils\n_rebuild_tensor_v2\n") -> bytes:
    """The legacy torch.save layout for a dict of float32 arrays."""
    f = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL,
                                                   "little_endian": True}):
        pickle.dump(header, f, protocol=2)
    storages = {k: _Storage(str(i), v.size) for i, (k, v) in enumerate(arrays.items())}
    body = io.BytesIO()
    _Pickler(body, protocol=2).dump(
        OrderedDict((k, _Tensor(storages[k], v.shape)) for k, v in arrays.items()))
    body = body.getvalue().replace(f"c{_FAKE_UTILS}\n_rebuild_tensor_v2\n".encode(), b"c" + rebuild)
    f.write(body.replace(f"c{_FAKE_TORCH}\n".encode(), b"ctorch\n"))
    pickle.dump([s.key for s in storages.values()], f, protocol=2)
    for v in arrays.values():
        f.write(struct.pack("<q", v.size))
        f.write(np.ascontiguousarray(v, "<f4").tobytes())
    return f.getvalue()


def test_reads_a_legacy_checkpoint_written_here(tmp_path):
    arrays = {"w": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b": np.ones(5, np.float32)}
    path = tmp_path / "tiny.pth"
    path.write_bytes(write_legacy(arrays))
    state = read_legacy_checkpoint(path)
    assert list(state) == ["w", "b"]
    for k, v in arrays.items():
        np.testing.assert_array_equal(state[k], v)
        assert state[k].dtype == np.float32


def test_refuses_globals_a_weights_file_does_not_need(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(write_legacy({"w": np.zeros(3, np.float32)}, rebuild=b"os\nsystem\n"))
    with pytest.raises(CheckpointError, match="os.system"):
        read_legacy_checkpoint(path)


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    data = write_legacy({"w": np.zeros(1000, np.float32)})
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_legacy_checkpoint(path)


def test_non_checkpoints_are_refused(tmp_path):
    zipped = tmp_path / "new.pth"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(CheckpointError, match="zip"):
        read_legacy_checkpoint(zipped)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a legacy"):
        read_legacy_checkpoint(text)


def test_packaged_efficientnet_checkpoint_matches_torch_load():
    torch = pytest.importorskip("torch")
    path = checkpoint_path()
    ours = read_legacy_checkpoint(path)
    theirs = torch.load(path, map_location="cpu")
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy())
