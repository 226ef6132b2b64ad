"""Audio-in models: the spectrogram front-end inside the exported graph.

The audio-in SavedModel and TFLite give the Python path's probabilities (render_clip +
image model) on generated audio; they describe themselves (sidecar signature and file);
label_image uses them with and without a sidecar; waveform backbones and concatenations
export too; what cannot be exported is refused before anything is written; the README's
ai-edge-litert example runs in a process that can import nothing but numpy and LiteRT.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from label_models import LABELS, SR, build_tiny_model, make_clip, write_wav

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.getbasetemp() / "label_tiny_model"))


@pytest.fixture(scope="session")
def audio_models(tiny, tmp_path_factory):
    from soundretrain.export import export_model

    folder = tmp_path_factory.mktemp("audio_models")
    written = export_model(
        tiny.backbone, tiny.head, LABELS, {"spectrogram": tiny.settings.to_dict(), "test_accuracy": 1.0},
        audio_saved_model_dir=str(folder / "model_audio"), output_audio_tflite=str(folder / "model_audio.tflite"))
    return written


def windows_and_expected(tiny):
    """Generated one-window clips (every class, quiet, loud, silent) and the Python path's
    probabilities for them: render_clip, then the image model in memory."""
    from soundretrain.render import render_clip

    ys = [make_clip(kind, seed=500 + s, amplitude=a) for kind in LABELS for s, a in enumerate((0.5, 0.05, 0.95))]
    ys.append(make_clip("silence"))
    ys.append(make_clip("tone", seed=9, amplitude=2e-4))  # barely above digital silence
    y = np.stack(ys).astype(np.float32)
    images = np.stack([render_clip(w, SR, tiny.settings) for w in y]).astype(np.float32) / 255.0
    return y, tiny.in_memory(images)


@pytest.mark.parametrize("artifact", ["audio_saved_model_dir", "output_audio_tflite"])
def test_audio_models_give_the_python_paths_probabilities(tiny, audio_models, artifact):
    from label.models import load_labeler

    y, expected = windows_and_expected(tiny)
    labeler = load_labeler(audio_models[artifact])
    assert labeler.audio_in and labeler.input_kind == "waveform" and labeler.sample_rate == SR
    got = labeler.predict(y)
    # The bar is 0.01 per class and 99.5 % top-1 on real audio; the front-end is the
    # same function, so the tiny model agrees far closer than that.
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()
    # and it is a real classifier, not a constant
    assert (got[:9].argmax(1) == np.repeat(np.arange(3), 3)).all()


def test_signature_metadata_and_sidecar(audio_models):
    import tensorflow as tf

    from label.models import _tflite_interpreter

    folder = audio_models["audio_saved_model_dir"]
    loaded = tf.saved_model.load(folder)
    assert set(loaded.signatures) == {"serving_default", "sidecar"}
    serving = loaded.signatures["serving_default"]
    (name, spec), = serving.structured_input_signature[1].items()
    assert name == "waveform" and spec.shape.as_list() == [None, SR] and spec.dtype == tf.float32
    assert list(serving.structured_outputs) == ["probabilities"]
    meta = loaded.signatures["sidecar"]()
    assert int(meta["sample_rate"]) == SR and int(meta["num_samples"]) == SR and int(meta["hop_samples"]) == SR
    assert [b.decode() for b in meta["labels"].numpy()] == LABELS
    embedded = json.loads(meta["sidecar_json"].numpy().decode())

    sidecar = json.load(open(os.path.join(folder, "soundretrain.json")))
    assert sidecar == embedded
    assert sidecar["model_input"] == "waveform" and sidecar["artifact"] == "audio_saved_model"
    assert sidecar["input"] == {"kind": "waveform", "sample_rate": SR, "num_samples": SR, "window_seconds": 1.0,
                                "hop_samples": SR, "pad_mode": "repeat"}
    assert sidecar["labels"] == LABELS and sidecar["test_accuracy"] == 1.0
    assert sidecar["input_tensor_name"] == "waveform" and sidecar["final_tensor_name"] == "probabilities"
    assert sidecar["spectrogram"]["n_mels"] == 32

    path = audio_models["output_audio_tflite"]
    interpreter = _tflite_interpreter(path, 1)
    assert interpreter.get_signature_list() == {
        "sidecar": {"inputs": ["unused"], "outputs": ["hop_samples", "labels", "num_samples", "sample_rate",
                                                     "sidecar_json"]},
        "serving_default": {"inputs": ["waveform"], "outputs": ["probabilities"]}}
    meta = interpreter.get_signature_runner("sidecar")(unused=np.int32(0))
    tflite_sidecar = json.loads(meta["sidecar_json"].item())
    beside = json.load(open(path + ".json"))
    assert beside.pop("artifact_sha256") == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert tflite_sidecar == beside
    assert tflite_sidecar["artifact"] == "audio_tflite" and tflite_sidecar["tflite_quantization"] == "none"


def test_serving_signature_is_the_first_subgraph(audio_models):
    """TFLite's XNNPACK delegate takes the first subgraph only: the network must be there
    (with the description first, it ran 3-4x slower)."""
    from tensorflow.lite.python import schema_py_generated as schema

    data = bytearray(open(audio_models["output_audio_tflite"], "rb").read())
    model = schema.Model.GetRootAs(data, 0)
    subgraph_of = {model.SignatureDefs(i).SignatureKey().decode(): model.SignatureDefs(i).SubgraphIndex()
                   for i in range(model.SignatureDefsLength())}
    assert subgraph_of == {"serving_default": 0, "sidecar": 1}


def test_older_models_with_a_metadata_signature_still_describe_themselves(tiny, tmp_path, monkeypatch):
    from label.models import load_labeler
    from soundretrain import audio_export

    monkeypatch.setattr(audio_export, "METADATA_SIGNATURE", "metadata")
    path = tmp_path / "old" / "model_audio.tflite"
    audio_export.export_audio_model(tiny.backbone, tiny.head, LABELS, {"spectrogram": tiny.settings.to_dict()},
                                    output_audio_tflite=str(path))
    os.remove(f"{path}.json")
    labeler = load_labeler(str(path))
    assert labeler.audio_in and labeler.labels == LABELS and labeler.sample_rate == SR


@pytest.mark.parametrize("quantization,atol", [("float16", 0.02), ("dynamic", 0.05)])
def test_quantised_audio_tflite_keeps_the_top1(tiny, tmp_path, quantization, atol):
    from label.models import load_labeler
    from soundretrain.audio_export import export_audio_model

    path = str(tmp_path / f"{quantization}.tflite")
    export_audio_model(tiny.backbone, tiny.head, LABELS, {"spectrogram": tiny.settings.to_dict()},
                       output_audio_tflite=path, tflite_quantization=quantization)
    assert json.load(open(path + ".json"))["tflite_quantization"] == quantization
    y, expected = windows_and_expected(tiny)
    got = load_labeler(path).predict(y)
    np.testing.assert_allclose(got, expected, atol=atol)
    assert (got.argmax(1) == expected.argmax(1)).all()


# ------------------------------------------------------------------ label_image


def long_recording(path) -> str:
    y = np.concatenate([make_clip("tone", 2.0, seed=1), make_clip("noise", 1.5, seed=2), make_clip("chirp", 2.2, seed=3)])
    return write_wav(path, y)


def label_json(capsys, *args) -> dict:
    from label.cli import main

    assert main(["label_image", *args, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)


@pytest.mark.parametrize("artifact", ["audio_saved_model_dir", "output_audio_tflite"])
def test_label_image_with_an_audio_model_matches_the_image_model(tiny, audio_models, artifact, tmp_path, capsys):
    wav = long_recording(tmp_path / "long.wav")
    image_model = label_json(capsys, "--graph", tiny.paths["output_tflite"], "--audio", wav)
    audio_model = label_json(capsys, "--graph", audio_models[artifact], "--audio", wav)
    a, b = image_model["results"][0], audio_model["results"][0]
    assert [w["start"] for w in a["windows"]] == [w["start"] for w in b["windows"]] == [0.0, 1.0, 2.0, 3.0, 4.0, 4.7]
    assert a["top"][0]["label"] == b["top"][0]["label"]
    for wa, wb in zip(a["windows"] + [a], b["windows"] + [b]):
        assert [t["label"] for t in wa["top"]] == [t["label"] for t in wb["top"]]
        for ta, tb in zip(wa["top"], wb["top"]):
            assert abs(ta["score"] - tb["score"]) < 1e-4


def test_label_image_needs_no_sidecar_for_an_audio_model(audio_models, tmp_path, capsys):
    lone = tmp_path / "lone" / "model_audio.tflite"
    lone.parent.mkdir()
    shutil.copy(audio_models["output_audio_tflite"], lone)
    assert not os.path.exists(f"{lone}.json")
    wav = write_wav(tmp_path / "chirp.wav", make_clip("chirp", 0.6, seed=11))  # shorter: looped
    from label.cli import main

    assert main(["label_image", "--graph", str(lone), "--audio", wav]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("chirp ")
    assert captured.err == ""  # no "no spectrogram settings" warning: the model carries them


def test_label_image_refuses_images_for_an_audio_model(audio_models, tiny, tmp_path, capsys):
    from PIL import Image

    from label.cli import main
    from soundretrain.render import render_clip

    png = tmp_path / "x.png"
    Image.fromarray(render_clip(make_clip("tone"), SR, tiny.settings)).save(png)
    assert main(["label_image", "--graph", audio_models["output_audio_tflite"], "--image", str(png)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --audio" in err[0]


def test_label_image_resamples_other_rates_for_an_audio_model(tiny, audio_models, tmp_path, capsys):
    import soundfile as sf

    from soundretrain.audio import to_sample_rate

    y = make_clip("tone", 1.0, seed=4)
    wav = str(tmp_path / "tone_44k.wav")
    sf.write(wav, to_sample_rate(y, SR, 44100), 44100, subtype="FLOAT")
    image_model = label_json(capsys, "--graph", tiny.paths["output_graph"], "--audio", wav)
    audio_model = label_json(capsys, "--graph", audio_models["output_audio_tflite"], "--audio", wav)
    assert image_model["results"][0]["top"][0]["label"] == audio_model["results"][0]["top"][0]["label"] == "tone"
    assert abs(image_model["results"][0]["top"][0]["score"] - audio_model["results"][0]["top"][0]["score"]) < 1e-4


# ------------------------------------------------------------------ other backbones


def test_waveform_backbone_exports_audio_in(tmp_path):
    from retrain.head import ClassificationHead
    from soundretrain.audio_export import export_audio_model
    from soundretrain.backbones.registry import load_module
    from label.models import load_labeler
    from tiny_models import make_tiny_waveform_module

    backbone = load_module(make_tiny_waveform_module(tmp_path / "wave", sample_rate=8000))
    head = ClassificationHead(backbone.feature_size, 2, seed=3)
    settings = {"duration": 0.5, "sample_rate": 22050}  # the spectrogram rate does not matter here
    path = str(tmp_path / "wave_audio.tflite")
    export_audio_model(backbone, head, ["a", "b"], {"spectrogram": settings}, output_audio_tflite=path)
    sidecar = json.load(open(path + ".json"))
    assert sidecar["input"]["sample_rate"] == 8000 and sidecar["input"]["num_samples"] == 4000
    y = np.random.default_rng(0).standard_normal((3, 4000)).astype(np.float32) * 0.3
    expected = head.predict(backbone.compute(y))
    np.testing.assert_allclose(load_labeler(path).predict(y), expected, atol=1e-5)


def test_concatenated_image_modules_of_other_sizes_are_resized_as_in_training(tmp_path):
    """Each image part gets the rendered image resized to its input as the bottleneck
    stage resizes it (Pillow's 8-bit bilinear), then the features are concatenated."""
    from retrain.bottlenecks import image_to_input
    from retrain.head import ClassificationHead
    from soundretrain.audio_export import export_audio_model
    from soundretrain.backbones.registry import load_module
    from soundretrain.render import render_clip
    from soundretrain.spectrogram_settings import SpectrogramSettings
    from label.models import load_labeler
    from tiny_models import make_tiny_image_module

    a = make_tiny_image_module(tmp_path / "a", image_size=32, feature_size=5, seed=1)
    b = make_tiny_image_module(tmp_path / "b", image_size=24, feature_size=4, seed=2)
    backbone = load_module(f"{a},{b}")
    settings = SpectrogramSettings(sample_rate=SR, duration=1.0, n_fft=256, hop_length=64, n_mels=32, image_size=40)
    head = ClassificationHead(backbone.feature_size, 3, seed=0)
    folder = str(tmp_path / "concat_audio")
    export_audio_model(backbone, head, LABELS, {"spectrogram": settings.to_dict()}, audio_saved_model_dir=folder)
    y = np.stack([make_clip(k, seed=7) for k in LABELS])
    features = []
    for part in backbone.parts:
        h, w = part.input_spec.height, part.input_spec.width
        x = np.stack([image_to_input(render_clip(c, SR, settings), h, w) for c in y])
        features.append(part.compute(x))
    expected = head.predict(np.concatenate(features, axis=1))
    np.testing.assert_allclose(load_labeler(folder).predict(y), expected, atol=1e-5)


class _Untraceable:
    """A backbone that runs outside TensorFlow (as BirdNET's TFLite network did)."""

    name = "untraceable"
    feature_size = 4

    def __init__(self, kind="waveform", rate=48000):
        from soundretrain.backbones.registry import InputSpec

        self.input_spec = InputSpec(kind, sample_rate=rate) if kind == "waveform" else InputSpec(kind, 8, 8)

    def tf_callable(self):
        return None

    def description(self):
        return {"name": self.name}


def test_export_refuses_what_cannot_take_sound_before_writing(tiny, tmp_path):
    from soundretrain.backbones.registry import ConcatBackbone
    from soundretrain.export import ExportError, export_model

    labels = str(tmp_path / "labels.txt")
    tflite = str(tmp_path / "model.tflite")
    with pytest.raises(ExportError, match="cannot be traced into a TensorFlow graph") as info:
        export_model(_Untraceable(), tiny.head, LABELS, {}, output_labels=labels, output_tflite=tflite,
                     output_audio_tflite=str(tmp_path / "a.tflite"))
    assert "\n" not in str(info.value)
    with pytest.raises(ExportError, match="module 'untraceable' audio-in: it cannot be traced"):
        export_model(ConcatBackbone([tiny.backbone, _Untraceable()]), tiny.head, LABELS,
                     {"spectrogram": {"sample_rate": 22050}}, output_labels=labels,
                     audio_saved_model_dir=str(tmp_path / "a"))
    with pytest.raises(ExportError, match="unknown TFLite quantization 'int4'"):
        export_model(tiny.backbone, tiny.head, LABELS, {}, output_labels=labels,
                     output_audio_tflite=str(tmp_path / "a.tflite"), tflite_quantization="int4")
    assert os.listdir(tmp_path) == []  # nothing written, not even the labels


# ------------------------------------------------------------------ retrain end to end


def test_retrain_exports_an_audio_model_that_labels_recordings(tmp_path, capsys):
    from retrain.cli import main as retrain
    from label.cli import main as label_image
    from tiny_models import make_tiny_waveform_module, make_tone_spectrogram_dir

    make_tone_spectrogram_dir(tmp_path, recordings=3)
    wave_module = make_tiny_waveform_module(tmp_path / "wave", sample_rate=8000)
    model = tmp_path / "out" / "model_audio.tflite"
    args = ["retrain", f"--image_dir={tmp_path / 'spec'}", f"--tfhub_module={wave_module}",
            f"--bottleneck_dir={tmp_path / 'bn'}", "--summaries_dir=", "--checkpoint_path=", "--output_graph=",
            f"--output_labels={tmp_path / 'out' / 'labels.txt'}", f"--output_audio_tflite={model}",
            f"--audio_saved_model_dir={tmp_path / 'out' / 'model_audio'}", "--split=folds", "--test_folds=3",
            "--how_many_training_steps=300", "--optimizer=adam", "--learning_rate=0.05", "--random_seed=1",
            "--noprogress"]
    assert retrain(args) == 0
    out = capsys.readouterr().out
    assert f"Wrote output_audio_tflite: {model}" in out
    for label in ("low", "high"):
        assert label_image(["label_image", "--graph", str(model), "--audio",
                            str(tmp_path / "audio" / f"{label}0.wav")]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
        assert lines[0].split()[0] == label


def test_retrain_exports_an_audio_model_of_modules_at_several_rates(tmp_path, capsys):
    """An image module (spectrograms at 8 kHz) and a 16 kHz waveform module: the model takes
    8 kHz, the waveform module hears it resampled inside, as it did in training."""
    from retrain.cli import main as retrain
    from label.cli import main as label_image
    from tiny_models import make_tiny_image_module, make_tiny_waveform_module, make_tone_spectrogram_dir

    make_tone_spectrogram_dir(tmp_path, recordings=3)
    image = make_tiny_image_module(tmp_path / "img")
    wave_module = make_tiny_waveform_module(tmp_path / "wave", sample_rate=16000)
    model = tmp_path / "out" / "model_audio.tflite"
    args = ["retrain", f"--image_dir={tmp_path / 'spec'}", f"--tfhub_module={image},{wave_module}",
            f"--bottleneck_dir={tmp_path / 'bn'}", "--summaries_dir=", "--checkpoint_path=", "--output_graph=",
            f"--output_audio_tflite={model}", f"--saved_model_dir={tmp_path / 'out' / 'head'}",
            "--split=folds", "--test_folds=3", "--how_many_training_steps=300", "--optimizer=adam",
            "--learning_rate=0.05", "--random_seed=1", "--noprogress"]
    assert retrain(args) == 0
    capsys.readouterr()
    sidecar = json.load(open(f"{model}.json"))
    assert sidecar["input"]["sample_rate"] == 8000 and sidecar["audio"]["module_rates"] == [8000, 16000]
    for label in ("low", "high"):
        wav = str(tmp_path / "audio" / f"{label}0.wav")
        audio_in = label_json(capsys, "--graph", str(model), "--audio", wav)["results"][0]
        python_path = label_json(capsys, "--graph", str(tmp_path / "out" / "head"), "--audio", wav)["results"][0]
        assert audio_in["top"][0]["label"] == python_path["top"][0]["label"] == label
        assert abs(audio_in["top"][0]["score"] - python_path["top"][0]["score"]) < 1e-4


def test_retrain_refuses_a_module_that_cannot_take_sound_before_the_bottlenecks(tmp_path, capsys, monkeypatch):
    from retrain import core
    from retrain.cli import main as retrain
    from soundretrain.backbones.registry import ConcatBackbone, load_module
    from tiny_models import make_tiny_image_module, make_tone_spectrogram_dir

    make_tone_spectrogram_dir(tmp_path, recordings=2)
    image = load_module(make_tiny_image_module(tmp_path / "img"))
    monkeypatch.setattr(core, "load_module", lambda *a, **k: ConcatBackbone([image, _Untraceable()]))
    args = ["retrain", f"--image_dir={tmp_path / 'spec'}", "--tfhub_module=anything",
            f"--bottleneck_dir={tmp_path / 'bn'}", "--summaries_dir=", "--checkpoint_path=", "--output_graph=",
            f"--output_audio_tflite={tmp_path / 'a.tflite'}", "--split=folds", "--test_folds=2",
            "--how_many_training_steps=50", "--noprogress"]
    assert retrain(args) == 1
    captured = capsys.readouterr()
    assert "Bottlenecks:" not in captured.out  # refused before any bottleneck is computed
    assert not (tmp_path / "bn").exists() or not any(p.is_file() for p in (tmp_path / "bn").rglob("*"))
    assert "cannot export module 'untraceable' audio-in" in captured.err
    assert not (tmp_path / "a.tflite").exists()


# ------------------------------------------------------------------ modules at several rates


@pytest.fixture(scope="module")
def several_rates(tmp_path_factory):
    """Two backbones of three tiny modules and a head each, exported audio-in and head-only:
    ``image`` (a 32-pixel image module, 16 kHz and 8 kHz waveform modules; spectrograms at
    8 kHz, so the model takes 8 kHz) and ``waveform`` (16 and 8 kHz: the model takes 16 kHz)."""
    from retrain.head import ClassificationHead
    from soundretrain.backbones.registry import ConcatBackbone, load_module
    from soundretrain.export import export_model
    from soundretrain.spectrogram_settings import SpectrogramSettings
    from tiny_models import make_tiny_image_module, make_tiny_waveform_module

    root = tmp_path_factory.mktemp("several_rates")
    settings = SpectrogramSettings(sample_rate=SR, duration=1.0, n_fft=256, hop_length=64, n_mels=32, image_size=32)
    image = load_module(make_tiny_image_module(root / "img", image_size=24, feature_size=5, seed=1))
    wide = load_module(make_tiny_waveform_module(root / "w16", sample_rate=16000, feature_size=4, seed=2))
    narrow = load_module(make_tiny_waveform_module(root / "w8", sample_rate=8000, feature_size=3, seed=3))
    out = {}
    for name, parts in (("image", [image, wide, narrow]), ("waveform", [wide, narrow])):
        backbone = ConcatBackbone(parts)
        head = ClassificationHead(backbone.feature_size, len(LABELS), seed=4)
        folder = root / name
        paths = export_model(backbone, head, LABELS, {"spectrogram": settings.to_dict()},
                             output_tflite=str(folder / "head.tflite"), saved_model_dir=str(folder / "head"),
                             output_audio_tflite=str(folder / "model_audio.tflite"),
                             audio_saved_model_dir=str(folder / "model_audio"))
        out[name] = dict(paths, backbone=backbone, head=head, settings=settings)
    return out


def python_path_probabilities(model: dict, y: np.ndarray, rate: int) -> np.ndarray:
    """What the bottleneck stage computes: each part on the window resampled to its rate
    (image parts: the spectrogram rendered at the model rate), then the head."""
    from retrain.bottlenecks import image_to_input
    from soundretrain.render import render_clip
    from soundretrain.resample import resample

    features = []
    for part in model["backbone"].parts:
        spec = part.input_spec
        if spec.kind == "image":
            x = np.stack([image_to_input(render_clip(w, rate, model["settings"]), spec.height, spec.width) for w in y])
        else:
            x = resample(y, rate, spec.sample_rate)
        features.append(part.compute(x))
    return model["head"].predict(np.concatenate(features, axis=1))


@pytest.mark.parametrize("kind,rate", [("image", 8000), ("waveform", 16000)])
@pytest.mark.parametrize("artifact", ["output_audio_tflite", "audio_saved_model_dir"])
def test_modules_at_several_rates_export_audio_in(several_rates, kind, rate, artifact):
    from label.models import load_labeler
    from soundretrain.resample import RESAMPLER

    model = several_rates[kind]
    labeler = load_labeler(model[artifact])
    assert labeler.audio_in and labeler.sample_rate == rate
    assert labeler.sidecar["audio"] == {"sample_rate": rate, "resampler": RESAMPLER,
                                        "module_rates": [8000, 16000, 8000] if kind == "image" else [16000, 8000]}
    from soundretrain.audio import to_sample_rate

    clips = [to_sample_rate(make_clip(k, seed=40 + s, amplitude=a), SR, rate)
             for k in LABELS for s, a in enumerate((0.5, 0.05))] + [np.zeros(rate, np.float32)]
    y = np.stack(clips).astype(np.float32)
    np.testing.assert_allclose(labeler.predict(y), python_path_probabilities(model, y, rate), atol=2e-5)


@pytest.mark.parametrize("kind", ["image", "waveform"])
def test_label_image_feeds_a_head_only_model_as_its_audio_in_twin(several_rates, kind, tmp_path, capsys):
    """label_image's Python path (the head-only model: each module run in Python) decodes at
    the model rate and resamples per module like the graph: same windows, same scores."""
    wav = long_recording(tmp_path / "long.wav")  # 8 kHz, resampled to 16 kHz for "waveform"
    model = several_rates[kind]
    head = label_json(capsys, "--graph", model["output_tflite"], "--audio", wav)["results"][0]
    audio_in = label_json(capsys, "--graph", model["output_audio_tflite"], "--audio", wav)["results"][0]
    assert [w["start"] for w in head["windows"]] == [w["start"] for w in audio_in["windows"]]
    for a, b in zip(head["windows"] + [head], audio_in["windows"] + [audio_in]):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert max(abs(ta["score"] - tb["score"]) for ta, tb in zip(a["top"], b["top"])) < 1e-4


def test_mic_loop_with_a_model_at_several_rates(several_rates, tmp_path, capsys):
    """--mic (here driven by a file) hears the same events with the audio-in model and its
    head-only twin, and labels them alike."""
    from label.cli import main

    quiet = 0.005 * np.random.default_rng(3).standard_normal(2 * SR).astype(np.float32)
    y = np.concatenate([quiet, make_clip("chirp", 1.0, seed=31), quiet, make_clip("tone", 1.0, seed=32), quiet])
    wav = write_wav(tmp_path / "events.wav", y)
    events = {}
    for name in ("output_tflite", "output_audio_tflite"):
        assert main(["label_image", "--graph", several_rates["image"][name], "--mic_file", wav, "--json",
                     "--record_seconds", "1"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        events[name] = [(round(e["start"], 2), e["top"][0]["label"], e["top"][0]["score"]) for e in lines if "top" in e]
    assert len(events["output_tflite"]) == 2
    for a, b in zip(events["output_tflite"], events["output_audio_tflite"]):
        assert a[:2] == b[:2] and abs(a[2] - b[2]) < 1e-4
    assert len(events["output_tflite"]) == len(events["output_audio_tflite"])


def test_serve_answers_a_model_at_several_rates_as_its_head_only_twin(several_rates, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install '.[serve]')")
    httpx = pytest.importorskip("httpx")
    import io

    import soundfile as sf

    from label.labeling import AudioInput, resolve_image_input, spectrogram_settings_for
    from label.models import load_labeler
    from label.serve import BackgroundServer, LabelService, ServeSettings

    buf = io.BytesIO()
    sf.write(buf, np.concatenate([make_clip("noise", 1.5, seed=33), make_clip("chirp", 1.5, seed=34)]), 44100,
             format="WAV")  # another rate than the model's: the server resamples
    answers = {}
    for name in ("output_tflite", "output_audio_tflite"):
        labeler = load_labeler(several_rates["image"][name])
        audio_input = AudioInput(spectrogram_settings_for(labeler), None, resolve_image_input(labeler))
        with BackgroundServer(LabelService([labeler], audio_input, ServeSettings())) as url:
            info = httpx.get(url + "v1/model", timeout=30).json()
            answers[name] = httpx.post(url + "v1/label", content=buf.getvalue(), timeout=60).json()
        assert info["sample_rates"] == [SR]
    head, audio_in = answers["output_tflite"], answers["output_audio_tflite"]
    assert [w["top"][0]["label"] for w in head["windows"]] == [w["top"][0]["label"] for w in audio_in["windows"]]
    np.testing.assert_allclose([t["score"] for t in head["top"]], [t["score"] for t in audio_in["top"]], atol=1e-4)


def test_a_head_only_model_resampled_by_another_filter_is_refused(several_rates, tmp_path):
    from label.models import ModelLoadError, load_labeler

    folder = tmp_path / "head"
    shutil.copytree(several_rates["image"]["saved_model_dir"], folder)
    sidecar = json.loads((folder / "soundretrain.json").read_text())
    sidecar["audio"]["resampler"] = "sinc-fastest-v0"
    (folder / "soundretrain.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelLoadError, match="resampled by 'sinc-fastest-v0', which this version") as info:
        load_labeler(str(folder))
    assert "\n" not in str(info.value)


def test_detections_of_a_model_at_several_rates(several_rates, tmp_path, capsys):
    """Detection tables from the audio-in model and from its head-only twin agree."""
    wav = long_recording(tmp_path / "long.wav")
    tables = {}
    for name in ("output_tflite", "output_audio_tflite"):
        out = tmp_path / name
        label_json(capsys, "--graph", several_rates["image"][name], "--audio", wav, "--min_confidence", "0.2",
                   "--detections_dir", str(out))
        tables[name] = [line.split(",")[:4] for line in (out / "long.detections.csv").read_text().splitlines()]
    assert len(tables["output_tflite"]) > 1 and tables["output_tflite"] == tables["output_audio_tflite"]


# ------------------------------------------------------------------ numpy + LiteRT only


def readme_litert_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- litert-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its ai-edge-litert example"
    return match.group(1)


def only_numpy_and_litert(folder: Path) -> Path:
    """A folder exposing numpy and ai_edge_litert (symlinks), and nothing else."""
    import ai_edge_litert

    site = Path(np.__file__).resolve().parents[1]
    folder.mkdir()
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (folder / name).symlink_to(site / name)
    (folder / "ai_edge_litert").symlink_to(Path(ai_edge_litert.__file__).resolve().parent)
    return folder


@pytest.mark.parametrize("clip,model", [("chirp_long", "one_rate"), ("tone_short_stereo", "one_rate"),
                                        ("chirp_long", "several_rates")])
def test_readme_example_runs_with_only_numpy_and_litert_and_agrees_with_label_image(
        audio_models, several_rates, tmp_path, capsys, clip, model):
    import soundfile as sf

    work = tmp_path / "app"
    work.mkdir()
    path = audio_models["output_audio_tflite"] if model == "one_rate" else several_rates["image"]["output_audio_tflite"]
    shutil.copy(path, work / "model_audio.tflite")  # no sidecar beside it
    if clip == "chirp_long":
        y = np.concatenate([make_clip("chirp", 2.5, seed=21), 0.3 * make_clip("noise", 0.8, seed=22)])
    else:
        y = np.stack([make_clip("tone", 0.7, seed=23), 0.5 * make_clip("tone", 0.7, seed=23)], axis=1)
    sf.write(work / "recording.wav", y, SR, subtype="PCM_16")
    top = label_json(capsys, "--graph", str(work / "model_audio.tflite"), "--audio", str(work / "recording.wav"),
                     "--top_k", "1")["results"][0]["top"][0]
    expected_label, expected_score = top["label"], top["score"]

    path = only_numpy_and_litert(tmp_path / "path")
    guard = ("import sys\n"
             f"sys.path[:0] = [{str(path)!r}]\n"
             "for banned in ('tensorflow', 'librosa', 'soundfile', 'scipy', 'soundretrain', 'label'):\n"
             "    try:\n"
             "        __import__(banned)\n"
             "    except ImportError:\n"
             "        continue\n"
             "    raise SystemExit(f'{banned} is importable: the test is not isolated')\n")
    # -I: no PYTHONPATH, no user site; -S: no site-packages. Only the standard library and
    # the two packages linked into ``path`` can be imported.
    done = subprocess.run([sys.executable, "-I", "-S", "-c", guard + readme_litert_example()],
                          cwd=work, capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    label, score = done.stdout.split()
    assert label == expected_label
    assert abs(float(score) - float(expected_score)) < 1e-3
