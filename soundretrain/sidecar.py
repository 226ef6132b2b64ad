"""The JSON sidecar that travels with every exported artifact.

It holds what labelling needs so a user never repeats training flags: the spectrogram
settings, the model input size and scaling, the backbone module's description, the
labels (and their checksum), the test accuracy and the tensor names.

Where it lives: ``<artifact>.json`` beside a file artifact (``output_graph.pb.json``,
``model.tflite.json``), ``<saved_model_dir>/soundretrain.json`` inside a SavedModel.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Optional, Sequence

from soundretrain import atomic_files

SAVED_MODEL_SIDECAR = "soundretrain.json"
SIDECAR_FORMAT = 1


class SidecarError(ValueError):
    """A sidecar exists but cannot be read; the message is one line."""


def sidecar_path(artifact: str) -> str:
    """Where the sidecar of ``artifact`` (a file or a SavedModel folder) lives."""
    if os.path.isdir(artifact):
        return os.path.join(artifact, SAVED_MODEL_SIDECAR)
    return artifact + ".json"


def labels_text(labels: Sequence[str]) -> str:
    """The labels file's content: one label per line, in class-index order."""
    return "".join(f"{label}\n" for label in labels)


def labels_sha256(labels: Sequence[str]) -> str:
    """SHA-256 of :func:`labels_text`, the checksum recorded in sidecars."""
    return hashlib.sha256(labels_text(labels).encode("utf-8")).hexdigest()


def read_labels(path: str) -> list[str]:
    """Labels from a file with one label per line (blank lines ignored)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def write_sidecar(artifact: str, sidecar: dict) -> str:
    """Write ``sidecar`` beside ``artifact`` atomically; return its path."""
    path = sidecar_path(artifact)
    atomic_files.write_text(path, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (``artifact_sha256``: the sidecar names its artifact)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(artifact: str) -> Optional[dict]:
    """The sidecar of ``artifact``, or ``None`` when there is none. A sidecar that is not
    JSON, or whose keys have the wrong types, is a :class:`SidecarError` (one line)."""
    path = sidecar_path(artifact)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SidecarError(f"cannot read sidecar {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SidecarError(f"cannot read sidecar {path}: not a JSON object")
    problem = sidecar_problem(data)
    if problem:
        raise SidecarError(f"invalid sidecar {path}: {problem}")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


# key -> (check, what it must be); a key may be absent (older sidecars, retrain.py graphs).
_TOP_LEVEL = {
    "format": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "labels": (lambda v: isinstance(v, list) and bool(v) and all(_is_text(x) and "\n" not in x for x in v),
               "a non-empty list of one-line strings"),
    "labels_sha256": (lambda v: isinstance(v, str) and len(v) == 64, "a SHA-256 hex string"),
    "artifact_sha256": (lambda v: isinstance(v, str) and len(v) == 64, "a SHA-256 hex string"),
    "spectrogram": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "module": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "input": (lambda v: isinstance(v, dict), "an object"),
    "test_accuracy": (lambda v: v is None or (_is_number(v) and 0 <= v <= 1), "a number in [0, 1] or null"),
    "input_tensor_name": (_is_text, "a non-empty string"),
    "final_tensor_name": (_is_text, "a non-empty string"),
    "model_input": (lambda v: v in ("image", "features", "waveform"), '"image", "features" or "waveform"'),
    "artifact": (lambda v: isinstance(v, str), "a string"),
    "tflite_quantization": (lambda v: isinstance(v, str), "a string"),
    "audio": (lambda v: isinstance(v, dict), "an object"),
}
_INPUT = {
    "kind": (lambda v: v in ("image", "waveform"), '"image" or "waveform"'),
    "height": (_is_count, "a positive whole number"),
    "width": (_is_count, "a positive whole number"),
    "input_mean": (_is_number, "a finite number"),
    "input_std": (lambda v: _is_number(v) and v != 0, "a finite number other than 0"),
    "sample_rate": (lambda v: v is None or _is_count(v), "a positive whole number"),
    "num_samples": (lambda v: v is None or _is_count(v), "a positive whole number"),
    "feature_size": (_is_count, "a positive whole number"),
    "hop_samples": (_is_count, "a positive whole number"),
    "window_seconds": (lambda v: _is_number(v) and v > 0, "a positive number"),
}
# soundretrain.module_inputs.describe: the one rate a model of several modules hears.
_AUDIO = {
    "sample_rate": (_is_count, "a positive whole number"),
    "resampler": (_is_text, "a non-empty string"),
    "module_rates": (lambda v: isinstance(v, list) and all(_is_count(r) for r in v),
                     "a list of positive whole numbers"),
}
_MODULE = {
    "name": (_is_text, "a non-empty string"),
    "source": (lambda v: v is None or isinstance(v, str), "a string"),
    "parts": (lambda v: isinstance(v, list) and all(isinstance(p, dict) for p in v), "a list of objects"),
}


def sidecar_problem(data: dict) -> Optional[str]:
    """What is wrong with a sidecar's keys (the first problem), or None. Unknown keys are
    allowed: a newer toolkit may add some."""
    for table, where, prefix in ((_TOP_LEVEL, data, ""), (_INPUT, data.get("input"), "input."),
                                 (_MODULE, data.get("module"), "module."), (_AUDIO, data.get("audio"), "audio.")):
        if not isinstance(where, dict):
            continue
        for key, (check, what) in table.items():
            if key in where and not check(where[key]):
                return f"{prefix}{key} must be {what}, not {json.dumps(where[key])[:60]}"
    labels, checksum = data.get("labels"), data.get("labels_sha256")
    if labels and checksum and labels_sha256(labels) != checksum:
        return "labels do not match labels_sha256 (edited by hand?)"
    return None
