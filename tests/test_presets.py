"""--preset NAME: the flag files of configs/ by name, for spectrograms and retrain."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundretrain import presets
from soundretrain.command_line import CommandLineExit, parse_flags

REPO = Path(__file__).resolve().parents[1]


def _parse(stage: str, *args: str):
    if stage == "spectrograms":
        from spectrograms.cli import make_flags
    else:
        from retrain.cli import make_flags
    fv = make_flags()
    parse_flags(fv, [stage, *args], stage, lambda: "usage", presets=stage)
    return fv


def test_each_stage_lists_its_own_presets():
    assert presets.available("spectrograms") == ["esc50", "urbansound8k"]
    assert presets.available("retrain") == ["esc50", "urbansound8k"]
    assert presets.preset_path("spectrograms", "esc50") == str(REPO / "configs" / "esc50.cfg")
    assert presets.preset_path("retrain", "esc50") == str(REPO / "configs" / "retrain_esc50.cfg")


@pytest.mark.parametrize("stage", ["spectrograms", "retrain"])
def test_every_preset_parses_and_equals_its_flag_file(stage):
    for name in presets.available(stage):
        by_name = _parse(stage, f"--preset={name}")
        by_file = _parse(stage, f"--flagfile={presets.preset_path(stage, name)}")
        assert by_name.preset == name
        for flag in by_file:
            if flag not in ("preset", "flagfile"):
                assert by_name[flag].value == by_file[flag].value, (name, flag)


def test_preset_values_and_overrides_follow_the_order_of_the_command_line():
    fv = _parse("retrain", "--preset", "esc50")
    assert fv.head == "logistic" and fv.tfhub_module == "auto"
    assert _parse("retrain", "--preset=urbansound8k").head == "sgd"
    assert _parse("retrain", "--preset=urbansound8k", "--how_many_training_steps=5").how_many_training_steps == 5
    # A flag before the preset is overridden by it, as with --flagfile.
    assert _parse("retrain", "--how_many_training_steps=5", "--preset=urbansound8k").how_many_training_steps == 4000
    assert _parse("spectrograms", "--preset=esc50", "--duration=2").duration == 2
    assert _parse("spectrograms", "--preset=esc50").duration == 5


@pytest.mark.parametrize("args, words", [
    (["--preset=us8k"], ["unknown --preset 'us8k'", "esc50, urbansound8k", "--flagfile"]),
    (["--preset=retrain_esc50"], ["unknown --preset"]),
    (["--preset="], ["--preset needs a name"]),
    (["--preset"], ["--preset needs a name"]),
])
def test_unknown_or_missing_preset_names_are_one_line(args, words, capsys):
    with pytest.raises(CommandLineExit) as done:
        _parse("spectrograms", *args)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spectrograms: error: ")
    for w in words:
        assert w in err


def test_a_preset_inside_a_flag_file_is_refused(tmp_path, capsys):
    flagfile = tmp_path / "mine.cfg"
    flagfile.write_text("--preset=urbansound8k\n--n_mels=64\n")
    with pytest.raises(CommandLineExit) as done:
        _parse("spectrograms", f"--flagfile={flagfile}")
    assert done.value.code == 2
    assert "works on the command line only" in capsys.readouterr().err


def test_help_names_the_presets(capsys):
    from retrain.cli import main as retrain_main
    from spectrograms.cli import main as spectrograms_main

    assert spectrograms_main(["spectrograms", "--help"]) == 0
    assert retrain_main(["retrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.count("--preset") >= 2 and "esc50, urbansound8k" in out


def test_spectrograms_with_a_preset_from_another_folder(tmp_path, monkeypatch):
    from spectrograms.cli import main

    sr = 22050
    for label, freq in (("hum", 120), ("beep", 2000)):
        for k in range(2):
            path = tmp_path / "data" / label / f"{label}{k}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(sr // 2) / sr
            sf.write(path, (0.3 * np.sin(2 * np.pi * freq * (1 + 0.1 * k) * t)).astype(np.float32), sr)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)  # no configs/ here: the preset is found by name
    code = main(["spectrograms", "--preset", "esc50", "--dataset=folders", f"--data_dir={tmp_path / 'data'}",
                 "--output_dir=spec", "--image_size=32", "--jobs=1"])
    assert code == 0
    config = json.loads((work / "spec" / "spectrogram_config.json").read_text())
    assert config["duration"] == 5 and config["image_size"] == 32 and config["n_mels"] == 224


def test_cross_validation_does_not_warn_about_the_presets_own_export_paths():
    # The README's `retrain --preset urbansound8k --image_dir=... --cross_validate` warned that
    # the preset's export paths (--output_labels, --saved_model_dir, ...) would be ignored.
    from retrain.cli import cross_validation_warnings

    assert cross_validation_warnings(_parse("retrain", "--preset=urbansound8k", "--cross_validate")) == []
    fv = _parse("retrain", "--preset=urbansound8k", "--cross_validate", "--output_graph=mine.pb")
    [warning] = cross_validation_warnings(fv)
    assert "--output_graph is ignored" in warning
    fv = _parse("retrain", f"--flagfile={presets.preset_path('retrain', 'esc50')}", "--cross_validate")
    assert "--saved_model_dir" in cross_validation_warnings(fv)[0]  # a flag file is the user's own
