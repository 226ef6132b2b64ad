"""Honest train / validation / test splits: a recording (group) never straddles them.

``hash``: retrain.py's stable rule (SHA-1 of the name with ``_nohash_...`` removed, as a
percentage) computed on the group instead of the file, so every window of a recording
lands on the same side, and adding images never moves old ones.
``folds``: the dataset's folds from the manifest (``--test_folds``,
``--validation_folds``, or a hash slice of the training folds' groups).
``stratified`` (:func:`stratified_split`): the hash order taken per class, with quotas, so
every class keeps training recordings and gets test (and validation) recordings where it
has enough. :func:`stratified_group_kfold`: grouped, class-stratified k-fold of indices, for
sets too small for a held-out test (and for inner cross-validation).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from retrain.errors import RetrainError
from retrain.images import ImageRecord

MAX_NUM_IMAGES_PER_CLASS = 2 ** 27 - 1  # retrain.py's constant: the hash's resolution
_NOHASH = re.compile(r"_nohash_.*$")


@dataclass(frozen=True)
class Split:
    """Indices into the record list."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]

    def describe(self) -> str:
        return (f"{len(self.train)} training, {len(self.validation)} validation, "
                f"{len(self.test)} test images")


def hash_percentage(group: str) -> float:
    """retrain.py's ``percentage_hash`` of a name, in [0, 100]."""
    name = _NOHASH.sub("", group)
    hashed = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16)
    return (hashed % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)


def which_set(group: str, validation_percentage: float, testing_percentage: float) -> str:
    """'validation', 'testing' or 'training' for a group, exactly as retrain.py decides
    it for a file name."""
    p = hash_percentage(group)
    if p < validation_percentage:
        return "validation"
    if p < testing_percentage + validation_percentage:
        return "testing"
    return "training"


def _check_percentages(validation_percentage: float, testing_percentage: float) -> None:
    if not 0 <= validation_percentage <= 100 or not 0 <= testing_percentage <= 100 \
            or validation_percentage + testing_percentage >= 100:
        raise RetrainError(f"--validation_percentage {validation_percentage:g} and "
                           f"--testing_percentage {testing_percentage:g} must be in [0, 100] "
                           "and leave some images for training")


def hash_split(records: Sequence[ImageRecord], validation_percentage: float = 10,
               testing_percentage: float = 10) -> Split:
    """retrain.py's stable split, decided per group."""
    _check_percentages(validation_percentage, testing_percentage)
    parts: dict[str, list[int]] = {"training": [], "validation": [], "testing": []}
    for i, r in enumerate(records):
        parts[which_set(r.group, validation_percentage, testing_percentage)].append(i)
    return Split(tuple(parts["training"]), tuple(parts["validation"]), tuple(parts["testing"]))


def fold_split(records: Sequence[ImageRecord], test_folds: Sequence[int],
               validation_folds: Sequence[int] = (), validation_percentage: float = 10) -> Split:
    """Split by the manifest's folds. Without ``validation_folds``, validation is a
    stable, group-aware ``validation_percentage`` slice of the training folds."""
    folds = sorted({r.fold for r in records if r.fold is not None})
    if not folds:
        raise RetrainError("--split folds needs fold numbers in the manifest, and these images "
                           "have none; use --split hash")
    unfolded = sum(1 for r in records if r.fold is None)
    if unfolded:
        raise RetrainError(f"{unfolded} image(s) in the manifest have no fold; "
                           "use --split hash or fix the manifest")
    test_folds, validation_folds = set(test_folds), set(validation_folds)
    for name, chosen in (("--test_folds", test_folds), ("--validation_folds", validation_folds)):
        unknown = sorted(chosen - set(folds))
        if unknown:
            raise RetrainError(f"{name} {unknown} not among the manifest's folds {folds}")
    if not test_folds:
        raise RetrainError(f"--split folds needs --test_folds (the manifest has folds {folds})")
    if test_folds & validation_folds:
        raise RetrainError(f"folds {sorted(test_folds & validation_folds)} are given as both "
                           "test and validation folds")
    train_folds = set(folds) - test_folds - validation_folds
    if not train_folds:
        raise RetrainError(f"no fold left for training: the manifest has folds {folds}, "
                           f"test {sorted(test_folds)}, validation {sorted(validation_folds)}")
    _check_percentages(validation_percentage, 0)
    train, validation, test = [], [], []
    for i, r in enumerate(records):
        if r.fold in test_folds:
            test.append(i)
        elif r.fold in validation_folds:
            validation.append(i)
        elif not validation_folds and hash_percentage(r.group) < validation_percentage:
            validation.append(i)
        else:
            train.append(i)
    _check_groups(records, (train, validation, test))
    return Split(tuple(train), tuple(validation), tuple(test))


def missing_classes(split: Split, class_ids: Sequence[int], labels: Sequence[str],
                    where: str) -> None:
    """retrain.py stopped when a class had no training or no testing images; so does this,
    in one line naming the class and the split (it trained anyway, reported 0 % for the
    class and exported a model that had never seen it)."""
    for part, indices in (("training", split.train), ("test", split.test)):
        if part == "test" and not indices:
            continue  # no test set at all (--testing_percentage 0): nothing to measure
        present = {class_ids[i] for i in indices}
        missing = [labels[k] for k in range(len(labels)) if k not in present]
        if missing:
            names = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise RetrainError(f"class {names} has no {part} images in {where}; add recordings of it "
                               "or choose other percentages/folds")


def _check_groups(records: Sequence[ImageRecord], parts: Sequence[Sequence[int]]) -> None:
    """A group in two folds of the manifest would straddle the split: refuse it."""
    owner: dict[str, int] = {}
    for k, part in enumerate(parts):
        for i in part:
            g = records[i].group
            if owner.setdefault(g, k) != k:
                raise RetrainError(f"recording {g!r} appears in more than one fold of the "
                                   "manifest, so it would straddle the split; fix its folds")


def cross_validation_splits(records: Sequence[ImageRecord], validation_percentage: float = 10,
                            folds: Optional[Sequence[int]] = None) -> list[tuple[int, Split]]:
    """The official protocol: each fold in turn is the test set; validation is a
    group-aware slice of the remaining folds."""
    available = sorted({r.fold for r in records if r.fold is not None})
    folds = sorted(set(folds)) if folds else available
    if len(available) < 2:
        raise RetrainError("--cross_validate needs at least two folds in the manifest, "
                           f"these images have {available or 'none'}; without folds, retrain "
                           "evaluates small sets by grouped k-fold by itself (--evaluation kfold)")
    unknown = sorted(set(folds) - set(available))
    if unknown:
        raise RetrainError(f"--cross_validation_folds {unknown} not among the manifest's folds "
                           f"{available}")
    return [(f, fold_split(records, [f], (), validation_percentage)) for f in folds]


# ------------------------------------------------------------------ stratified, by recording

def group_classes(groups: Sequence[str], class_ids: Sequence[int]) -> dict[str, int]:
    """Each group's class: the class of most of its images (ties: the lowest class id).
    A group is one recording; a recording whose slices carry two labels is dealt as its
    majority class, and still never straddles a split."""
    counts: dict[str, dict[int, int]] = {}
    for g, c in zip(groups, class_ids):
        per = counts.setdefault(g, {})
        per[int(c)] = per.get(int(c), 0) + 1
    return {g: min(per, key=lambda c: (-per[c], c)) for g, per in counts.items()}


def recordings_per_class(groups: Sequence[str], class_ids: Sequence[int],
                         num_classes: int) -> list[int]:
    """How many recordings (distinct groups) hold images of each class: the slices of one
    recording count once."""
    seen: list[set] = [set() for _ in range(num_classes)]
    for g, c in zip(groups, class_ids):
        seen[int(c)].add(g)
    return [len(s) for s in seen]


def _seeded_key(group: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{group}".encode("utf-8")).hexdigest()


def stratified_group_kfold(groups: Sequence[str], class_ids: Sequence[int], k: int,
                           seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train indices, test indices) pairs over the images: every group (recording)
    is in exactly one test part, and each class's groups are dealt evenly over the parts
    (their numbers differ by at most one; larger groups first, each to the part with the
    fewest images of that class's peers, so image counts balance too). Deterministic for a
    ``seed``. A class with fewer than ``k`` groups is tested in some parts only; a class with
    one group has no training images in the part that tests it (callers check counts)."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, not {k}")
    groups = [str(g) for g in groups]
    class_ids = np.asarray(class_ids, int)
    if len(groups) != len(class_ids):
        raise ValueError("groups and class_ids must have the same length")
    owner = group_classes(groups, class_ids)
    size: dict[str, int] = {}
    for g in groups:
        size[g] = size.get(g, 0) + 1
    fold_of: dict[str, int] = {}
    images_in = [0] * k  # images per part, over all classes: the tie-breaker
    for c in sorted(set(owner.values())):
        mine = sorted((g for g in owner if owner[g] == c),
                      key=lambda g: (-size[g], _seeded_key(g, seed)))
        groups_in = [0] * k
        for g in mine:
            f = min(range(k), key=lambda f: (groups_in[f], images_in[f], f))
            fold_of[g] = f
            groups_in[f] += 1
            images_in[f] += size[g]
    # Seeded relabelling of the parts, so the part order says nothing about the data.
    order = sorted(range(k), key=lambda f: _seeded_key(str(f), seed))
    fold = np.asarray([order[fold_of[g]] for g in groups], int)
    everything = np.arange(len(groups))
    return [(everything[fold != f], everything[fold == f]) for f in range(k)]


def _quota(n: int, percentage: float) -> int:
    """Recordings of a class with ``n`` recordings for a slice of ``percentage`` %: at
    least one when asked for at all."""
    return 0 if percentage <= 0 or n <= 0 else max(1, int(round(n * percentage / 100.0)))


def stratified_split(records: Sequence[ImageRecord], class_ids: Sequence[int],
                     validation_percentage: float = 10, testing_percentage: float = 10) -> Split:
    """retrain.py's hash order, taken per class with quotas: each class's recordings sorted
    by :func:`hash_percentage`, the first ``validation_percentage`` % of them (at least one)
    validate, the next ``testing_percentage`` % (at least one) test, the rest train. A class
    always keeps one training recording: it gives up validation first, then test. Stable as
    retrain.py's rule is: a new recording moves at most the one at each quota's edge."""
    _check_percentages(validation_percentage, testing_percentage)
    groups = [r.group for r in records]
    owner = group_classes(groups, class_ids)
    side: dict[str, str] = {}
    for c in sorted(set(owner.values())):
        mine = sorted((g for g in owner if owner[g] == c), key=lambda g: (hash_percentage(g), g))
        n = len(mine)
        n_test, n_val = _quota(n, testing_percentage), _quota(n, validation_percentage)
        while n - n_test - n_val < 1 and n_val:
            n_val -= 1
        while n - n_test - n_val < 1 and n_test:
            n_test -= 1
        for i, g in enumerate(mine):
            side[g] = "validation" if i < n_val else "testing" if i < n_val + n_test else "training"
    parts: dict[str, list[int]] = {"training": [], "validation": [], "testing": []}
    for i, g in enumerate(groups):
        parts[side[g]].append(i)
    return Split(tuple(parts["training"]), tuple(parts["validation"]), tuple(parts["testing"]))


def without_validation(split: Split) -> Split:
    """The validation images given back to training (nothing reads them); test unchanged."""
    return Split(tuple(sorted(split.train + split.validation)), (), split.test)
