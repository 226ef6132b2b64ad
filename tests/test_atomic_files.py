"""soundretrain.atomic_files: the one helper every stage writes its files through."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from soundretrain import atomic_files

REPO = Path(__file__).resolve().parents[1]


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_write_bytes_replaces_whole_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "model.pb"  # the folder is created
    atomic_files.write_bytes(target, b"old")
    atomic_files.write_text(str(target), "néw\n")
    assert target.read_bytes() == "néw\n".encode("utf-8")
    assert _listing(tmp_path / "sub") == ["model.pb"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "labels.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_files.replacing_file(target) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and _listing(tmp_path) == ["labels.txt"]


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_and_folders_get_what_a_plain_open_gives(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        atomic_files.write_bytes(tmp_path / "a.bin", b"x")
        with atomic_files.replacing_file(tmp_path / "b.png") as tmp:
            Path(tmp).write_bytes(b"y")
        with atomic_files.replacing_folder(tmp_path / "sm") as tmp:
            Path(tmp, "saved_model.pb").write_bytes(b"z")
        plain = tmp_path / "plain"
        plain.write_bytes(b"p")
    finally:
        os.umask(old)
    assert plain.stat().st_mode & 0o777 == expected
    for name in ("a.bin", "b.png", "sm/saved_model.pb"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
    assert (tmp_path / "sm").stat().st_mode & 0o777 == 0o777 & ~umask


def test_replacing_a_file_keeps_its_mode(tmp_path):
    target = tmp_path / "shared.csv"
    target.write_text("old")
    target.chmod(0o640)
    atomic_files.write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640


def test_durable_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else "?")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_files.write_bytes(tmp_path / "m.csv", b"rows")
    assert len(synced) == 2  # the temp file's data, then the folder holding the rename
    if synced[0] != "?":
        assert os.path.basename(synced[0]).endswith(".tmp") and synced[1] == str(tmp_path)
    synced.clear()
    with atomic_files.replacing_file(tmp_path / "p.png") as tmp:
        Path(tmp).write_bytes(b"png")
    assert len(synced) == 2
    synced.clear()
    with atomic_files.replacing_folder(tmp_path / "sm") as tmp:
        Path(tmp, "saved_model.pb").write_bytes(b"pb")
        Path(tmp, "variables").mkdir()
        Path(tmp, "variables", "v.index").write_bytes(b"v")
    assert len(synced) == 5  # two files, the two new folders, then the parent
    synced.clear()
    atomic_files.write_bytes(tmp_path / "image.png", b"img", durable=False)
    with atomic_files.replacing_file(tmp_path / "clip.wav", durable=False) as tmp:
        Path(tmp).write_bytes(b"wav")
    assert synced == []


def test_temp_names_are_hidden_recognised_and_fit_long_names(tmp_path):
    seen = []
    long_name = "é" * 120 + ".png"  # 244 bytes in UTF-8: a temp name must still fit in 255
    with atomic_files.replacing_file(tmp_path / long_name) as tmp:
        seen.append(os.path.basename(tmp))
        Path(tmp).write_bytes(b"x")
    assert (tmp_path / long_name).read_bytes() == b"x"
    name = seen[0]
    assert name.startswith(".") and name.endswith(".tmp") and len(name.encode()) <= 255
    assert atomic_files.is_temp_name(name)
    for kept in ("dog.png", "dog.png.tmp", ".hidden", "my.tmp.wav"):
        assert not atomic_files.is_temp_name(kept), kept
    # Older writers' leftovers are recognised too.
    assert atomic_files.is_temp_name("z2.png.tmp-4242")
    assert atomic_files.is_temp_name(".model.pb.k2j_x9ab.tmp")  # tempfile.mkstemp's


def test_remove_temp_files_clears_leftovers_only(tmp_path):
    (tmp_path / "a.png").write_bytes(b"keep")
    (tmp_path / ".a.png.0123abcd.tmp").write_bytes(b"half")
    (tmp_path / "b.png.tmp-99").write_bytes(b"half")
    (tmp_path / ".sm.89abcdef.tmp").mkdir()
    (tmp_path / ".sm.89abcdef.tmp" / "saved_model.pb").write_bytes(b"half")
    assert atomic_files.remove_temp_files(str(tmp_path), older_than_s=3600) == 0  # all young
    assert atomic_files.remove_temp_files(str(tmp_path)) == 3
    assert _listing(tmp_path) == ["a.png"]


def test_only_atomic_files_renames_files_into_place():
    """One careful helper: no stage or shared module renames temp files into place itself."""
    # The converted-model caches keep their own swap: when two processes convert at once, the
    # first finished copy wins and stays in place (it may be in use); they use the helper's
    # temp folders and fsync.
    allowed = {"soundretrain/atomic_files.py", "soundretrain/backbones/efficientnet_lite0.py",
               "soundretrain/backbones/converted_cache.py"}
    offenders = []
    for package in ("soundretrain", "spectrograms", "retrain", "label", "benchmarks"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            if rel in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("replace", "rename")
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "os"):
                    offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"use soundretrain.atomic_files instead of os.replace/rename: {offenders}"


def test_move_entry_never_replaces_a_target(tmp_path):
    """The studio's class renames and deletions: one atomic rename that fails rather than
    replace an existing entry (renameat2 RENAME_NOREPLACE on Linux)."""
    (tmp_path / "siren").mkdir()
    (tmp_path / "siren" / "a.wav").write_bytes(b"a")
    (tmp_path / "rain").mkdir()
    with pytest.raises(FileExistsError):
        atomic_files.move_entry(str(tmp_path / "siren"), str(tmp_path / "rain"))
    assert (tmp_path / "siren" / "a.wav").read_bytes() == b"a" and list((tmp_path / "rain").iterdir()) == []
    atomic_files.move_entry(str(tmp_path / "siren"), str(tmp_path / "alarm"))
    assert (tmp_path / "alarm" / "a.wav").read_bytes() == b"a" and not (tmp_path / "siren").exists()
    (tmp_path / "b.wav").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        atomic_files.move_entry(str(tmp_path / "b.wav"), str(tmp_path / "alarm" / "a.wav"))
    assert (tmp_path / "alarm" / "a.wav").read_bytes() == b"a"
    atomic_files.move_entry(str(tmp_path / "alarm"), str(tmp_path / "alarm"))  # the same entry: nothing to refuse
    assert (tmp_path / "alarm" / "a.wav").is_file()
