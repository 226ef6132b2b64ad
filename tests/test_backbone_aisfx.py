"""The aiSFX port: front-end and network against references, cache, offline use, export.

Two kinds of proof:

* everywhere (fast): the TF front-end against the exact librosa call of the package's
  librosa path, and the TF network against an independent numpy implementation of the
  package's ``EmbeddingNet``, on random weights written as a zip PyTorch checkpoint in a
  temporary fake package (no download, no torch);
* where the reference installs (torch and ``aisfx``: CI installs both): features within
  1e-4 of the package's own code (its librosa spectrogram, normalisation and PyTorch
  ``CrossNet``) with the real weights, on generated sounds and on the shared
  UrbanSound8K clips when present.
"""
from __future__ import annotations

import json
import shutil
import socket
import sys
import time

import numpy as np
import pytest

from audio_weights import trusted_as_published, write_fake_aisfx
from sound_fixtures import generated_sounds, shared_clips
from soundretrain.backbones import aisfx
from soundretrain.backbones.converted_cache import MARKER_FILE
from soundretrain.backbones.registry import Backbone, ModuleError, load_module
from torch_files import write_zip

SR = aisfx.SAMPLE_RATE


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def fake(tmp_path_factory):
    """aiSFX with random weights from a checkpoint written here, converted once."""
    root = tmp_path_factory.mktemp("fake_aisfx")
    checkpoint = root / "checkpoint.pth"
    state = write_fake_aisfx(checkpoint)
    cache = root / "cache"
    with trusted_as_published(aisfx, checkpoint):  # so the cache keeps them
        start = time.perf_counter()
        backbone = aisfx.load(cache, checkpoint=checkpoint)
        yield {"backbone": backbone, "state": state, "checkpoint": checkpoint, "cache": cache,
               "convert_s": time.perf_counter() - start}


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    """aiSFX with the packaged weights (skips where the aisfx package is not installed)."""
    try:
        aisfx.checkpoint_path()
    except ModuleError:
        pytest.skip(f"aisfx weights not installed ({aisfx.PIP_COMMAND})")
    return aisfx.load(tmp_path_factory.mktemp("aisfx_cache"))


def numpy_embedding(state, spec: np.ndarray) -> np.ndarray:
    """The package's EmbeddingNet (cnn2d.py) in plain numpy, batch norm not folded:
    normalised log-mel ``[frames, 96]`` -> ``[512]``."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = np.asarray(spec, np.float64)[None]  # [channels, time, freq]
    for b in range(1, 5):
        for c in (1, 2):
            p = f"embedding_net.conv_block{b}"
            weight = state[f"{p}.conv{c}.weight"].astype(np.float64)
            windows = sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1))), (3, 3), axis=(1, 2))
            x = np.einsum("itfab,oiab->otf", windows, weight, optimize=True)
            bn = {k: state[f"{p}.bn{c}.{k}"].astype(np.float64)[:, None, None]
                  for k in ("weight", "bias", "running_mean", "running_var")}
            x = (x - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-5) * bn["weight"] + bn["bias"]
            x = np.maximum(x, 0)
        if b < 4:  # F.max_pool2d(kernel 2): floor
            ch, t, f = x.shape
            x = x[:, :t // 2 * 2, :f // 2 * 2].reshape(ch, t // 2, 2, f // 2, 2).max(axis=(2, 4))
    return x.mean(axis=2).max(axis=1)


def librosa_log_mel(y: np.ndarray) -> np.ndarray:
    """The package's librosa front-end (spectrogram_librosa.compute_spectrogram after
    loading, then spectrogram_normalize "original"), transposed to time x mel."""
    import librosa

    peak = np.max(np.abs(y)) or 1.0
    spec = librosa.feature.melspectrogram(
        y=y / peak, sr=SR, n_mels=96, norm=1.0, fmin=0.0, fmax=22050.0, htk=True, power=2.0,
        hop_length=1024, win_length=2048)
    return (np.log10(spec * 10000.0 + 1) / 9.457798957824707).T


# ----------------------------------------------------------------------------- fast proofs

def test_front_end_matches_the_packages_librosa_call(fake):
    sounds = generated_sounds(SR)
    batch = np.stack(list(sounds.values()))
    ours = fake["backbone"].log_mel(batch)
    for i, y in enumerate(batch):
        ref = librosa_log_mel(y)
        assert ours[i].shape == ref.shape == (173, 96)
        np.testing.assert_allclose(ours[i], ref, atol=1e-4, rtol=0)  # float32 FFT noise: 2e-5


def test_network_matches_an_independent_numpy_implementation(fake):
    rng = np.random.default_rng(1)
    spec = rng.uniform(0, 1, (2, 24, 96)).astype(np.float32)
    ours = fake["backbone"].embed_spectrogram(spec)
    for i in range(2):
        np.testing.assert_allclose(ours[i], numpy_embedding(fake["state"], spec[i]), atol=1e-4, rtol=1e-5)


def test_clip_features_are_the_network_over_all_frames(fake):
    backbone = fake["backbone"]
    y = generated_sounds(SR, seconds=3.0)["siren"][None]
    spec = backbone.log_mel(y)
    np.testing.assert_allclose(backbone.compute(y), backbone.embed_spectrogram(spec), atol=1e-5)
    # shorter than one 100-frame block: zero-padded to one block, as the package's blocking
    short = generated_sounds(SR, seconds=1.0)["engine"][None]
    spec = backbone.log_mel(short)
    padded = np.pad(spec, ((0, 0), (0, 100 - spec.shape[1]), (0, 0)))
    np.testing.assert_allclose(backbone.compute(short), numpy_embedding(fake["state"], padded[0])[None],
                               atol=1e-4, rtol=1e-5)


def test_block_windowing_averages_end_aligned_blocks(fake):
    blocks = aisfx.Aisfx(fake["backbone"]._weights, windowing="blocks")
    assert blocks.name == "aisfx_blocks"
    y = generated_sounds(SR, seconds=4.0)["drill"][None]
    spec = blocks.log_mel(y)[0]  # 173 frames: blocks at 0, 50 and 73 (end-aligned)
    expected = np.mean([blocks.embed_spectrogram(spec[None, s:s + 100])[0] for s in (0, 50, 73)], axis=0)
    np.testing.assert_allclose(blocks.compute(y)[0], expected, atol=1e-5)


# ----------------------------------------------------------------------------- reference

def _reference_model():
    torch = pytest.importorskip("torch")
    pytest.importorskip("aisfx")
    from aisfx.inference import get_path_modelWeights, load_bestModel

    # The package's load_weights() calls torch.load with torch's default weights_only=True,
    # which refuses its numpy scalars since torch 2.6; the file is the trusted packaged one.
    weights, datasets = torch.load(get_path_modelWeights(), map_location="cpu", weights_only=False)
    return torch, load_bestModel(weights, datasets, "cpu")


def _reference_features(torch, model, path) -> np.ndarray:
    from aisfx.preprocessing import spectrogram_normalize
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    spec = compute_spectrogram(filename=str(path), sr=44100.0, block_size=2048, hop_size=1024,
                               n_mels=96, f_min=0.0, f_max=22050.0)
    # The helper returns mel x time; the network takes time x mel (Essentia's layout).
    spec = spectrogram_normalize(spec.T, spec_norm="original")
    spec = np.vstack([spec, np.zeros((max(0, 100 - len(spec)), 96))])  # blocking's zero pad
    with torch.no_grad():
        return model.get_embedding(torch.Tensor(spec[None])).numpy()[0]


def test_features_match_the_aisfx_package_on_generated_sounds(real, tmp_path):
    import soundfile as sf

    from soundretrain.audio import load_audio

    torch, model = _reference_model()
    sounds = generated_sounds(SR)
    sounds["short"] = generated_sounds(SR, seconds=1.5)["siren"]
    worst = 0.0
    for name, y in sounds.items():
        path = tmp_path / f"{name}.wav"
        sf.write(path, y, SR, subtype="FLOAT")
        ours = real.compute(load_audio(path, SR)[None])[0]
        ref = _reference_features(torch, model, path)
        worst = max(worst, float(np.abs(ours - ref).max()))
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0, err_msg=name)
    print(f"aisfx vs reference, generated sounds: max abs difference {worst:.2e}")


def test_features_match_the_aisfx_package_on_real_audio(real, shared_us8k):
    from soundretrain.audio import load_audio

    torch, model = _reference_model()
    clips = shared_clips(shared_us8k, 10)
    ours = real.compute(np.stack([load_audio(p, SR) for p in clips if len(load_audio(p, SR)) == 4 * SR]))
    refs = np.stack([_reference_features(torch, model, p) for p in clips
                     if len(load_audio(p, SR)) == 4 * SR])
    assert len(refs) >= 5
    print(f"aisfx vs reference on {len(refs)} UrbanSound8K clips: max abs difference "
          f"{np.abs(ours - refs).max():.2e} (features up to {refs.max():.2f})")
    np.testing.assert_allclose(ours, refs, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- behaviour

def test_is_a_waveform_backbone_with_its_licence(fake):
    backbone = fake["backbone"]
    assert isinstance(backbone, Backbone) and backbone.name == "aisfx"
    spec = backbone.input_spec
    assert (spec.kind, spec.sample_rate, backbone.feature_size) == ("waveform", 44100, 512)
    desc = backbone.description()
    assert desc["license"] == "CC BY 4.0" and "Lerch" in desc["attribution"]
    json.dumps(desc)  # goes into the sidecar


def test_shape_dtype_determinism_and_batching(fake):
    backbone = fake["backbone"]
    batch = np.stack(list(generated_sounds(SR, seconds=2.0).values()))
    first = backbone.compute(batch)
    assert first.shape == (5, 512) and first.dtype == np.float32 and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, backbone.compute(batch))
    one_by_one = np.concatenate([backbone.compute(y[None]) for y in batch])
    np.testing.assert_allclose(one_by_one, first, atol=1e-5)
    assert backbone.compute(np.zeros((0, SR), np.float32)).shape == (0, 512)
    silent = backbone.compute(np.zeros((1, SR), np.float32))  # peak 0: no division by zero
    assert np.all(np.isfinite(silent))


def test_wrong_input_is_one_clear_error(fake):
    with pytest.raises(ValueError, match=r"\[N, samples\].*44100"):
        fake["backbone"].compute(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="at least"):
        fake["backbone"].compute(np.zeros((1, 100), np.float32))


def test_second_load_reuses_the_cache(fake, monkeypatch):
    marker = aisfx.cached_model_dir(fake["cache"]) / MARKER_FILE
    stamp = marker.stat().st_mtime_ns
    monkeypatch.setattr(aisfx, "convert_state_dict", lambda *a: pytest.fail("reconverted"))
    start = time.perf_counter()
    again = aisfx.load(fake["cache"])
    print(f"aisfx: first load (conversion) {fake['convert_s']:.2f} s, cached load "
          f"{time.perf_counter() - start:.2f} s")
    assert marker.stat().st_mtime_ns == stamp
    y = generated_sounds(SR, seconds=2.0)["siren"][None]
    np.testing.assert_allclose(again.compute(y), fake["backbone"].compute(y), atol=1e-6)
    marker_json = json.loads(marker.read_text())
    assert marker_json["license"] == "CC BY 4.0" and marker_json["name"] == "aisfx"


@pytest.mark.parametrize("damage", ["truncate_weights", "drop_marker", "garbage_weights"])
def test_corrupt_cache_is_rebuilt(tmp_path, fake, damage, capsys, monkeypatch):
    folder = aisfx.cached_model_dir(tmp_path)
    shutil.copytree(aisfx.cached_model_dir(fake["cache"]), folder)
    weights = folder / "weights.npz"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "drop_marker":
        (folder / MARKER_FILE).unlink()
    else:
        weights.write_bytes(b"not a zip file")
    monkeypatch.setattr(aisfx, "checkpoint_path", lambda: fake["checkpoint"])  # "the package"
    rebuilt = aisfx.load(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "converting" in err[0]
    y = generated_sounds(SR, seconds=2.0)["engine"][None]
    np.testing.assert_allclose(rebuilt.compute(y), fake["backbone"].compute(y), atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_works_offline_without_torch(fake, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch would fail
    monkeypatch.setitem(sys.modules, "aisfx", None)  # the package's code is never imported
    backbone = aisfx.load(tmp_path / "cache", checkpoint=fake["checkpoint"])
    assert backbone.compute(generated_sounds(SR, seconds=1.0)["siren"][None]).shape == (1, 512)


def test_missing_weights_package_is_one_line_with_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(aisfx, "PACKAGE", "_no_such_aisfx_package")
    with pytest.raises(ModuleError) as err:
        aisfx.load(tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and "pip install --no-deps aisfx==0.1.2" in message


def test_a_hostile_checkpoint_is_refused_in_one_line(tmp_path):
    import os
    import pickle

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    evil = tmp_path / "checkpoint.pth"
    evil.write_bytes(write_zip({}, data_pkl=pickle.dumps(RunsCode(), protocol=2)))
    with pytest.raises(ModuleError, match="cannot read the aiSFX weights.*refused") as err:
        aisfx.load(tmp_path / "cache", checkpoint=evil)
    assert "\n" not in str(err.value) and not (tmp_path / "ran").exists()


def test_a_valid_cache_needs_neither_the_package_nor_torch(fake, monkeypatch):
    monkeypatch.setattr(aisfx, "PACKAGE", "_no_such_aisfx_package")
    monkeypatch.setitem(sys.modules, "torch", None)
    assert aisfx.load(fake["cache"]).compute(np.zeros((1, SR), np.float32)).shape == (1, 512)


def test_the_cache_holds_the_network_weights_only(fake):
    """Arrays of the converted network; the front-end's mel filters and window are code."""
    with np.load(aisfx.cached_model_dir(fake["cache"]) / "weights.npz") as cached:
        assert set(cached.files) == set(aisfx.expected_weight_shapes())
    assert not {"mel_matrix", "window"} & set(aisfx.expected_weight_shapes())


def test_mel_filters_are_librosas(fake):
    import librosa

    reference = librosa.filters.mel(sr=SR, n_fft=2048, n_mels=96, fmin=0.0, fmax=22050.0,
                                    htk=True, norm=1.0, dtype=np.float32).T
    np.testing.assert_array_equal(aisfx.mel_matrix(), reference)


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


def test_front_end_of_an_exported_graph_is_the_bottleneck_stages(fake):
    """A known number of samples (an exported model) frames with static slices, not
    tf.signal.frame (which TFLite cannot take); the spectrogram is the same."""
    import tensorflow as tf

    from soundretrain.backbones.aisfx import _log_mel

    y = np.stack(list(generated_sounds(SR, seconds=2.0).values())[:3])
    static = tf.function(lambda x: _log_mel(fake["backbone"]._weights, x),
                         input_signature=[tf.TensorSpec([None, y.shape[1]], tf.float32)])
    np.testing.assert_allclose(static(y).numpy(), fake["backbone"].log_mel(y), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["none", "float16"])
def test_tf_callable_converts_to_tflite_builtins(fake, quantization):
    """Front-end and network as TFLite builtins (no TensorFlow fallback), batch size free;
    float16 rounds the network's weights only (the front-end's constants stay exact)."""
    import tensorflow as tf

    from soundretrain.audio_export import tflite_operators

    features_of = fake["backbone"].tf_callable()

    @tf.function(input_signature=[tf.TensorSpec([None, 4 * SR], tf.float32)])
    def features(y):  # a named function: the TFLite signature's name
        return features_of(y)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([features.get_concrete_function()], tf.Module())
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    model = converter.convert()
    ops = tflite_operators(model)
    assert ops["RFFT2D"] == 1 and ops["CONV_2D"] == 8 and ops["BATCH_MATMUL"] == 1
    assert not [op for op in ops if op.startswith(("CUSTOM", "FLEX"))]
    y = np.stack([generated_sounds(SR)["siren"], generated_sounds(SR)["drill"]])
    out = run_tflite(model, y)
    expected = fake["backbone"].compute(y)
    np.testing.assert_allclose(out, expected, atol=1e-4 if quantization == "none" else 0.05 * np.abs(expected).max())


def test_registry_names_resolve(fake, monkeypatch):
    monkeypatch.setattr(aisfx, "PACKAGE", "_no_such_aisfx_package")  # the cache must suffice
    resolved = load_module("aisfx", str(fake["cache"]))
    assert resolved.name == "aisfx" and resolved.feature_size == 512
    y = generated_sounds(SR, seconds=2.0)["rain"][None]
    np.testing.assert_allclose(resolved.compute(y), fake["backbone"].compute(y), atol=1e-6)


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
