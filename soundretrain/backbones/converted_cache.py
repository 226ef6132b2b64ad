"""Converted weights kept once in the cache folder: arrays only, verified by their digest.

Used by the backbones whose weights are converted from another framework's file on first
use (``aisfx``, ``soundnet``, ``efficientnet_lite0``). The cache folder is writable by
whoever can write the user's cache, so nothing in it is trusted:

* it holds arrays only (``weights.npz``, read with ``allow_pickle=False`` after checking
  every member's name, dtype, shape and size): the networks are always rebuilt from this
  toolkit's code, and no graph or object from the cache is ever executed;
* the arrays' digest (:func:`weights_digest`) must be one the module's code knows: the
  digest of its own conversion of the published weights package (a test converts the
  installed package and checks it). A cache that fails (planted, edited, truncated) is
  converted again from the package, with a one-line warning; a conversion whose digest is
  unknown (another checkpoint given by path, a changed package) is used from memory and
  never cached, since a cached copy of it could not be verified when read back;
* the digest is the backbone's ``weights_digest``, which the bottleneck cache key
  includes, so features computed with other weights are never reused.

The folder's other rules, which several processes converting at once rely on:

* a folder counts as a cache only with a marker file (``soundretrain_module.json``) of the
  right ``cache_format`` and a ``weights.npz``; the marker describes the weights for
  people (source, licence, digest) and decides nothing else;
* a conversion writes into ``.<name>.<random>`` beside the target and renames it into
  place; when another process finished a valid cache meanwhile, that one is kept (it may
  be in use) and ours is dropped;
* a stale or corrupt target is moved aside before ours is renamed in, then removed;
* temp folders older than :data:`ABANDONED_AFTER_S` were left by killed conversions and
  are removed by the next conversion.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import numpy as np

from soundretrain import atomic_files
from soundretrain.backbones.registry import ModuleError

MARKER_FILE = "soundretrain_module.json"
WEIGHTS_FILE = "weights.npz"
ABANDONED_AFTER_S = 600  # a conversion takes seconds; an older temp folder was abandoned
_NPY_HEADER_MAX = 4096  # an .npy member's header; anything beyond it must be the data


def read_marker(folder: Path) -> Optional[dict]:
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_valid_cache(folder: Path, cache_format: int) -> bool:
    marker = read_marker(folder)
    return (marker is not None and marker.get("cache_format") == cache_format
            and (Path(folder) / WEIGHTS_FILE).is_file())


def weights_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the weights: every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def write_arrays(folder: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``arrays`` as ``folder/weights.npz`` (stored, not compressed: it loads at disk speed)."""
    with open(Path(folder) / WEIGHTS_FILE, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()})


def read_arrays(folder: Path, shapes: Mapping[str, tuple]) -> Optional[Dict[str, np.ndarray]]:
    """The float32 arrays named in ``shapes`` from ``folder/weights.npz``, or None when the
    file is missing, unreadable, or holds any other name, dtype, shape or size. Headers are
    checked before any data is read, and no pickle is ever loaded."""
    try:
        with zipfile.ZipFile(Path(folder) / WEIGHTS_FILE) as zf:
            members = {info.filename: info for info in zf.infolist()}
            if set(members) != {f"{k}.npy" for k in shapes}:
                return None
            arrays = {}
            for name, shape in shapes.items():
                info = members[f"{name}.npy"]
                if info.file_size > _NPY_HEADER_MAX + 4 * int(np.prod(shape, dtype=np.int64)):
                    return None  # more bytes than the array needs (a bomb, or a second payload)
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    found_shape, fortran, dtype = read_header(f)
                if tuple(found_shape) != tuple(shape) or fortran or dtype != np.dtype("<f4"):
                    return None
                with zf.open(info) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError):
        return None
    return arrays


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


_NOW = object()


def convert_into(target: Path, cache_format: int, build: Callable[[Path], dict],
                 replacing=_NOW) -> None:
    """Run ``build(tmp)`` (which writes the cache's files into ``tmp`` and returns the
    marker's contents) and move the result to ``target`` atomically. ``replacing``: the
    target's identity (:func:`_inode`) when the caller found it stale, before converting."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)  # fail early when unwritable
    # The stale or corrupt cache we were asked to replace, if any; another one is a cache
    # another process finished meanwhile.
    found = _inode(target) if replacing is _NOW else replacing
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


@dataclass(frozen=True)
class ConvertedWeights:
    """Verified weights: float32 arrays by name, and their :func:`weights_digest`."""

    arrays: Dict[str, np.ndarray]
    digest: str


@dataclass(frozen=True)
class Conversion:
    """How one module's weights are converted and checked.

    ``convert()`` reads the source file and returns the converted arrays (it raises
    :class:`ModuleError` with one line when the source is missing or unreadable);
    ``known`` maps the digests of the published weights' conversion to what they are;
    ``marker`` is what the cache's marker file says about them; ``what`` names them in
    messages ("the packaged ImageNet weights")."""

    name: str
    cache_format: int
    shapes: Mapping[str, tuple]
    known: Mapping[str, str]
    convert: Callable[[], Mapping[str, np.ndarray]]
    marker: Mapping[str, object]
    what: str


def _warn(name: str, message: str) -> None:
    print(f"{name}: warning: {message}", file=sys.stderr)


def load_or_convert(conversion: Conversion, folder: Path, *, from_source: bool = False
                    ) -> ConvertedWeights:
    """The module's weights: from the cache in ``folder`` when it holds arrays of a known
    digest, else converted from the source (and cached when their digest is known).
    ``from_source``: convert from the source even when the cache is valid (the caller
    named a source file, which must be what is used)."""
    c, folder = conversion, Path(folder)
    found = _inode(folder)
    if from_source:
        pass
    elif is_valid_cache(folder, c.cache_format):
        arrays = read_arrays(folder, c.shapes)
        digest = weights_digest(arrays) if arrays is not None else None
        if digest in c.known:
            return ConvertedWeights(arrays, digest)
        what = "unreadable" if arrays is None else f"of unknown digest {digest[:16]}"
        _warn(c.name, f"the cache in {folder} is not {c.what} (its weights are {what}); "
                      "converting them again")
    elif folder.exists():
        _warn(c.name, f"the cache in {folder} is incomplete or of another format; converting "
                      "it again")
    else:
        print(f"{c.name}: converting {c.what} once into {folder}", file=sys.stderr)
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in c.convert().items()}
    wrong = [k for k, s in c.shapes.items() if k not in arrays or arrays[k].shape != tuple(s)]
    if wrong or set(arrays) != set(c.shapes):
        raise ModuleError(f"the converted {c.name} weights have unexpected names or shapes "
                          f"({(wrong or sorted(set(arrays) - set(c.shapes)))[:3]})")
    digest = weights_digest(arrays)
    if digest not in c.known:
        _warn(c.name, f"these are not {c.what} (converted digest {digest[:16]}, not among the "
                      "published ones); using them, converted again at each load (a cached "
                      "copy could not be verified)")
        return ConvertedWeights(arrays, digest)
    if from_source and is_valid_cache(folder, c.cache_format):
        cached = read_arrays(folder, c.shapes)
        if cached is not None and weights_digest(cached) == digest:
            return ConvertedWeights(arrays, digest)

    def build(tmp: Path) -> dict:
        write_arrays(tmp, arrays)
        return {**c.marker, "name": c.name, "weights_sha256": digest,
                "weights": c.known[digest], "file": WEIGHTS_FILE}

    try:
        convert_into(folder, c.cache_format, build, replacing=found)
    except OSError as err:
        raise ModuleError(f"cannot write the {c.name} cache in {folder.parent} ({err}); "
                          "choose another folder with --module_cache_dir or XDG_CACHE_HOME") from None
    return ConvertedWeights(arrays, digest)


def as_variables(arrays: Mapping[str, object]) -> dict:
    """Weights as non-trainable ``tf.Variable`` s (already-made variables kept): TF ops over
    variables trace small graphs and freeze with ``convert_variables_to_constants_v2``."""
    import tensorflow as tf

    return {k: v if isinstance(v, tf.Variable) else tf.Variable(np.asarray(v), trainable=False, name=k)
            for k, v in arrays.items()}


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
