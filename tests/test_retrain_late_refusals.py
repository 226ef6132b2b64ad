"""Refusals that came late or said the wrong thing (issue 19, item 6): --fine_tune_blocks on a
module that cannot be cut is refused before any bottleneck or TensorBoard run, and --autotune
on a split that got no validation images says so and what would work."""
from __future__ import annotations

import pytest

from retrain.cli import main
from tiny_models import make_colour_image_folders, make_tiny_image_module, make_tone_spectrogram_dir


def one_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("retrain: error: ")]
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_fine_tuning_a_module_that_cannot_be_cut_is_refused_before_the_bottlenecks(tmp_path, capsys):
    tiny = [make_tiny_image_module(tmp_path / f"m{seed}", seed=seed) for seed in (0, 1)]
    images = make_colour_image_folders(tmp_path / "images", per_class=4)
    for module in (tiny[0], ",".join(tiny)):  # one opaque SavedModel; a concatenation
        line = one_error(capsys, ["retrain", f"--image_dir={images}", f"--tfhub_module={module}",
                                  "--fine_tune_blocks=1", f"--bottleneck_dir={tmp_path / 'bn'}",
                                  f"--summaries_dir={tmp_path / 'ts'}", "--noprogress",
                                  f"--output_graph={tmp_path / 'out' / 'g.pb'}"])
        assert "cannot be fine-tuned" in line
        assert not (tmp_path / "bn").exists() and not (tmp_path / "ts").exists()
        assert not (tmp_path / "out").exists()


def test_the_presets_part_that_cannot_be_cut_is_refused_before_the_bottlenecks(tmp_path, capsys):
    """The probe: `--preset urbansound8k --fine_tune_blocks 1` computed every bottleneck and
    opened a TensorBoard run before refusing. The preset's image network can be tuned now
    (a bare K picks it); naming its SoundNet part, which cannot be cut, is refused first."""
    from retrain.fine_tune import plan_cuts
    from soundretrain.backbones.registry import ModuleError, load_module

    cache = tmp_path / "module_cache"
    try:
        preset_module = load_module("aisfx,soundnet,efficientnet_lite0", str(cache))
    except ModuleError as err:  # the weights packages are not installed here
        pytest.skip(str(err))
    (index, cut), = plan_cuts(preset_module, 1)
    assert index == 2 and cut.backbone.name == "efficientnet_lite0"
    make_tone_spectrogram_dir(tmp_path, sr=16000, seconds=2.0, recordings=3)
    line = one_error(capsys, ["retrain", "--preset=urbansound8k", f"--image_dir={tmp_path / 'spec'}",
                              "--test_folds=3", "--fine_tune_blocks=soundnet:1",
                              f"--module_cache_dir={cache}",
                              f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / 'ts'}",
                              f"--output_tflite={tmp_path / 'out' / 'm.tflite'}",
                              f"--output_labels={tmp_path / 'out' / 'labels.txt'}",
                              f"--saved_model_dir={tmp_path / 'out' / 'sm'}", "--noprogress"])
    assert "module soundnet cannot be fine-tuned" in line
    assert not (tmp_path / "bn").exists() and not (tmp_path / "ts").exists()


def test_autotune_without_validation_images_scores_by_inner_cv(tmp_path, capsys):
    """The probe: "give --validation_percentage > 0" when it was 10 and the split simply put
    no recording into validation. Two recordings a class are enough now: grouped inner CV."""
    tiny = make_tiny_image_module(tmp_path / "m")
    images = make_colour_image_folders(tmp_path / "images", per_class=2)
    code = main(["retrain", f"--image_dir={images}", f"--tfhub_module={tiny}", "--autotune",
                 "--split=hash", "--validation_percentage=1", "--testing_percentage=0",
                 f"--bottleneck_dir={tmp_path / 'bn'}", "--summaries_dir=",
                 "--how_many_training_steps=10", "--noprogress",
                 f"--output_graph={tmp_path / 'out' / 'g.pb'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "scored by grouped 2-fold cross-validation" in out and "(there is no validation slice)" in out


def test_autotune_with_neither_validation_nor_inner_cv_says_what_happened(tmp_path, capsys):
    tiny = make_tiny_image_module(tmp_path / "m")
    images = make_colour_image_folders(tmp_path / "images", per_class=1)
    line = one_error(capsys, ["retrain", f"--image_dir={images}", f"--tfhub_module={tiny}", "--autotune",
                              "--split=hash", "--validation_percentage=1", "--testing_percentage=0",
                              f"--bottleneck_dir={tmp_path / 'bn'}", "--summaries_dir=",
                              "--how_many_training_steps=10", "--noprogress",
                              f"--output_graph={tmp_path / 'out' / 'g.pb'}"])
    assert "validation_percentage > 0" not in line
    assert "--validation_percentage 1 picked none of the 2 training recording(s)" in line
    assert "each is about 50 %" in line and "raise --validation_percentage" in line
