"""Small sets of your own recordings: a split that never starves a class, grouped k-fold
evaluation where a held-out test would be noise, the per-class table printed before
TensorFlow starts, refusals that count recordings and name flags that work, and the
validation slice given back when nothing reads it."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from retrain.cli import main
from tiny_models import make_tiny_image_module, write_colour_image, COLOURS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_image_module(tmp_path_factory.mktemp("module") / "tiny")


def plain_folders(root: Path, per_class: dict, windows: int = 1) -> str:
    """Class folders of plain-named images (``red_3.png``: each its own recording), or
    ``windows`` slices per recording named the retrain.py way."""
    for c, (label, n) in enumerate(per_class.items()):
        for k in range(n):
            for w in range(windows):
                name = f"{label}_{k}.png" if windows == 1 else f"{label}_{k}_nohash_{w}.png"
                write_colour_image(root / label / name, COLOURS[label], seed=100 * c + 10 * k + w)
    return str(root)


def args_for(tmp_path, tiny, image_dir, *extra):
    return ["retrain", f"--image_dir={image_dir}", f"--tfhub_module={tiny}",
            f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / 'ts'}",
            f"--output_graph={tmp_path / 'out' / 'graph.pb'}",
            f"--output_labels={tmp_path / 'out' / 'labels.txt'}",
            "--how_many_training_steps=60", "--eval_step_interval=20", "--learning_rate=0.05",
            "--random_seed=3", "--noprogress", *extra]


def run_until_tensorflow(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """The retrain CLI in a fresh process, stopped where it would import TensorFlow:
    what it printed until then, and whether anything had imported TensorFlow already."""
    code = textwrap.dedent(f"""
        import sys
        import retrain.cli as cli
        def stop():
            print("== TENSORFLOW WOULD START HERE ==", flush=True)
            print("tensorflow imported before:", "tensorflow" in sys.modules, flush=True)
            sys.exit(0)
        cli.import_tensorflow_quietly = stop
        sys.exit(cli.main({args!r}))
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_per_class_table_comes_before_tensorflow(tmp_path, tiny):
    images = plain_folders(tmp_path / "img", {"red": 6, "blue": 9, "green": 4})
    done = run_until_tensorflow(args_for(tmp_path, tiny, images), tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    before, marker, after = out.partition("== TENSORFLOW WOULD START HERE ==")
    assert marker and "tensorflow imported before: False" in after
    rows = {line.split()[0]: line.split()[1:] for line in before.splitlines()
            if line.startswith("  ") and line.split()[0] in ("red", "blue", "green", "all")}
    # 4 recordings in the smallest class: a held-out test would hold one, so k-fold, k = 4.
    assert rows["green"] == ["4", "(4)", "-", "4", "(4)"]
    assert rows["all"] == ["19", "(19)", "-", "19", "(19)"]
    assert "test, 4-fold" in before
    assert re.search(r"Evaluation: grouped 4-fold cross-validation, since the smallest class, "
                     r"'green', has 4 recordings", before)
    assert "exported model trains on all 19 recordings" in before


@pytest.mark.parametrize("flags, words", [
    ([], ["class 'red' has 1 recording (15 clips: slices of one recording count once)",
          "--testing_percentage 0"]),
    (["--split=hash"], ["class 'red' has no", "recordings in this split (--split hash",
                        "1 recording (15 clips: slices of one recording count once)",
                        "use --split stratified"]),
])
def test_a_class_of_one_recording_is_refused_before_tensorflow(tmp_path, tiny, flags, words):
    images = plain_folders(tmp_path / "img", {"red": 1}, windows=15)
    plain_folders(Path(images), {"blue": 5})
    done = run_until_tensorflow(args_for(tmp_path, tiny, images, *flags), tmp_path)
    assert done.returncode == 1
    assert "TENSORFLOW WOULD START" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retrain: error: ")
    for w in words:
        assert w in lines[0], lines[0]


def test_audio_folders_as_image_dir_say_run_spectrograms_first(tmp_path, tiny):
    for label in ("dog", "cat"):
        (tmp_path / "sounds" / label).mkdir(parents=True)
        (tmp_path / "sounds" / label / f"{label}_1.wav").write_bytes(b"RIFF")
    done = run_until_tensorflow(args_for(tmp_path, tiny, tmp_path / "sounds"), tmp_path)
    assert done.returncode == 1 and "TENSORFLOW WOULD START" not in done.stdout
    line = done.stderr.strip()
    assert "holds audio" in line and "run spectrograms first" in line
    assert "train --audio_dir" in line and "\n" not in line


def test_a_small_set_is_evaluated_by_kfold_then_trained_on_everything(tmp_path, tiny, capsys):
    images = plain_folders(tmp_path / "img", {"red": 6, "blue": 6, "green": 6})
    assert main(args_for(tmp_path, tiny, images)) == 0
    out = capsys.readouterr().out
    assert "Evaluation: grouped 5-fold cross-validation" in out
    assert len(re.findall(r"Fold \d/5: accuracy = [\d.]+% \(N=\d+", out)) == 5
    cv = re.search(r"Cross-validation accuracy = ([\d.]+)% \(N=18 of 18 recordings, grouped 5-fold", out)
    assert cv and float(cv.group(1)) == 100.0  # colours: separable by a tiny network
    assert "Training the exported model on every recording (18 training, 0 validation, 0 test" in out
    assert "Validation accuracy" not in out  # nothing reads a validation slice: none taken
    sidecar = json.loads((tmp_path / "out" / "graph.pb.json").read_text())
    assert sidecar["evaluation"]["method"] == "kfold" and sidecar["evaluation"]["k"] == 5
    assert sidecar["evaluation"]["count"] == 18 and sidecar["test_accuracy"] == 1.0
    # TensorBoard's test run holds the out-of-fold confusion matrix.
    run = next((tmp_path / "ts").iterdir())
    assert (run / "test").is_dir() and (run / "confusion_matrix.png").is_file()


def test_a_larger_set_keeps_a_held_out_test_of_every_class(tmp_path, tiny, capsys):
    images = plain_folders(tmp_path / "img", {"red": 25, "blue": 30})
    assert main(args_for(tmp_path, tiny, images, "--testing_percentage=20", "--output_graph=")) == 0
    out = capsys.readouterr().out
    assert "Evaluation: held-out test: 11 recordings, at least 5 of every class" in out
    assert re.search(r"Final test accuracy = [\d.]+% \(N=11\)", out)
    assert "Cross-validation accuracy" not in out


def test_kfold_and_holdout_on_request(tmp_path, tiny, capsys):
    images = plain_folders(tmp_path / "img", {"red": 4, "blue": 4})
    assert main(args_for(tmp_path, tiny, images, "--evaluation=holdout", "--output_graph=")) == 0
    out = capsys.readouterr().out
    assert "asked for with --evaluation holdout" in out and "Final test accuracy" in out
    assert main(args_for(tmp_path, tiny, images, "--kfold=2", "--output_graph=")) == 0
    assert len(re.findall(r"Fold \d/2", capsys.readouterr().out)) == 2
    assert main(args_for(tmp_path, tiny, images, "--kfold=9", "--output_graph=",
                         "--evaluation=kfold")) == 1
    assert "--kfold 9: there are only 8 recordings" in capsys.readouterr().err


def test_one_recording_a_class_trains_without_evaluation_when_asked(tmp_path, tiny, capsys):
    images = plain_folders(tmp_path / "img", {"red": 1, "blue": 1}, windows=3)
    assert main(args_for(tmp_path, tiny, images, "--testing_percentage=0")) == 0
    out = capsys.readouterr().out
    assert "Evaluation: no evaluation (--testing_percentage 0)" in out
    assert (tmp_path / "out" / "labels.txt").read_text() == "blue\nred\n"


def test_validation_is_kept_only_when_something_reads_it(tmp_path, tiny, capsys):
    images = plain_folders(tmp_path / "img", {"red": 60, "blue": 60})
    base = args_for(tmp_path, tiny, images, "--output_graph=")
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "Validation: no validation slice: nothing reads it" in out
    assert re.search(r"Split \(stratified\): 108 training, 0 validation, 12 test images", out)
    assert main(base + ["--early_stopping"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Split \(stratified\): 96 training, 12 validation, 12 test images", out)
    assert re.search(r"Validation accuracy = [\d.]+% \(N=12\)", out)
    assert main(base + ["--validation_percentage=10"]) == 0  # asked for by name: kept
    out = capsys.readouterr().out
    assert "validation slice kept as asked" in out and "Validation accuracy" in out


def test_kfold_runs_validate_on_their_own_training_part_when_something_reads_it():
    from retrain.images import ImageRecord, ImageSet
    from retrain.settings import HeadSettings, RetrainSettings
    from retrain.split_plan import plan_split

    records = tuple(ImageRecord(f"/x/{c}/{c}{k}_nohash_{w}.png", f"{c}/{c}{k}_nohash_{w}.png", c, f"{c}{k}")
                    for c in ("a", "b") for k in range(12) for w in range(2))
    images = ImageSet("/x", records, ("a", "b"), False)
    plan = plan_split(RetrainSettings(image_dir="/x", head=HeadSettings(early_stopping=True)), images)
    assert plan.method == "kfold" and plan.k == 5 and plan.validation_note is None
    for fold in plan.folds:
        groups = {name: {records[i].group for i in part}
                  for name, part in (("train", fold.train), ("val", fold.validation), ("test", fold.test))}
        assert groups["val"] and not groups["val"] & groups["test"] and not groups["val"] & groups["train"]
    assert plan.final.validation and not plan.final.test  # the exported model's early stopping
    plain = plan_split(RetrainSettings(image_dir="/x"), images)  # nothing reads validation
    assert not any(f.validation for f in plain.folds) and not plain.final.validation


def test_cross_validation_gives_the_validation_slice_back(tmp_path, tiny, capsys):
    from test_retrain_cli import make_manifest_images

    images = make_manifest_images(tmp_path / "spec")
    args = [a for a in args_for(tmp_path, tiny, images, "--cross_validate") if not a.startswith("--output")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "so its recordings train each fold's head" in out
    assert "Validation accuracy" not in out and out.count("Final test accuracy") == 3
    assert main(args + ["--validation_percentage=40"]) == 0  # asked for by name: kept
    out = capsys.readouterr().out
    assert "train each fold's head" not in out and "Validation accuracy" in out
