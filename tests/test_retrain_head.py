"""The head and its trainer: separates classes, reproducible, options, speed."""
from __future__ import annotations


import numpy as np
import pytest
import tensorflow as tf

from retrain.head import ClassificationHead, HeadSettings, HeadTrainer, accuracy_and_xent


def blobs(n=300, d=16, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(0, 3, (k, d))
    return (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


def test_call_is_a_tf_function_with_the_contract_signature():
    head = ClassificationHead(16, 3)
    spec, = head.__call__.get_concrete_function().structured_input_signature[0]
    assert spec.shape.as_list() == [None, 16] and spec.dtype == tf.float32
    probs = head(tf.zeros([4, 16])).numpy()
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


@pytest.mark.parametrize("settings", [
    HeadSettings(),
    HeadSettings(optimizer="adam", learning_rate=0.01, hidden_units=32, dropout=0.3),
    HeadSettings(label_smoothing=0.1, l2=1e-3, balanced_batches=True),
])
def test_training_separates_blobs(settings):
    x, y = blobs()
    head = ClassificationHead(16, 3, settings.hidden_units, settings.dropout, seed=1)
    trainer = HeadTrainer(head, x, y, settings)
    trainer.train(300)
    acc, _ = accuracy_and_xent(head.predict(x), y)
    assert acc > 0.95
    assert int(trainer.step.numpy()) == 300


def test_same_seed_same_numbers_other_seed_other_numbers():
    x, y = blobs()

    def run(seed):
        head = ClassificationHead(16, 3, 8, 0.2, seed=seed)
        HeadTrainer(head, x, y, HeadSettings(hidden_units=8, dropout=0.2, seed=seed)).train(50)
        return head.predict(x)

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.allclose(run(5), run(6))


def test_balanced_batches_draw_classes_equally():
    y = np.array([0] * 950 + [1] * 50)
    x = np.zeros((1000, 4), np.float32)
    trainer = HeadTrainer(ClassificationHead(4, 2), x, y,
                          HeadSettings(balanced_batches=True, train_batch_size=2000))
    drawn = trainer._sample(tf.constant(1, tf.int64)).numpy()
    share = np.mean(y[drawn] == 1)
    assert 0.4 < share < 0.6
    plain = HeadTrainer(ClassificationHead(4, 2), x, y, HeadSettings(train_batch_size=2000))
    assert np.mean(y[plain._sample(tf.constant(1, tf.int64)).numpy()] == 1) < 0.1


def test_settings_problems():
    assert HeadSettings(dropout=1.0, optimizer="rmsprop").problems()
    assert not HeadSettings().problems()


# ------------------------------------------------------------------ standardisation

def test_feature_statistics_and_the_head_standardise_in_graph():
    from retrain.head import feature_statistics

    rng = np.random.default_rng(0)
    x = (rng.normal(5.0, 3.0, (200, 6)) * [1, 10, 0.1, 1, 1, 1]).astype(np.float32)
    x[:, 4] = 2.5  # constant: maps to 0, never divides by zero
    x[:, 5] = 1.0
    x[0, 5] = 1.0 + 1e-9  # barely varies: floored, not blown up
    mean, std = feature_statistics(x)
    np.testing.assert_allclose(mean[:4], x[:, :4].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std[:4], x[:, :4].std(0), rtol=1e-5)
    assert std[4] == 1.0 and std[5] >= 1e-3 * np.mean(x[:, :4].std(0)) * 0.5
    head = ClassificationHead(6, 2)
    assert not head.standardized
    head.set_standardization(mean, std)
    assert head.standardized
    z = head.standardize(tf.constant(x)).numpy()
    np.testing.assert_allclose(z[:, :4].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z[:, :4].std(0), 1, atol=1e-4)
    assert np.all(z[:, 4] == 0) and np.all(np.abs(z[:, 5]) < 1e-3)
    # The standardisation variables are not trained, but they are part of the head.
    assert head.feature_mean not in head.trainable_variables
    assert any(v is head.feature_mean for v in head.variables)


@pytest.mark.parametrize("mean,std", [
    (np.zeros(5), np.ones(6)), (np.zeros(6), np.zeros(6)), (np.full(6, np.nan), np.ones(6))])
def test_bad_standardisation_is_refused(mean, std):
    with pytest.raises(ValueError, match="standardisation needs"):
        ClassificationHead(6, 2).set_standardization(mean, std)
    with pytest.raises(ValueError, match="non-empty"):
        from retrain.head import feature_statistics
        feature_statistics(np.zeros((0, 6)))


def test_trainer_standardises_with_its_training_data_only():
    x, y = blobs()
    x = x * 50 + 300  # far from standard
    head = ClassificationHead(16, 3)
    HeadTrainer(head, x[:200], y[:200], HeadSettings())
    np.testing.assert_allclose(head.feature_mean.numpy(), x[:200].mean(0), rtol=1e-5)
    raw = ClassificationHead(16, 3)
    HeadTrainer(raw, x, y, HeadSettings(standardize=False))
    assert not raw.standardized


def test_standardisation_trains_well_on_badly_scaled_features():
    # Raw features with large offsets defeat retrain.py's SGD at 0.01; standardised, they do not.
    x, y = blobs()
    x = x * 0.01 + 100
    accs = {}
    for standardize in (False, True):
        head = ClassificationHead(16, 3, seed=1)
        HeadTrainer(head, x, y, HeadSettings(standardize=standardize)).train(300)
        accs[standardize] = accuracy_and_xent(head.predict(x), y)[0]
    assert accs[True] > 0.95 > accs[False]


# ------------------------------------------------------------------ early stopping

def test_early_stopping_restores_the_best_validation_weights():
    from retrain.head import EarlyStopping, fit

    x, y = blobs(seed=3)
    # Validation labels are the training labels rotated: the better the head learns the
    # training classes, the worse it scores here, so the best step is an early one.
    y_val = (y + 1) % 3
    head = ClassificationHead(16, 3, seed=2)
    trainer = HeadTrainer(head, x, y, HeadSettings(learning_rate=0.002))
    snapshots = {}

    def on_step(i, evaluation):
        if evaluation.is_evaluation:
            snapshots[i] = [v.numpy().copy() for v in head.trainable_variables]

    stopper = EarlyStopping(head.trainable_variables, patience=0)
    result = fit(trainer, 300, 10, x, y_val, stopper, on_step=on_step)
    assert result.steps_run == 300 and not result.stopped_early
    scores = {e.step: (e.validation_accuracy, -e.validation_cross_entropy) for e in result.evaluations}
    best = max(scores, key=lambda s: (scores[s], -s))
    assert result.best_step == best < 299
    for v, kept in zip(head.trainable_variables, snapshots[best]):
        np.testing.assert_array_equal(v.numpy(), kept)
    acc, xent = accuracy_and_xent(head.predict(x), y_val)
    assert acc == pytest.approx(result.best_validation_accuracy)
    assert xent == pytest.approx(result.best_validation_cross_entropy, rel=1e-4)
    assert scores[299] < scores[best]  # so restoring mattered


def test_early_stopping_patience_stops_and_still_restores():
    from retrain.head import EarlyStopping, fit

    x, y = blobs(seed=4)
    head = ClassificationHead(16, 3, seed=2)
    trainer = HeadTrainer(head, x, y, HeadSettings(learning_rate=0.05))
    stopper = EarlyStopping(head.trainable_variables, patience=50)
    result = fit(trainer, 5000, 10, x, (y + 1) % 3, stopper)
    assert result.stopped_early
    assert result.steps_run - 1 == result.best_step + 50 < 5000
    assert int(trainer.step.numpy()) == result.steps_run


def test_no_validation_set_keeps_the_last_weights():
    from retrain.head import EarlyStopping, fit

    x, y = blobs()
    head = ClassificationHead(16, 3)
    trainer = HeadTrainer(head, x, y, HeadSettings())
    result = fit(trainer, 50, 10, x[:0], y[:0], EarlyStopping(head.trainable_variables, 0))
    assert result.best_step is None and result.steps_run == 50
    with pytest.raises(ValueError):
        EarlyStopping([], patience=-1)


def test_head_settings_problems_for_the_new_levers():
    assert HeadSettings(early_stopping_patience=-1).problems()
    assert not HeadSettings(standardize=False, early_stopping=False).problems()
