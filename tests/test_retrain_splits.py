"""Honest splits: retrain.py's hash rule on groups, folds, cross-validation."""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from retrain.errors import RetrainError
from retrain.images import ImageRecord, group_from_filename
from retrain.splits import (MAX_NUM_IMAGES_PER_CLASS, cross_validation_splits, fold_split,
                            hash_percentage, hash_split, which_set)


def retrain_py_which_set(file_name, validation_percentage, testing_percentage):
    """retrain.py's own code for one file name (from tensorflow/hub's retrain.py)."""
    hash_name = re.sub(r"_nohash_.*$", "", file_name)
    hash_name_hashed = hashlib.sha1(hash_name.encode()).hexdigest()
    percentage_hash = ((int(hash_name_hashed, 16) % (MAX_NUM_IMAGES_PER_CLASS + 1))
                       * (100.0 / MAX_NUM_IMAGES_PER_CLASS))
    if percentage_hash < validation_percentage:
        return "validation"
    if percentage_hash < (testing_percentage + validation_percentage):
        return "testing"
    return "training"


def rec(name, label="a", group=None, fold=None):
    return ImageRecord(path=f"/x/{label}/{name}", relpath=f"{label}/{name}", label=label,
                       group=group if group is not None else group_from_filename(name), fold=fold)


def test_hash_rule_is_retrain_py_for_file_names():
    for i in range(300):
        name = f"clip{i}_nohash_{i % 4}.png" if i % 2 else f"clip{i}.jpg"
        assert which_set(group_from_filename(name), 10, 10) == retrain_py_which_set(name, 10, 10)


def test_hash_split_is_stable_and_adding_images_never_moves_old_ones():
    records = [rec(f"r{i}.png") for i in range(200)]
    s1 = hash_split(records, 10, 10)
    assert s1 == hash_split(list(records), 10, 10)
    bigger = records + [rec(f"new{i}.png") for i in range(100)]
    s2 = hash_split(bigger, 10, 10)
    assert set(s1.test) <= set(s2.test) and set(s1.validation) <= set(s2.validation)
    # Roughly the asked proportions.
    assert 5 <= len(s2.test) <= 60 and 5 <= len(s2.validation) <= 60


def test_nohash_windows_and_manifest_groups_never_straddle():
    records = [rec(f"take{k}_nohash_{w}.png", label=lab)
               for k in range(60) for w in range(3) for lab in ("a", "b")]
    records += [rec(f"win{w}.png", group=f"src{k}", label="c") for k in range(60) for w in range(3)]
    split = hash_split(records, 20, 20)
    side = {}
    for name, part in (("train", split.train), ("val", split.validation), ("test", split.test)):
        for i in part:
            assert side.setdefault(records[i].group, name) == name
    assert split.train and split.validation and split.test


def test_hash_percentage_in_range():
    assert all(0 <= hash_percentage(f"g{i}") <= 100 for i in range(100))


@pytest.mark.parametrize("val, test", [(60, 50), (-1, 10), (0, 100)])
def test_bad_percentages(val, test):
    with pytest.raises(RetrainError, match="percentage"):
        hash_split([rec("a.png")], val, test)


def folded(n_groups=30, folds=(1, 2, 3, 4)):
    return [rec(f"g{g}_w{w}.png", group=f"g{g}", fold=folds[g % len(folds)],
                label="ab"[g % 2]) for g in range(n_groups) for w in range(2)]


def test_fold_split_test_and_validation_folds():
    records = folded()
    s = fold_split(records, [4], [3])
    assert {records[i].fold for i in s.test} == {4}
    assert {records[i].fold for i in s.validation} == {3}
    assert {records[i].fold for i in s.train} == {1, 2}


def test_fold_split_validation_slice_is_group_aware():
    records = folded(n_groups=200)
    s = fold_split(records, [1], validation_percentage=25)
    assert {records[i].fold for i in s.test} == {1}
    assert {records[i].fold for i in s.validation} <= {2, 3, 4}
    val_groups = {records[i].group for i in s.validation}
    train_groups = {records[i].group for i in s.train}
    assert val_groups and not (val_groups & train_groups)
    assert 0.1 < len(val_groups) / (len(val_groups) + len(train_groups)) < 0.4


@pytest.mark.parametrize("test_folds, val_folds, words", [
    ([], [], "needs --test_folds"),
    ([9], [], "not among"),
    ([1], [1], "both test and validation"),
    ([1, 2], [3, 4], "no fold left for training"),
])
def test_fold_split_errors(test_folds, val_folds, words):
    with pytest.raises(RetrainError, match=words):
        fold_split(folded(), test_folds, val_folds)


def test_fold_split_needs_folds_and_refuses_straddling_groups():
    with pytest.raises(RetrainError, match="use --split hash"):
        fold_split([rec("a.png"), rec("b.png")], [1])
    records = folded() + [rec("extra.png", group="g0", fold=2)]  # g0 is in fold 1 too
    with pytest.raises(RetrainError, match="straddle"):
        fold_split(records, [1], [])


def test_cross_validation_covers_every_fold_once():
    records = folded(n_groups=40, folds=(1, 2, 3, 4, 5))
    runs = cross_validation_splits(records, validation_percentage=10)
    assert [f for f, _ in runs] == [1, 2, 3, 4, 5]
    tested = [i for _, s in runs for i in s.test]
    assert sorted(tested) == list(range(len(records)))  # each image tested exactly once
    for fold, s in runs:
        assert all(records[i].fold != fold for i in s.train + s.validation)
    assert [f for f, _ in cross_validation_splits(records, 10, folds=[2, 4])] == [2, 4]
    with pytest.raises(RetrainError, match="at least two folds"):
        cross_validation_splits(folded(folds=(1,)), 10)


# ------------------------------------------------------------------ stratified, by recording

def own_recordings(per_class=(6, 6, 2), windows=(1, 3)):
    """Class folders of plain-named recordings, some cut into several windows."""
    out = []
    for c, n in enumerate(per_class):
        label = f"class{c}"
        for k in range(n):
            for w in range(windows[k % len(windows)]):
                out.append(rec(f"{label}_{k}_nohash_{w}.png", label=label))
    return out


def ids_of(records):
    labels = sorted({r.label for r in records})
    return [labels.index(r.label) for r in records]


def sides(split):
    return {i: name for name, part in (("train", split.train), ("val", split.validation),
                                       ("test", split.test)) for i in part}


def test_stratified_group_kfold_tests_every_recording_once_and_balances_classes():
    from retrain.splits import stratified_group_kfold

    records = own_recordings((7, 5, 10, 3))
    groups, classes = [r.group for r in records], ids_of(records)
    folds = stratified_group_kfold(groups, classes, 3, seed=1)
    assert len(folds) == 3
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(len(records)))  # each image tested once
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == len(records)
        assert not {groups[i] for i in train} & {groups[i] for i in test}  # by recording
    for c, n in enumerate((7, 5, 10, 3)):  # each class's recordings dealt evenly
        per_fold = [len({groups[i] for i in test if classes[i] == c}) for _, test in folds]
        assert sum(per_fold) == n and max(per_fold) - min(per_fold) <= 1
    again = stratified_group_kfold(groups, classes, 3, seed=1)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))  # deterministic
    other = stratified_group_kfold(groups, classes, 3, seed=2)
    assert any(set(a[1]) != set(b[1]) for a, b in zip(folds, other))  # the seed matters
    with pytest.raises(ValueError, match="k >= 2"):
        stratified_group_kfold(groups, classes, 1)


def test_stratified_split_never_starves_a_class():
    from retrain.splits import stratified_split

    records = own_recordings((6, 8, 2, 40))
    classes = ids_of(records)
    split = stratified_split(records, classes, 10, 10)
    where = sides(split)
    for c, n in enumerate((6, 8, 2, 40)):
        mine = [i for i in range(len(records)) if classes[i] == c]
        recs = {side: {records[i].group for i in mine if where[i] == side} for side in ("train", "val", "test")}
        assert recs["train"], f"class {c} has no training recording"
        assert recs["test"], f"class {c} has no test recording"  # at least 1 where it has 2+
        if n >= 3:
            assert recs["val"]
        if n == 40:
            assert len(recs["test"]) == 4 and len(recs["val"]) == 4
        assert sum(len(v) for v in recs.values()) == n  # a recording on one side only
    # Hash-ordered per class: the same split every time, and a new recording moves at most
    # the recording at each quota's edge.
    assert stratified_split(records, classes, 10, 10) == split
    bigger = records + [rec("class3_new_nohash_0.png", label="class3")]
    grown = sides(stratified_split(bigger, ids_of(bigger), 10, 10))
    moved = {records[i].group for i in range(len(records)) if grown[i] != where[i]}
    assert len(moved) <= 2


def test_stratified_split_without_validation_gives_it_to_training():
    from retrain.splits import stratified_split, without_validation

    records = own_recordings((10, 10))
    split = stratified_split(records, ids_of(records), 20, 20)
    back = without_validation(split)
    assert back.test == split.test and not back.validation
    assert sorted(back.train) == sorted(split.train + split.validation)
