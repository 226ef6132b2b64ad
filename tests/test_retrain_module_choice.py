"""--tfhub_module auto (retrain.module_choice): the candidates, their inner-CV scores, the
choice, and the export checks applied to every candidate before the bottlenecks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from retrain import module_choice
from retrain.images import ImageRecord, ImageSet
from soundretrain.backbones.registry import AUTO_PARTS, ConcatBackbone, registry_names


class Part:
    """A stand-in for a loaded network: a name, a size and an input kind."""

    def __init__(self, name: str, size: int, kind: str = "image") -> None:
        self.name, self.feature_size = name, size
        self.input_spec = type("Spec", (), {"kind": kind, "sample_rate": 16000, "height": 8, "width": 8})()


def union(sizes=(6, 5, 7)):
    return ConcatBackbone([Part(n, s) for n, s in zip(AUTO_PARTS, sizes)])


def data(informative: str, n_per_class=8, classes=3, seed=0, sizes=(6, 5, 7)):
    """Features of the union where only ``informative``'s columns carry the class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    blocks = []
    for name, size in zip(AUTO_PARTS, sizes):
        x = rng.standard_normal((len(y), size))
        if name == informative:
            x[:, :classes] += 3.0 * np.eye(classes)[y]
        blocks.append(x)
    return np.concatenate(blocks, axis=1).astype(np.float32), y


def test_auto_is_offered_and_loads_every_part():
    assert "auto" in registry_names()
    assert module_choice.union_of(module_choice.CANDIDATES) == ",".join(AUTO_PARTS)
    assert module_choice.union_of(["soundnet,efficientnet_lite0", "soundnet"]) == "soundnet,efficientnet_lite0"
    assert len(module_choice.CANDIDATES) == 7 and module_choice.is_auto(" auto")


@pytest.mark.parametrize("informative", ["soundnet", "efficientnet_lite0"])
def test_the_candidate_whose_features_carry_the_classes_is_chosen(informative):
    x, y = data(informative)
    choice = module_choice.choose_module(x, y, [str(i) for i in range(len(y))], 3, union(),
                                         module_choice.CANDIDATES)
    assert choice.folds == 5 and choice.examples == len(y)
    assert {r["module"] for r in choice.rows} == set(module_choice.CANDIDATES)
    assert informative in choice.chosen.split(",")
    best = max(r["accuracy"] for r in choice.rows)
    chosen = next(r for r in choice.rows if r["module"] == choice.chosen)
    # The best, or the presets' combination when the best is not clearly (one standard
    # error on 24 images: about 10 points) better.
    assert chosen["accuracy"] == best or (choice.chosen == module_choice.FALLBACK
                                          and choice.not_clearly_better is not None)
    # The table and the sidecar's record name every candidate and the choice.
    assert "(chosen)" in choice.table() and choice.to_dict()["chosen"] == choice.chosen
    assert [r["features"] for r in choice.rows if r["module"] == "aisfx,soundnet,efficientnet_lite0"] == [18]


def test_select_narrows_the_backbone_and_the_features_to_the_choice():
    from retrain.core import Prepared

    x, y = data("aisfx")
    records = tuple(ImageRecord(f"/x/{i}.png", f"{c}/{i}.png", str(c), f"g{i}") for i, c in enumerate(y))
    images = ImageSet("/x", records, ("0", "1", "2"), False)
    prepared = Prepared(images, union(), None, x, y.astype(np.int32), module_choice.CANDIDATES)
    lines = []
    narrowed, choice = module_choice.select(prepared, range(len(y)), 0, log=lines.append)
    parts = choice.chosen.split(",")
    assert narrowed.backbone.name == choice.chosen and narrowed.module_candidates == ()
    columns = {"aisfx": x[:, :6], "soundnet": x[:, 6:11], "efficientnet_lite0": x[:, 11:]}
    np.testing.assert_array_equal(narrowed.features, np.concatenate([columns[p] for p in parts], axis=1))
    assert lines[0].startswith(f"--tfhub_module auto: {choice.chosen} (grouped 5-fold inner CV")
    assert sum("(chosen)" in line for line in lines) == 1


def test_without_inner_cv_the_presets_combination_is_kept():
    x, y = data("aisfx", n_per_class=1)  # one recording a class
    choice = module_choice.choose_module(x, y, ["a", "b", "c"], 3, union(), module_choice.CANDIDATES)
    assert choice.chosen == module_choice.FALLBACK and choice.folds == 0


def test_candidates_that_cannot_make_the_exports_are_dropped_before_the_bottlenecks():
    def no_waveforms(backbone):
        if "soundnet" in backbone.name:
            raise ValueError("soundnet cannot be frozen")

    lines = []
    kept = module_choice.feasible_candidates(union(), no_waveforms, lines.append)
    assert kept == [c for c in module_choice.CANDIDATES if "soundnet" not in c]
    assert "cannot make the exports asked for (soundnet cannot be frozen)" in lines[0]

    def nothing(backbone):
        raise ValueError("no export possible")

    with pytest.raises(ValueError, match="no export possible"):
        module_choice.feasible_candidates(union(), nothing, lines.append)
    assert module_choice.feasible_candidates(union(), None) == list(module_choice.CANDIDATES)


def test_many_training_images_are_scored_on_a_sample_of_whole_recordings():
    y = np.repeat([0, 0, 0, 1], 500)  # class 1 a quarter
    groups = [f"r{i // 4}" for i in range(len(y))]  # four clips a recording
    sample = module_choice.sample_recordings(groups, y, 400, seed=3)
    assert 380 <= len(sample) <= 420
    assert 80 <= np.sum(y[sample] == 1) <= 120  # the class keeps its share
    picked = {groups[i] for i in sample}
    assert all(sum(groups[i] == g for i in sample) == 4 for g in list(picked)[:20])  # whole recordings
    assert np.array_equal(sample, module_choice.sample_recordings(groups, y, 400, seed=3))
    assert len(module_choice.sample_recordings(groups[:100], y[:100], 400)) == 100


def test_a_candidate_must_clearly_beat_the_presets_combination():
    # soundnet alone carries the classes; the other parts are wide noise that drowns them
    # in the concatenation. With many examples the difference is clear: soundnet is chosen.
    sizes = (60, 5, 60)
    x, y = data("soundnet", n_per_class=40, sizes=sizes, seed=1)
    groups = [str(i) for i in range(len(y))]
    choice = module_choice.choose_module(x, y, groups, 3, union(sizes), module_choice.CANDIDATES)
    scores = {r["module"]: r["accuracy"] for r in choice.rows}
    margin = module_choice.standard_error(max(scores.values()), len(y))
    assert scores[choice.chosen] - scores[module_choice.FALLBACK] > margin
    assert "soundnet" in choice.chosen and choice.not_clearly_better is None
    # Whatever the data, the rule: the best candidate only when it is clearly better.
    for n_per_class, seed in ((3, 1), (3, 2), (6, 3)):
        x, y = data("soundnet", n_per_class=n_per_class, sizes=(6, 5, 7), seed=seed)
        choice = module_choice.choose_module(x, y, [str(i) for i in range(len(y))], 3, union(),
                                             module_choice.CANDIDATES)
        scores = {r["module"]: r["accuracy"] for r in choice.rows}
        best = max(scores, key=lambda m: scores[m])
        if scores[best] - scores[module_choice.FALLBACK] <= module_choice.standard_error(scores[best], len(y)):
            assert choice.chosen == module_choice.FALLBACK
        else:
            assert scores[choice.chosen] == scores[best]
