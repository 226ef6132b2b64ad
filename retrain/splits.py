"""Honest train / validation / test splits: a recording (group) never straddles them.

``hash``: retrain.py's stable rule (SHA-1 of the name with ``_nohash_...`` removed, as a
percentage) computed on the group instead of the file, so every window of a recording
lands on the same side, and adding images never moves old ones.
``folds``: the dataset's folds from the manifest (``--test_folds``,
``--validation_folds``, or a hash slice of the training folds' groups).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional, Sequence

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
                           f"these images have {available or 'none'}")
    unknown = sorted(set(folds) - set(available))
    if unknown:
        raise RetrainError(f"--cross_validation_folds {unknown} not among the manifest's folds "
                           f"{available}")
    return [(f, fold_split(records, [f], (), validation_percentage)) for f in folds]
