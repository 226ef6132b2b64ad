"""One export, one set (issue 19, item 12): artifacts that share a folder are swapped in
whole with a manifest of their digests, a killed export leaves the old set or the new one,
and label_image refuses a folder that mixes two exports."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from soundretrain import atomic_files, model_folder
from soundretrain.model_folder import MANIFEST_FILENAME, ModelFolderError, staged_model_folder

TESTS = Path(__file__).resolve().parent
LABELS = ["tone", "noise", "chirp"]

# Export a tiny model (a fresh random head per seed) into OUT with the usual file names;
# with PAUSE set, the export stops for good just before converting the TFLite file, after
# the new frozen graph is written: where a kill -9 used to leave a mixed set.
EXPORT = r"""
import os, sys, time
sys.path.insert(0, sys.argv[4])
from tiny_models import make_tiny_image_module
from retrain.head import ClassificationHead
from soundretrain.backbones.registry import load_module
from soundretrain import export

out, seed, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3]
backbone = load_module(make_tiny_image_module(os.path.join(sys.argv[5], "tiny_module"), image_size=32, feature_size=8))
head = ClassificationHead(backbone.feature_size, 3, seed=seed)
if pause != "-":
    def stop(*args, **kwargs):
        open(pause, "w").close()  # the new .pb is written by now
        time.sleep(600)
    export._convert_tflite = stop
export.export_model(backbone, head, ["tone", "noise", "chirp"], {},
                    output_graph=os.path.join(out, "output_graph.pb"),
                    output_labels=os.path.join(out, "output_labels.txt"),
                    saved_model_dir=os.path.join(out, "saved_model"),
                    output_tflite=os.path.join(out, "model.tflite"))
"""


def run_export(out: Path, seed: int, work: Path, pause: str = "-") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", EXPORT, str(out), str(seed), pause, str(TESTS),
                             str(work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """Two complete exports (different heads) of the same tiny model, each a model folder."""
    work = tmp_path_factory.mktemp("model_folders")
    procs = [run_export(work / name, seed, work / f"module_{seed}") for name, seed in (("a", 1), ("b", 2))]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    return work


def test_an_export_into_one_folder_is_a_model_folder_with_a_manifest(two_exports):
    folder = two_exports / "a"
    manifest = json.loads((folder / MANIFEST_FILENAME).read_text())
    listed = set(manifest["files"])
    assert {"output_graph.pb", "output_graph.pb.json", "output_labels.txt", "model.tflite",
            "model.tflite.json", "saved_model/saved_model.pb", "saved_model/soundretrain.json"} <= listed
    assert listed == {str(p.relative_to(folder)) for p in folder.rglob("*")
                      if p.is_file() and p.name != MANIFEST_FILENAME}
    ids = {json.loads((folder / n).read_text())["export_id"]
           for n in ("output_graph.pb.json", "model.tflite.json", "saved_model/soundretrain.json")}
    assert ids == {manifest["export_id"]}  # one id for the whole set
    model_folder.verify(str(folder))
    assert not [p for p in two_exports.iterdir() if atomic_files.is_temp_name(p.name)]


def test_a_kill_during_the_export_leaves_the_old_set_whole(two_exports, tmp_path):
    """The probe: kill -9 after the new .pb was written (before the TFLite) used to leave a
    new .pb beside the old TFLite, SavedModel and labels. Now the old set stays, whole."""
    folder = tmp_path / "model"
    shutil.copytree(two_exports / "a", folder)
    before = digests(folder)
    ready = tmp_path / "paused"
    proc = run_export(folder, 3, tmp_path, pause=str(ready))
    try:
        deadline = time.monotonic() + 600  # a safety net only: the signal is the file
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the export never reached the TFLite step"
            time.sleep(0.05)
        staged = [p for p in tmp_path.iterdir() if atomic_files.is_temp_name(p.name)]
        assert staged and (staged[0] / "output_graph.pb").is_file()  # the new .pb was written
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert digests(folder) == before
    model_folder.verify(str(folder))

    proc = run_export(folder, 3, tmp_path)  # the next export completes and clears the leftovers
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert digests(folder)["output_graph.pb"] != before["output_graph.pb"]
    model_folder.verify(str(folder))
    assert not [p for p in tmp_path.iterdir() if atomic_files.is_temp_name(p.name)]


def test_label_image_refuses_a_folder_that_mixes_two_exports(two_exports, tmp_path, capsys):
    from label.cli import main

    folder = tmp_path / "model"
    shutil.copytree(two_exports / "a", folder)
    image = tmp_path / "image.png"
    from PIL import Image
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["label_image", "--graph", str(folder / "model.tflite"), "--image", str(image)]) == 0
    capsys.readouterr()

    # The other export's TFLite with its own sidecar: each file agrees with its sidecar, but
    # the folder is no longer one export.
    for name in ("model.tflite", "model.tflite.json"):
        shutil.copy(two_exports / "b" / name, folder / name)
    for graph in ("model.tflite", "output_graph.pb", "saved_model"):
        code = main(["label_image", "--graph", str(folder / graph), "--image", str(image)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1, err
        assert "model.tflite is not the file the manifest" in err[0] and "mixes two exports" in err[0]


def test_label_image_refuses_a_model_that_is_not_part_of_the_folders_export(two_exports, tmp_path, capsys):
    from label.cli import main

    folder = tmp_path / "model"
    shutil.copytree(two_exports / "a", folder)
    shutil.copy(two_exports / "b" / "model.tflite", folder / "other.tflite")
    shutil.copy(two_exports / "b" / "model.tflite.json", folder / "other.tflite.json")
    code = main(["label_image", "--graph", str(folder / "other.tflite"), "--image", str(folder / "x.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "is not part of the export in" in err[0]


def test_a_missing_file_is_named(two_exports, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(two_exports / "a", folder)
    (folder / "output_labels.txt").unlink()
    with pytest.raises(ModelFolderError, match="output_labels.txt is missing from model folder"):
        model_folder.check_artifact(str(folder / "model.tflite"))


def test_only_what_is_loaded_and_small_files_are_hashed(tmp_path, monkeypatch):
    """Labelling hashes the artifact it loads and every small file (sidecars, labels); other
    large files are checked by size: a sibling from another export shows in its sidecar."""
    out = tmp_path / "out"
    with staged_model_folder(out) as stage:
        Path(stage, "a.tflite").write_bytes(b"a" * 100)
        Path(stage, "a.tflite.json").write_text('{"export_id": "1"}')
        Path(stage, "b.tflite").write_bytes(b"b" * 100)
        Path(stage, "b.tflite.json").write_text('{"export_id": "1"}')
    monkeypatch.setattr(model_folder, "SMALL_FILE", 50)  # the .tflite files count as large
    (out / "b.tflite").write_bytes(b"c" * 100)  # same size, other bytes
    model_folder.check_artifact(str(out / "a.tflite"))  # b.tflite: size only
    with pytest.raises(ModelFolderError, match="b.tflite is not the file"):
        model_folder.check_artifact(str(out / "b.tflite"))
    with pytest.raises(ModelFolderError, match="b.tflite is not the file"):
        model_folder.verify(str(out))  # everything
    (out / "b.tflite.json").write_text('{"export_id": "2"}')  # with its own sidecar: caught
    with pytest.raises(ModelFolderError, match="b.tflite.json is not the file"):
        model_folder.check_artifact(str(out / "a.tflite"))


# ----------------------------------------------------------------- the folder API

def test_staged_folder_replaces_whole_and_keeps_the_users_own_files(tmp_path):
    out = tmp_path / "out"
    with staged_model_folder(out) as stage:
        Path(stage, "model.tflite").write_bytes(b"one")
        Path(stage, "old_only.txt").write_text("written by the first export only")
        os.makedirs(os.path.join(stage, "sub"))
        Path(stage, "sub", "x").write_text("x")
    first = json.loads((out / MANIFEST_FILENAME).read_text())
    assert set(first["files"]) == {"model.tflite", "old_only.txt", "sub/x"}
    (out / "my_notes.txt").write_text("mine")  # a user's file, not in the manifest

    with staged_model_folder(out) as stage:
        Path(stage, "model.tflite").write_bytes(b"two")
    assert {p.name for p in out.iterdir()} == {MANIFEST_FILENAME, "model.tflite", "my_notes.txt"}
    assert (out / "my_notes.txt").read_text() == "mine" and (out / "model.tflite").read_bytes() == b"two"
    second = json.loads((out / MANIFEST_FILENAME).read_text())
    assert set(second["files"]) == {"model.tflite"} and second["export_id"] != first["export_id"]
    model_folder.verify(str(out))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folders left


@pytest.mark.parametrize("how", [RuntimeError("training failed"), KeyboardInterrupt()])
def test_a_failed_or_cancelled_block_leaves_the_folder_untouched(tmp_path, how):
    out = tmp_path / "out"
    with staged_model_folder(out) as stage:
        Path(stage, "labels.txt").write_text("a\n")
    before = digests(out)
    with pytest.raises(type(how)):
        with staged_model_folder(out) as stage:
            Path(stage, "labels.txt").write_text("b\n")
            raise how
    assert digests(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_only_a_new_empty_or_model_folder_is_replaced(tmp_path):
    precious = tmp_path / "recordings"
    precious.mkdir()
    (precious / "dog.wav").write_bytes(b"RIFF")
    with pytest.raises(FileExistsError, match="not a model folder"):
        with staged_model_folder(precious):
            pytest.fail("the block must not run")
    assert (precious / "dog.wav").read_bytes() == b"RIFF"
    with staged_model_folder(tmp_path / "empty_or_new") as stage:
        Path(stage, "f").write_text("")
    assert (tmp_path / "empty_or_new" / MANIFEST_FILENAME).is_file()


def test_swappable_folder(tmp_path):
    shared = tmp_path / "shared"  # like /tmp: other things live there
    shared.mkdir()
    (shared / "unrelated.log").write_text("")
    own = tmp_path / "own"
    own.mkdir()
    (own / "model.tflite").write_bytes(b"")
    (own / "model.tflite.json").write_text("{}")
    (own / ".model.tflite.abcd1234.tmp").write_bytes(b"")  # a killed writer's leftover
    assert model_folder.swappable_folder([str(shared / "model.pb")]) is None
    assert model_folder.swappable_folder([str(own / "model.tflite"), str(own / "labels.txt")]) == str(own)
    assert model_folder.swappable_folder([str(tmp_path / "new" / "a.pb")]) == str(tmp_path / "new")
    assert model_folder.swappable_folder([str(own / "a.pb"), str(shared / "labels.txt")]) is None


def test_scattered_outputs_of_two_exports_are_named_in_a_warning(tmp_path, capsys):
    """Outputs in two folders cannot be swapped as one set: each sidecar lists the export's
    artifacts, and labelling with one warns when another now comes from another export."""
    from PIL import Image

    from label.cli import main
    from label_models import LABELS, build_tiny_model
    from retrain.head import ClassificationHead
    from soundretrain.export import export_model

    tiny = build_tiny_model(str(tmp_path / "tiny"))
    graph, tflite = tmp_path / "graphs" / "g.pb", tmp_path / "lite" / "m.tflite"
    export_model(tiny.backbone, tiny.head, LABELS, {}, output_graph=str(graph), output_tflite=str(tflite))
    assert not (graph.parent / MANIFEST_FILENAME).exists()  # one folder each: no model folder
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["label_image", "--graph", str(tflite), "--image", str(image)]) == 0
    assert "warning" not in capsys.readouterr().err

    other = ClassificationHead(tiny.backbone.feature_size, len(LABELS), seed=9)
    export_model(tiny.backbone, other, LABELS, {}, output_graph=str(graph))  # the .pb alone, again
    assert main(["label_image", "--graph", str(tflite), "--image", str(image)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"label_image: warning: {graph} comes from another export")


def test_outputs_in_several_folders_stay_per_artifact(tmp_path):
    """Scattered outputs (retrain.py's defaults put them in /tmp beside other things): each
    artifact is replaced atomically on its own, no manifest, nothing else touched."""
    from label_models import build_tiny_model

    tiny = build_tiny_model(str(tmp_path / "tiny"))  # its folder also holds the module
    assert not (tmp_path / "tiny" / MANIFEST_FILENAME).exists()
    assert (tmp_path / "tiny" / "tiny_module" / "saved_model.pb").is_file()
    side = json.loads(Path(tiny.paths["output_tflite"] + ".json").read_text())
    assert len(side["export_id"]) == 32
