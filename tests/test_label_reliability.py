"""label_image under deliberate attempts to break it (issue 9): one exit-status rule, strict
JSON, finite flags, file names with commas, clashing layer names, sidecars with wrong types,
a model beside the labels or sidecar of another export, bad --mic_file audio."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from label_models import LABELS, SR, build_tiny_model, make_clip, write_wav

from label.cli import main


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.getbasetemp() / "label_tiny_model"))


def run(capsys, *args):
    code = main(["label_image", *args])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def one_error_line(err: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, err
    return lines[0]


def copy_artifact(tiny, key: str, folder) -> str:
    """A copy of one exported artifact with its sidecar, to damage."""
    folder.mkdir(parents=True, exist_ok=True)
    source = tiny.paths[key]
    target = str(folder / os.path.basename(source))
    if os.path.isdir(source):
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
        shutil.copy(source + ".json", target + ".json")
    return target


# --- exit status: one rule ----------------------------------------------------------


def test_files_mode_exit_status_and_keep_going(tiny, tmp_path, capsys):
    good = write_wav(tmp_path / "good.wav", make_clip("tone", seed=4))
    missing = str(tmp_path / "missing.wav")
    code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio", f"{missing},{good}")
    assert code == 1
    assert "# " + good in out  # the good file is still labelled
    lines = error_lines(err)
    assert lines[0].startswith("label_image: error: ") and "missing.wav" in lines[0]
    assert lines[-1] == "label_image: 1 of 2 inputs could not be labelled"
    code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio", f"{missing},{good}",
                         "--nokeep_going")
    assert code == 1 and out == "" and "stopped at the first" in err
    code, out, _ = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio", good)
    assert code == 0 and out.startswith("tone ")


# --- strict JSON, finite numbers -----------------------------------------------------


@pytest.mark.parametrize("flag,value", [("--input_std", "nan"), ("--input_mean", "inf"),
                                        ("--hop_seconds", "nan"), ("--trigger_db", "inf"),
                                        ("--record_seconds", "-inf")])
def test_non_finite_flag_values_are_bad_flags(tiny, tmp_path, capsys, flag, value):
    wav = write_wav(tmp_path / "t.wav", make_clip("tone", seed=5))
    code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio", wav, flag, value, "--json")
    assert code == 2 and out == ""
    assert f"{flag} must be a finite number" in one_error_line(err)


def test_a_model_giving_nan_is_an_error_and_json_never_holds_nan(tiny, tmp_path, capsys):
    import tensorflow as tf

    from retrain.head import ClassificationHead
    from soundretrain.export import export_model

    head = ClassificationHead(tiny.backbone.feature_size, len(LABELS), seed=0)
    head.final_weights.assign(tf.fill(head.final_weights.shape, float("nan")))
    path = str(tmp_path / "nan.pb")
    export_model(tiny.backbone, head, LABELS, {"spectrogram": tiny.settings.to_dict()}, output_graph=path)
    wav = write_wav(tmp_path / "t.wav", make_clip("tone", seed=6))
    code, out, err = run(capsys, "--graph", path, "--audio", wav, "--json")
    assert code == 1 and "NaN" not in out
    assert "non-finite scores" in one_error_line(err)


def test_json_text_replaces_non_finite_numbers():
    from label.cli import json_text

    doc = json.loads(json_text({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}}))
    assert doc == {"a": None, "b": [1.0, None], "c": {"d": None}}


# --- file names -------------------------------------------------------------------


def test_a_file_name_with_a_comma(tiny, tmp_path, capsys):
    wav = write_wav(tmp_path / "rain, heavy.wav", make_clip("noise", seed=7))
    other = write_wav(tmp_path / "tone.wav", make_clip("tone", seed=7))
    code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio", wav)
    assert code == 0 and out.startswith("noise "), err
    # Commas still separate names that are not one existing file.
    code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio", wav, "--audio",
                         f"{other},{other}")
    assert code == 0 and out.count("# ") == 3, err


# --- layer names ------------------------------------------------------------------


def test_output_layer_that_is_the_input_or_an_inner_node(tiny, tmp_path, capsys):
    wav = write_wav(tmp_path / "t.wav", make_clip("tone", seed=8))
    graph = tiny.paths["output_graph"]
    code, _, err = run(capsys, "--graph", graph, "--audio", wav, "--output_layer", "Placeholder")
    assert code == 1 and "is the graph's input, not its output" in one_error_line(err)
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(open(graph, "rb").read())
    inner = [n.name for n in graph_def.node if n.op in ("Mul", "Relu", "Conv2D")]
    assert inner
    code, _, err = run(capsys, "--graph", graph, "--audio", wav, "--output_layer", inner[0])
    assert code == 1 and "is not a [batch, classes] output" in one_error_line(err)


# --- sidecars and export sets -------------------------------------------------------


@pytest.mark.parametrize("key,value,words", [
    ("labels", "tone", "labels must be a non-empty list"),
    ("input", [32, 32], "input must be an object"),
    ("module", "tiny", "module must be an object"),
    ("input.height", "32", "input.height must be a positive whole number"),
    ("input.input_std", 0, "input.input_std must be a finite number other than 0"),
    ("final_tensor_name", 7, "final_tensor_name must be a non-empty string"),
    ("test_accuracy", "high", "test_accuracy must be a number"),
    ("labels", ["a", "b", "c"], "labels do not match labels_sha256"),
])
def test_sidecar_with_wrong_types_is_one_line(tiny, tmp_path, capsys, key, value, words):
    graph = copy_artifact(tiny, "output_tflite", tmp_path / "m")
    side = json.load(open(graph + ".json"))
    if "." in key:
        outer, inner = key.split(".")
        side[outer][inner] = value
    else:
        side[key] = value
    json.dump(side, open(graph + ".json", "w"))
    wav = write_wav(tmp_path / "t.wav", make_clip("tone", seed=9))
    code, _, err = run(capsys, "--graph", graph, "--audio", wav)
    line = one_error_line(err)
    assert code == 1 and "invalid sidecar" in line and words in line


def test_labels_of_another_run_are_refused(tiny, tmp_path, capsys):
    wav = write_wav(tmp_path / "t.wav", make_clip("tone", seed=10))
    other = tmp_path / "other_labels.txt"
    other.write_text("chirp\ntone\nnoise\n")  # same count, other order: wrong names
    code, _, err = run(capsys, "--graph", tiny.paths["output_graph"], "--labels", str(other), "--audio", wav)
    line = one_error_line(err)
    assert code == 1 and "is not the labels file" in line and "drop --labels" in line
    code, out, _ = run(capsys, "--graph", tiny.paths["output_graph"], "--labels", tiny.paths["output_labels"],
                       "--audio", wav)
    assert code == 0 and out.startswith("tone ")


@pytest.mark.parametrize("key", ["output_graph", "output_tflite"])
def test_a_model_beside_the_sidecar_of_another_export_is_refused(tiny, tmp_path, capsys, key):
    """An export killed between the model's rename and its sidecar's leaves a mismatched pair."""
    from soundretrain.export import export_model

    path = copy_artifact(tiny, key, tmp_path / "m")
    renamed = ["a", "b", "c"]  # another run: other labels, same shapes
    kwargs = {key: str(tmp_path / ("other.pb" if key == "output_graph" else "other.tflite"))}
    export_model(tiny.backbone, tiny.head, renamed, {}, **kwargs)
    shutil.copy(kwargs[key] + ".json", path + ".json")  # the new sidecar landed, the model did not
    wav = write_wav(tmp_path / "t.wav", make_clip("tone", seed=11))
    code, _, err = run(capsys, "--graph", path, "--audio", wav)
    assert code == 1 and "does not match its sidecar" in one_error_line(err)


# --- --mic_file refuses what --audio refuses ----------------------------------------


def test_mic_file_refuses_nan_and_truncated_audio(tiny, tmp_path, capsys):
    y = make_clip("tone", seconds=2.0, seed=12)
    y[8000] = np.nan
    nan_wav = str(tmp_path / "nan.wav")
    sf.write(nan_wav, y, SR, subtype="FLOAT")
    good = write_wav(tmp_path / "good.wav", make_clip("tone", seconds=2.0, seed=12))
    truncated = tmp_path / "truncated.wav"
    raw = open(good, "rb").read()
    truncated.write_bytes(raw[: len(raw) // 2])
    for path, reason in ((nan_wav, "NaN or infinite samples"), (str(truncated), "truncated file")):
        code, _, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio", path)
        assert code == 1 and reason in one_error_line(err)
        code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--mic_file", path)
        assert code == 1 and out == "" and reason in one_error_line(err)
