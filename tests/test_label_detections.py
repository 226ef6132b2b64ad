"""Detections over long recordings: thresholds and merging, the CSV / Audacity / Raven
tables parsed back as those programs read them, per recording and combined, long files
decoded block by block (same windows and probabilities, bounded memory, a progress bar),
and every bad flag."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from label.detections import (RAVEN_COLUMNS, RAVEN_COMBINED_COLUMNS, Detection, DetectionSettings,
                              audacity_text, csv_text, detect, merge_consecutive, raven_text)
from label.labeling import WindowResult
from label_models import LABELS, SR, build_tiny_model, make_clip, write_wav


def windows(rows, hop=1.0, silent=()):
    return [WindowResult(k * hop, np.asarray(p, np.float32), k in silent) for k, p in enumerate(rows)]


def test_every_class_at_or_above_the_threshold_in_a_window_is_a_detection():
    rows = [[0.9, 0.05, 0.05], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]]
    found = detect("r.wav", windows(rows, silent={4}), LABELS, 2.0, DetectionSettings(0.5))
    assert [(d.start, d.end, d.label, d.confidence) for d in found] == [
        (0.0, 2.0, "tone", pytest.approx(0.9)), (1.0, 3.0, "noise", 0.5), (1.0, 3.0, "tone", 0.5),
        (2.0, 4.0, "chirp", 0.5), (3.0, 5.0, "chirp", pytest.approx(0.8))]  # the silent window: nothing


def test_merge_consecutive_joins_overlapping_or_touching_windows_of_one_class():
    rows = [[0.6, 0, 0], [0.9, 0, 0], [0.1, 0, 0], [0.7, 0, 0], [0.8, 0, 0], [0.75, 0, 0]]
    found = detect("r.wav", windows(rows, hop=1.0), LABELS, 1.0, DetectionSettings(0.5, merge_consecutive=True))
    assert [(d.start, d.end, d.confidence, d.windows) for d in found] == [
        (0.0, 2.0, pytest.approx(0.9), 2), (3.0, 6.0, pytest.approx(0.8), 3)]
    # windows with a gap between them (hop longer than the window) stay apart
    apart = detect("r.wav", windows([[0.9, 0, 0], [0.9, 0, 0]], hop=3.0), LABELS, 2.0,
                   DetectionSettings(0.5, merge_consecutive=True))
    assert len(apart) == 2
    # overlapping windows (hop shorter than the window) of two classes
    mixed = merge_consecutive([Detection("r", 0, 4, "a", 0.6), Detection("r", 2, 6, "a", 0.7),
                               Detection("r", 2, 6, "b", 0.9)])
    assert sorted((d.label, d.start, d.end, d.windows) for d in mixed) == [("a", 0, 6, 2), ("b", 2, 6, 1)]


DETECTIONS = [Detection("/rec/a b.wav", 0.0, 4.0, "dog bark", 0.91234, 1),
              Detection("/rec/a b.wav", 12.5, 20.0, "siren", 0.5, 3)]


def test_csv_parses_back():
    rows = list(csv.DictReader(io.StringIO(csv_text(DETECTIONS))))
    assert rows[1] == {"file": "/rec/a b.wav", "start_s": "12.500", "end_s": "20.000", "label": "siren",
                       "confidence": "0.5000", "windows": "3"}


def test_audacity_label_track_parses_back():
    """Audacity reads one label per line: start, end and text separated by tabs."""
    text = audacity_text(DETECTIONS)
    lines = text.splitlines()
    assert len(lines) == 2 and text.endswith("\n")
    parsed = [line.split("\t") for line in lines]
    assert all(len(fields) == 3 for fields in parsed)
    assert [(float(a), float(b)) for a, b, _ in parsed] == [(0.0, 4.0), (12.5, 20.0)]
    assert re.fullmatch(r"dog bark \(0\.912\)", parsed[0][2])


def test_raven_selection_table_parses_back():
    text = raven_text(DETECTIONS, 0.0, 11025.0)
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    assert tuple(reader.fieldnames) == RAVEN_COLUMNS
    rows = list(reader)
    assert [r["Selection"] for r in rows] == ["1", "2"]
    assert rows[0]["View"] == "Spectrogram 1" and rows[0]["Channel"] == "1"
    assert float(rows[1]["Begin Time (s)"]) == 12.5 and float(rows[1]["End Time (s)"]) == 20.0
    assert float(rows[0]["Low Freq (Hz)"]) == 0.0 and float(rows[0]["High Freq (Hz)"]) == 11025.0
    assert rows[0]["Label"] == "dog bark" and float(rows[0]["Confidence"]) == pytest.approx(0.9123)
    # combined: times in the file sequence, the file's own offset and path beside them
    combined = raven_text(DETECTIONS, 0.0, 11025.0, offsets={"/rec/a b.wav": 60.0})
    rows = list(csv.DictReader(io.StringIO(combined), delimiter="\t"))
    assert float(rows[1]["Begin Time (s)"]) == 72.5 and float(rows[1]["File Offset (s)"]) == 12.5
    assert rows[1]["Begin Path"] == "/rec/a b.wav"
    assert text.count("\t") == 3 * (len(RAVEN_COLUMNS) - 1)  # no stray tabs from the label


def test_tabs_in_labels_cannot_break_a_row():
    weird = [Detection("x.wav", 0, 1, "a\tb\nc", 0.9)]
    assert audacity_text(weird).count("\t") == 2
    assert raven_text(weird, 0, 1).splitlines()[1].count("\t") == len(RAVEN_COLUMNS) - 1


# ------------------------------------------------------------------ the command


@pytest.fixture(scope="session")
def audio_model(tmp_path_factory):
    from soundretrain.audio_export import export_audio_model

    tiny = build_tiny_model(str(tmp_path_factory.getbasetemp() / "label_tiny_model"))
    path = str(tmp_path_factory.mktemp("detect") / "model_audio.tflite")
    export_audio_model(tiny.backbone, tiny.head, LABELS, {"spectrogram": tiny.settings.to_dict()},
                       output_audio_tflite=path)
    return path


def scene(seconds_each=3.0, order=("tone", "noise", "chirp"), seed=0) -> np.ndarray:
    """Sounds one after another: ``seconds_each`` of each class in ``order``."""
    parts = []
    for k, kind in enumerate(order):
        if kind == "silence":
            parts.append(np.zeros(int(seconds_each * SR), np.float32))
        else:
            clip = make_clip(kind, 1.0, seed=seed + k)
            parts.append(np.tile(clip, int(np.ceil(seconds_each)))[: int(seconds_each * SR)])
    return np.concatenate(parts)


def run(capsys, *args) -> tuple[int, str, str]:
    from label.cli import main

    code = main(["label_image", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_detections_per_recording_in_three_formats(audio_model, tmp_path, capsys):
    (tmp_path / "rec" / "site1").mkdir(parents=True)
    write_wav(tmp_path / "rec" / "site1" / "dawn.wav", scene())
    write_wav(tmp_path / "rec" / "dusk.wav", scene(order=("chirp", "silence", "tone"), seed=5))
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "--graph", audio_model, "--audio_dir", str(tmp_path / "rec"),
                         "--min_confidence", "0.5", "--merge_consecutive", "--detections_dir", str(out_dir))
    assert code == 0, err
    assert out == ""
    assert "detection(s) at --min_confidence 0.5 in 6 file(s) under" in err
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    assert files == ["dusk.detections.csv", "dusk.labels.txt", "dusk.selections.txt",
                     "site1/dawn.detections.csv", "site1/dawn.labels.txt", "site1/dawn.selections.txt"]
    rows = list(csv.DictReader(open(out_dir / "site1" / "dawn.selections.txt"), delimiter="\t"))
    assert [r["Label"] for r in rows] == ["tone", "noise", "chirp"]  # merged: one selection per sound
    spans = [(float(r["Begin Time (s)"]), float(r["End Time (s)"])) for r in rows]
    assert spans[0][0] == 0.0 and spans[-1][1] == 9.0
    for (begin, end), (true_begin, true_end) in zip(spans, [(0, 3), (3, 6), (6, 9)]):
        assert abs(begin - true_begin) <= 1.0 and abs(end - true_end) <= 1.0  # to a window
    labels = [line.split("\t") for line in open(out_dir / "dusk.labels.txt").read().splitlines()]
    assert [re.match(r"(\w+) \(", text).group(1) for _, _, text in labels] == ["chirp", "tone"]  # silence: none
    table = list(csv.DictReader(open(out_dir / "dusk.detections.csv")))
    assert [r["label"] for r in table] == ["chirp", "tone"] and table[0]["file"].endswith("dusk.wav")


def test_combined_tables_and_json(audio_model, tmp_path, capsys):
    (tmp_path / "rec").mkdir()
    write_wav(tmp_path / "rec" / "a.wav", scene(order=("tone", "noise")))
    write_wav(tmp_path / "rec" / "b.wav", scene(seconds_each=2.0, order=("chirp",), seed=3))
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "--graph", audio_model, "--audio_dir", str(tmp_path / "rec"), "--json",
                         "--min_confidence", "0.5", "--merge_consecutive", "--combine_detections",
                         "--detections_dir", str(out_dir), "--detections_format", "raven,csv,audacity")
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == ["a.labels.txt", "b.labels.txt", "detections.csv",
                                           "detections.selections.txt"]
    reader = csv.DictReader(open(out_dir / "detections.selections.txt"), delimiter="\t")
    assert tuple(reader.fieldnames) == RAVEN_COMBINED_COLUMNS
    rows = list(reader)
    assert [(os.path.basename(r["Begin Path"]), r["Label"]) for r in rows] == [
        ("a.wav", "tone"), ("a.wav", "noise"), ("b.wav", "chirp")]
    last = rows[-1]  # b.wav starts after a.wav's 6 s in the file sequence
    assert float(last["Begin Time (s)"]) == pytest.approx(6.0 + float(last["File Offset (s)"]))
    assert [r["Selection"] for r in rows] == ["1", "2", "3"]
    table = list(csv.DictReader(open(out_dir / "detections.csv")))
    assert [r["label"] for r in table] == ["tone", "noise", "chirp"]
    document = json.loads(out)
    assert [d["label"] for d in document["results"][0]["detections"]] == ["tone", "noise"]


def test_detections_printed_without_a_folder(audio_model, tmp_path, capsys):
    wav = write_wav(tmp_path / "x.wav", scene(order=("noise", "chirp")))
    code, out, err = run(capsys, "--graph", audio_model, "--audio", wav, "--min_confidence", "0.5",
                         "--merge_consecutive")
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert [(f[0], f[3]) for f in lines] == [(wav, "noise"), (wav, "chirp")]
    assert float(lines[0][1]) == 0.0 and float(lines[1][2]) == 6.0
    assert "2 detection(s)" in err


@pytest.mark.parametrize("extra, words", [
    (["--merge_consecutive"], "--merge_consecutive goes with --min_confidence"),
    (["--detections_dir", "d"], "--detections_dir goes with --min_confidence"),
    (["--min_confidence", "0"], "--min_confidence must be in (0, 1]"),
    (["--min_confidence", "1.5"], "--min_confidence must be in (0, 1]"),
    (["--min_confidence", "0.5", "--detections_format", "csv,praat"], "--detections_format takes csv, audacity, raven"),
])
def test_bad_detection_flags(audio_model, tmp_path, capsys, extra, words):
    wav = write_wav(tmp_path / "x.wav", make_clip("tone"))
    code, out, err = run(capsys, "--graph", audio_model, "--audio", wav, *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err


def test_bad_detection_targets(audio_model, tmp_path, capsys):
    wav = write_wav(tmp_path / "x.wav", make_clip("tone"))
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run(capsys, "--graph", audio_model, "--audio", wav, "--min_confidence", "0.5",
                       "--detections_dir", str(tmp_path / "file"))
    assert code == 2 and "is a file; give a folder" in err
    code, _, err = run(capsys, "--graph", audio_model, "--image", wav, "--min_confidence", "0.5")
    assert code == 2 and "use it with --audio or --audio_dir" in err


# ------------------------------------------------------------------ long recordings


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.getbasetemp() / "label_tiny_model"))


def test_long_recording_streamed_gives_the_windows_of_a_whole_decode(image_model, tmp_path):
    """A file over the threshold is decoded block by block: same windows, same probabilities."""
    from label.labeling import AudioInput, label_files, label_windows, resolve_image_input
    from label.models import load_labeler
    from soundretrain.audio import load_audio

    labeler = load_labeler(image_model.paths["output_tflite"])
    y = scene(seconds_each=7.3, order=("tone", "chirp", "noise", "silence", "tone"))
    path = str(tmp_path / "long.wav")
    sf.write(path, np.stack([y, 0.5 * y], axis=1), 11025, subtype="PCM_24")  # stereo, another rate
    audio_input = AudioInput(image_model.settings, 0.7, resolve_image_input(labeler))
    (_, streamed, error), = label_files(labeler, [path], "audio", audio_input=audio_input, batch_size=8,
                                        stream_seconds=5.0)
    assert error is None
    whole = label_windows(labeler, {SR: load_audio(path, SR)}, audio_input, batch_size=8, source=path)
    assert [w.start for w in streamed.windows] == [w.start for w in whole.windows]
    assert [w.silent for w in streamed.windows] == [w.silent for w in whole.windows]
    np.testing.assert_array_equal(np.stack([w.probabilities for w in streamed.windows]),
                                  np.stack([w.probabilities for w in whole.windows]))
    assert streamed.duration == pytest.approx(len(y) / 11025, abs=1e-3)


def test_long_recording_is_labelled_in_bounded_memory_with_a_progress_bar(audio_model, tmp_path, capsys):
    from label.labeling import AudioInput, label_long_recording, spectrogram_settings_for
    from label.models import load_labeler

    minutes = 30
    path = str(tmp_path / "half_hour.wav")
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", SR, 1, "PCM_16") as f:
        for _ in range(minutes):  # written a minute at a time, so the test itself stays small
            f.write((0.2 * rng.standard_normal(60 * SR)).astype(np.float32))
    decoded_bytes = minutes * 60 * SR * 4
    labeler = load_labeler(audio_model)
    audio_input = AudioInput(spectrogram_settings_for(labeler))
    tracemalloc.start()
    try:
        result = label_long_recording(labeler, path, audio_input, batch_size=64, progress=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.windows) == minutes * 60  # 1 s windows, 1 s apart
    # A block, a batch of windows and the per-window results; decoding whole needs the
    # 58 MB and more while resampling.
    assert peak < decoded_bytes / 4, f"peak {peak / 1e6:.1f} MB for {decoded_bytes / 1e6:.0f} MB of audio"
    err = capsys.readouterr().err
    assert "half_hour.wav" in err and re.search(r"\d+/1800 s", err)


def test_a_silent_long_recording_is_an_error_not_a_guess(audio_model, tmp_path, capsys):
    path = str(tmp_path / "quiet.wav")
    sf.write(path, np.zeros(10 * SR, np.float32), SR)
    from label.labeling import AudioInput, LabelInputError, label_long_recording, spectrogram_settings_for
    from label.models import load_labeler

    labeler = load_labeler(audio_model)
    with pytest.raises(LabelInputError, match="silent"):
        label_long_recording(labeler, path, AudioInput(spectrogram_settings_for(labeler)), progress=False)


# ------------------------------------------------------------------ hardening (issue 19)


def test_a_detection_ends_at_its_recordings_end():
    """A window is padded to the training duration, but a clip shorter than it is not."""
    found = detect("short.wav", windows([[0.9, 0.1, 0.0]]), LABELS, 4.0, DetectionSettings(0.5), duration=0.01)
    assert [(d.start, d.end) for d in found] == [(0.0, 0.01)]
    # windows of a long recording end at the recording's end too (the last is aligned to it)
    found = detect("long.wav", windows([[0.9, 0, 0], [0.9, 0, 0]], hop=1.0), LABELS, 1.5, DetectionSettings(0.5),
                   duration=2.5)
    assert [(d.start, d.end) for d in found] == [(0.0, 1.5), (1.0, 2.5)]


def test_a_clip_shorter_than_a_window_is_detected_within_its_length_in_every_table(audio_model, tmp_path, capsys):
    """Probe: a 10 ms clip got a 0-1 s detection (the window's length), which overlapped the
    next file in the combined Raven table."""
    (tmp_path / "rec").mkdir()
    write_wav(tmp_path / "rec" / "a_short.wav", make_clip("tone", seconds=0.01))
    write_wav(tmp_path / "rec" / "b_long.wav", scene(seconds_each=1.0, order=("chirp", "noise")))
    lengths = {"a_short.wav": 0.01, "b_long.wav": 2.0}
    for combined in ((), ("--combine_detections",)):
        out_dir = tmp_path / f"out{len(combined)}"
        code, out, err = run(capsys, "--graph", audio_model, "--audio_dir", str(tmp_path / "rec"), "--json",
                             "--min_confidence", "0.3", "--detections_dir", str(out_dir), *combined)
        assert code == 0, err
        for result in json.loads(out)["results"]:
            name = os.path.basename(result["source"])
            assert result["detections"] and all(d["end"] <= lengths[name] for d in result["detections"])
        tables = list(out_dir.iterdir())
        for path in tables:
            if path.name.endswith(".labels.txt"):
                ends = [float(line.split("\t")[1]) for line in path.read_text().splitlines()]
                assert ends and max(ends) <= lengths[path.name.replace(".labels.txt", ".wav")]
            elif path.name.endswith(".csv"):
                for row in csv.DictReader(open(path)):
                    assert float(row["end_s"]) <= lengths[os.path.basename(row["file"])]
            else:
                rows = list(csv.DictReader(open(path), delimiter="\t"))
                assert rows
                for row in rows:
                    offset = float(row["File Offset (s)"]) if "File Offset (s)" in row else 0.0
                    length = lengths[os.path.basename(row.get("Begin Path") or path.name.replace(
                        ".selections.txt", ".wav"))]
                    assert float(row["End Time (s)"]) - float(row["Begin Time (s)"]) + offset <= length + 1e-6
                if combined:  # the short file's selections end before the next file begins
                    first = [r for r in rows if r["Begin Path"].endswith("a_short.wav")]
                    second = [r for r in rows if r["Begin Path"].endswith("b_long.wav")]
                    assert max(float(r["End Time (s)"]) for r in first) <= min(
                        float(r["Begin Time (s)"]) for r in second)


def test_table_names_are_unique_and_deterministic():
    from label.detections import table_stems

    root = "/rec"
    sources = ["/rec/rec.wav", "/rec/rec.flac", "/rec/site/dawn.wav", "/rec/rec.wav.mp3", "/rec/Dusk.wav",
               "/rec/dusk.ogg", "/rec/site/dawn.wav"]
    assert table_stems(sources, root) == ["rec.wav", "rec.flac", "site/dawn", "rec.wav.mp3", "Dusk.wav",
                                          "dusk.ogg", "site/dawn (2)"]
    assert table_stems(sources, root) == table_stems(list(sources), root)  # the same every run
    assert table_stems(["/a/x.wav", "/b/x.wav"], None) == ["x", "x (2)"]  # outside any root: base names


def test_recordings_with_one_name_in_one_folder_get_their_own_tables(audio_model, tmp_path, capsys):
    """Probe: rec.wav and rec.flac in one folder: 9 files reported, 6 written, rec.flac's lost;
    with --combine_detections the Audacity track was still overwritten."""
    (tmp_path / "rec").mkdir()
    write_wav(tmp_path / "rec" / "rec.wav", scene(seconds_each=1.0, order=("tone", "noise")))
    sf.write(str(tmp_path / "rec" / "rec.flac"), scene(seconds_each=1.0, order=("chirp",), seed=7), SR)
    write_wav(tmp_path / "rec" / "other.wav", scene(seconds_each=1.0, order=("noise",), seed=9))
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, "--graph", audio_model, "--audio_dir", str(tmp_path / "rec"),
                       "--min_confidence", "0.5", "--detections_dir", str(out_dir))
    assert code == 0, err
    assert "in 9 file(s) under" in err
    assert sorted(os.listdir(out_dir)) == sorted(
        f"{stem}{suffix}" for stem in ("rec.wav", "rec.flac", "other")
        for suffix in (".detections.csv", ".labels.txt", ".selections.txt"))
    for name in ("rec.wav", "rec.flac"):  # each table holds its own recording
        rows = list(csv.DictReader(open(out_dir / f"{name}.detections.csv")))
        assert rows and {os.path.basename(r["file"]) for r in rows} == {name}
    assert "chirp" in (out_dir / "rec.flac.labels.txt").read_text()
    assert "chirp" not in (out_dir / "rec.wav.labels.txt").read_text()
    combined = tmp_path / "combined"
    code, _, err = run(capsys, "--graph", audio_model, "--audio_dir", str(tmp_path / "rec"), "--min_confidence",
                       "0.5", "--detections_dir", str(combined), "--combine_detections")
    assert code == 0, err
    assert sorted(os.listdir(combined)) == ["detections.csv", "detections.selections.txt", "other.labels.txt",
                                            "rec.flac.labels.txt", "rec.wav.labels.txt"]
    assert "in 5 file(s) under" in err


def test_tables_of_an_earlier_run_are_named_before_they_are_replaced(audio_model, tmp_path, capsys):
    (tmp_path / "rec").mkdir()
    write_wav(tmp_path / "rec" / "a.wav", scene(seconds_each=1.0, order=("tone", "noise")))
    out_dir = tmp_path / "out"
    args = ["--graph", audio_model, "--audio_dir", str(tmp_path / "rec"), "--detections_dir", str(out_dir)]
    code, _, err = run(capsys, *args, "--min_confidence", "0.5")
    assert code == 0 and "note" not in err
    (out_dir / "unrelated.txt").write_text("mine")
    code, _, err = run(capsys, *args, "--min_confidence", "0.99", "--detections_format", "csv,raven")
    assert code == 0, err
    note, = [line for line in err.splitlines() if "note" in line]
    assert note == (f"label_image: note: 2 detection table(s) in {out_dir} from an earlier run will be "
                    "replaced (a.detections.csv, ...)")
    assert (out_dir / "unrelated.txt").read_text() == "mine"
    assert len((out_dir / "a.detections.csv").read_text().splitlines()) < 3  # this run's table
    # --output_csv cannot be one of the tables either
    code, _, err = run(capsys, *args, "--min_confidence", "0.5", "--output_csv", str(out_dir / "a.detections.csv"))
    assert code == 1 and err.strip().splitlines() == [
        f"label_image: error: --output_csv {out_dir / 'a.detections.csv'} is also a detection table of this run; "
        "choose another name"]
