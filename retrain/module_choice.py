"""``--tfhub_module auto``: the backbone chosen on the user's own training data.

The candidates are the licence-clean built-in networks and their concatenations
(:data:`CANDIDATES`: EfficientNet-Lite0, aiSFX, SoundNet, and every combination of them).
Every part's bottlenecks are computed once (the cache is per part), so a combination costs
nothing more to compute; then, on the training images only, each candidate is scored by the
logistic head's grouped inner cross-validation (the best strength per candidate, from the
same folds; the Gram matrices of the parts add up, so seven candidates cost little more
than the three parts). The best inner-CV accuracy wins (ties: the lower cross-entropy,
then the cheaper candidate), but only when it beats the presets' combination
(:data:`FALLBACK`, the best on UrbanSound8K) by more than one standard error of an accuracy
on that many images: on a few recordings a class the scores are too noisy to choose by
(with 3 files a class the luckiest candidate cost 2 points on new recordings), while on
ESC-50-sized sets a real difference shows. A backbone chosen on UrbanSound8K does not carry over to other
sounds (on ESC-50 the image network's features lower accuracy), which is why it is chosen
per data set.

Inside ``--cross_validate`` and a small set's k-fold evaluation, the choice is made again in
every fold, on that fold's training images only, so the accuracy reported includes it.

Exports the chosen module could not make are refused before the bottlenecks: candidates
that cannot make the exports asked for are dropped first (with a note), and the run is
refused only when none can.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from retrain import logistic
from soundretrain.backbones.registry import AUTO_MODULE, AUTO_PARTS, Backbone, ConcatBackbone

#: Every licence-clean combination, cheapest first within a size (bottleneck CPU per 4 s clip
#: on this project's machine: efficientnet_lite0 14 ms, soundnet 17 ms, aisfx 66 ms).
CANDIDATES = ("efficientnet_lite0", "soundnet", "aisfx", "soundnet,efficientnet_lite0",
              "aisfx,efficientnet_lite0", "aisfx,soundnet", "aisfx,soundnet,efficientnet_lite0")
#: Without inner CV (a class with one recording), or when no candidate clearly beats it:
#: the presets' combination.
FALLBACK = "aisfx,soundnet,efficientnet_lite0"
#: More training images than this: candidates are scored on a class-stratified sample of
#: whole recordings of about this size (a few seconds of CPU a candidate instead of minutes;
#: the differences between candidates show as well).
MAX_EXAMPLES = 1500


def sample_recordings(groups: Sequence[str], y: np.ndarray, most: int, seed: int = 0) -> np.ndarray:
    """Indices of whole recordings, about ``most`` examples in all, each class keeping its
    share (and at least two recordings where it has them)."""
    y = np.asarray(y, int)
    if len(y) <= most:
        return np.arange(len(y))
    rng = np.random.default_rng([int(seed), 0xA070])
    keep: list[int] = []
    for c in np.unique(y):
        members: dict[str, list[int]] = {}
        for i in np.flatnonzero(y == c):
            members.setdefault(str(groups[i]), []).append(int(i))
        quota = most * len(np.flatnonzero(y == c)) / len(y)
        taken = 0
        names = sorted(members)
        for j, k in enumerate(rng.permutation(len(names))):
            if taken >= quota and j >= 2:
                break
            keep += members[names[k]]
            taken += len(members[names[k]])
    return np.array(sorted(keep))


def standard_error(accuracy: float, n: int) -> float:
    """The binomial standard error of an accuracy on ``n`` images (as autotune's rule)."""
    return float(np.sqrt(max(accuracy * (1 - accuracy), 1.0 / max(n, 1)) / max(n, 1)))


def is_auto(handle: Optional[str]) -> bool:
    return (handle or "").strip() == AUTO_MODULE


def part_names(candidate: str) -> list[str]:
    return [p.strip() for p in candidate.split(",")]


def backbone_of(union: Backbone, candidate: str) -> Backbone:
    """The candidate as a backbone made of ``union``'s own (already loaded) parts."""
    parts = {p.name: p for p in getattr(union, "parts", [union])}
    chosen = [parts[n] for n in part_names(candidate)]
    return chosen[0] if len(chosen) == 1 else ConcatBackbone(chosen)


def feasible_candidates(union: Backbone, check: Optional[Callable[[Backbone], object]],
                        log: Callable[[str], None] = print) -> list[str]:
    """The candidates ``check`` (the run's export checks) accepts; raises the first
    refusal when none is left."""
    if check is None:
        return list(CANDIDATES)
    kept, refused = [], []
    for candidate in CANDIDATES:
        try:
            check(backbone_of(union, candidate))
            kept.append(candidate)
        except Exception as err:  # noqa: BLE001 - the check's own one-line error
            refused.append((candidate, err))
    if not kept:
        raise refused[-1][1]
    if refused:
        log(f"--tfhub_module auto: {', '.join(c for c, _ in refused)} cannot make the exports "
            f"asked for ({refused[0][1]}); choosing among {', '.join(kept)}")
    return kept


def union_of(candidates: Sequence[str]) -> str:
    """The parts any candidate needs, in :data:`AUTO_PARTS` order."""
    needed = {p for c in candidates for p in part_names(c)}
    return ",".join(p for p in AUTO_PARTS if p in needed)


@dataclass
class ModuleChoice:
    """What ``auto`` chose and how every candidate scored: printed, written to TensorBoard
    and to the model's sidecar."""

    chosen: str
    rows: list[dict] = field(default_factory=list)  # module, features, c, accuracy, cross_entropy
    folds: int = 0
    examples: int = 0  # scored on (a sample of the training images when there are many)
    seconds: float = 0.0
    training_examples: int = 0
    # The best-scoring candidate when it beat the presets' combination by no more than one
    # standard error, so the combination was kept.
    not_clearly_better: Optional[str] = None

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "inner_cv_folds": self.folds,
                "inner_cv_examples": self.examples, "training_examples": self.training_examples,
                "not_clearly_better": self.not_clearly_better,
                "seconds": round(self.seconds, 3), "candidates": self.rows}

    def table(self) -> str:
        rows = ["| module | features | C | inner-CV accuracy | inner-CV cross-entropy |",
                "|---|---|---|---|---|"]
        for r in sorted(self.rows, key=lambda r: (-r["accuracy"], r["cross_entropy"])):
            rows.append(f"| {r['module']}{' (chosen)' if r['module'] == self.chosen else ''} | "
                        f"{r['features']} | {r['c']:g} | {r['accuracy'] * 100:.1f}% | "
                        f"{r['cross_entropy']:.4f} |")
        return "\n".join(rows)


def choose_module(features: np.ndarray, y: np.ndarray, groups: Sequence[str], num_classes: int,
                  union: Backbone, candidates: Sequence[str], seed: int = 0,
                  class_weights: str = "none") -> ModuleChoice:
    """Score every candidate by the logistic head's grouped inner CV on ``features`` (the
    union backbone's, training images only) and choose."""
    start = time.perf_counter()
    y = np.asarray(y, int)
    total = len(y)
    sample = sample_recordings(groups, y, MAX_EXAMPLES, seed)
    features, y, groups = features[sample], y[sample], [groups[i] for i in sample]
    blocks, at = {}, 0
    for part in getattr(union, "parts", [union]):
        blocks[part.name] = (at, at + part.feature_size)
        at += part.feature_size
    folds = logistic.inner_folds(groups, y, num_classes, seed)
    if not folds:
        chosen = FALLBACK if FALLBACK in candidates else candidates[-1]
        return ModuleChoice(chosen, [], 0, len(y), time.perf_counter() - start, total)
    grams = {name: logistic.fold_grams(features[:, a:b], folds) for name, (a, b) in blocks.items()}
    rows = []
    for order, candidate in enumerate(candidates):
        names = part_names(candidate)
        summed = [sum(grams[n][f] for n in names) for f in range(len(folds))]
        probs = logistic.cv_probabilities(None, y, num_classes, folds, logistic.C_GRID,
                                          class_weights, summed)
        scores = {c: logistic.scores_of(p, y) for c, p in probs.items()}
        c = logistic.best_c(scores)
        rows.append({"module": candidate, "features": int(sum(blocks[n][1] - blocks[n][0] for n in names)),
                     "c": c, "accuracy": scores[c].accuracy, "cross_entropy": scores[c].cross_entropy,
                     "order": order})
    best = min(rows, key=lambda r: (-r["accuracy"], r["cross_entropy"], r["order"]))
    default = next((r for r in rows if r["module"] == FALLBACK), None)
    kept = None
    if default is not None and best is not default and \
            best["accuracy"] - default["accuracy"] <= standard_error(best["accuracy"], len(y)):
        best, kept = default, best["module"]  # not clearly better: the presets' combination
    for r in rows:
        r.pop("order")
    return ModuleChoice(best["module"], rows, len(folds), len(y), time.perf_counter() - start, total,
                        kept)


def select(prepared, train: Sequence[int], seed: int, class_weights: str = "none",
           log: Callable[[str], None] = print):
    """``prepared`` (bottlenecks of every candidate's parts) narrowed to the candidate that
    the training images ``train`` choose: its backbone and its columns of the features."""
    records = prepared.images.records
    train = list(train)
    choice = choose_module(prepared.features[train], prepared.class_ids[train],
                           [records[i].group for i in train], len(prepared.images.labels),
                           prepared.backbone, prepared.module_candidates, seed, class_weights)
    if choice.folds:
        on = f"the {choice.examples} training images" if choice.examples == choice.training_examples \
            else f"a sample of {choice.examples} of the {choice.training_examples} training images"
        log(f"--tfhub_module auto: {choice.chosen} (grouped {choice.folds}-fold inner CV of the "
            f"logistic head on {on}, {choice.seconds:.1f} s):")
        for line in choice.table().splitlines():
            log("  " + line)
        if choice.not_clearly_better:
            log(f"  ({choice.not_clearly_better} scored higher, by no more than one standard error "
                f"of an accuracy on {choice.examples} images: the presets' {FALLBACK} is kept)")
    else:
        log(f"--tfhub_module auto: {choice.chosen} (too few recordings a class for inner CV: "
            "the presets' combination)")
    backbone = backbone_of(prepared.backbone, choice.chosen)
    # The union's parts and every candidate's follow AUTO_PARTS' order: columns in order.
    columns, at = [], 0
    for part in getattr(prepared.backbone, "parts", [prepared.backbone]):
        if part.name in part_names(choice.chosen):
            columns.append(np.arange(at, at + part.feature_size))
        at += part.feature_size
    columns = np.concatenate(columns)
    narrowed = dataclasses.replace(prepared, backbone=backbone, features=prepared.features[:, columns],
                                   module_candidates=())
    return narrowed, choice
