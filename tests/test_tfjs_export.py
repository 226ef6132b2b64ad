"""The TF.js export (retrain --output_tfjs) and the static page (label_image --export_web),
without a browser: the graph rewrite keeps the model's numbers, the folder holds what a
static host needs, and every bad input is one line. tests/test_label_web_browser.py runs
the page in Chromium.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from label_models import LABELS, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
needs_converter = pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorflowjs") is None and not os.environ.get("CI"),
    reason="the TF.js converter is not installed (make install: pip install --no-deps tensorflowjs)")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.getbasetemp() / "label_tiny_model"))


@pytest.fixture(scope="session")
def tfjs_model(tiny, tmp_path_factory):
    from soundretrain.export import export_model

    folder = tmp_path_factory.mktemp("tfjs")
    return export_model(tiny.backbone, tiny.head, LABELS, {"spectrogram": tiny.settings.to_dict(), "test_accuracy": 0.9},
                        output_tfjs=str(folder / "model_tfjs"),
                        audio_saved_model_dir=str(folder / "model_audio"))


def test_rewrite_for_tfjs_keeps_segment_sums_and_ffts():
    """UnsortedSegmentSum and RFFT (with Real/Imag) become matrix products with the same values."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from soundretrain.tfjs_export import rewrite_for_tfjs

    ids = np.array([0, 2, 2, 1, 3, -1, 3, 0], np.int32)  # -1: dropped, as TensorFlow drops it

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 16], tf.float32)])
    def f(x):
        spectrum = tf.signal.rfft(x, fft_length=[16])
        power = tf.math.real(spectrum) ** 2 + tf.math.imag(spectrum) ** 2  # [N, 3, 9]
        bands = tf.math.unsorted_segment_sum(tf.transpose(power, [2, 0, 1])[:8], ids, 4)  # [4, N, 3]
        return tf.identity(bands, name="out")

    frozen = convert_variables_to_constants_v2(f.get_concrete_function())
    graph_def = frozen.graph.as_graph_def()
    counts = rewrite_for_tfjs(graph_def)
    assert counts == {"UnsortedSegmentSum": 1, "RFFT": 1}
    assert not {n.op for n in graph_def.node} & {"UnsortedSegmentSum", "RFFT", "Real", "Imag"}
    x = np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)
    rewritten = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    run = rewritten.prune(frozen.inputs[0].name, frozen.outputs[0].name)
    np.testing.assert_allclose(run(tf.constant(x)).numpy(), f(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_fft", [2048, 512, 400, 17])
def test_real_dft_function_is_rfft(n_fft):
    """The two-stage real DFT (n_fft = n1 * n2; a prime is one stage) against numpy's rfft."""
    from soundretrain.tfjs_export import real_dft_function

    x = np.random.default_rng(n_fft).standard_normal((3, n_fft)).astype(np.float32)
    real, imag = (t.numpy() for t in real_dft_function(n_fft)(x))
    expected = np.fft.rfft(x.astype(np.float64))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(real, expected.real, atol=2e-6 * scale)
    np.testing.assert_allclose(imag, expected.imag, atol=2e-6 * scale)


@needs_converter
def test_output_tfjs_writes_a_graph_model_that_describes_itself(tfjs_model):
    folder = Path(tfjs_model["output_tfjs"])
    model = json.loads((folder / "model.json").read_text())
    assert model["format"] == "graph-model"
    assert list(model["signature"]["inputs"]) == ["waveform"] and list(model["signature"]["outputs"]) == ["probabilities"]
    sidecar = model["userDefinedMetadata"]["soundretrain"]
    assert sidecar["labels"] == LABELS and sidecar["model_input"] == "waveform"
    assert sidecar["input"]["sample_rate"] > 0 and sidecar["input"]["num_samples"] > 0
    assert sidecar["artifact"] == "tfjs_graph_model" and sidecar["test_accuracy"] == 0.9
    nodes = model["modelTopology"]["node"]
    ops = {n["op"] for n in nodes}
    assert not ops & {"UnsortedSegmentSum", "RFFT", "Complex", "Bitcast"}
    consts = {n["name"] for n in nodes if n["op"] == "Const"}
    for n in nodes:  # TF.js takes only a constant (rank-1) bias in a fused product
        if n["op"] in ("_FusedMatMul", "_FusedConv2D"):
            assert all(i.split(":")[0] in consts for i in n["input"][2:]), n["name"]
    shards = [p for group in model["weightsManifest"] for p in group["paths"]]
    assert shards and all((folder / p).is_file() for p in shards)
    assert json.loads((folder / "soundretrain.json").read_text())["labels"] == LABELS


@needs_converter
def test_the_rewritten_graph_gives_the_audio_models_probabilities(tiny, tfjs_model):
    """The graph converted to TF.js, run by TensorFlow, against the audio-in SavedModel."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from soundretrain.tfjs_export import rewrite_for_tfjs
    from label_models import make_clip

    serve = tf.saved_model.load(tfjs_model["audio_saved_model_dir"]).signatures["serving_default"]
    y = np.stack([make_clip(kind, seed=40 + i) for i, kind in enumerate(LABELS)]).astype(np.float32)
    expected = serve(waveform=tf.constant(y))["probabilities"].numpy()
    frozen = convert_variables_to_constants_v2(serve)
    graph_def = frozen.graph.as_graph_def()
    rewrite_for_tfjs(graph_def)
    rewritten = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    got = rewritten.prune(frozen.inputs[0].name, frozen.outputs[0].name)(tf.constant(y)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_a_missing_converter_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    import importlib.util
    import sys

    from retrain.cli import main as retrain
    from tiny_models import make_tiny_image_module, make_tone_spectrogram_dir

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflowjs" else real_find_spec(name, *a))
    for name in [m for m in sys.modules if m == "tensorflowjs" or m.startswith("tensorflowjs.")]:
        monkeypatch.delitem(sys.modules, name)
    make_tone_spectrogram_dir(tmp_path, recordings=2)
    image = make_tiny_image_module(tmp_path / "img")
    args = ["retrain", f"--image_dir={tmp_path / 'spec'}", f"--tfhub_module={image}",
            f"--bottleneck_dir={tmp_path / 'bn'}", "--summaries_dir=", "--checkpoint_path=", "--output_graph=",
            f"--output_tfjs={tmp_path / 'web_model'}", "--split=folds", "--test_folds=2",
            "--how_many_training_steps=20", "--noprogress"]
    assert retrain(args) == 1
    captured = capsys.readouterr()
    assert "Bottlenecks:" not in captured.out and "Step 0" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "--output_tfjs needs the TensorFlow.js converter: pip install --no-deps tensorflowjs" in err[0]
    assert not (tmp_path / "web_model").exists()


def test_output_tfjs_is_refused_for_a_module_that_cannot_take_sound(tmp_path, capsys, monkeypatch):
    from retrain import core
    from retrain.cli import main as retrain
    from soundretrain.backbones.registry import ConcatBackbone, InputSpec, load_module
    from tiny_models import make_tiny_image_module, make_tone_spectrogram_dir

    class Untraceable:  # a module that runs outside TensorFlow (no graph to put in a model)
        name, feature_size, input_spec = "untraceable", 4, InputSpec("waveform", sample_rate=16000)

        def tf_callable(self):
            return None

        def description(self):
            return {"name": self.name}

    make_tone_spectrogram_dir(tmp_path, recordings=2)
    image = load_module(make_tiny_image_module(tmp_path / "img"))
    monkeypatch.setattr(core, "load_module", lambda *a, **k: ConcatBackbone([image, Untraceable()]))
    args = ["retrain", f"--image_dir={tmp_path / 'spec'}", "--tfhub_module=anything",
            f"--bottleneck_dir={tmp_path / 'bn'}", "--summaries_dir=", "--checkpoint_path=", "--output_graph=",
            f"--output_tfjs={tmp_path / 'web_model'}", "--split=folds", "--test_folds=2",
            "--how_many_training_steps=20", "--noprogress"]
    assert retrain(args) == 1
    captured = capsys.readouterr()
    assert "Bottlenecks:" not in captured.out
    assert "--output_tfjs: cannot export module 'untraceable' audio-in" in captured.err


# ---------------------------------------------------------------- label_image --export_web


def export_web(*args) -> int:
    from label.cli import main as label_image

    return label_image(["label_image", *map(str, args)])


@needs_converter
def test_export_web_writes_a_static_page_on_the_browser_backend(tfjs_model, tmp_path, capsys):
    from label.web_vendor import VENDOR_FILES, missing_files

    if missing_files() and not os.environ.get("CI"):
        pytest.skip("TF.js is not vendored (make install)")
    site = tmp_path / "site"
    assert export_web("--graph", tfjs_model["output_tfjs"], "--export_web", site, "--top_k", 3,
                      "--record_seconds", 2.5) == 0
    assert "python -m http.server" in capsys.readouterr().out
    html = (site / "index.html").read_text()
    assert '<meta name="soundretrain-backend" content="browser">' in html and "/static/" not in html
    for name in ("app.js", "backend.js", "browser-backend.js", "browser-audio.js", "model/model.json", *(
            f"vendor/{v}" for v in VENDOR_FILES)):
        assert (site / name).is_file(), name
    config = json.loads((site / "backend.json").read_text())
    assert config["model"] == "model/model.json" and config["top_k"] == 3
    assert config["trigger"]["record_seconds"] == 2.5 and config["limits"]["max_seconds"] == 300.0
    # an audio-in SavedModel is converted on the way; the earlier export is replaced whole
    assert export_web("--graph", tfjs_model["audio_saved_model_dir"], "--export_web", site) == 0
    assert json.loads((site / "model" / "model.json").read_text())["format"] == "graph-model"


@pytest.mark.parametrize("case", ["tflite", "image_saved_model", "not_a_model", "folder_of_recordings", "inside_model"])
def test_export_web_refuses_with_one_line(case, tiny, tmp_path, capsys):
    from label.web_vendor import missing_files

    if missing_files() and not os.environ.get("CI"):
        pytest.skip("TF.js is not vendored (make install)")
    from soundretrain.export import export_model

    site = tmp_path / "site"
    if case == "tflite":
        graph = export_model(tiny.backbone, tiny.head, LABELS, {"spectrogram": tiny.settings.to_dict()},
                             output_tflite=str(tmp_path / "m.tflite"))["output_tflite"]
        expected = "is not a folder"
    elif case == "image_saved_model":
        graph = export_model(tiny.backbone, tiny.head, LABELS, {"spectrogram": tiny.settings.to_dict()},
                             saved_model_dir=str(tmp_path / "sm"))["saved_model_dir"]
        expected = "is not a SavedModel that takes sound"
    elif case == "not_a_model":
        graph = tmp_path / "empty"
        graph.mkdir()
        expected = "holds neither a TF.js model"
    else:
        graph = tmp_path / "model_tfjs"
        graph.mkdir()
        (graph / "model.json").write_text(json.dumps({"format": "graph-model"}))
        expected = "without soundretrain's description"
        if case == "folder_of_recordings":
            (site / "field").mkdir(parents=True)
            (site / "field" / "dawn.wav").write_bytes(b"RIFF")
            expected = "not replacing it"
        elif case == "inside_model":
            site = graph / "site"
            expected = "would replace the model it exports"
    assert export_web("--graph", graph, "--export_web", site) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    if case == "folder_of_recordings":
        assert (site / "field" / "dawn.wav").read_bytes() == b"RIFF"


def test_export_web_needs_the_vendored_tfjs(tmp_path):
    from label.web_vendor import VendorError, check_vendored

    with pytest.raises(VendorError, match="lacks tf.min.js.*make install"):
        check_vendored(str(tmp_path))


def test_vendor_copies_what_the_page_loads_from_node_modules(tmp_path):
    from label.web_vendor import VENDOR_FILES, VendorError, main, missing_files, vendor

    node_modules = tmp_path / "node_modules"
    with pytest.raises(VendorError, match="npm ci"):
        vendor(str(node_modules), str(tmp_path / "vendor"))
    for name, (package, inside) in VENDOR_FILES.items():
        (node_modules / package / inside).parent.mkdir(parents=True, exist_ok=True)
        (node_modules / package / inside).write_text(f"// {name}")
        (node_modules / package / "package.json").write_text(json.dumps({"version": "4.22.0", "license": "Apache-2.0"}))
    assert main([str(node_modules), str(tmp_path / "vendor")]) == 0
    assert missing_files(str(tmp_path / "vendor")) == []
    assert (tmp_path / "vendor" / "tf.min.js").read_text() == "// tf.min.js"
    versions = json.loads((tmp_path / "vendor" / "VERSIONS.json").read_text())
    assert versions["@tensorflow/tfjs"] == {"version": "4.22.0", "license": "Apache-2.0"}


def test_export_web_goes_alone_and_needs_a_model(capsys):
    assert export_web("--export_web", "site") == 2
    assert "no model given" in capsys.readouterr().err
    assert export_web("--graph", "m", "--export_web", "site", "--audio", "x.wav") == 2
    assert "choose one of" in capsys.readouterr().err


def test_the_npm_packages_are_pinned_and_locked():
    """package.json names exact versions; the lock agrees (npm ci installs exactly those)."""
    package = json.loads((ROOT / "package.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())
    for name, version in package["dependencies"].items():
        assert version[0].isdigit(), f"{name}: pin an exact version, not {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
