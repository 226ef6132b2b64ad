"""retrain under deliberate attempts to break it (issue 9): a diverged run, non-finite and
contradictory flags, clashing names and paths, classes missing from a split, targets that
cannot be written, a full disk, two runs sharing a checkpoint, Ctrl-C, and exports killed
half-way."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from retrain.cli import main
from small_disk import fill, small_tmpfs
from tiny_models import COLOURS, make_colour_image_folders, make_tiny_image_module, write_colour_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_image_module(tmp_path_factory.mktemp("module") / "tiny")


@pytest.fixture
def image_dir(tmp_path):
    return make_colour_image_folders(tmp_path / "images", per_class=20, windows_per_recording=2)


def args_for(tmp_path, tiny, image_dir, *extra, steps=40):
    return ["retrain", f"--image_dir={image_dir}", f"--tfhub_module={tiny}",
            f"--bottleneck_dir={tmp_path / 'bn'}", f"--summaries_dir={tmp_path / 'ts'}",
            f"--output_graph={tmp_path / 'out' / 'graph.pb'}",
            f"--output_labels={tmp_path / 'out' / 'labels.txt'}", "--checkpoint_path=",
            f"--how_many_training_steps={steps}", "--eval_step_interval=10", "--random_seed=7",
            "--noprogress", *extra]


def one_error(capsys, code, args) -> str:
    assert main(args) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("retrain: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- finding 2: a diverged run --------------------------------------------------------


@pytest.mark.parametrize("extra", [["--learning_rate=1e38"], ["--optimizer=adam", "--learning_rate=1e38"]])
def test_a_diverged_run_stops_and_exports_nothing(tmp_path, tiny, image_dir, capsys, extra):
    for k in range(20):  # a third class that looks like the first: the loss cannot reach 0
        write_colour_image(Path(image_dir) / "teal" / f"teal_{k}.png", COLOURS["blue"], seed=5000 + k)
    line = one_error(capsys, 1, args_for(tmp_path, tiny, image_dir, *extra, "--testing_percentage=30"))
    assert "training diverged at step" in line and "nothing was exported" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--learning_rate=nan", "--learning_rate=inf", "--l2=nan", "--dropout=nan",
                                  "--label_smoothing=-inf"])
def test_non_finite_flag_values_are_bad_flags(tmp_path, tiny, image_dir, capsys, flag):
    line = one_error(capsys, 2, args_for(tmp_path, tiny, image_dir, flag))
    assert f"{flag.split('=')[0]} must be a finite number" in line
    assert not (tmp_path / "bn").exists()


def test_negative_intermediate_store_frequency(tmp_path, tiny, image_dir, capsys):
    line = one_error(capsys, 2, args_for(tmp_path, tiny, image_dir, "--intermediate_store_frequency=-5"))
    assert "--intermediate_store_frequency must be >= 0" in line


# --- findings 9 and 12: clashing names and paths --------------------------------------


@pytest.mark.parametrize("name,words", [("Placeholder", "is the name of the graph's input node"),
                                        ("out:0", "is not a graph node name")])
def test_clashing_final_tensor_name_fails_before_any_work(tmp_path, tiny, image_dir, capsys, name, words):
    line = one_error(capsys, 2, args_for(tmp_path, tiny, image_dir, f"--final_tensor_name={name}"))
    assert words in line
    assert not (tmp_path / "bn").exists()


@pytest.mark.parametrize("paths", [
    ("--output_graph=M", "--output_labels=M", "--output_tflite=M"),
    ("--output_graph=g.pb", "--output_labels=g.pb.json"),  # the labels over the graph's sidecar
    ("--saved_model_dir=sm", "--output_labels=sm/labels.txt"),  # deleted by the folder swap
    ("--output_tflite=m.tflite", "--output_audio_tflite=m.tflite"),
])
def test_one_path_for_two_artifacts_is_refused(tmp_path, tiny, image_dir, capsys, paths):
    os.chdir(tmp_path)
    line = one_error(capsys, 2, args_for(tmp_path, tiny, image_dir, *paths))
    assert "same path" in line or "inside --saved_model_dir" in line
    assert not (tmp_path / "bn").exists() and not (tmp_path / "M").exists()


# --- a class missing from a split, a class name that cannot be a label -----------------


def _group_landing_in(part: str, prefix: str) -> str:
    from retrain.splits import which_set

    return next(f"{prefix}{k}" for k in range(10000) if which_set(f"{prefix}{k}", 10, 10) == part)


@pytest.mark.parametrize("part,words", [("testing", "has no training recordings"),
                                        ("training", "has no test recordings")])
def test_a_class_missing_from_the_split_stops_before_training(tmp_path, tiny, image_dir, capsys, part, words):
    group = _group_landing_in(part, "green")
    for w in range(3):  # every image of the class is one recording, on one side of the split
        write_colour_image(Path(image_dir) / "green" / f"{group}_nohash_{w}.png", COLOURS["blue"], seed=w)
    line = one_error(capsys, 1, args_for(tmp_path, tiny, image_dir, "--split=hash"))
    assert f"class 'green' {words}" in line and "--split hash" in line
    assert "1 recording (3 clips: slices of one recording count once)" in line
    assert "use --split stratified" in line  # the flags that would work
    assert not (tmp_path / "bn").exists()  # before the bottlenecks, not after training


def test_a_class_name_with_a_line_break_fails_before_any_work(tmp_path, tiny, image_dir, capsys):
    shutil.move(os.path.join(image_dir, "red"), os.path.join(image_dir, "re\nd"))
    line = one_error(capsys, 1, args_for(tmp_path, tiny, image_dir))
    assert "one non-empty line" in line
    assert not (tmp_path / "bn").exists()


# --- finding 13: read-only targets fail before training ---------------------------------


@pytest.mark.parametrize("flag", ["--output_tflite=m.tflite", "--saved_model_dir=sm", "--summaries_dir=ts"])
def test_a_read_only_target_fails_before_training(tmp_path, tiny, image_dir, capsys, flag):
    name, value = flag.split("=")
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        args = [a for a in args_for(tmp_path, tiny, image_dir) if not a.startswith(name + "=")]
        line = one_error(capsys, 1, args + [f"{name}={ro / value}"])
    assert str(ro) in line and "Read-only file system" in line
    assert not (tmp_path / "bn").exists()


# --- finding 7: a full disk -----------------------------------------------------------


def test_full_bottleneck_dir_is_one_line_naming_the_path(tmp_path, tiny, image_dir, capsys):
    with small_tmpfs(tmp_path / "full", "64k") as full:
        fill(full)
        args = [a for a in args_for(tmp_path, tiny, image_dir) if not a.startswith("--bottleneck_dir")]
        line = one_error(capsys, 1, args + [f"--bottleneck_dir={full / 'bn'}"])
    assert str(full / "bn") in line and "No space left on device" in line


def test_summaries_failing_for_space_still_export_the_model(tmp_path, tiny, image_dir, capsys, monkeypatch):
    """A full disk simulated at the summary writer: one warning, training and export go on."""
    import tensorflow as tf

    from retrain import summaries

    def full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{tmp_path}/ts/run/train/events.out.tfevents.1; No space left on device\n"
                        "\tFailed to flush 3 events")

    monkeypatch.setattr(summaries.RunSummaries, "_histograms", full)
    assert main(args_for(tmp_path, tiny, image_dir)) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "summaries stopped" in line]
    assert len(warnings) == 1 and "events.out.tfevents.1: No space left on device" in warnings[0]
    assert (tmp_path / "out" / "graph.pb").is_file() and (tmp_path / "out" / "labels.txt").is_file()


def test_summaries_on_a_full_disk_still_export_the_model(tmp_path, tiny, image_dir, capsys):
    with small_tmpfs(tmp_path / "full", "64k") as full:
        fill(full)
        args = [a for a in args_for(tmp_path, tiny, image_dir) if not a.startswith("--summaries_dir")]
        assert main(args + [f"--summaries_dir={full / 'ts'}"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err and "summaries stopped" in err
    assert (tmp_path / "out" / "graph.pb").is_file()


def test_checkpoint_on_a_full_disk_is_one_line_and_the_model_is_exported(tmp_path, tiny, image_dir, capsys):
    with small_tmpfs(tmp_path / "full", "64k") as full:
        fill(full)
        args = [a for a in args_for(tmp_path, tiny, image_dir) if not a.startswith("--checkpoint_path")]
        line = one_error(capsys, 1, args + [f"--checkpoint_path={full / 'ck' / 'head'}"])
        assert not (full / "ck" / "head_temp").exists()  # TF's staging folder is cleaned up
    assert str(full / "ck") in line and "No space left on device" in line
    assert (tmp_path / "out" / "graph.pb").is_file()


@pytest.mark.parametrize("flag", ["--saved_model_dir", "--output_tflite"])
def test_export_on_a_full_disk_is_one_line_naming_the_artifact(tmp_path, tiny, image_dir, capsys, flag):
    with small_tmpfs(tmp_path / "full", "256k") as full:
        target = full / ("sm" if flag == "--saved_model_dir" else "m.tflite")
        args = args_for(tmp_path, tiny, image_dir, f"{flag}={target}")
        fill(full)
        line = one_error(capsys, 1, args)
        assert sorted(os.listdir(full)) == ["filler"]  # no half-written artifact, no temp files
    assert f"{target}: No space left on device" in line


# --- finding 8: runs sharing a checkpoint path ------------------------------------------


def test_runs_sharing_a_checkpoint_path_write_it_one_after_another(tmp_path):
    from retrain.core import save_checkpoint
    from retrain.head import ClassificationHead

    heads = [ClassificationHead(64, 3, seed=s) for s in range(4)]
    errors = []

    def write(head):
        for _ in range(6):
            try:
                save_checkpoint(str(tmp_path / "ck" / "head"), head)
            except Exception as err:  # noqa: BLE001 - the race raised TF's NotFoundError
                errors.append(f"{type(err).__name__}: {str(err)[:200]}")

    threads = [threading.Thread(target=write, args=(h,)) for h in heads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(os.listdir(tmp_path / "ck")) == ["head.data-00000-of-00001", "head.index"]


def test_each_run_has_its_own_checkpoint_by_default(tmp_path, tiny, image_dir, capsys):
    args = [a for a in args_for(tmp_path, tiny, image_dir) if not a.startswith("--checkpoint_path")]
    assert main(args) == 0 and main(args) == 0
    out = capsys.readouterr().out
    written = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Wrote checkpoint: ")]
    assert len(set(written)) == 2 and all(str(tmp_path / "ts") in w for w in written)
    assert "/tmp/_retrain_checkpoint" not in out


# --- Ctrl-C ----------------------------------------------------------------------------


def test_ctrl_c_during_export_says_what_it_leaves(tmp_path, tiny, image_dir, capsys, monkeypatch):
    from retrain import core

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "export", interrupted)
    line = one_error(capsys, 130, args_for(tmp_path, tiny, image_dir))
    assert "during the export" in line and "bottlenecks computed so far" not in line


# --- finding 4: an export killed half-way -----------------------------------------------


KILL_AT_STEP = r'''
import os, signal, shutil, sys
from soundretrain import atomic_files

path, kill_at = sys.argv[1], int(sys.argv[2])
calls = [0]

def killing(fn):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 just before this step
        return fn(*args, **kwargs)
    return wrapper

os.replace = killing(os.replace)
os.rename = killing(os.rename)
shutil.rmtree = killing(shutil.rmtree)
if hasattr(atomic_files, "exchange_paths"):
    atomic_files.exchange_paths = killing(atomic_files.exchange_paths)
with atomic_files.replacing_folder(path) as tmp:
    with open(os.path.join(tmp, "saved_model.pb"), "w") as f:
        f.write("new")
'''


def test_a_kill_at_any_step_of_the_saved_model_swap_leaves_a_model(tmp_path):
    from soundretrain import atomic_files

    folder = tmp_path / "saved_model"
    for kill_at in range(1, 20):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / "saved_model.pb").write_text("old")
        child = subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(folder), str(kill_at)], cwd=REPO,
                               env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
        # Old or new, complete; never no model at the path.
        assert (folder / "saved_model.pb").read_text() in ("old", "new"), (kill_at, child.stderr)
        if child.returncode == 0:
            assert (folder / "saved_model.pb").read_text() == "new"
            break
        assert child.returncode == -signal.SIGKILL, child.stderr
        atomic_files.remove_temp_files(str(tmp_path))  # what the next export does
        assert sorted(os.listdir(tmp_path)) == ["saved_model"]
    else:
        pytest.fail("the swap never completed")


def test_an_export_removes_what_killed_exports_left(tmp_path):
    from label_models import LABELS, build_tiny_model

    from soundretrain.export import export_model

    model = build_tiny_model(str(tmp_path / "model"))
    out = tmp_path / "out"
    out.mkdir()
    leftovers = [".g.pb.a1b2c3d4.tmp", ".g.pb.json.0f0f0f0f.tmp", ".m.tflite.12345678.tmp", ".sm.deadbeef.old"]
    for name in leftovers:
        if name.endswith(".old") or name.startswith(".m.tflite"):
            (out / name).mkdir()
            (out / name / "saved_model.pb").write_bytes(b"x" * 1000)
        else:
            (out / name).write_bytes(b"part of a model")
    (out / ".unrelated.a1b2c3d4.tmp").write_text("someone else's")
    export_model(model.backbone, model.head, LABELS, {}, output_graph=str(out / "g.pb"),
                 saved_model_dir=str(out / "sm"), output_tflite=str(out / "m.tflite"))
    assert sorted(os.listdir(out)) == sorted([".unrelated.a1b2c3d4.tmp", "g.pb", "g.pb.json", "m.tflite",
                                              "m.tflite.json", "sm"])
