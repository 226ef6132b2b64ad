"""Export: the .pb, SavedModel and TFLite agree with the in-memory model; sidecars;
plain tf.compat.v1 loading as label_image.py does it; head-only waveform export;
atomic re-export."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from label_models import LABELS, SR, build_tiny_model, make_clip


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.getbasetemp() / "label_tiny_model"))


@pytest.fixture(scope="module")
def images(tiny):
    from soundretrain.render import render_clip

    clips = [make_clip(kind, seed=200 + s) for kind in LABELS for s in range(3)]
    return np.stack([render_clip(y, SR, tiny.settings) for y in clips]).astype(np.float32) / 255.0


@pytest.mark.parametrize("artifact", ["output_graph", "saved_model_dir", "output_tflite"])
def test_every_format_matches_the_in_memory_model(tiny, images, artifact):
    from label.models import load_labeler

    expected = tiny.in_memory(images)
    labeler = load_labeler(tiny.paths[artifact])
    got = labeler.predict(images)
    assert got.shape == (len(images), len(LABELS))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()
    # The trained head really separates the generated classes.
    assert (got.argmax(1) == np.repeat(np.arange(len(LABELS)), 3)).all()
    assert labeler.labels == LABELS


@pytest.mark.parametrize("quantization,atol", [("float16", 0.02), ("dynamic", 0.05)])
def test_quantised_tflite_keeps_the_top1(tiny, images, tmp_path, quantization, atol):
    from soundretrain.export import export_model
    from label.models import load_labeler

    path = str(tmp_path / f"{quantization}.tflite")
    export_model(tiny.backbone, tiny.head, LABELS, {"spectrogram": tiny.settings.to_dict()},
                 output_tflite=path, tflite_quantization=quantization)
    assert json.load(open(path + ".json"))["tflite_quantization"] == quantization
    expected = tiny.in_memory(images)
    got = load_labeler(path).predict(images)
    np.testing.assert_allclose(got, expected, atol=atol)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_frozen_graph_loads_with_plain_tf_compat_v1(tiny, images):
    """Exactly what TensorFlow's label_image.py does with retrain.py's graph."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    with open(tiny.paths["output_graph"], "rb") as f:
        graph_def.ParseFromString(f.read())
    names = {n.name: n.op for n in graph_def.node}
    assert names["Placeholder"] == "Placeholder"
    assert "final_result" in names
    assert not any(op in ("VarHandleOp", "ReadVariableOp", "VariableV2") for op in names.values())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        probs = sess.run("final_result:0", {"Placeholder:0": images})
    np.testing.assert_allclose(probs, tiny.in_memory(images), atol=1e-4)
    # label_image.py imports under the default "import/" prefix: that works too.
    graph2 = tf.Graph()
    with graph2.as_default():
        tf.compat.v1.import_graph_def(graph_def)
    with tf.compat.v1.Session(graph=graph2) as sess:
        probs2 = sess.run("import/final_result:0", {"import/Placeholder:0": images[:1]})
    np.testing.assert_allclose(probs2, probs[:1], atol=1e-6)


def test_custom_tensor_names(tiny, images, tmp_path):
    from soundretrain.export import export_model
    from label.models import load_labeler

    path = str(tmp_path / "g.pb")
    export_model(tiny.backbone, tiny.head, LABELS, {}, output_graph=path,
                 input_tensor_name="input", final_tensor_name="my_result")
    side = json.load(open(path + ".json"))
    assert (side["input_tensor_name"], side["final_tensor_name"]) == ("input", "my_result")
    got = load_labeler(path).predict(images)  # names come from the sidecar
    np.testing.assert_allclose(got, tiny.in_memory(images), atol=1e-4)


def test_labels_file_and_sidecars(tiny):
    from soundretrain.sidecar import labels_sha256

    with open(tiny.paths["output_labels"], encoding="utf-8") as f:
        assert f.read() == "tone\nnoise\nchirp\n"
    sidecars = [tiny.paths["output_graph"] + ".json", os.path.join(tiny.paths["saved_model_dir"], "soundretrain.json"),
                tiny.paths["output_tflite"] + ".json"]
    for path in sidecars:
        side = json.load(open(path))
        assert side["labels"] == LABELS
        assert side["labels_sha256"] == labels_sha256(LABELS)
        assert side["spectrogram"] == tiny.settings.to_dict()
        assert side["input"] == {"kind": "image", "height": 32, "width": 32, "input_mean": 0.0, "input_std": 255.0}
        assert side["module"]["name"] == tiny.backbone.name
        assert side["test_accuracy"] == pytest.approx(1.0)
        assert (side["input_tensor_name"], side["final_tensor_name"]) == ("Placeholder", "final_result")
        assert side["model_input"] == "image"
    assert json.load(open(sidecars[0]))["artifact"] == "frozen_graph"


def test_saved_model_serving_signature(tiny, images):
    import tensorflow as tf

    sig = tf.saved_model.load(tiny.paths["saved_model_dir"]).signatures["serving_default"]
    out = sig(Placeholder=tf.constant(images))
    np.testing.assert_allclose(out["final_result"].numpy(), tiny.in_memory(images), atol=1e-4)


def test_saved_model_offers_retrain_py_names_for_tf_serving(tiny, images):
    """TF Serving clients written for retrain.py send {"image": ...} and read "prediction"
    (retrain.py's simple_save); a second signature serves them, serving_default is unchanged."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    folder = tiny.paths["saved_model_dir"]
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(open(os.path.join(folder, "saved_model.pb"), "rb").read())
    signatures = proto.meta_graphs[0].signature_def
    assert set(signatures) >= {"serving_default", "retrain_py"}
    for key, inputs, outputs in (("serving_default", ["Placeholder"], ["final_result"]),
                                 ("retrain_py", ["image"], ["prediction"])):
        sig = signatures[key]
        assert sig.method_name == "tensorflow/serving/predict"  # what TF Serving's Predict API needs
        assert list(sig.inputs) == inputs and list(sig.outputs) == outputs
        assert [d.size for d in sig.inputs[inputs[0]].tensor_shape.dim] == [-1, 32, 32, 3]
    # A Predict call as TF Serving makes it: signature by name, inputs by key.
    loaded = tf.saved_model.load(folder)
    request = {"image": tf.constant(images)}
    response = loaded.signatures["retrain_py"](**request)
    np.testing.assert_allclose(response["prediction"].numpy(), tiny.in_memory(images), atol=1e-4)


@pytest.mark.parametrize("name,words", [("Placeholder", "is the name of the graph's input node"),
                                        ("final:0", "is not a graph node name"),
                                        ("StatefulPartitionedCall", "already the name of a node inside")])
def test_clashing_final_tensor_names_are_refused(tiny, tmp_path, name, words):
    from soundretrain.export import ExportError, export_model

    path = tmp_path / "g.pb"
    with pytest.raises(ExportError, match=words):
        export_model(tiny.backbone, tiny.head, LABELS, {}, output_graph=str(path), final_tensor_name=name)
    assert not path.exists()


def test_label_count_must_match_the_head(tiny, tmp_path):
    from soundretrain.export import ExportError, export_model

    with pytest.raises(ExportError, match="3 outputs but there are 2 labels"):
        export_model(tiny.backbone, tiny.head, ["a", "b"], {}, output_graph=str(tmp_path / "g.pb"))
    assert not os.path.exists(tmp_path / "g.pb")
    with pytest.raises(ExportError, match="quantization"):
        export_model(tiny.backbone, tiny.head, LABELS, {}, output_tflite=str(tmp_path / "m.tflite"),
                     tflite_quantization="int3")


def test_reexport_replaces_artifacts_atomically(tiny, images, tmp_path):
    from retrain.head import ClassificationHead

    from soundretrain.export import export_model
    from label.models import load_labeler

    paths = dict(output_graph=str(tmp_path / "g.pb"), saved_model_dir=str(tmp_path / "sm"),
                 output_tflite=str(tmp_path / "m.tflite"), output_labels=str(tmp_path / "labels.txt"))
    export_model(tiny.backbone, tiny.head, LABELS, {}, **paths)
    other = ClassificationHead(tiny.backbone.feature_size, 2, seed=3)
    export_model(tiny.backbone, other, ["x", "y"], {}, **paths)  # over the old ones
    for key in ("output_graph", "saved_model_dir", "output_tflite"):
        labeler = load_labeler(paths[key])
        assert labeler.labels == ["x", "y"]
        np.testing.assert_allclose(labeler.predict(images), other.predict(tiny.backbone.compute(images)), atol=1e-4)
    assert open(paths["output_labels"]).read() == "x\ny\n"
    # No temporary files or folders left behind; one folder held them all: a model folder.
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["g.pb", "g.pb.json", "sm", "m.tflite", "m.tflite.json", "labels.txt",
         "soundretrain_manifest.json"])


def test_failed_write_keeps_the_old_artifact(tmp_path):
    from soundretrain import atomic_files

    target = tmp_path / "model.pb"
    atomic_files.write_bytes(str(target), b"old")
    with pytest.raises(TypeError):
        atomic_files.write_bytes(str(target), "not bytes")  # fails mid-write
    assert target.read_bytes() == b"old"
    folder = tmp_path / "saved_model"
    with atomic_files.replacing_folder(str(folder)) as tmp:
        open(os.path.join(tmp, "saved_model.pb"), "w").write("old")
    with pytest.raises(RuntimeError):
        with atomic_files.replacing_folder(str(folder)) as tmp:
            open(os.path.join(tmp, "saved_model.pb"), "w").write("half")
            raise RuntimeError("export crashed")
    assert (folder / "saved_model.pb").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["model.pb", "saved_model"]


def test_artifacts_get_the_permissions_of_a_plain_write(tiny, tmp_path):
    # mkstemp/mkdtemp make private 0600/0700 entries; a shared model must stay readable.
    from soundretrain.export import export_model

    old = os.umask(0o022)
    try:
        paths = dict(output_graph=str(tmp_path / "g.pb"), saved_model_dir=str(tmp_path / "sm"),
                     output_labels=str(tmp_path / "labels.txt"))
        export_model(tiny.backbone, tiny.head, LABELS, {}, **paths)
    finally:
        os.umask(old)
    for name in ("g.pb", "g.pb.json", "labels.txt", "sm/soundretrain.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "sm").stat().st_mode & 0o777 == 0o755


def test_replacing_never_deletes_what_is_not_a_saved_model(tmp_path):
    from soundretrain import atomic_files

    folder = tmp_path / "recordings"
    folder.mkdir()
    (folder / "dog.wav").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="not a SavedModel folder"):
        with atomic_files.replacing_folder(str(folder)):
            pass
    assert (folder / "dog.wav").read_bytes() == b"precious"
    a_file = tmp_path / "graph.pb"
    a_file.write_bytes(b"graph")
    with pytest.raises(FileExistsError, match="not a folder"):
        with atomic_files.replacing_folder(str(a_file)):
            pass
    assert a_file.read_bytes() == b"graph"
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_files.write_bytes(str(folder), b"x")
    # An empty folder is fine to fill.
    (tmp_path / "empty").mkdir()
    with atomic_files.replacing_folder(str(tmp_path / "empty")) as tmp:
        open(os.path.join(tmp, "saved_model.pb"), "w").write("new")
    assert (tmp_path / "empty" / "saved_model.pb").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["empty", "graph.pb", "recordings"]


@pytest.fixture(scope="module")
def waveform_backbone(tmp_path_factory):
    from soundretrain.backbones.registry import load_module
    from tiny_models import make_tiny_waveform_module

    return load_module(make_tiny_waveform_module(tmp_path_factory.mktemp("wave") / "tiny_wave", sample_rate=SR))


def test_waveform_backbone_exports_head_only(waveform_backbone, tmp_path):
    from retrain.head import ClassificationHead

    from soundretrain.export import ExportError, export_model
    from label.models import load_labeler

    head = ClassificationHead(waveform_backbone.feature_size, 3, seed=1)
    with pytest.raises(ExportError, match="cannot write a frozen graph") as err:
        export_model(waveform_backbone, head, LABELS, {}, output_graph=str(tmp_path / "g.pb"))
    assert "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "g.pb")

    paths = export_model(waveform_backbone, head, LABELS, {}, saved_model_dir=str(tmp_path / "sm"),
                         output_tflite=str(tmp_path / "m.tflite"))
    waves = np.stack([make_clip(kind, seed=5) for kind in LABELS])
    expected = head.predict(waveform_backbone.compute(waves))
    for key in ("saved_model_dir", "output_tflite"):
        side = json.load(open(paths[key + "_sidecar"]))
        assert side["model_input"] == "features"
        assert side["module"]["input_kind"] == "waveform"
        assert side["input"]["feature_size"] == waveform_backbone.feature_size
        # The backbone is found again from the sidecar alone; labelling chains it.
        labeler = load_labeler(paths[key])
        assert labeler.input_kind == "waveform" and labeler.sample_rate == SR
        np.testing.assert_allclose(labeler.predict(waves), expected, atol=1e-4)


def test_mixed_image_and_waveform_modules_label_audio(tiny, waveform_backbone, tmp_path):
    """A concatenation of an image and a waveform module (birdnet,efficientnet_lite0 in
    real use): head-only export; labelling feeds each module its own input, found
    again from the sidecar alone."""
    from retrain.head import ClassificationHead
    from soundretrain.backbones.registry import load_module
    from soundretrain.render import render_clip

    from soundretrain.export import export_model
    from label.labeling import AudioInput, label_waveform
    from label.models import load_labeler

    mixed = load_module(f"{tiny.backbone.folder},{waveform_backbone.folder}")
    head = ClassificationHead(mixed.feature_size, 3, seed=2)
    paths = export_model(mixed, head, LABELS, {"spectrogram": tiny.settings.to_dict()},
                         output_tflite=str(tmp_path / "mixed.tflite"))
    labeler = load_labeler(paths["output_tflite"])
    assert labeler.head_only and labeler.input_kind == "audio"
    y = make_clip("chirp", 1.0, seed=4)
    result = label_waveform(labeler, y, SR, AudioInput(tiny.settings))
    image = render_clip(y, SR, tiny.settings)[None].astype(np.float32) / 255.0
    features = np.concatenate([tiny.backbone.compute(image), waveform_backbone.compute(y[None])], axis=1)
    np.testing.assert_allclose(result.probabilities, head.predict(features)[0], atol=1e-4)


def test_waveform_model_through_the_cli(waveform_backbone, tmp_path, capsys):
    from retrain.head import ClassificationHead
    from soundretrain.spectrogram_settings import SpectrogramSettings

    from label.cli import main
    from soundretrain.export import export_model
    from label_models import SPECTROGRAM, write_wav

    head = ClassificationHead(waveform_backbone.feature_size, 3, seed=1)
    paths = export_model(waveform_backbone, head, LABELS, {"spectrogram": SpectrogramSettings(**SPECTROGRAM).to_dict()},
                         saved_model_dir=str(tmp_path / "sm"))
    y = np.concatenate([make_clip("tone", seed=6), make_clip("noise", seed=6)])
    wav = write_wav(tmp_path / "two.wav", y)
    assert main(["label_image", "--graph", paths["saved_model_dir"], "--audio", wav, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert [w["start"] for w in result["windows"]] == [0.0, 1.0]
    expected = head.predict(waveform_backbone.compute(np.stack([y[:SR], y[SR:]])))
    got = sorted((t["score"] for t in result["top"]), reverse=True)
    np.testing.assert_allclose(got, sorted(expected.mean(0), reverse=True), atol=1e-3)
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    assert main(["label_image", "--graph", paths["saved_model_dir"], "--image", str(png)]) == 1
    assert "use --audio" in capsys.readouterr().err


@pytest.mark.parametrize("artifact", ["output_graph", "saved_model_dir", "output_tflite"])
def test_wrong_input_shape_is_one_line(tiny, artifact):
    from label.models import ModelRunError, load_labeler

    with pytest.raises(ModelRunError, match=r"failed on input of shape \(1, 8, 8, 3\)") as err:
        load_labeler(tiny.paths[artifact]).predict(np.zeros((1, 8, 8, 3), np.float32))
    assert "\n" not in str(err.value)
