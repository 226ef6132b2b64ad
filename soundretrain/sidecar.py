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
import os
from typing import Optional, Sequence

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


def read_sidecar(artifact: str) -> Optional[dict]:
    """The sidecar of ``artifact``, or ``None`` when there is none."""
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
    return data
