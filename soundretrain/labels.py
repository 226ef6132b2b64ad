"""Class names: what a class folder's name becomes as a label.

Every stage names classes the same way: the spectrograms stage makes labels from class
folders (``dog_bark/`` -> ``dog bark``), and the studio (``label_image --serve
--project_dir``) shows each class folder with the label a model trained on it will report.
"""
from __future__ import annotations

import re
import unicodedata


def folder_label(folder_name: str) -> str:
    """The label a class folder's name gives: :func:`normalise_label`, except the background
    class ``_background_`` (noise, silence: trained on, never reported), kept as it is."""
    from soundretrain.open_set import BACKGROUND_LABEL

    return BACKGROUND_LABEL if folder_name == BACKGROUND_LABEL else normalise_label(folder_name)


def normalise_label(name: str) -> str:
    """retrain.py's label rule: lowercase, non-alphanumeric runs -> one space (trimmed).

    Letters and digits of every script are kept (``Bär`` -> ``bär``, not ``b r``); names are
    NFC-normalised first, so a folder name macOS stores decomposed gives the same label."""
    return re.sub(r"[\W_]+", " ", unicodedata.normalize("NFC", name).lower()).strip()
