"""The background class and "unknown": the open-set threshold a model's sidecar carries, in
the label core (files, folders, CSV, JSON, detections, the microphone loop, the server)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from label.cli import main
from label_models import LABELS, build_tiny_model, make_clip, write_wav
from soundretrain.open_set import (BACKGROUND_LABEL, MAX_THRESHOLD, UNKNOWN, OpenSet,
                                   calibrate_threshold, known_scores)
from soundretrain.sidecar import labels_sha256


def test_decide_background_and_threshold():
    labels = ["dog", BACKGROUND_LABEL, "siren"]
    open_set = OpenSet.from_sidecar({"open_set": {"threshold": 0.6}}, labels)
    assert open_set.background == (1,)
    assert open_set.label(np.array([0.7, 0.1, 0.2]), labels) == ("dog", pytest.approx(0.7))
    assert open_set.label(np.array([0.5, 0.1, 0.4]), labels)[0] == UNKNOWN  # below the threshold
    assert open_set.label(np.array([0.1, 0.8, 0.1]), labels)[0] == UNKNOWN  # the background wins
    # No sidecar block: the best class, always (models exported before the threshold existed).
    plain = OpenSet.from_sidecar({}, ["dog", "siren"])
    assert plain.label(np.array([0.51, 0.49]), ["dog", "siren"])[0] == "dog"
    for bad in ({"threshold": "high"}, {"threshold": 2}, {"threshold": True}, "x"):
        assert OpenSet.from_sidecar({"open_set": bad}, labels).threshold == 0.0


def test_the_threshold_calls_the_asked_share_of_known_sounds_unknown():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=400)
    true = rng.integers(0, 3, 400)
    t = calibrate_threshold(p, true, reject_rate=0.1)
    assert np.mean(known_scores(p) < t) == pytest.approx(0.1, abs=0.01)
    assert np.mean(known_scores(p) < t) <= 0.1
    # Background rows are not known sounds: they do not move it.
    with_bg = np.concatenate([p, np.tile([[0.02, 0.96, 0.02]], (100, 1))])
    true_bg = np.concatenate([true, np.ones(100, int)])
    t_bg = calibrate_threshold(with_bg, true_bg, background=[1], reject_rate=0.1)
    # the known rows' (true class not the background) best non-background probability: its 10 % quantile
    known = true != 1
    scores = np.sort(np.delete(p[known], [1], 1).max(1))
    assert t_bg == scores[int(0.1 * (len(scores) + 1)) - 1]  # conformal: the k-th lowest
    # Too few held-out predictions to promise the rate: no threshold.
    assert calibrate_threshold(p[:18], true[:18], reject_rate=0.05) == 0.0
    assert calibrate_threshold(p[:19], true[:19], reject_rate=0.05) == np.sort(known_scores(p[:19]))[0]
    # Never above 0.5: a class holding most of the probability is named (held-out scores near 1
    # on well-separated classes would otherwise call a 0.98 sound unknown).
    sure = np.tile([[0.9998, 0.0001, 0.0001]], (40, 1))
    assert calibrate_threshold(sure, np.zeros(40, int)) == MAX_THRESHOLD
    assert calibrate_threshold(p[:0], true[:0]) == 0.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_label_model")))


def model_with(tmp_path: Path, model, threshold=None, labels=None) -> str:
    """The tiny TFLite model with an edited sidecar: an open-set threshold, other labels."""
    path = tmp_path / "model.tflite"
    shutil.copy(model.paths["output_tflite"], path)
    sidecar = json.loads(Path(model.paths["output_tflite"] + ".json").read_text())
    if threshold is not None:
        sidecar["open_set"] = {"threshold": threshold, "reject_rate": 0.05}
    if labels is not None:
        sidecar["labels"], sidecar["labels_sha256"] = labels, labels_sha256(labels)
    (tmp_path / "model.tflite.json").write_text(json.dumps(sidecar))
    return str(path)


def clips(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir(exist_ok=True)
    for kind in LABELS:
        write_wav(folder / f"{kind}.wav", make_clip(kind, seconds=3.0, seed=7))
    return folder


def test_without_a_threshold_every_sound_gets_its_nearest_class(tmp_path, model, capsys):
    folder = clips(tmp_path)
    assert main(["label_image", f"--graph={model_with(tmp_path, model)}", f"--audio_dir={folder}", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["label"] for r in results] == [r["top"][0]["label"] for r in results]
    assert UNKNOWN not in [r["label"] for r in results]


def test_below_the_threshold_the_answer_is_unknown_everywhere(tmp_path, model, capsys):
    folder = clips(tmp_path)
    graph = model_with(tmp_path, model, threshold=0.9999)
    # text
    assert main(["label_image", f"--graph={graph}", f"--audio={folder / 'tone.wav'}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"{UNKNOWN} (no class reaches this model's threshold 0.9999")
    assert any("window" in line and line.split(": ")[1].startswith(UNKNOWN) for line in out)
    # JSON: the decision, and the nearest classes still listed
    assert main(["label_image", f"--graph={graph}", f"--audio_dir={folder}", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert {r["label"] for r in results} == {UNKNOWN} and all(r["top"] for r in results)
    assert all(w["label"] == UNKNOWN for r in results for w in r["windows"])
    # CSV
    assert main(["label_image", f"--graph={graph}", f"--audio_dir={folder}",
                 f"--output_csv={tmp_path / 'labels.csv'}"]) == 0
    rows = (tmp_path / "labels.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 and all(r.split(",")[2] == UNKNOWN for r in rows)
    # detections: an unknown sound is no detection, whatever --min_confidence says
    capsys.readouterr()
    assert main(["label_image", f"--graph={graph}", f"--audio_dir={folder}", "--min_confidence=0.3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == ""
    assert "0 detection(s) at --min_confidence 0.3 (and the model's unknown threshold 0.9999)" in captured.err


def test_the_background_class_is_never_a_detection(tmp_path, model, capsys):
    labels = [BACKGROUND_LABEL if label == "noise" else label for label in LABELS]
    graph = model_with(tmp_path, model, labels=labels)
    folder = clips(tmp_path)
    assert main(["label_image", f"--graph={graph}", f"--audio={folder / 'noise.wav'}",
                 f"--audio={folder / 'tone.wav'}", "--json"]) == 0
    noise, tone = json.loads(capsys.readouterr().out)["results"]
    assert noise["top"][0]["label"] == BACKGROUND_LABEL and noise["label"] == UNKNOWN
    assert tone["label"] == "tone"
    assert main(["label_image", f"--graph={graph}", f"--audio={folder / 'noise.wav'}",
                 f"--audio={folder / 'tone.wav'}", "--min_confidence=0.5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all("\ttone\t" in line for line in lines)


def test_the_microphone_loop_says_unknown(tmp_path, model, capsys):
    y = np.concatenate([np.zeros(8000, np.float32), make_clip("tone", seconds=2.0, seed=3),
                        np.zeros(8000, np.float32)])
    wav = write_wav(tmp_path / "mic.wav", y)
    graph = model_with(tmp_path, model, threshold=0.9999)
    assert main(["label_image", f"--graph={graph}", f"--mic_file={wav}", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert events and all(e["label"] == UNKNOWN for e in events)
