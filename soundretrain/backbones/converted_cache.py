"""A converted model kept once in the cache folder: built in a temp folder beside its
place, renamed into place, and rebuilt when missing or unreadable.

Used by the backbones whose weights are converted from another framework's file on first
use (``aisfx``, ``soundnet``, ``efficientnet_lite0``). The rules, which several processes
converting at once rely on:

* a folder counts as a cache only with a marker file (``soundretrain_module.json``) of the
  right ``cache_format`` and a ``saved_model.pb``, and only when it loads back;
* a conversion writes into ``.<name>.<random>`` beside the target and renames it into
  place; when another process finished a valid cache meanwhile, that one is kept (it may
  be in use) and ours is dropped;
* a stale or corrupt target is moved aside before ours is renamed in, then removed;
* temp folders older than :data:`ABANDONED_AFTER_S` were left by killed conversions and
  are removed by the next conversion.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, TypeVar

import numpy as np

from soundretrain import atomic_files
from soundretrain.backbones.registry import ModuleError

MARKER_FILE = "soundretrain_module.json"
ABANDONED_AFTER_S = 600  # a conversion takes seconds; an older temp folder was abandoned

T = TypeVar("T")


def read_marker(folder: Path) -> Optional[dict]:
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_valid_cache(folder: Path, cache_format: int) -> bool:
    marker = read_marker(folder)
    return (marker is not None and marker.get("cache_format") == cache_format
            and (Path(folder) / "saved_model.pb").is_file())


def _inode(path: Path) -> Optional[tuple]:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def remove_abandoned_temp_folders(target: Path) -> None:
    """Temp folders (``.<name>.*``) of conversions killed before their rename; recent ones
    may belong to a conversion running now and are left alone."""
    for folder in target.parent.glob(f".{target.name}.*"):
        try:
            if time.time() - folder.stat().st_mtime > ABANDONED_AFTER_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def convert_into(target: Path, cache_format: int, build: Callable[[Path], dict]) -> None:
    """Run ``build(tmp)`` (which writes a SavedModel into ``tmp`` and returns the marker's
    contents) and move the result to ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)  # fail early when unwritable
    found = _inode(target)  # the stale or corrupt cache we were asked to replace, if any
    remove_abandoned_temp_folders(target)
    tmp = Path(atomic_files.new_temp_folder(target))
    try:
        marker = dict(build(tmp))
        marker["cache_format"] = cache_format
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2))
        atomic_files.fsync_tree(str(tmp))
        now = _inode(target)
        if now is not None and now != found and is_valid_cache(target, cache_format):
            return  # another process converted it while we did: keep theirs
        # Not atomic_files.replacing_folder: the first finished copy must win and stay put
        # (another process may be loading it), and a stale one is moved aside first.
        if target.exists():
            trash = atomic_files.new_temp_folder(target, "old")
            os.replace(target, os.path.join(trash, "old"))
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_valid_cache(target, cache_format):  # nobody else won the race either
                raise
        atomic_files.fsync_folder(str(target.parent))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_or_convert(name: str, folder: Path, cache_format: int,
                    load: Callable[[Path], Optional[T]],
                    build: Callable[[Path], dict], what: str) -> T:
    """The cached model in ``folder`` (``load`` returns None when it is missing or
    unreadable), converting it first with ``build`` when needed."""
    loaded = load(folder) if is_valid_cache(folder, cache_format) else None
    if loaded is not None:
        return loaded
    print(f"{name}: converting {what} once into {folder}", file=sys.stderr)
    try:
        convert_into(folder, cache_format, build)
    except OSError as err:
        raise ModuleError(f"cannot write the {name} cache in {folder.parent} ({err}); "
                          "choose another folder with --module_cache_dir or XDG_CACHE_HOME") from None
    loaded = load(folder) if is_valid_cache(folder, cache_format) else None
    if loaded is None:
        raise ModuleError(f"the converted {name} model in {folder} cannot be read back")
    return loaded


def save_waveform_module(tmp: Path, arrays: Mapping[str, np.ndarray], features: Callable,
                         *, name: str, sample_rate: int, source: Path, license: str,
                         attribution: str, feature_size: int) -> dict:
    """Save ``arrays`` into ``tmp`` as a plain TF2 waveform module and return the marker's
    contents. The ``tf.Module`` holds them as ``weights`` (one non-trainable variable
    each) beside a ``sample_rate`` variable; ``__call__``, also the serving signature, maps
    float32 waveforms ``[N, samples]`` at ``sample_rate`` to ``features(weights, y)``."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, None], tf.float32, name="waveform")

    class WaveformModule(tf.Module):
        def __init__(self):
            super().__init__(name=name)
            self.weights = {k: tf.Variable(v, trainable=False, name=k) for k, v in arrays.items()}
            self.sample_rate = tf.Variable(sample_rate, trainable=False, name="sample_rate")

        @tf.function(input_signature=[spec])
        def __call__(self, waveform):
            return features(self.weights, waveform)

    module = WaveformModule()
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.__call__})
    return {"name": name, "source": str(source), "source_bytes": Path(source).stat().st_size,
            "license": license, "attribution": attribution,
            "input": f"float32 [N, samples] mono at {sample_rate} Hz in [-1, 1]",
            "feature_size": feature_size}


def load_saved_weights(folder: Path, shapes: dict) -> Optional[dict]:
    """The ``weights`` dict of variables of a cached SavedModel, or None when the folder
    cannot be loaded or a weight is missing or misshapen (then it is rebuilt)."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(folder))
        weights = {k: loaded.weights[k] for k in shapes}
    except Exception:  # noqa: BLE001 - any failure to read the cache means rebuild it
        return None
    if any(tuple(weights[k].shape) != tuple(s) for k, s in shapes.items()):
        return None
    return weights


def packaged_weights_file(package: str, relpath: str, module: str, pip_command: str) -> Path:
    """``relpath`` inside the installed ``package``, found without importing it (the
    weights packages' own code needs PyTorch or TensorFlow 1); one-line
    :class:`ModuleError` with ``pip_command`` when it is missing."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / relpath
        if path.is_file():
            return path
    if not locations:
        raise ModuleError(f"the {module} module needs its weights package {package}, which is "
                          f"not installed: {pip_command}")
    raise ModuleError(f"{package} is installed but lacks {relpath}; reinstall it: "
                      f"{pip_command.replace('pip install', 'pip install --force-reinstall', 1)}")
