"""The UrbanSound8K and ESC-50 presets end to end on generated clips in each data set's
layout: ``spectrograms --preset`` renders the presets' three-channel image, ``retrain
--preset`` trains on it and records it in the sidecar, and ``label_image`` renders new audio
into exactly the images the spectrograms stage wrote, in Python and inside the audio-in
export. A tiny image network of the presets' 224 x 224 input stands in for
efficientnet_lite0 (no download, no resizing between the stages)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundretrain import presets
from soundretrain.manifest import read_manifest
from soundretrain.spectrogram_settings import CONFIG_FILENAME, SpectrogramSettings

SR = 22050
CLASSES = ("engine", "siren")  # a low hum and a wailing sweep
# preset -> (clip seconds, training folds, the retrain preset's test fold)
LAYOUT = {"urbansound8k": (4.0, (1, 2), 10), "esc50": (5.0, (1, 2), 5)}


def _clip(label: str, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    if label == "engine":
        y = 0.3 * np.sin(2 * np.pi * (90 + 10 * rng.random()) * t) * (1 + 0.3 * np.sin(2 * np.pi * 5 * t))
    else:
        f = 700 + 400 * np.sin(2 * np.pi * (0.6 + 0.4 * rng.random()) * t)
        y = 0.3 * np.sin(2 * np.pi * np.cumsum(f) / SR)
    return (y + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def make_dataset(root: Path, preset: str, per_fold: int = 2) -> Path:
    """Two classes, ``per_fold`` recordings of each in every fold the retrain preset uses,
    in the data set's own layout and metadata."""
    seconds, train_folds, test_fold = LAYOUT[preset]
    rows = []
    for fold in (*train_folds, test_fold):
        for c, label in enumerate(CLASSES):
            for k in range(per_fold):
                rec = 100 * fold + 10 * c + k
                y = _clip(label, seconds, rec)
                if preset == "urbansound8k":
                    name = f"{rec}-{c}-0-0.wav"
                    path = root / "audio" / f"fold{fold}" / name
                    rows.append([name, rec, 0.0, seconds, 1, fold, c, label])
                else:
                    name = f"{fold}-{rec}-A-{c}.wav"
                    path = root / "audio" / name
                    rows.append([name, fold, c, label, "False", rec, "A"])
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, y, SR, subtype="PCM_16")
    if preset == "urbansound8k":
        meta = root / "metadata" / "UrbanSound8K.csv"
        header = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    else:
        meta = root / "meta" / "esc50.csv"
        header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    meta.parent.mkdir(parents=True)
    with open(meta, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root


def preset_image_flags(preset: str) -> dict:
    """The image settings the spectrograms preset file names (its flags, as text)."""
    values = {}
    for line in Path(presets.preset_path("spectrograms", preset)).read_text().splitlines():
        if line.startswith("--") and "=" in line:
            key, value = line[2:].split("=", 1)
            values[key] = value
    return values


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory):
    from tiny_models import make_tiny_image_module

    return make_tiny_image_module(tmp_path_factory.mktemp("module") / "tiny224", image_size=224)


@pytest.mark.parametrize("preset", sorted(LAYOUT))
def test_presets_run_end_to_end_and_label_image_renders_what_the_spectrograms_stage_wrote(
        preset, tiny_module, tmp_path, capsys):
    from label.cli import main as label_image
    from label.labeling import (
        AudioInput, audio_rates, audio_windows, decode_audio, load_image, prepare_image,
        resolve_image_input, spectrogram_settings_for, window_model_inputs,
    )
    from label.models import load_labeler
    from retrain.cli import main as retrain
    from spectrograms.cli import main as spectrograms

    data = make_dataset(tmp_path / preset, preset)
    spec, out = tmp_path / "spec", tmp_path / "model"
    assert spectrograms(["spectrograms", "--preset", preset, f"--data_dir={data}",
                         f"--output_dir={spec}", "--jobs=1"]) == 0, capsys.readouterr().err
    capsys.readouterr()

    # The preset's image, as its file says: three channels, their mel bands and range.
    flags = preset_image_flags(preset)
    settings = SpectrogramSettings.load_json(spec / CONFIG_FILENAME)
    assert settings.channels == tuple(flags["channels"].split(",")) == ("db", "pcen", "delta")
    assert not settings.coloured
    assert (settings.n_mels, settings.fmin, settings.fmax) == (
        int(flags["n_mels"]), float(flags["fmin"]), float(flags["fmax"]))
    rows = read_manifest(spec / "manifest.csv")
    assert len(rows) == 12

    graph, audio_tflite = out / "output_graph.pb", out / "audio.tflite"
    code = retrain(["retrain", "--preset", preset, f"--image_dir={spec}", f"--tfhub_module={tiny_module}",
                    f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / 'ts'}",
                    f"--checkpoint_path={tmp_path / 'ckpt' / 'head'}", f"--output_graph={graph}",
                    f"--output_labels={out / 'labels.txt'}", f"--saved_model_dir={out / 'saved_model'}",
                    f"--output_audio_tflite={audio_tflite}", "--how_many_training_steps=40",
                    "--random_seed=1", "--noprogress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "Final test accuracy" in text
    assert (out / "labels.txt").read_text().split() == list(CLASSES)

    # The sidecar carries the preset's image: label_image reads it from there alone.
    sidecar = json.loads(Path(f"{graph}.json").read_text())
    assert sidecar["spectrogram"] == settings.to_dict()
    labeler = load_labeler(str(graph))
    assert spectrogram_settings_for(labeler) == settings

    # label_image --audio renders a test clip into the very pixels the spectrograms stage
    # wrote for it (its own window cutting, rendering and scaling).
    test_fold = LAYOUT[preset][2]
    tests = [r for r in rows if r.fold == test_fold]
    image_input = resolve_image_input(labeler)
    audio_input = AudioInput(settings, None, image_input)
    for row in tests:
        ys = decode_audio(row.source, audio_rates(labeler, audio_input))
        starts, _, windows = audio_windows(ys, audio_input)
        assert starts == [0.0]
        got = window_model_inputs(windows, labeler, audio_input)[0]
        want = prepare_image(load_image(str(spec / row.image)), image_input)
        assert np.array_equal(got, want), row.image

    # ... so the command gives the same answer for the clip as for the stage's image, and
    # the audio-in export (rendering inside its graph) agrees with both.
    def top(*args: str) -> list:
        assert label_image(["label_image", *args, "--json"]) == 0
        return json.loads(capsys.readouterr().out)["results"][0]["top"]

    audio_model = load_labeler(str(audio_tflite))
    assert audio_model.audio_in
    for row in tests:
        by_audio = top("--graph", str(graph), "--audio", row.source)
        by_image = top("--graph", str(graph), "--image", str(spec / row.image))
        assert by_audio == by_image
        by_audio_in = top("--graph", str(audio_tflite), "--audio", row.source)
        assert [t["label"] for t in by_audio_in] == [t["label"] for t in by_image]
        for a, b in zip(by_audio_in, by_image):
            assert abs(a["score"] - b["score"]) < 1e-3
    waveforms = np.stack([decode_audio(r.source, [SR])[SR] for r in tests])
    images = np.stack([prepare_image(load_image(str(spec / r.image)), image_input) for r in tests])
    np.testing.assert_allclose(audio_model.predict(waveforms), labeler.predict(images), atol=1e-3)
