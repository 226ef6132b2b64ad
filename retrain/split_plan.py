"""Which recordings train, validate and test, and how the model is evaluated, decided
before anything heavy (no TensorFlow here): a per-class table in a fraction of a second,
and every refusal in one line that names the class, counts its recordings and gives flags
that would work.

``--split stratified`` (the default) never starves a class: by recording, per class. A set
whose smallest class would put fewer than :data:`HOLDOUT_MIN_TEST_RECORDINGS` recordings in
a held-out test is evaluated by grouped k-fold cross-validation instead (every recording
tested once, by a head that never saw it), and the exported model then trains on every
recording. ``--split hash`` and ``--split folds`` keep their held-out test (retrain.py's rule,
the dataset's official folds).

A validation slice is kept only when something reads it (--early_stopping, --autotune,
--fine_tune_keep_best) or when asked for by name (--validation_percentage,
--validation_folds); otherwise its recordings train the head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from retrain.errors import RetrainError
from retrain.images import ImageSet, list_images
from retrain.settings import RetrainSettings
from retrain.splits import (Split, fold_split, hash_split, recordings_per_class,
                            stratified_group_kfold, stratified_split, without_validation)

#: A held-out test is used when it would hold at least this many recordings of every
#: class. With fewer, one recording moves that class's test accuracy by 20 points or more
#: and the overall figure by several (one standard error at 80 % on 5 recordings a class of
#: 10 classes is 5.7 points), while grouped k-fold tests every recording (sqrt(k / 1) times
#: more test recordings) for k more head trainings, seconds each on cached bottlenecks. At
#: --testing_percentage 10 the threshold is 50 recordings in the smallest class.
HOLDOUT_MIN_TEST_RECORDINGS = 5
#: k of the automatic k-fold: the smallest class's recordings, at most this many.
MAX_AUTO_K = 5
FOLD_SEED = 0  # the k-fold's assignment: fixed, so the table printed first is the one used
EVALUATIONS = ("auto", "holdout", "kfold")


@dataclass(frozen=True)
class SplitPlan:
    """How one retrain run uses its images."""

    method: str  # "holdout" | "kfold" | "none"
    final: Split  # the exported model trains on final.train; final.test is the held-out test
    folds: tuple[Split, ...]  # method "kfold": the evaluation runs
    reason: str  # one line: which evaluation and why
    validation_note: Optional[str]  # validation given back to training (or kept): why
    recordings: tuple[int, ...]  # per class
    split_name: str

    @property
    def k(self) -> int:
        return len(self.folds)


def needs_validation(settings: RetrainSettings) -> Optional[str]:
    """The flag that reads the validation images, or None when nothing does."""
    if settings.head.early_stopping:
        return "--early_stopping"
    if settings.autotune:
        return "--autotune"
    if settings.fine_tune.enabled and settings.fine_tune.keep_best:
        return "--fine_tune_keep_best"
    return None


def _names(labels: Sequence[str], ids: Sequence[int], limit: int = 3) -> str:
    shown = ", ".join(repr(labels[k]) for k in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _recordings_phrase(n: int, clips: int) -> str:
    if clips == n:
        return f"{n} recording{'s' if n != 1 else ''}"
    return (f"{n} recording{'s' if n != 1 else ''} ({clips} clips: slices of one recording "
            "count once)")


def plan_split(settings: RetrainSettings, images: ImageSet) -> SplitPlan:
    """The plan for ``settings.split``; raises :class:`RetrainError` (one line) when a
    class cannot be trained and evaluated, naming the flags that would work."""
    labels = images.labels
    class_ids = images.class_ids()
    groups = [r.group for r in images.records]
    recordings = recordings_per_class(groups, class_ids, len(labels))
    clips = [class_ids.count(k) for k in range(len(labels))]
    reader = needs_validation(settings)
    keep = reader is not None or settings.keep_validation
    if settings.split in ("hash", "folds"):
        return _held_out_plan(settings, images, recordings, clips, reader, keep)
    if settings.split != "stratified":
        raise RetrainError(f"--split must be one of hash, folds, stratified, not {settings.split!r}")
    validation_pct = settings.validation_percentage if keep else 0.0
    smallest = min(range(len(labels)), key=lambda k: (recordings[k], labels[k]))
    n_min = recordings[smallest]
    note = _validation_note(settings, reader, keep, validation_pct)
    if settings.testing_percentage <= 0 and settings.evaluation != "kfold":
        final = stratified_split(images.records, class_ids, validation_pct, 0)
        return SplitPlan("none", final, (), "no evaluation (--testing_percentage 0): every "
                         "recording trains the model, and nothing measures it", note,
                         tuple(recordings), "stratified")
    lonely = [k for k in range(len(labels)) if recordings[k] < 2]
    if lonely:
        k0 = lonely[0]
        raise RetrainError(
            f"class {labels[k0]!r} has {_recordings_phrase(recordings[k0], clips[k0])}"
            + (f" (so do {_names(labels, lonely[1:])})" if len(lonely) > 1 else "")
            + ": a class needs 2 recordings to be trained on one and tested on another; add "
            "a recording of it, or train without any evaluation with --testing_percentage 0")
    test_at_pct = n_min * settings.testing_percentage / 100.0
    method = settings.evaluation
    if method == "auto":
        method = "holdout" if test_at_pct >= HOLDOUT_MIN_TEST_RECORDINGS else "kfold"
    if method == "holdout":
        final = stratified_split(images.records, class_ids, validation_pct,
                                 settings.testing_percentage)
        test_recs = recordings_per_class([groups[i] for i in final.test],
                                         [class_ids[i] for i in final.test], len(labels))
        why = (f"held-out test: {sum(test_recs)} recordings, at least {min(test_recs)} of every "
               f"class (--testing_percentage {settings.testing_percentage:g}, by recording, per class)")
        if settings.evaluation == "holdout" and test_at_pct < HOLDOUT_MIN_TEST_RECORDINGS:
            why += (f"; asked for with --evaluation holdout, though the smallest class, "
                    f"{labels[smallest]!r}, has only {min(test_recs)} test recording(s): "
                    "its accuracy moves in steps of "
                    f"{100 // max(1, min(test_recs))} points")
        return SplitPlan("holdout", final, (), why, note, tuple(recordings), "stratified")
    k = settings.kfold or min(MAX_AUTO_K, n_min)
    if k < 2:
        raise RetrainError(f"--kfold {k}: k-fold cross-validation needs k >= 2")
    total_recordings = len(set(groups))
    if k > total_recordings:
        raise RetrainError(f"--kfold {k}: there are only {total_recordings} recordings; "
                           f"give --kfold {min(MAX_AUTO_K, n_min)} or less")
    folds = []
    for train, test in stratified_group_kfold(groups, class_ids, k, FOLD_SEED):
        folds.append(_with_validation(images, class_ids, list(train), list(test), validation_pct))
    final = stratified_split(images.records, class_ids, validation_pct, 0)
    if settings.evaluation == "kfold":
        why = f"grouped {k}-fold cross-validation (asked for with --evaluation kfold)"
    else:
        why = (f"grouped {k}-fold cross-validation, since the smallest class, {labels[smallest]!r}, "
               f"has {n_min} recordings: a held-out test (--testing_percentage "
               f"{settings.testing_percentage:g}) would hold {int(round(test_at_pct)) or 1} of them, and "
               f"one needs {HOLDOUT_MIN_TEST_RECORDINGS} a class for a figure that means "
               "something (--evaluation holdout forces one)")
    why += (f"; every recording is tested once by a head that never heard it, then the "
            f"exported model trains on all {total_recordings} recordings")
    few = [c for c in range(len(labels)) if recordings[c] < k]
    if few:
        why += (f" ({_names(labels, few)} {'has' if len(few) == 1 else 'have'} fewer recordings "
                f"than {k}: tested in some folds only)")
    return SplitPlan("kfold", final, tuple(folds), why, note, tuple(recordings), "stratified")


def _with_validation(images: ImageSet, class_ids: Sequence[int], train: list[int],
                     test: list[int], validation_pct: float) -> Split:
    """A k-fold run's split: its validation slice (when one is kept) from its own training
    part, per class, so it never touches the test part."""
    if validation_pct <= 0:
        return Split(tuple(train), (), tuple(test))
    inner = stratified_split([images.records[i] for i in train], [class_ids[i] for i in train],
                             validation_pct, 0)
    return Split(tuple(train[j] for j in inner.train), tuple(train[j] for j in inner.validation),
                 tuple(test))


def _validation_note(settings: RetrainSettings, reader: Optional[str], keep: bool,
                     validation_pct: float) -> Optional[str]:
    if reader is not None:
        return None
    if keep:
        return ("validation slice kept as asked (--validation_percentage/--validation_folds): "
                "only the TensorBoard curve reads it")
    if settings.validation_percentage > 0 or settings.validation_folds:
        return ("no validation slice: nothing reads it (--early_stopping and --autotune are off), "
                "so its recordings train the head; --validation_percentage N keeps one for the "
                "TensorBoard curve")
    return None


def _held_out_plan(settings: RetrainSettings, images: ImageSet, recordings: list[int],
                   clips: list[int], reader: Optional[str], keep: bool) -> SplitPlan:
    """``--split hash`` / ``--split folds``: retrain.py's rule or the manifest's folds, with
    a test set; a class with no training or no test recordings is refused."""
    if settings.evaluation == "kfold":
        raise RetrainError(f"--evaluation kfold goes with --split stratified, not --split "
                           f"{settings.split}" + (" (the official folds: --cross_validate)"
                                                  if settings.split == "folds" else ""))
    if settings.split == "folds":
        split = fold_split(images.records, settings.test_folds, settings.validation_folds,
                           settings.validation_percentage)
        where = f"this split (test folds {list(settings.test_folds)})"
        fix = "choose other --test_folds, or use --split stratified"
    else:
        split = hash_split(images.records, settings.validation_percentage,
                           settings.testing_percentage)
        where = (f"this split (--split hash, --testing_percentage {settings.testing_percentage:g}, "
                 f"--validation_percentage {settings.validation_percentage:g})")
        fix = ("use --split stratified (the default), which gives every class training and test "
               "recordings where it has enough")
    check_classes(split, images, recordings, clips, where, fix)
    note = None
    if not keep and split.validation:
        if settings.split == "folds" and settings.validation_folds:
            pass  # folds named by the user: kept as asked
        else:
            split = without_validation(split)
            note = _validation_note(settings, reader, False, 0)
    if keep and split.validation and reader is None:
        note = _validation_note(settings, reader, True, settings.validation_percentage)
    method = "holdout" if split.test else "none"
    reason = (f"held-out test ({'folds ' + ','.join(map(str, settings.test_folds)) if settings.split == 'folds' else '--split hash'})"
              if split.test else "no test images: nothing measures the model")
    return SplitPlan(method, split, (), reason, note, tuple(recordings), settings.split)


def check_classes(split: Split, images: ImageSet, recordings: Sequence[int], clips: Sequence[int],
                  where: str, fix: str) -> None:
    """A class with no training images, or none in a test set that exists, is refused: the
    head would never learn it, or its accuracy would go unmeasured behind the mean."""
    class_ids = images.class_ids()
    labels = images.labels
    for part, indices in (("training", split.train), ("test", split.test)):
        if part == "test" and not indices:
            continue
        present = {class_ids[i] for i in indices}
        missing = [k for k in range(len(labels)) if k not in present]
        if missing:
            k0 = missing[0]
            raise RetrainError(
                f"class {labels[k0]!r} has no {part} recordings in {where}: it has "
                f"{_recordings_phrase(recordings[k0], clips[k0])}"
                + (f" (so do {_names(labels, missing[1:])})" if len(missing) > 1 else "")
                + f"; {fix}")


def split_table(plan: SplitPlan, images: ImageSet) -> str:
    """Recordings and clips per class in training, validation and test, as printed before
    the bottlenecks. In a k-fold plan, training is what the exported model learns from and
    test is every recording, once each, in the fold that leaves it out."""
    labels = images.labels
    class_ids = images.class_ids()
    groups = [r.group for r in images.records]

    def cell(indices: Sequence[int], k: int) -> str:
        mine = [i for i in indices if class_ids[i] == k]
        if not mine:
            return "-"
        return f"{len({groups[i] for i in mine})} ({len(mine)})"

    tested = [i for f in plan.folds for i in f.test] if plan.method == "kfold" else list(plan.final.test)
    test_head = f"test, {plan.k}-fold" if plan.method == "kfold" else "test"
    rows = [(labels[k], cell(plan.final.train, k), cell(plan.final.validation, k), cell(tested, k))
            for k in range(len(labels))]
    total = ("all", _cell_all(plan.final.train, groups), _cell_all(plan.final.validation, groups),
             _cell_all(tested, groups))
    header = ("class", "train", "validation", test_head)
    width = [max(len(str(r[j])) for r in rows + [header, total]) for j in range(4)]
    width[0] = min(width[0], 40)

    def line(r) -> str:
        name = r[0] if len(r[0]) <= width[0] else r[0][:width[0] - 1] + "…"
        return "  " + "  ".join([name.ljust(width[0])] + [str(c).rjust(w) for c, w in zip(r[1:], width[1:])])

    out = [f"Split ({plan.split_name}): {plan.final.describe()} for the exported model; per class, "
           "recordings (clips: slices of one recording count once and stay on one side):"]
    out.append(line(header))
    out += [line(r) for r in rows]
    out.append(line(total))
    out.append(f"Evaluation: {plan.reason}")
    if plan.validation_note:
        out.append(f"Validation: {plan.validation_note}")
    return "\n".join(out)


def _cell_all(indices: Sequence[int], groups: Sequence[str]) -> str:
    if not indices:
        return "-"
    return f"{len({groups[i] for i in indices})} ({len(indices)})"


def found_line(images: ImageSet) -> str:
    return (f"Found {len(images.records)} images in {len(images.labels)} classes in "
            f"{images.image_dir} ({'manifest.csv' if images.from_manifest else 'class folders'})")


def check_labels(labels: Sequence[str]) -> None:
    """Labels become lines of the labels file: a class name that cannot be one line would
    fail the export after all the training; refuse it before any work."""
    for label in labels:
        if not label.strip() or any(c in label for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            raise RetrainError(f"class {label!r}: a class name must be one non-empty line (it becomes a "
                               "line of the labels file); rename its folder")


def plan_run(settings: RetrainSettings, log: Callable[[str], None] = print,
             images: Optional[ImageSet] = None) -> tuple[ImageSet, SplitPlan]:
    """List the images and plan the split, printing the per-class table: no TensorFlow, so
    the CLI calls it first and a refusal comes in a second, not after TensorFlow's start.
    The table comes from the manifest alone; every image is then checked against it (size
    and SHA-256: half a second for UrbanSound8K's 1,761 images), still before TensorFlow."""
    listed = images
    if images is None:
        listed = list_images(settings.image_dir, verify=False)
        log(found_line(listed))
    check_labels(listed.labels)
    plan = plan_split(settings, listed)
    log(split_table(plan, listed))
    if images is None:
        images = list_images(settings.image_dir)  # the same rows, each image verified
        if images.records != listed.records:  # changed on disk meanwhile: plan what is there
            plan = plan_split(settings, images)
    return images, plan
