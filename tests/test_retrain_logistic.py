"""The logistic head (retrain.logistic, retrain.head_choice): the same model as
scikit-learn's LogisticRegression, C chosen by grouped inner CV, ensembles folded into one
layer, and which head --head picks."""
from __future__ import annotations

import numpy as np
import pytest

from retrain import logistic
from retrain.head_choice import HeadReport, feature_blocks, fit_logistic_head, resolve_kind
from retrain.settings import HeadSettings


def blobs(n_per_class: int, classes: int, features: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, features)) * 3.0
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] * 0.2 + rng.standard_normal((len(y), features)) * spread
    return (x * rng.uniform(0.1, 5.0, features) + rng.standard_normal(features)).astype(np.float32), y


@pytest.mark.parametrize("n_per_class,features", [(4, 60), (40, 12)])  # fewer / more examples than features
def test_fit_is_scikit_learns_logistic_regression(n_per_class, features):
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(n_per_class, 3, features, 1.0)
    mean, std = logistic.standardization(x)
    z = (x - mean) / std
    for c in (0.01, 1.0):
        ours = logistic.fit_logistic(z, y, 3, c, tol=1e-8)
        theirs = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(z, y)
        np.testing.assert_allclose(ours.weights, theirs.coef_.T, atol=2e-3 * np.abs(theirs.coef_).max())
        np.testing.assert_allclose(logistic.softmax(ours.logits(z)), theirs.predict_proba(z), atol=2e-3)


def test_cross_validated_probabilities_are_each_folds_own_fit():
    x, y = blobs(6, 3, 40, 1.5, seed=1)
    groups = [f"r{i // 2}" for i in range(len(y))]  # two clips a recording
    folds = logistic.inner_folds(groups, y, 3)
    assert len(folds) == 3  # the smallest class has 3 recordings
    probs = logistic.cv_probabilities(x, y, 3, folds, [0.1])[0.1]
    for train, held in folds:
        assert not {groups[i] for i in train} & {groups[i] for i in held}
        mean, std, fit = logistic.fit_standardized(x[train], y[train], 3, 0.1)
        np.testing.assert_allclose(probs[held], logistic.softmax(fit.logits((x[held] - mean) / std)),
                                   atol=2e-3)


def test_inner_cv_chooses_strong_regularisation_for_noisy_few_examples():
    x, y = blobs(5, 4, 300, 4.0, seed=2)  # 20 examples, 300 features, mostly noise
    choice = logistic.choose_c(x, y, [str(i) for i in range(len(y))], 4)
    assert choice.folds == 5 and set(choice.scores) == set(logistic.C_GRID)
    assert choice.c == logistic.best_c(choice.scores)
    best = choice.scores[choice.c]
    assert all(best.key() <= s.key() for s in choice.scores.values())
    assert "(chosen)" in choice.table()


def test_a_class_without_examples_is_never_predicted():
    x, y = blobs(5, 3, 10, 1.0)
    fit = logistic.fit_logistic((x - x.mean(0)) / x.std(0), y, 4, 1.0)  # class 3 has none
    assert fit.biases[3] < fit.biases[:3].min() - 20
    assert not np.any(np.argmax(fit.logits(np.random.default_rng(0).standard_normal((200, 10)) * 5), 1) == 3)


def test_late_fusion_is_one_layer_averaging_the_parts_logits():
    x, y = blobs(8, 3, 30, 1.0, seed=3)
    blocks = [(0, 10), (10, 30)]
    groups = [str(i) for i in range(len(y))]
    folds = logistic.inner_folds(groups, y, 3)
    choice = logistic.late_fusion_cv(x, y, blocks, 3, folds, [0.1, 1.0])
    mean, std, fused = logistic.fit_late_fusion(x, y, 3, choice)
    z = (x - mean) / std
    parts = [logistic.fit_logistic(z[:, a:b], y, 3, ch.c) for (a, b), ch in zip(blocks, choice.choices)]
    expected = np.mean([p.logits(z[:, a:b]) for p, (a, b) in zip(parts, blocks)], axis=0)
    np.testing.assert_allclose(fused.logits(z), expected, atol=1e-4)


@pytest.mark.parametrize("call,words", [
    (lambda: logistic.fit_logistic(np.zeros((4, 2)), np.array([0, 1, 0, 1]), 2, 0.0), "C must be"),
    (lambda: logistic.sample_weights(np.array([0, 1]), 2, "heavy"), "class weights"),
])
def test_bad_logistic_settings_are_one_line_errors(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_resolve_kind():
    assert resolve_kind(HeadSettings(), 100) == ("logistic", "the default")
    kind, why = resolve_kind(HeadSettings(hidden_units=64, early_stopping=True), 100)
    assert kind == "sgd" and "--hidden_units, --early_stopping" in why
    assert resolve_kind(HeadSettings(standardize=False), 100)[1].startswith("--nostandardize")
    assert resolve_kind(HeadSettings(), 10 ** 6)[0] == "sgd"
    assert resolve_kind(HeadSettings(kind="logistic"), 10 ** 6)[0] == "logistic"
    assert resolve_kind(HeadSettings(kind="sgd"), 10)[0] == "sgd"


def test_head_settings_refuse_knobs_of_the_other_head():
    assert any("--learning_rate" in p and "--head=sgd" in p
               for p in HeadSettings(kind="logistic", learning_rate=0.1).problems())
    assert any("--logistic_c" in p for p in HeadSettings(kind="sgd", logistic_c=1.0).problems())
    assert any("--ensemble" in p for p in HeadSettings(ensemble="many").problems())
    assert any("--logistic_c" in p for p in HeadSettings(logistic_c=-1.0).problems())
    assert HeadSettings().problems() == []


def test_fit_logistic_head_reports_its_choice_and_keeps_ensembles_only_when_they_win():
    x, y = blobs(6, 3, 24, 2.0, seed=4)
    groups = [str(i) for i in range(len(y))]
    mean, std, fit, report = fit_logistic_head(x, y, groups, 3, HeadSettings(), [(0, 12), (12, 24)],
                                               log=lambda line: None)
    assert isinstance(report, HeadReport) and report.folds == 5 and report.examples == 18
    one = [r for r in report.candidates if r["head"] == "one head"]
    fused = [r for r in report.candidates if r["head"] == "one per part"]
    assert len(one) == len(logistic.C_GRID) and len(fused) == 1
    assert sum(bool(r.get("chosen")) for r in report.candidates) == 1
    best_one = max(r["accuracy"] for r in one)
    assert (report.ensemble == "parts") == (fused[0]["accuracy"] > best_one)
    assert report.inner_cv_accuracy == max(best_one, fused[0]["accuracy"])
    assert report.to_dict()["kind"] == "logistic" and "(chosen)" in report.table()
    # A fixed C and one head: nothing to cross-validate.
    _, _, fixed, report = fit_logistic_head(x, y, groups, 3, HeadSettings(logistic_c=0.5, ensemble="none"),
                                            [(0, 24)], log=lambda line: None)
    assert report.c == 0.5 and report.folds == 0 and fixed.c == 0.5


def test_feature_blocks_follow_the_parts():
    class Part:
        def __init__(self, n):
            self.feature_size = n

    class Joined:
        parts = [Part(3), Part(5)]

    assert feature_blocks(Joined()) == [(0, 3), (3, 8)]
    assert feature_blocks(Part(7)) == [(0, 7)]


def test_retrain_trains_the_logistic_head_by_default_and_records_its_choice(tmp_path, capsys):
    import json

    from retrain.cli import main
    from tiny_models import make_colour_image_folders, make_tiny_image_module

    tiny = make_tiny_image_module(tmp_path / "tiny")
    images = make_colour_image_folders(tmp_path / "images", classes=("blue", "red", "green"),
                                       per_class=12, windows_per_recording=2)
    graph = tmp_path / "out" / "graph.pb"
    args = ["retrain", f"--image_dir={images}", f"--tfhub_module={tiny}",
            f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / 'ts'}",
            f"--output_graph={graph}", f"--output_labels={tmp_path / 'out' / 'labels.txt'}",
            "--checkpoint_path=", "--random_seed=3", "--noprogress", "--testing_percentage=25",
            "--validation_percentage=25"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Head: logistic regression (the default; --head=sgd" in out
    assert "Logistic head: C=" in out and "inner CV on the" in out
    assert "Step 0: Train accuracy" in out and "Step 1:" not in out  # one fit, not 4000 steps
    sidecar = json.loads((tmp_path / "out" / "graph.pb.json").read_text())
    head = sidecar["head"]
    assert head["kind"] == "logistic" and head["inner_cv_folds"] >= 2 and head["candidates"]
    from label.models import load_labeler

    assert load_labeler(str(graph)).predict is not None
    # An SGD-only flag asks for retrain.py's head, and says so.
    assert main(args + ["--hidden_units=4", "--how_many_training_steps=30"]) == 0
    out = capsys.readouterr().out
    assert "Head: retrain.py's softmax layer trained by SGD (--hidden_units sets" in out
    assert "Step 20: Train accuracy" in out
