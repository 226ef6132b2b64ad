"""``train``: class folders of audio in, a model folder out, in one command; the status file,
cancellation that leaves the old model, and every bad input in one line with nothing written.
Real TensorFlow on a tiny module; audio generated here."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flows.train.cli import main
from spectrograms.example import synthesize
from tiny_models import make_tiny_pooling_module

REPO = Path(__file__).resolve().parents[1]
SR = 22050


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_pooling_module(tmp_path_factory.mktemp("module") / "tiny")


def recordings(root: Path, classes=("siren", "engine", "bird"), per_class: int = 5,
               first: int = 0) -> Path:
    """Plain-named recordings (``siren_1.wav``), as a field recorder names them."""
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(first, first + per_class):
            sf.write(root / cls / f"{cls}_{k + 1}.wav", synthesize(cls, k, 0, SR), SR)
    return root


def flow_args(tmp_path, tiny, audio_dir, output_dir, *extra):
    return ["train", f"--audio_dir={audio_dir}", f"--output_dir={output_dir}",
            f"--tfhub_module={tiny}", f"--work_dir={tmp_path / 'work'}",
            f"--bottleneck_dir={tmp_path / 'bn'}", "--how_many_training_steps=1000",
            "--random_seed=1", "--noprogress", "--jobs=1", *extra]


def test_train_writes_a_model_folder_that_labels_unseen_recordings(tmp_path, tiny, capsys):
    audio = recordings(tmp_path / "my_sounds")
    (audio / "siren" / "notes.txt").write_text("recorded at the crossroads\n")
    (audio / "bird" / "broken.wav").write_bytes(b"RIFF0000WAVEnot really")
    (audio / "engine" / "engine_1_copy.wav").write_bytes((audio / "engine" / "engine_1.wav").read_bytes())
    noise = tmp_path / "noise"  # --background_dir: trained as _background_, never reported
    noise.mkdir()
    for k in range(4):
        sf.write(noise / f"hiss_{k}.wav", np.random.default_rng(k).normal(0, 0.05, SR * 3), SR)
    status = tmp_path / "status.json"
    assert main(flow_args(tmp_path, tiny, audio, tmp_path / "my_model", f"--status_file={status}",
                          f"--background_dir={noise}")) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    # The warnings: one line each.
    assert "ignored 1 file(s)" in err and "notes.txt" in err
    assert "skipped bird/broken.wav:" in err
    assert "the same audio is in class 'engine' 2 times" in err and "count as one recording" in err
    # The table, the evaluation and the files.
    assert "Evaluation: grouped 4-fold cross-validation" in out  # the background has 4 recordings
    assert "Cross-validation accuracy" in out and "Done in" in out
    assert "Per class (recall on the evaluated clips):" in out
    assert re.search(r"\n  siren +\d+\.\d% \(\d+/\d+ clips, 5 recordings\)", out)
    model = tmp_path / "my_model"
    names = set(os.listdir(model))
    assert {"labels.txt", "report.json", "report.md", "confusion.png"} <= names
    assert "model_audio.tflite" in names and "model_audio.tflite.json" in names
    assert (model / "labels.txt").read_text() == "_background_\nbird\nengine\nsiren\n"
    report = json.loads((model / "report.json").read_text())
    assert report["evaluation"]["method"] == "kfold" and report["evaluation"]["k"] == 4
    assert [c["label"] for c in report["classes"]] == ["_background_", "bird", "engine", "siren"]
    assert report["open_set"]["background_labels"] == ["_background_"]
    engine = report["classes"][2]
    assert engine["recordings"] == 5 and engine["clips"] > 5  # the copy: one recording more clips
    assert sum(c["evaluated_clips"] for c in report["classes"]) == report["clips"]
    assert report["open_set"]["threshold"] >= 0 and report["accuracy"] >= 0.8
    assert "| siren | 5 |" in (model / "report.md").read_text()
    sidecar = json.loads((model / "model_audio.tflite.json").read_text())
    assert sidecar["open_set"]["threshold"] == report["open_set"]["threshold"]
    assert_browser_model(model, sidecar)
    state = json.loads(status.read_text())
    assert state["state"] == "done" and state["progress"] == 1.0 and state["accuracy"] == report["accuracy"]
    assert state["report"] == str(model / "report.json") and state["curve"]
    steps = [p[0] for p in state["curve"]]
    assert steps == [0]  # retrain's default head, the logistic one, is fitted in one step
    # The model labels recordings it never heard.
    unseen = recordings(tmp_path / "unseen", first=7, per_class=2)
    from label.cli import main as label_main

    assert label_main(["label_image", f"--graph={model / 'model_audio.tflite'}",
                       f"--audio_dir={unseen}", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 6
    right = [Path(r["source"]).parent.name == r["label"] for r in results]  # "unknown" is wrong here
    assert np.mean(right) >= 0.8


def tfjs_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflowjs") is not None


def assert_browser_model(model: Path, sidecar: dict) -> None:
    """tfjs/: the same audio-in model as a TF.js graph model, in the folder's manifest (one
    atomic set with the rest). Skipped where the converter is not installed (make install
    installs it, so CI runs it)."""
    if not tfjs_installed():
        return
    from soundretrain.model_folder import read_manifest, verify

    tfjs = model / "tfjs"
    names = set(os.listdir(tfjs))
    shards = {n for n in names if re.fullmatch(r"group\d+-shard\d+of\d+\.bin", n)}
    assert "model.json" in names and shards and "soundretrain.json" in names
    graph = json.loads((tfjs / "model.json").read_text())
    described = graph["userDefinedMetadata"]["soundretrain"]
    assert described["model_input"] == "waveform" and described["artifact"] == "tfjs_graph_model"
    assert described["labels"] == sidecar["labels"] and described["export_id"] == sidecar["export_id"]
    assert described["open_set"] == sidecar["open_set"]
    listed = read_manifest(str(model))["files"]
    assert {f"tfjs/{n}" for n in names} <= set(listed)
    assert listed["tfjs/model.json"]["bytes"] == (tfjs / "model.json").stat().st_size
    verify(str(model))  # every listed file, hashed


def test_no_converter_is_one_warning_and_notfjs_none(tmp_path, tiny, capsys, monkeypatch):
    """Without the TF.js converter the folder is written as before, with one warning saying
    how to get it; --notfjs asks for no browser model (and no warning)."""
    import importlib.util

    audio = recordings(tmp_path / "my_sounds", per_class=2)
    real_find_spec = importlib.util.find_spec
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec",
                  lambda name, *a: None if name.split(".")[0] == "tensorflowjs" else real_find_spec(name, *a))
        assert main(flow_args(tmp_path, tiny, audio, tmp_path / "a", "--evaluation=none",
                              "--how_many_training_steps=100")) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "TF.js" in line]
    assert len(warnings) == 1 and warnings[0].startswith("train: warning: no TF.js model")
    assert "pip install --no-deps tensorflowjs" in warnings[0] and "--notfjs" in warnings[0]
    names = set(os.listdir(tmp_path / "a"))
    assert {"model_audio.tflite", "labels.txt", "report.json"} <= names and "tfjs" not in names
    assert main(flow_args(tmp_path, tiny, audio, tmp_path / "b", "--evaluation=none",
                          "--how_many_training_steps=100", "--notfjs")) == 0
    assert "TF.js" not in capsys.readouterr().err
    names = set(os.listdir(tmp_path / "b"))
    assert "model_audio.tflite" in names and "tfjs" not in names


def test_a_module_without_audio_in_gets_no_browser_model_either(tmp_path, tiny, capsys, monkeypatch):
    """A module that cannot be traced into one graph (as a TF Hub handle that runs outside
    TensorFlow): model.tflite, which label_image feeds with the module's features, no
    tfjs/ (it takes sound too), and the run still succeeds."""
    from soundretrain import audio_export, tfjs_export

    def untraceable(*args, **kwargs):
        raise audio_export.AudioExportError("cannot export module 'tiny' audio-in: it cannot be traced")

    monkeypatch.setattr(audio_export, "check_audio_export", untraceable)
    monkeypatch.setattr(tfjs_export, "check_audio_export", untraceable)
    audio = recordings(tmp_path / "my_sounds", per_class=2)
    assert main(flow_args(tmp_path, tiny, audio, tmp_path / "m", "--evaluation=none",
                          "--how_many_training_steps=100")) == 0
    out = capsys.readouterr().out
    assert "Note: no audio-in model (" in out
    if tfjs_installed():
        assert "(and no TF.js model: it takes sound too)" in out
    names = set(os.listdir(tmp_path / "m"))
    assert "model.tflite" in names and "model_audio.tflite" not in names and "tfjs" not in names


def _wait_for(status: Path, stages: tuple, proc: subprocess.Popen, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"train ended early: {proc.returncode}")
        try:
            state = json.loads(status.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("stage") in stages:
            return state
        time.sleep(0.05)
    raise AssertionError(f"train never reached {stages}")


def test_sigterm_cancels_and_leaves_the_old_model(tmp_path, tiny):
    audio = recordings(tmp_path / "my_sounds", per_class=3)
    model = tmp_path / "my_model"
    model.mkdir()
    old = {"report.json": '{"old": true}\n', "labels.txt": "a\nb\n"}
    for name, text in old.items():
        (model / name).write_text(text)
    from soundretrain.model_folder import MANIFEST_FILENAME, write_manifest

    write_manifest(str(model))  # an earlier model folder
    old[MANIFEST_FILENAME] = (model / MANIFEST_FILENAME).read_text()
    status = tmp_path / "status.json"
    args = flow_args(tmp_path, tiny, audio, model, f"--status_file={status}",
                     "--head=sgd", "--how_many_training_steps=200000")
    proc = subprocess.Popen([sys.executable, "-m", "flows.train", *args[1:]], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_for(status, ("training",), proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("train: error: cancelled by SIGTERM")
    assert f"{model} was left as it was" in err
    state = json.loads(status.read_text())
    assert state["state"] == "cancelled"
    assert {p.name: p.read_text() for p in model.iterdir()} == old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".my_model.")]  # no temp folder


def run_flow(tmp_path, tiny, audio, *extra) -> tuple[int, str, str]:
    """The flow in a fresh process (bad input fails before TensorFlow)."""
    done = subprocess.run([sys.executable, "-m", "flows.train",
                           *flow_args(tmp_path, tiny, audio, tmp_path / "out", *extra)[1:]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("make, words", [
    (lambda root: (recordings(root), (root / "cat").mkdir()),
     ["class folder", "cat is empty", "add recordings of 'cat'"]),
    (lambda root: (recordings(root), (root / "cat").mkdir(), (root / "cat" / "notes.txt").write_text("x")),
     ["cat holds no audio files (only notes.txt)"]),
    (lambda root: (recordings(root), recordings(root, ("rain",), per_class=1)),
     ["class 'rain' has 1 recording (rain_1.wav)", "--evaluation none"]),
    (lambda root: recordings(root, ("siren",)),
     ["only one class ('siren')", "at least two class folders"]),
    (lambda root: (root.mkdir(), sf.write(root / "a.wav", np.zeros(100), SR)),
     ["holds 1 audio file(s) but no class folders"]),
])
def test_bad_folders_are_one_line_and_nothing_is_written(tmp_path, tiny, make, words):
    audio = tmp_path / "my_sounds"
    make(audio)
    code, out, err = run_flow(tmp_path, tiny, audio)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: error: "), err
    for w in words:
        assert w in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_a_class_of_undecodable_files_is_refused_after_the_warnings(tmp_path, tiny):
    audio = recordings(tmp_path / "my_sounds")
    (audio / "cat").mkdir()
    for k in range(3):
        (audio / "cat" / f"cat_{k}.wav").write_bytes(b"not audio at all %d" % k)
    code, out, err = run_flow(tmp_path, tiny, audio)
    assert code == 1
    lines = err.strip().splitlines()
    assert sum(line.startswith("train: warning: skipped cat/cat_") for line in lines) == 3
    assert lines[-1].startswith("train: error: class 'cat' has no recording left that could be decoded")
    assert not (tmp_path / "out").exists()


def test_the_same_bytes_in_two_classes_are_a_warning(tmp_path):
    from flows.train.dataset import check_audio_folders

    audio = recordings(tmp_path / "my_sounds")
    (audio / "bird" / "oops.wav").write_bytes((audio / "siren" / "siren_2.wav").read_bytes())
    notes = check_audio_folders(str(audio)).notes
    assert len(notes) == 1
    assert notes[0].startswith("the same audio is in 2 classes (bird/oops.wav, siren/siren_2.wav)")
    assert "teach the model a contradiction" in notes[0]


def test_an_output_folder_that_is_not_a_model_is_never_replaced(tmp_path, tiny):
    audio = recordings(tmp_path / "my_sounds", per_class=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.wav").write_bytes(b"RIFF")
    code, out, err = run_flow(tmp_path, tiny, audio)
    assert code == 1 and "exists and is not a model folder; not replacing it" in err
    assert len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path / "out") == ["precious.wav"]
    code, out, err = run_flow(tmp_path, tiny, audio, f"--output_dir={audio / 'siren'}")
    assert code == 2 and "overlap" in err
