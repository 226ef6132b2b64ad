"""The retrain command end to end on a tiny SavedModel and generated images: console
lines, outputs, TensorBoard events, flag files, cross-validation and every bad input."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrain.cli import main
from tiny_models import (COLOURS, make_colour_image_folders, make_tiny_image_module,
                         write_colour_image)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_image_module(tmp_path_factory.mktemp("module") / "tiny")


@pytest.fixture
def image_dir(tmp_path):
    return make_colour_image_folders(tmp_path / "images", per_class=20, windows_per_recording=2)


def base_args(tmp_path, tiny, image_dir, steps=60):
    return ["retrain", f"--image_dir={image_dir}", f"--tfhub_module={tiny}",
            f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / 'ts'}",
            f"--output_graph={tmp_path / 'out' / 'graph.pb'}",
            f"--output_labels={tmp_path / 'out' / 'labels.txt'}",
            f"--checkpoint_path={tmp_path / 'ck' / 'head'}",
            f"--how_many_training_steps={steps}", "--eval_step_interval=20",
            "--random_seed=7", "--noprogress", "--split=hash", "--validation_percentage=10",
            "--head=sgd"]


def test_trains_to_100_percent_and_writes_everything(tmp_path, tiny, image_dir, capsys):
    args = base_args(tmp_path, tiny, image_dir, steps=200) + [
        "--testing_percentage=25", "--validation_percentage=25", "--learning_rate=0.05",
        "--print_misclassified_test_images"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r": Step 0: Train accuracy = \d+\.\d%", out)
    assert re.search(r": Step 0: Cross entropy = \d+\.\d+", out)
    assert re.search(r": Step 199: Validation accuracy = \d+\.\d% \(N=\d+\)", out)
    final = re.search(r"Final test accuracy = (\d+\.\d)% \(N=(\d+)\)", out)
    assert final and final.group(1) == "100.0" and int(final.group(2)) > 0
    assert "=== MISCLASSIFIED TEST IMAGES ===" in out
    assert "Input node: Placeholder" in out and "output node: final_result" in out
    assert (tmp_path / "out" / "labels.txt").read_text() == "blue\nred\n"
    assert (tmp_path / "out" / "graph.pb").stat().st_size > 0
    assert list((tmp_path / "ck").glob("head*"))


def test_same_seed_repeats_the_run(tmp_path, tiny, image_dir, capsys):
    def numbers():
        assert main(base_args(tmp_path, tiny, image_dir) + ["--output_graph="]) == 0
        out = capsys.readouterr().out
        return re.findall(r"(?:accuracy|entropy) = ([\d.]+)", out)
    assert numbers() == numbers()


def test_printed_seed_repeats_a_run_with_augmentation(tmp_path, tiny, image_dir, capsys):
    # "pass --random_seed=N to repeat this run" must hold for the augmented copies too
    # (they were drawn with seed 0 when no seed was given, with N on the repeat).
    args = [a for a in base_args(tmp_path, tiny, image_dir) if not a.startswith("--random_seed")]
    args += ["--output_graph=", "--augmentation_copies=2", "--summaries_dir="]
    assert main(args) == 0
    out = capsys.readouterr().out
    seed = re.search(r"--random_seed=(\d+) to repeat", out).group(1)
    assert main(args + [f"--random_seed={seed}"]) == 0
    again = capsys.readouterr().out
    assert re.search(r"Augmented bottlenecks: \d+ \(0 computed\)", again)  # the very same copies
    pattern = r"(?:accuracy|entropy) = ([\d.]+)"
    assert re.findall(pattern, out) == re.findall(pattern, again)


def read_scalars(run_dir: Path, writer: str) -> dict:
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run_dir / writer), size_guidance={
        event_accumulator.TENSORS: 0, event_accumulator.IMAGES: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        out[tag] = [(e.step, e.tensor_proto) for e in acc.Tensors(tag)]
    return out


def test_tensorboard_run_folder_holds_the_summaries(tmp_path, tiny, image_dir):
    assert main(base_args(tmp_path, tiny, image_dir) + ["--run_tag=mine"]) == 0
    assert main(base_args(tmp_path, tiny, image_dir) + ["--run_tag=mine"]) == 0
    runs = sorted((tmp_path / "ts").iterdir())
    assert len(runs) == 2 and all(r.name.endswith(("-mine", "-mine-2")) for r in runs)
    train, val = read_scalars(runs[0], "train"), read_scalars(runs[0], "validation")
    assert [s for s, _ in train["accuracy"]] == [0, 20, 40, 59]
    assert [s for s, _ in train["cross_entropy"]] == [0, 20, 40, 59]
    assert "learning_rate" in train and "flags" in train
    assert any(t.startswith("weights/") for t in train)
    assert any(t.startswith("biases/") for t in train)
    assert any(t.startswith("activations/") for t in train)
    assert [s for s, _ in val["accuracy"]] == [0, 20, 40, 59]
    # The test set is its own run beside train and validation: its accuracy, the confusion
    # matrix and the per-class table; no one-point per-class charts.
    # test_accuracy has a chart of its own (as "accuracy" its one point sat on the right edge of
    # the train/validation chart, half outside its axis).
    test = read_scalars(runs[0], "test")
    assert set(test) == {"test_accuracy", "test_cross_entropy", "confusion_matrix", "per_class_precision_recall"}
    assert not any(t.startswith("test") for t in val)
    from tensorboard.util import tensor_util
    flags_text = tensor_util.make_ndarray(train["flags"][0][1]).item().decode()
    assert "--random_seed=7" in flags_text
    table = tensor_util.make_ndarray(test["per_class_precision_recall"][0][1]).item().decode()
    assert table.splitlines()[0].startswith("**test accuracy ")
    assert "| class | precision | recall | support |" in table.splitlines()
    from PIL import Image
    image = Image.open(runs[0] / "confusion_matrix.png")
    # drawn at twice the size of TensorBoard's image card (367 x 215 px), so it is not shrunk
    assert image.size[0] <= 2 * 367 and image.size[1] <= 2 * 215
    # Each run has its own checkpoint by default (retrain.py's was shared by every run).
    assert main([a for a in base_args(tmp_path, tiny, image_dir) if not a.startswith("--checkpoint_path")]
                + ["--run_tag=own"]) == 0
    own = next(r for r in (tmp_path / "ts").iterdir() if r.name.endswith("-own"))
    assert (own / "checkpoint" / "head.index").is_file()


def test_confusion_matrix_fits_tensorboards_image_card():
    """Issue 17 item 8: TensorBoard's Time Series tab fits an image into a 367 x 215 px box; up to
    10 classes the matrix is laid out for it (drawn at 2x), more classes get cells of 12 px at least."""
    from PIL import Image

    from retrain.summaries import confusion_matrix, confusion_matrix_png

    rng = np.random.default_rng(0)
    names = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling",
             "gun_shot", "jackhammer", "siren", "street_music"]
    for n in (2, 10):
        y = rng.integers(0, n, 200)
        png = confusion_matrix_png(confusion_matrix(y, y, n), names[:n], "test accuracy 100.0%")
        width, height = Image.open(io.BytesIO(png)).size
        assert width <= 2 * 367 and height <= 2 * 215, (n, width, height)
    y = rng.integers(0, 50, 500)
    width, height = Image.open(io.BytesIO(confusion_matrix_png(confusion_matrix(y, y, 50),
                                                               [f"class {k}" for k in range(50)], "t"))).size
    assert height >= 2 * 50 * 12  # 50 rows of 12 px (at 2x): shrunk in the card, readable at actual size


def test_run_names_name_every_module():
    """`aisfx` stood for aisfx,soundnet,efficientnet_lite0 too (issue 17 item 8)."""
    from types import SimpleNamespace

    from retrain.core import _default_tag

    prepared = SimpleNamespace(backbone=SimpleNamespace(name="aisfx,soundnet,efficientnet_lite0"))
    assert _default_tag(SimpleNamespace(split="folds", test_folds=[2]), prepared) == \
        "aisfx+soundnet+efficientnet_lite0-test2"
    prepared.backbone.name = "aisfx"
    assert _default_tag(SimpleNamespace(split="hash"), prepared) == "aisfx-hash"


def test_flagfile_and_retrain_py_distortion_flags(tmp_path, tiny, image_dir, capsys):
    flagfile = tmp_path / "retrain.cfg"
    flagfile.write_text("--how_many_training_steps=30\n--eval_step_interval=10\n--flip_left_right\n"
                        "--random_brightness=10\n")
    args = base_args(tmp_path, tiny, image_dir)
    args = [a for a in args if not a.startswith(("--how_many", "--eval_step"))]
    assert main(args + [f"--flagfile={flagfile}", "--output_graph="]) == 0
    captured = capsys.readouterr()
    assert ": Step 29: Train accuracy" in captured.out
    assert "--flip_left_right is ignored" in captured.err and "reverses time" in captured.err
    assert "--random_brightness is ignored" in captured.err and "--augmentation_copies" in captured.err


def test_augmentation_copies_and_head_options(tmp_path, tiny, image_dir, capsys):
    args = base_args(tmp_path, tiny, image_dir) + [
        "--augmentation_copies=2", "--hidden_units=8", "--dropout=0.2", "--optimizer=adam",
        "--learning_rate=0.01", "--label_smoothing=0.1", "--l2=0.001", "--balanced_batches",
        "--output_graph="]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Augmented bottlenecks: 2" in out or re.search(r"Augmented bottlenecks: \d+ \(\d+ computed\)", out)
    assert main(args) == 0
    assert re.search(r"Augmented bottlenecks: \d+ \(0 computed\)", capsys.readouterr().out)


def make_manifest_images(root: Path, folds=(1, 2, 3)) -> Path:
    from soundretrain.manifest import ManifestRow, write_manifest

    rows = []
    for fold in folds:
        for label in ("blue", "red"):
            for rec in range(3):
                group = f"{label}{fold}{rec}"
                for w in range(2):
                    image = f"{label}/{group}_{w}.png"
                    write_colour_image(root / image, COLOURS[label], seed=hash((fold, rec, w)) % 1000)
                    rows.append(ManifestRow(image, label, fold, group, f"/audio/{group}.wav",
                                            2.0 * w, 2.0, False))
    write_manifest(root / "manifest.csv", rows)
    return root


def test_fold_split_from_manifest(tmp_path, tiny, capsys):
    images = make_manifest_images(tmp_path / "spec")
    args = base_args(tmp_path, tiny, images) + ["--split=folds", "--test_folds=3",
                                                "--validation_folds=2", "--output_graph="]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Split (folds): 12 training, 12 validation, 12 test images" in out
    assert "Final test accuracy = 100.0% (N=12)" in out


def test_cross_validation_report(tmp_path, tiny, capsys):
    images = make_manifest_images(tmp_path / "spec")
    args = base_args(tmp_path, tiny, images) + ["--cross_validate", "--learning_rate=0.05"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.count("Final test accuracy") == 3
    assert "Bottlenecks: 36 computed" in out  # once for all folds
    assert re.search(r"Cross-validation accuracy = \d+\.\d% ± \d+\.\d% over 3 folds", out)
    cv_dir, = (tmp_path / "ts").iterdir()
    assert cv_dir.name.endswith("-cv")
    report = json.loads((cv_dir / "cross_validation.json").read_text())
    assert [f["test_fold"] for f in report["folds"]] == [1, 2, 3]
    assert all(f["num_test_images"] == 12 for f in report["folds"])
    csv_text = (cv_dir / "cross_validation.csv").read_text().splitlines()
    assert csv_text[0] == "test_fold,accuracy,num_test_images" and csv_text[-2].startswith("mean,")
    assert sorted(p.name for p in cv_dir.iterdir() if p.is_dir()) == ["test1", "test2", "test3"]
    assert "accuracy" in read_scalars(cv_dir / "test2", "validation")
    assert not (tmp_path / "out" / "graph.pb").exists()  # cross-validation exports nothing
    # ... and says so rather than ignoring the export flags silently.
    assert "--cross_validate exports no model, so --output_graph, --output_labels, " \
           "--checkpoint_path are ignored" in err


def test_cross_validation_needs_every_class_in_every_training_split(tmp_path, tiny, capsys):
    from soundretrain.manifest import read_manifest, write_manifest

    images = make_manifest_images(tmp_path / "spec")
    rows = list(read_manifest(images / "manifest.csv"))
    for row in [r for r in rows if r.label == "red"]:  # red only in fold 1
        if row.fold != 1:
            rows.remove(row)
    write_manifest(images / "manifest.csv", rows)
    line = run_bad(tmp_path, tiny, images, capsys, ["--cross_validate", "--output_graph=", "--output_labels=",
                                                     "--checkpoint_path="])
    assert "class 'red' has no training images in the split with test fold 1" in line
    assert not (tmp_path / "bn").exists()


def run_bad(tmp_path, tiny, image_dir, capsys, extra=(), code=1):
    args = base_args(tmp_path, tiny, image_dir) + list(extra)
    assert main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("retrain: error: ")
    return err[0]


def test_bad_empty_class_folder(tmp_path, tiny, image_dir, capsys):
    os.makedirs(os.path.join(image_dir, "green"))
    assert "holds no jpg/jpeg/png images" in run_bad(tmp_path, tiny, image_dir, capsys)


def test_bad_single_class(tmp_path, tiny, image_dir, capsys):
    shutil.rmtree(os.path.join(image_dir, "red"))
    assert "only one class" in run_bad(tmp_path, tiny, image_dir, capsys)


def test_bad_no_images_and_missing_dir(tmp_path, tiny, capsys):
    (tmp_path / "empty").mkdir()
    assert "no images found" in run_bad(tmp_path, tiny, tmp_path / "empty", capsys)
    assert "not found" in run_bad(tmp_path, tiny, tmp_path / "nowhere", capsys)


def test_bad_unreadable_image(tmp_path, tiny, image_dir, capsys):
    Path(image_dir, "red", "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert "cannot read image" in run_bad(tmp_path, tiny, image_dir, capsys)


def test_bad_mismatched_manifest(tmp_path, tiny, capsys):
    images = make_manifest_images(tmp_path / "spec")
    os.unlink(images / "red" / "red10_0.png")
    assert "do not exist" in run_bad(tmp_path, tiny, images, capsys)
    (images / "manifest.csv").write_text("image,label\nx.png,a\n")
    assert "not a spectrogram manifest" in run_bad(tmp_path, tiny, images, capsys)


def test_bad_unknown_module(tmp_path, image_dir, capsys):
    line = run_bad(tmp_path, "no_such_net", image_dir, capsys)
    assert "unknown module 'no_such_net'" in line and "efficientnet_lite0" in line


def test_bad_output_targets_are_refused_before_training(tmp_path, tiny, image_dir, capsys):
    # --saved_model_dir naming a folder that is not a SavedModel: replacing it would
    # delete the user's files, so refuse, before computing anything.
    keep = tmp_path / "my_recordings"
    keep.mkdir()
    (keep / "dog.wav").write_bytes(b"precious")
    line = run_bad(tmp_path, tiny, image_dir, capsys, [f"--saved_model_dir={keep}"])
    assert str(keep) in line and "not a SavedModel folder" in line
    assert (keep / "dog.wav").read_bytes() == b"precious"
    assert not (tmp_path / "bn").exists()  # refused before the bottlenecks
    line = run_bad(tmp_path, tiny, image_dir, capsys, [f"--output_graph={keep}"])
    assert str(keep) in line and "is a folder" in line
    # A checkpoint under a file failed after training, and lost the export with it.
    line = run_bad(tmp_path, tiny, image_dir, capsys,
                   [f"--checkpoint_path={keep / 'dog.wav' / 'ckpt' / 'head'}"])
    assert "dog.wav: is a file" in line
    assert not (tmp_path / "bn").exists()


@pytest.mark.parametrize("extra, words", [
    (["--split=folds"], "needs --test_folds"),
    (["--split=folds", "--test_folds=x"], "whole numbers"),
    (["--optimizer=rmsprop"], "--optimizer"),
    (["--dropout=1.5"], "--dropout"),
    (["--how_many_training_steps=0"], "positive"),
    (["--testing_percentage=150"], "--testing_percentage 150 must be in [0, 100]"),
    (["--testing_percentage=60", "--validation_percentage=60"], "leave some images"),
    (["--split=folds", "--test_folds=1", "--validation_folds=1"], "both --test_folds and"),
    (["--validation_batch_size=0"], "--validation_batch_size must be positive, or -1"),
    (["--test_batch_size=-2"], "--test_batch_size must be positive, or -1"),
    (["--tflite_quantization=float16"], "goes with --output_tflite"),
    (["--random_seed=-1"], "--random_seed"),
    (["stray"], "unexpected argument"),
])
def test_bad_flags_exit_2(tmp_path, tiny, image_dir, capsys, extra, words):
    assert words in run_bad(tmp_path, tiny, image_dir, capsys, extra, code=2)


def test_bad_folds_fail_before_any_bottleneck(tmp_path, tiny, capsys):
    images = make_manifest_images(tmp_path / "spec")
    line = run_bad(tmp_path, tiny, images, capsys, ["--split=folds", "--test_folds=9"])
    assert "--test_folds [9] not among the manifest's folds [1, 2, 3]" in line
    line = run_bad(tmp_path, tiny, images, capsys, ["--cross_validate", "--cross_validation_folds=2,7",
                                                     "--output_graph=", "--output_labels=",
                                                     "--checkpoint_path="])
    assert "--cross_validation_folds [7] not among the manifest's folds [1, 2, 3]" in line
    assert not (tmp_path / "bn").exists()  # failed in a second, not after the bottlenecks


def test_bad_folds_without_fold_numbers(tmp_path, tiny, image_dir, capsys):
    line = run_bad(tmp_path, tiny, image_dir, capsys, ["--split=folds", "--test_folds=1"])
    assert "use --split hash" in line


def test_missing_image_dir_and_help(capsys):
    assert main(["retrain"]) == 2
    assert "--image_dir is required" in capsys.readouterr().err
    assert main(["retrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--tfhub_module" in out and "--cross_validate" in out


def test_waveform_module_end_to_end(tmp_path, capsys):
    from tiny_models import make_tiny_waveform_module, make_tone_spectrogram_dir

    make_tone_spectrogram_dir(tmp_path, recordings=4)
    wave = make_tiny_waveform_module(tmp_path / "wave", sample_rate=8000)
    args = ["retrain", f"--image_dir={tmp_path / 'spec'}", f"--tfhub_module={wave}",
            f"--bottleneck_dir={tmp_path / 'bn'}", "--summaries_dir=", "--checkpoint_path=",
            f"--output_labels={tmp_path / 'labels.txt'}", "--split=folds", "--test_folds=4",
            "--how_many_training_steps=300", "--optimizer=adam", "--learning_rate=0.05",
            "--random_seed=1", "--noprogress"]
    # retrain.py's default --output_graph is skipped with a note for a waveform module ...
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Note: no frozen graph" in out
    assert "Final test accuracy = 100.0% (N=4)" in out
    # ... but asking for one explicitly is one clear error, before any bottleneck is computed
    # (a preset naming --output_graph for such a module failed after all of them).
    fresh = tmp_path / "bn_fresh"
    line = run_bad(tmp_path, wave, tmp_path / "spec", capsys,
                   [f"--output_graph={tmp_path / 'g.pb'}", "--split=folds", "--test_folds=4",
                    f"--bottleneck_dir={fresh}"])
    assert "cannot be frozen" in line
    assert not fresh.exists() or not any(p.is_file() for p in fresh.rglob("*"))
    # Intermediate graphs are frozen graphs too: refused before training, not mid-way.
    line = run_bad(tmp_path, wave, tmp_path / "spec", capsys,
                   ["--output_graph=", "--split=folds", "--test_folds=4",
                    "--intermediate_store_frequency=20"])
    assert "--intermediate_store_frequency" in line and "cannot be frozen" in line
    assert "Step 0" not in capsys.readouterr().out


@pytest.mark.parametrize("name, fold", [("retrain_urbansound8k.cfg", 10), ("retrain_esc50.cfg", 5)])
def test_shipped_flag_files_parse(name, fold):
    from retrain.cli import make_flags, settings_from_flags

    cfg = Path(__file__).resolve().parents[1] / "configs" / name
    fv = make_flags()
    fv(["retrain", f"--flagfile={cfg}", "--image_dir=x"])
    settings = settings_from_flags(fv)
    assert settings.split == "folds" and settings.test_folds == (fold,)
    # Licence-clean backbones only (never birdnet, CC BY-NC-SA).
    assert settings.tfhub_module == "auto" and not settings.problems()


def test_exported_graph_labels_new_images_and_intermediates(tmp_path, tiny, image_dir, capsys):
    import tensorflow as tf

    from retrain.bottlenecks import image_to_input, read_image

    args = base_args(tmp_path, tiny, image_dir, steps=100) + [
        "--learning_rate=0.05", f"--saved_model_dir={tmp_path / 'out' / 'saved'}",
        "--intermediate_store_frequency=40",
        f"--intermediate_output_graphs_dir={tmp_path / 'inter'}"]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "inter").glob("*.pb")) == [
        "intermediate_40.pb", "intermediate_80.pb"]
    assert (tmp_path / "out" / "saved" / "saved_model.pb").is_file()
    # The frozen graph, loaded the way label_image.py loads retrain.py's graphs.
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((tmp_path / "out" / "graph.pb").read_bytes())
    labels = (tmp_path / "out" / "labels.txt").read_text().split()
    new = [write_colour_image(tmp_path / f"new_{c}.png", COLOURS[c], seed=777) for c in labels]
    batch = np.stack([image_to_input(read_image(p), 32, 32) for p in new])
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            probs = sess.run("final_result:0", {"Placeholder:0": batch})
    assert [labels[k] for k in probs.argmax(1)] == labels


@pytest.mark.slow
def test_default_module_efficientnet_lite0_end_to_end(tmp_path, capsys):
    # The real default module (converted once into the user's cache) on 224 px images.
    images = make_colour_image_folders(tmp_path / "images", per_class=8, size=224,
                                       windows_per_recording=2)
    args = ["retrain", f"--image_dir={images}", f"--bottleneck_dir={tmp_path / 'bn'}",
            f"--summaries_dir={tmp_path / 'ts'}", f"--output_graph={tmp_path / 'g.pb'}",
            f"--output_labels={tmp_path / 'labels.txt'}", "--checkpoint_path=",
            "--how_many_training_steps=100", "--testing_percentage=25",
            "--validation_percentage=25", "--random_seed=3", "--noprogress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Module efficientnet_lite0: image input, 1280 features" in out
    # 8 recordings a class are too few for a held-out test: grouped k-fold evaluation instead.
    assert "Cross-validation accuracy = 100.0% (N=16 of 8 recordings" in out
    assert "Input node: Placeholder (float32 [None, 224, 224, 3]" in out


def test_logging_verbosity_warn_prints_only_the_final_accuracy(tmp_path, tiny, image_dir, capsys):
    args = base_args(tmp_path, tiny, image_dir) + ["--logging_verbosity=WARN", "--output_graph="]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "Final test accuracy" in lines[0]


def test_console_error_is_exactly_one_line_on_stderr(tmp_path, image_dir):
    # A real process: TensorFlow's C++ start-up lines must not bury the message.
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "retrain", f"--image_dir={image_dir}", "--tfhub_module=no_such_net",
         f"--bottleneck_dir={tmp_path / 'bn'}", "--summaries_dir=", "--random_seed=1"],
        cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("retrain: error: unknown module 'no_such_net'")


def test_sidecar_carries_spectrogram_settings_and_accuracy(tmp_path, tiny, image_dir, capsys):
    from soundretrain.spectrogram_settings import SpectrogramSettings

    settings = SpectrogramSettings(duration=3.0, n_mels=64, image_size=32)
    settings.save_json(Path(image_dir) / "spectrogram_config.json")
    assert main(base_args(tmp_path, tiny, image_dir, steps=50) + ["--testing_percentage=25"]) == 0
    final = re.search(r"Final test accuracy = (\d+\.\d)%", capsys.readouterr().out)
    side = json.loads((tmp_path / "out" / "graph.pb.json").read_text())
    assert SpectrogramSettings.from_dict(side["spectrogram"]) == settings
    assert round(side["test_accuracy"] * 100, 1) == float(final.group(1))
    assert side["labels"] == ["blue", "red"] and side["final_tensor_name"] == "final_result"
    assert side["input"]["input_mean"] == 0.0 and side["input"]["input_std"] == 255.0
