"""The head's levers through retrain's real code path, on a tiny SavedModel and generated
images: standardisation statistics from the training split only, the exported graph
carrying them, --autotune reproducible with --random_seed and logged, bad flags."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from retrain.cli import main
from tiny_models import make_colour_image_folders, make_tiny_image_module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_image_module(tmp_path_factory.mktemp("module") / "tiny")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return make_colour_image_folders(tmp_path_factory.mktemp("images") / "images",
                                     classes=("blue", "red", "green"), per_class=16,
                                     windows_per_recording=2)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny, image_dir):
    from retrain.core import RetrainSettings, make_split, prepare

    settings = RetrainSettings(image_dir=image_dir, tfhub_module=tiny, summaries_dir=None,
                               bottleneck_dir=str(tmp_path_factory.mktemp("bn")),
                               testing_percentage=25, validation_percentage=25,
                               how_many_training_steps=120, eval_step_interval=10,
                               progress=False)
    p = prepare(settings, log=lambda line: None)
    return settings, p, make_split(settings, p.images)


def train(settings, prepared, split, seed=3):
    from retrain.core import split_partition, train_and_evaluate

    return train_and_evaluate(settings, prepared, split, seed, "t",
                              split_partition(settings, prepared), log=lambda line: None)


def test_standardisation_statistics_come_from_the_training_split_only(prepared):
    settings, p, split = prepared
    assert split.train and split.validation and split.test
    outcome = train(settings, p, split)
    train_x = p.features[list(split.train)]
    np.testing.assert_allclose(outcome.head.feature_mean.numpy(), train_x.mean(0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(1 / outcome.head.feature_scale.numpy(), train_x.std(0),
                               rtol=1e-4)
    assert not np.allclose(outcome.head.feature_mean.numpy(), p.features.mean(0), rtol=1e-3)
    # Wildly different validation and test features change nothing in the statistics.
    shifted = dataclasses.replace(p, features=p.features.copy())
    held_out = list(split.validation) + list(split.test)
    shifted.features[held_out] = shifted.features[held_out] * 100 + 1000
    again = train(settings, shifted, split)
    np.testing.assert_array_equal(again.head.feature_mean.numpy(),
                                  outcome.head.feature_mean.numpy())
    np.testing.assert_array_equal(again.head.feature_scale.numpy(),
                                  outcome.head.feature_scale.numpy())


def test_augmented_copies_of_training_images_are_training_data(prepared):
    from retrain.augment import AugmentSettings

    settings, p, split = prepared
    aug = dataclasses.replace(settings, augment=AugmentSettings(copies=1, seed=3))
    head = train(aug, p, split).head
    # The copies move the statistics, but validation and test still do not.
    assert not np.allclose(head.feature_mean.numpy(), p.features[list(split.train)].mean(0),
                           rtol=1e-6, atol=0)
    shifted = dataclasses.replace(p, features=p.features.copy())
    held_out = list(split.validation) + list(split.test)
    shifted.features[held_out] += 1000
    np.testing.assert_array_equal(train(aug, shifted, split).head.feature_mean.numpy(),
                                  head.feature_mean.numpy())


def test_exported_graph_with_standardisation_agrees_with_the_in_memory_head(prepared, tmp_path):
    from label.models import load_labeler
    from retrain.bottlenecks import image_to_input, read_image
    from retrain.core import export

    settings, p, split = prepared
    head = train(settings, p, split).head
    assert head.standardized
    out = dataclasses.replace(settings, output_labels=str(tmp_path / "labels.txt"),
                              saved_model_dir=str(tmp_path / "saved"),
                              output_tflite=str(tmp_path / "model.tflite"))
    written = export(out, p, head, 1.0, output_graph=str(tmp_path / "graph.pb"))
    records = [p.images.records[i] for i in split.test]
    images = np.stack([image_to_input(read_image(r.path), 32, 32) for r in records])
    expected = head.predict(p.backbone.compute(images))
    # Without its standardisation the same weights give other numbers: the artifacts
    # can only agree with the head if they carry it.
    mean, scale = head.feature_mean.numpy(), head.feature_scale.numpy()
    head.feature_mean.assign(np.zeros_like(mean))
    head.feature_scale.assign(np.ones_like(scale))
    raw = head.predict(p.backbone.compute(images))
    head.feature_mean.assign(mean)
    head.feature_scale.assign(scale)
    assert np.max(np.abs(raw - expected)) > 1e-2
    for key in ("output_graph", "saved_model_dir", "output_tflite"):
        got = load_labeler(written[key]).predict(images)
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=key)


def autotune_args(tmp_path, tiny, image_dir, seed, trials=3, run="ts"):
    return ["retrain", f"--image_dir={image_dir}", f"--tfhub_module={tiny}",
            f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / run}",
            "--output_graph=", "--output_labels=", "--checkpoint_path=",
            "--how_many_training_steps=60", "--eval_step_interval=10",
            "--testing_percentage=25", "--validation_percentage=25",
            "--autotune", f"--autotune_trials={trials}", f"--random_seed={seed}", "--noprogress",
            "--split=hash"]  # one held-out split: one search (a k-fold plan searches per fold)


def autotune_lines(out: str) -> list[str]:
    # The time stamps and the seconds a trial took differ between runs; nothing else may.
    lines = [re.sub(r"^\S+ \S+: ", "", line) for line in out.splitlines()]
    return [re.sub(r" \(\d+\.\d s\)$", "", line) for line in lines
            if line.startswith(("Autotune", "Split", "Early stopping", "Final test accuracy"))]


def test_autotune_is_reproducible_with_random_seed_and_logged(tmp_path, tiny, image_dir, capsys):
    assert main(autotune_args(tmp_path, tiny, image_dir, 5, run="a")) == 0
    first = autotune_lines(capsys.readouterr().out)
    assert main(autotune_args(tmp_path, tiny, image_dir, 5, run="b")) == 0
    second = autotune_lines(capsys.readouterr().out)
    assert first == second
    trials = [line for line in first if line.startswith("Autotune trial")]
    assert len(trials) == 3
    # The default (logistic) head first, retrain.py's SGD head second, then a grid point.
    assert "trial 1/3: logistic regression" in trials[0]
    assert "trial 2/3: learning_rate=0.01 l2=0 hidden_units=0 dropout=0:" in trials[1]
    # A validation slice of a few images cannot tell settings apart: scored by inner CV on
    # the training and validation images together.
    assert any(re.match(r"Autotune: 3 head settings, scored by grouped \d-fold cross-validation "
                        r"on the \d+ training and validation images \(the validation slice "
                        r"\(\d+ images\) is too small", line) for line in first)
    winner = [line for line in first if line.startswith("Autotune winner")]
    assert len(winner) == 1 and "inner-CV accuracy" in winner[0]
    # TensorBoard: one hparams run per trial under the run's autotune/ folder.
    run_dir, = (tmp_path / "a").iterdir()
    trials = sorted(p.name for p in (run_dir / "autotune").iterdir() if p.is_dir())
    assert trials == ["trial-01", "trial-02", "trial-03"]
    assert list((run_dir / "autotune").glob("events.out.tfevents.*"))
    # Another seed draws other settings to try.
    assert main(autotune_args(tmp_path, tiny, image_dir, 6, run="c")) == 0
    other = autotune_lines(capsys.readouterr().out)
    assert [l for l in other if "trial 3/" in l] != [l for l in first if "trial 3/" in l]


def test_autotune_without_a_validation_slice_cross_validates(tmp_path, tiny, image_dir, capsys):
    args = [a for a in autotune_args(tmp_path, tiny, image_dir, 5, trials=2)
            if not a.startswith("--validation_percentage")] + ["--validation_percentage=0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(there is no validation slice)" in out and "Autotune winner" in out


def test_autotune_candidates_start_with_the_given_settings():
    from retrain.autotune import candidates
    from retrain.settings import HeadSettings

    base = HeadSettings(learning_rate=0.02, seed=9)  # an SGD knob: the SGD head
    a, b = candidates(base, 8, 9), candidates(base, 8, 9)
    assert a == b and a[0] == base and len(set(a)) == 8
    assert all(s.kind == "sgd" for s in a[1:])
    assert all(dataclasses.replace(s, kind="auto") != base for s in a[1:])  # no repeat of trial 1
    assert candidates(base, 8, 10)[1:] != a[1:]
    assert {s.learning_rate for s in candidates(base, 200, 1)} == {0.02 * 0.3, 0.02, 0.02 * 3.0}
    # The default head: the logistic head first, retrain.py's SGD head second.
    default = candidates(HeadSettings(seed=9), 5, 9)
    assert [s.kind for s in default[:2]] == ["logistic", "sgd"] and len(set(default)) == 5
    assert default[1] == HeadSettings(seed=9, kind="sgd")


@pytest.mark.parametrize("min_validation", [0, 10 ** 6])  # scored on validation / by inner CV
def test_autotune_winner_is_the_head_trained_after_it(prepared, monkeypatch, min_validation):
    from retrain import autotune as tuning
    from retrain.settings import HeadSettings

    monkeypatch.setattr(tuning, "MIN_VALIDATION", min_validation)
    settings, p, split = prepared
    tuned = dataclasses.replace(settings, autotune=True, autotune_trials=3)
    lines: list[str] = []
    outcome = train_and_log(tuned, p, split, lines)
    tr, va = list(split.train), list(split.validation)
    groups = [r.group for r in p.images.records]
    result = tuning.autotune(p.features[tr], p.class_ids[tr], p.features[va], p.class_ids[va],
                             len(p.images.labels), HeadSettings(seed=3), 120, 10, 3,
                             log=lambda l: None, groups=[groups[i] for i in tr],
                             validation_groups=[groups[i] for i in va])
    assert result.scoring == ("validation" if min_validation == 0 else "inner CV")
    assert result.winner.validation_accuracy >= result.trials[0].validation_accuracy
    winner = [line for line in lines if line.startswith("Autotune winner")]
    assert winner and result.winner.describe() in winner[0]
    if min_validation == 0:  # the head trained after it is the winning trial's head again
        assert outcome.validation_accuracy == pytest.approx(result.winner.validation_accuracy)


def train_and_log(settings, prepared, split, lines, seed=3):
    from retrain.core import split_partition, train_and_evaluate

    return train_and_evaluate(settings, prepared, split, seed, "t",
                              split_partition(settings, prepared), log=lines.append)


def test_autotune_keeps_the_given_settings_unless_a_trial_clearly_beats_them():
    from retrain.autotune import Trial, choose, standard_error
    from retrain.settings import HeadSettings

    def trial(number, acc, xent=1.0):
        return Trial(number, HeadSettings(l2=number * 1e-3), acc, xent, 10, 0.1)

    assert standard_error(0.8, 100) == pytest.approx(0.04)
    given = trial(1, 0.70)
    # 85 validation images: one standard error is ~4.6 points at 80 %.
    assert choose([given, trial(2, 0.74), trial(3, 0.72)], 85) is given
    clear = trial(2, 0.80)
    assert choose([given, clear, trial(3, 0.72)], 85) is clear
    # The same 4-point gain is clear on 2000 images (one standard error: 1 point).
    better = trial(2, 0.74)
    assert choose([given, better], 2000) is better
    # The settings given diverged: any finite trial wins.
    assert choose([trial(1, float("nan"), float("nan")), better], 85) is better


@pytest.mark.parametrize("extra,words", [
    (["--autotune_trials=0"], "autotune_trials"),
    (["--early_stopping_patience=-5"], "early_stopping_patience"),
    (["--head=logistic", "--hidden_units=8"], "--head=sgd"),
    (["--head=sgd", "--logistic_c=1"], "--logistic_c"),
])
def test_bad_head_lever_flags_exit_2(tmp_path, tiny, image_dir, capsys, extra, words):
    args = ["retrain", f"--image_dir={image_dir}", f"--tfhub_module={tiny}",
            f"--bottleneck_dir={tmp_path / 'bn'}", "--noprogress"] + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("retrain: error: ") and words in err[0]
