"""label_image: flags, output format, images, audio windows, folders, and every bad input
giving one clear line with a non-zero exit."""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from label_models import LABELS, SR, build_tiny_model, make_clip, write_wav

from label.cli import main


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.getbasetemp() / "label_tiny_model"))


def run(capsys, *args):
    code = main(["label_image", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("INFO:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def spectrogram_png(tiny, tmp_path, kind, seed=7) -> str:
    from soundretrain.render import render_clip

    path = tmp_path / f"{kind}.png"
    Image.fromarray(render_clip(make_clip(kind, seed=seed), SR, tiny.settings)).save(path)
    return str(path)


@pytest.mark.parametrize("artifact", ["output_graph", "saved_model_dir", "output_tflite"])
def test_audio_with_only_the_sidecar(tiny, tmp_path, capsys, artifact):
    wav = write_wav(tmp_path / "x.wav", make_clip("chirp", seed=3))
    code, out, err = run(capsys, "--graph", tiny.paths[artifact], "--audio", wav)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3  # top 5 of 3 classes: all of them, best first
    names = [line.rsplit(" ", 1)[0] for line in lines]
    scores = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert names[0] == "chirp" and sorted(names) == sorted(LABELS)
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-3)


def test_image_output_matches_audio(tiny, tmp_path, capsys):
    """The PNG the writer would store and the audio rendered on the fly label alike."""
    from soundretrain.audio import load_audio
    from soundretrain.render import render_clip

    wav = write_wav(tmp_path / "tone.wav", make_clip("tone", seed=7))
    png = str(tmp_path / "tone.png")  # what the spectrograms writer stores for this file
    Image.fromarray(render_clip(load_audio(wav, SR), SR, tiny.settings)).save(png)
    _, from_audio, _ = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", wav, "--json")
    _, from_image, _ = run(capsys, "--graph", tiny.paths["output_graph"], "--image", png, "--json")
    a, i = json.loads(from_audio)["results"][0], json.loads(from_image)["results"][0]
    assert a["top"] == i["top"] and a["top"][0]["label"] == "tone"
    assert i["kind"] == "image" and a["kind"] == "audio"


def test_top_k_and_json(tiny, tmp_path, capsys):
    wav = write_wav(tmp_path / "n.wav", make_clip("noise", seed=3))
    code, out, _ = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", wav, "--top_k", "1")
    assert code == 0 and out.splitlines()[0].startswith("noise ") and len(out.splitlines()) == 1
    code, out, _ = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", wav, "--top_k", "2", "--json")
    doc = json.loads(out)
    assert doc["format"] == "frozen_graph" and doc["errors"] == []
    (result,) = doc["results"]
    assert [t["label"] for t in result["top"]][0] == "noise" and len(result["top"]) == 2


def test_several_files_comma_separated_repeated_and_positional(tiny, tmp_path, capsys):
    paths = [write_wav(tmp_path / f"{k}.wav", make_clip(k, seed=9)) for k in LABELS]
    code, out, _ = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio", f"{paths[0]},{paths[1]}",
                       "--audio", paths[2], "--json")
    assert code == 0
    assert [r["top"][0]["label"] for r in json.loads(out)["results"]] == LABELS
    code, out, _ = run(capsys, "--graph", tiny.paths["output_tflite"], "--top_k", "1", "--audio", *paths)
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("# ")]
    assert headers == [f"# {p}" for p in paths]
    assert [line.split()[0] for line in out.splitlines() if not line.startswith("#")] == LABELS


def test_long_audio_is_cut_into_windows_and_summarised(tiny, tmp_path, capsys):
    # 1 s of tone, 1 s of noise, 1 s of tone: windows of 1 s every 0.5 s.
    y = np.concatenate([make_clip("tone", seed=1), make_clip("noise", seed=1), make_clip("tone", seed=1)])
    wav = write_wav(tmp_path / "long.wav", y)
    code, out, err = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", wav, "--hop_seconds", "0.5",
                         "--json")
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    starts = [w["start"] for w in result["windows"]]
    assert starts == [0.0, 0.5, 1.0, 1.5, 2.0]
    tops = [w["top"][0]["label"] for w in result["windows"]]
    assert tops[0] == "tone" and tops[2] == "noise" and tops[4] == "tone"
    # The summary is the mean of the windows.
    from label.labeling import AudioInput, label_waveform, resolve_image_input
    from label.models import load_labeler

    labeler = load_labeler(tiny.paths["output_graph"])
    res = label_waveform(labeler, y, SR, AudioInput(tiny.settings, 0.5, resolve_image_input(labeler)))
    np.testing.assert_allclose(res.probabilities, np.mean([w.probabilities for w in res.windows], axis=0), atol=1e-6)
    # (the file is 16-bit PCM, the array float: equal up to quantisation)
    np.testing.assert_allclose([item["score"] for item in result["top"]],
                               sorted(res.probabilities.tolist(), reverse=True), atol=1e-3)
    # Text output: the summary lines, then one line per window.
    code, out, _ = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", wav, "--hop_seconds", "0.5")
    assert out.splitlines()[0].startswith(f"# {wav}: 5 windows")
    assert sum(line.startswith("#   window") for line in out.splitlines()) == 5
    # Default hop = the training duration: 3 windows.
    code, out, _ = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", wav, "--json")
    assert [w["start"] for w in json.loads(out)["results"][0]["windows"]] == [0.0, 1.0, 2.0]


def test_long_audio_is_labelled_batch_by_batch(tiny, tmp_path):
    # Memory must not grow with the recording: a long file is fed to the model
    # --batch_size windows at a time (it used to stack every window's image at once,
    # and a small --hop_seconds on a minute of audio was killed for memory).
    from label.labeling import AudioInput, audio_model_inputs, decode_audio, label_files, resolve_image_input
    from label.models import load_labeler

    y = np.concatenate([make_clip(kind, seed=7) for kind in LABELS * 2])
    wav = write_wav(tmp_path / "long.wav", y)
    labeler = load_labeler(tiny.paths["output_graph"])
    audio = AudioInput(tiny.settings, 0.25, resolve_image_input(labeler))
    short = write_wav(tmp_path / "short.wav", make_clip(LABELS[1], seed=8))
    calls = []
    predict = labeler.predict
    labeler.predict = lambda batch: calls.append(len(batch)) or predict(batch)
    (_, first, _), (_, result, _), (_, last, _) = label_files(
        labeler, [short, wav, short], "audio", audio_input=audio, batch_size=4)
    starts, _, batch = audio_model_inputs(decode_audio(wav, [SR]), labeler, audio)
    assert len(result.windows) == len(starts) > 20
    assert max(calls) <= 4
    np.testing.assert_allclose([w.probabilities for w in result.windows], predict(batch), atol=1e-5)
    np.testing.assert_allclose(first.probabilities, last.probabilities, atol=1e-6)


@pytest.mark.parametrize("mode", ["--audio", "--audio_dir"])
def test_a_tiny_hop_is_refused_with_the_numbers(tiny, tmp_path, capsys, mode):
    """Probe: --hop_seconds 1e-6 meant a window every sample (573k windows for a 30 s
    file) and minutes with nothing shown; here 1.1 s gives 801 windows, labelled before."""
    (tmp_path / "rec").mkdir()
    wav = write_wav(tmp_path / "rec" / "x.wav", make_clip("tone", seconds=1.1))
    code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], mode,
                         wav if mode == "--audio" else str(tmp_path / "rec"), "--hop_seconds", "1e-6")
    assert code == 2 and out == ""
    assert one_error_line(err) == (
        "label_image: error: --hop_seconds 1e-06 would cut 8,000 windows per second of audio (28,800,000 an hour), "
        "8,000 overlapping at any moment of the model's 1 s windows; give --hop_seconds 0.01 or more "
        "(at most 100 overlap)")
    # the smallest hop allowed still labels
    code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio", wav, "--hop_seconds", "0.01",
                         "--json")
    assert code == 0, err
    assert len(json.loads(out)["results"][0]["windows"]) == 11


def test_hop_problem_bounds():
    from label.labeling import MAX_WINDOWS_PER_WINDOW, hop_problem

    assert hop_problem(4.0, None, 22050) is None
    assert hop_problem(4.0, 4.0 / MAX_WINDOWS_PER_WINDOW, 22050) is None
    assert "--hop_seconds 0.04 or more" in hop_problem(4.0, 0.039, 22050)
    assert "22,050 windows per second" in hop_problem(4.0, 0.0, 22050)  # a hop is at least one sample


def test_a_long_whole_decoded_file_shows_progress(tiny, tmp_path, capsys):
    """Many windows of a file decoded whole: a bar in seconds of audio, as streamed files have."""
    from label.labeling import AudioInput, label_files, resolve_image_input
    from label.models import load_labeler

    wav = write_wav(tmp_path / "minute.wav", np.tile(make_clip("noise", seed=3), 60))
    labeler = load_labeler(tiny.paths["output_tflite"])
    audio = AudioInput(tiny.settings, 0.1, resolve_image_input(labeler))
    (_, result, error), = label_files(labeler, [wav], "audio", audio_input=audio, batch_size=64, progress=True)
    assert error is None and len(result.windows) == 591
    err = capsys.readouterr().err
    assert "minute.wav" in err and len(re.findall(r"\d+/60 s", err)) >= 2


def test_anti_phase_stereo_is_labelled_as_its_sound_in_every_path(tiny, tmp_path, capsys):
    """Probe: L = -R mixed to silence ("the audio is silent"). The files, folders, detections
    and long-recording paths all mix through soundretrain.audio, so all hear the sound."""
    import soundfile as sf

    from label.labeling import AudioInput, label_files, resolve_image_input
    from label.models import load_labeler

    y = np.concatenate([make_clip("chirp", seed=4), make_clip("tone", seed=4)])
    (tmp_path / "rec").mkdir()
    anti = str(tmp_path / "rec" / "anti.wav")
    sf.write(anti, np.stack([y, -y], axis=1), SR, subtype="FLOAT")
    mono = str(tmp_path / "mono.wav")
    sf.write(mono, y, SR, subtype="FLOAT")
    model = tiny.paths["output_tflite"]
    code, out, err = run(capsys, "--graph", model, "--audio", anti, mono, "--json")
    assert code == 0, err
    got, expected = json.loads(out)["results"]
    assert [w["top"][0]["label"] for w in got["windows"]] == ["chirp", "tone"]
    assert got["top"] == expected["top"]
    code, out, err = run(capsys, "--graph", model, "--audio_dir", str(tmp_path / "rec"), "--min_confidence", "0.5")
    assert code == 0, err
    assert [line.split("\t")[3] for line in out.splitlines()] == ["chirp", "tone"]
    labeler = load_labeler(model)
    audio = AudioInput(tiny.settings, None, resolve_image_input(labeler))
    (_, streamed, error), = label_files(labeler, [anti], "audio", audio_input=audio, stream_seconds=0.5)
    assert error is None and [labeler.labels[int(np.argmax(w.probabilities))] for w in streamed.windows] == [
        "chirp", "tone"]


def test_audio_at_another_sample_rate_is_resampled(tiny, tmp_path, capsys):
    import librosa

    y = librosa.resample(make_clip("chirp", seed=4), orig_sr=SR, target_sr=22050)
    wav = write_wav(tmp_path / "c22k.wav", y, sr=22050)
    code, out, _ = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", wav, "--top_k", "1")
    assert code == 0 and out.startswith("chirp ")


def test_graph_without_sidecar_uses_retrain_conventions(tiny, tmp_path, capsys):
    """A bare graph (as retrain.py wrote): Placeholder/final_result, size from the graph,
    --labels needed; label_image's flags work as in TensorFlow."""
    graph = tmp_path / "retrained_graph.pb"
    shutil.copy(tiny.paths["output_graph"], graph)
    png = spectrogram_png(tiny, tmp_path, "noise")
    code, out, err = run(capsys, "--graph", str(graph), "--image", png)
    assert code != 0 and "--labels" in one_error_line(err)
    code, out, err = run(capsys, "--graph", str(graph), "--labels", tiny.paths["output_labels"], "--image", png)
    assert code == 0 and out.startswith("noise "), err
    code, out, _ = run(capsys, "--graph", str(graph), "--labels", tiny.paths["output_labels"], "--image", png,
                       "--input_layer", "Placeholder", "--output_layer", "final_result", "--input_height", "32",
                       "--input_width", "32", "--input_mean", "0", "--input_std", "255")
    assert code == 0 and out.startswith("noise ")


def test_input_mean_zero_is_a_value_and_floats_are_accepted(tiny, tmp_path, capsys):
    png = spectrogram_png(tiny, tmp_path, "tone")
    g = tiny.paths["output_graph"]
    _, default, _ = run(capsys, "--graph", g, "--image", png, "--json")
    _, explicit, _ = run(capsys, "--graph", g, "--image", png, "--json", "--input_mean", "0", "--input_std", "255.0")
    _, shifted, _ = run(capsys, "--graph", g, "--image", png, "--json", "--input_mean", "127.5", "--input_std", "127.5")
    assert json.loads(default)["results"] == json.loads(explicit)["results"]
    assert json.loads(shifted)["results"] != json.loads(default)["results"]
    from label.labeling import resolve_image_input
    from label.models import load_labeler

    labeler = load_labeler(g)
    assert resolve_image_input(labeler, mean=0.0, std=1.5).mean == 0.0
    side = dict(labeler.sidecar, input=dict(labeler.sidecar["input"], input_mean=10.0))
    labeler.sidecar = side
    assert resolve_image_input(labeler).mean == 10.0
    assert resolve_image_input(labeler, mean=0.0).mean == 0.0  # 0 overrides the sidecar


def test_input_size_that_the_model_cannot_take(tiny, tmp_path, capsys):
    png = spectrogram_png(tiny, tmp_path, "tone")
    code, _, err = run(capsys, "--graph", tiny.paths["output_graph"], "--image", png, "--input_height", "50")
    assert code == 1 and "takes 32x32 images, not 50x32" in one_error_line(err)


def test_image_of_another_size_is_resized(tiny, tmp_path, capsys):
    from soundretrain.render import render_clip

    img = Image.fromarray(render_clip(make_clip("noise", seed=2), SR, tiny.settings)).resize((64, 48))
    img.convert("RGB").save(tmp_path / "big.jpg", quality=95)
    code, out, _ = run(capsys, "--graph", tiny.paths["saved_model_dir"], "--image", str(tmp_path / "big.jpg"))
    assert code == 0 and out.startswith("noise ")


def test_folders_in_batches_to_csv(tiny, tmp_path, capsys):
    audio_dir = tmp_path / "audio"
    (audio_dir / "sub").mkdir(parents=True)
    for i, kind in enumerate(LABELS * 3):
        write_wav(audio_dir / ("sub" if i % 2 else "") / f"{i:02d}_{kind}.wav", make_clip(kind, seed=50 + i))
    (audio_dir / "notes.txt").write_text("not audio")
    (audio_dir / "broken.wav").write_bytes(b"RIFF not really")
    csv_path = tmp_path / "out" / "labels.csv"
    code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio_dir", str(audio_dir),
                         "--output_csv", str(csv_path), "--batch_size", "4")
    # One rule in file and folder mode: every file that could be labelled is, each failure
    # is one error line, and the exit status is 1 when any failed.
    assert code == 1, err
    assert "label_image: error: " in err and "broken.wav" in err
    assert "1 of 10 files could not be labelled" in err
    assert "labelling audio" not in err  # no progress bar when stderr is not a terminal
    import csv

    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 9
    assert list(rows[0]) == ["path", "windows", "label", "score", *LABELS]
    for row in rows:
        assert row["label"] == os.path.basename(row["path"]).split("_")[1].split(".")[0]
        assert sum(float(row[k]) for k in LABELS) == pytest.approx(1.0, abs=1e-4)
    # --json on a folder lists the skipped files, as it does for --audio files.
    code, out, _ = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio_dir", str(audio_dir), "--json")
    doc = json.loads(out)
    assert code == 1 and len(doc["results"]) == 9
    assert len(doc["errors"]) == 1 and "broken.wav" in doc["errors"][0]
    # --nokeep_going stops at the first failure (files are labelled in sorted order).
    code, out, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio_dir", str(audio_dir), "--json",
                         "--nokeep_going", "--batch_size", "1")
    doc = json.loads(out)
    assert code == 1 and len(doc["errors"]) == 1
    assert [os.path.basename(r["source"]) for r in doc["results"]] == [
        "00_tone.wav", "02_chirp.wav", "04_noise.wav", "06_tone.wav", "08_chirp.wav"]
    assert "stopped at the first" in err

    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for kind in LABELS:
        shutil.copy(spectrogram_png(tiny, tmp_path, kind, seed=11), image_dir / f"{kind}.png")
    code, out, _ = run(capsys, "--graph", tiny.paths["output_graph"], "--image_dir", str(image_dir))
    assert code == 0
    assert sorted(line.split()[1] for line in out.splitlines()) == sorted(LABELS)
    for line in out.splitlines():
        path, label, _ = line.split()
        assert os.path.basename(path) == f"{label}.png"


# --- bad inputs: one line on stderr, non-zero exit ----------------------------------


def test_missing_graph(tmp_path, capsys):
    code, _, err = run(capsys, "--graph", str(tmp_path / "nope.pb"), "--audio", "x.wav")
    assert code != 0 and "model not found" in one_error_line(err)


def test_corrupt_graph(tmp_path, capsys):
    bad = tmp_path / "bad.pb"
    bad.write_bytes(os.urandom(2000))
    code, _, err = run(capsys, "--graph", str(bad), "--labels", str(bad), "--audio", "x.wav")
    line = one_error_line(err)
    assert code != 0 and str(bad) in line
    empty = tmp_path / "empty.pb"
    empty.write_bytes(b"")
    code, _, err = run(capsys, "--graph", str(empty), "--labels", str(bad), "--audio", "x.wav")
    assert code != 0 and "no node 'Placeholder'" in one_error_line(err)


@pytest.mark.parametrize("artifact", ["output_graph", "saved_model_dir", "output_tflite"])
def test_wrong_layer_names_are_errors_in_every_format(tiny, tmp_path, capsys, artifact):
    # A SavedModel/TFLite signature with one output used to take any --output_layer.
    png = spectrogram_png(tiny, tmp_path, LABELS[0], seed=2)
    for flag in ("--input_layer", "--output_layer"):
        code, _, err = run(capsys, "--graph", tiny.paths[artifact], "--image", png, flag, "nope")
        line = one_error_line(err)
        assert code == 1 and "'nope'" in line and flag in line
    # The right names (with or without :0) are fine.
    code, out, err = run(capsys, "--graph", tiny.paths[artifact], "--image", png,
                         "--input_layer", "Placeholder:0", "--output_layer", "final_result")
    assert code == 0 and out.startswith(f"{LABELS[0]} "), err


def test_corrupt_tflite_and_saved_model(tmp_path, capsys):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0\0\0\0TFL3" + os.urandom(100))
    code, _, err = run(capsys, "--graph", str(bad), "--audio", "x.wav")
    assert code != 0 and "cannot load TFLite model" in one_error_line(err)
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    code, _, err = run(capsys, "--graph", str(folder), "--audio", "x.wav")
    assert code != 0 and "not a SavedModel" in one_error_line(err)


@pytest.mark.parametrize("artifact", ["output_graph", "saved_model_dir", "output_tflite"])
def test_label_count_not_matching_outputs(tiny, tmp_path, capsys, artifact):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    code, _, err = run(capsys, "--graph", tiny.paths[artifact], "--labels", str(labels), "--audio", "x.wav")
    line = one_error_line(err)
    assert code != 0 and "3 outputs" in line and "4 labels" in line


def test_non_image_file(tiny, tmp_path, capsys):
    txt = tmp_path / "photo.jpg"
    txt.write_text("this is not a picture")
    code, _, err = run(capsys, "--graph", tiny.paths["output_graph"], "--image", str(txt))
    assert code != 0 and "not an image file" in one_error_line(err)
    code, _, err = run(capsys, "--graph", tiny.paths["output_graph"], "--image", str(tmp_path / "missing.png"))
    assert code != 0 and "no such file" in one_error_line(err)


def test_silent_and_corrupt_audio(tiny, tmp_path, capsys):
    silent = write_wav(tmp_path / "silent.wav", make_clip("silence"))
    code, _, err = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", silent)
    assert code != 0 and "silent" in one_error_line(err)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    code, _, err = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", str(corrupt))
    assert code != 0 and str(corrupt) in one_error_line(err)
    code, _, err = run(capsys, "--graph", tiny.paths["output_graph"], "--audio", str(tmp_path / "nope.wav"))
    assert code != 0 and "nope.wav" in one_error_line(err)


@pytest.mark.parametrize("args,needle", [
    ([], "nothing to label"),
    (["--audio", "a.wav", "--image_dir", "d"], "choose one"),
    (["--audio", "a.wav", "--hop_seconds", "0"], "--hop_seconds"),
    (["--audio", "a.wav", "--input_std", "0"], "--input_std"),
    (["--audio", "a.wav", "--top_k", "0"], "top_k"),
    (["--audio", "a.wav", "--no_such_flag"], "no_such_flag"),
    (["--audio", "a.wav", "--output_csv", "x.csv"], "--output_csv"),
    (["--audio", "a.wav", "--batch_size", "0"], "batch_size"),
])
def test_bad_flags(capsys, args, needle):
    code, _, err = run(capsys, "--graph", "g.pb", *args)
    assert code == 2 and needle in one_error_line(err)


def test_no_graph_is_a_bad_flag(capsys):
    code, _, err = run(capsys, "--audio", "a.wav")
    assert code == 2 and "pass --graph" in one_error_line(err)


def test_output_csv_that_cannot_be_written(tiny, tmp_path, capsys):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    write_wav(audio_dir / "a.wav", make_clip(LABELS[0], seed=3))
    # A folder: refused before any labelling.
    code, _, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio_dir", str(audio_dir),
                       "--output_csv", str(tmp_path))
    assert code == 2 and "is a folder" in one_error_line(err)
    # A path under a file: one line, not a traceback.
    (tmp_path / "plain").write_text("x")
    code, _, err = run(capsys, "--graph", tiny.paths["output_tflite"], "--audio_dir", str(audio_dir),
                       "--output_csv", str(tmp_path / "plain" / "labels.csv"))
    line = one_error_line(err.split("\r")[-1])  # after the progress bar's line
    assert code == 1 and line.startswith("label_image: error: ") and "plain" in line


def test_help_lists_label_image_flags(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for flag in ("--graph", "--labels", "--image", "--input_height", "--input_width", "--input_mean",
                 "--input_std", "--input_layer", "--output_layer", "--top_k", "--audio", "--mic"):
        assert flag in out


def test_flagfile(tiny, tmp_path, capsys):
    wav = write_wav(tmp_path / "t.wav", make_clip("tone", seed=8))
    flagfile = tmp_path / "label.flags"
    flagfile.write_text(f"--graph={tiny.paths['output_graph']}\n--top_k=1\n")
    code, out, _ = run(capsys, f"--flagfile={flagfile}", "--audio", wav)
    assert code == 0 and out.startswith("tone ") and len(out.splitlines()) == 1


@pytest.mark.parametrize("artifact", ["output_graph", "output_tflite"])
def test_a_real_process_prints_nothing_but_the_labels(tiny, tmp_path, artifact):
    # Without the user setting TF_CPP_MIN_LOG_LEVEL: TensorFlow's "MLIR V1 optimization
    # pass is not enabled" (.pb) and TFLite's "Created TensorFlow Lite XNNPACK delegate"
    # lines used to follow every run on stderr.
    import subprocess
    import sys
    from pathlib import Path

    wav = write_wav(tmp_path / "a.wav", make_clip(LABELS[0], seed=5))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "label.cli", "--graph", tiny.paths[artifact], "--audio", wav,
                           "--top_k", "1"], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{LABELS[0]} ")
    assert proc.stderr == ""
