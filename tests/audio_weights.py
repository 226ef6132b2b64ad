"""Random weights shaped like the audio modules' packaged ones, written in the packages'
file formats (a zip PyTorch checkpoint, an object .npy), so tests run without them."""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np

from soundretrain.backbones import aisfx, soundnet
from torch_files import write_zip


def random_state(seed: int = 0) -> OrderedDict:
    """A state dict shaped like the real checkpoint's (plus one classifier to be ignored)."""
    rng = np.random.default_rng(seed)
    state: OrderedDict[str, np.ndarray] = OrderedDict()
    channels_in = 1
    for b, channels in enumerate(aisfx.CHANNELS, start=1):
        for c in (1, 2):
            p = f"embedding_net.conv_block{b}"
            state[f"{p}.conv{c}.weight"] = rng.normal(
                0, np.sqrt(2 / (9 * channels_in)), (channels, channels_in, 3, 3)).astype(np.float32)
            channels_in = channels
        for c in (1, 2):
            bn = f"embedding_net.conv_block{b}.bn{c}"
            state[f"{bn}.weight"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
            state[f"{bn}.bias"] = rng.normal(0, 0.1, channels).astype(np.float32)
            state[f"{bn}.running_mean"] = rng.normal(0, 0.2, channels).astype(np.float32)
            state[f"{bn}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    state["fc.0.0.weight"] = rng.normal(0, 0.1, (256, 512)).astype(np.float32)
    return state


def random_weights(seed: int = 0) -> dict:
    """A dict shaped like sound8.npy's (TF1 kernels [k, 1, in, out]), conv1-conv6."""
    rng = np.random.default_rng(seed)
    out, channels_in = {}, 1
    for name, filters, kernel, *_ in soundnet.LAYERS:
        out[name] = {
            "weights": rng.normal(0, np.sqrt(2 / (kernel * channels_in)),
                                  (kernel, 1, channels_in, filters)).astype(np.float32),
            "biases": rng.normal(0, 0.1, filters).astype(np.float32),
            "gamma": rng.uniform(0.5, 1.5, filters).astype(np.float32),
            "beta": rng.normal(0, 0.1, filters).astype(np.float32),
            "mean": rng.normal(0, 0.5, filters).astype(np.float32),
            "var": rng.uniform(0.5, 4.0, filters).astype(np.float32) * (256.0 if name == "conv1" else 1.0),
        }
        channels_in = filters
    return out




def write_fake_aisfx(path: Path, seed: int = 0) -> OrderedDict:
    """An aiSFX-like ``checkpoint.pth`` at ``path`` (``(state_dict, datasets)`` with numpy
    scalars, as the real one); returns the state dict."""
    state = random_state(seed)
    Path(path).write_bytes(write_zip(state, extra={"prosfx": (np.int64(0), 78)}))
    return state


def write_fake_soundnet(path: Path, seed: int = 0) -> dict:
    """A ``sound8.npy``-like object array at ``path``; returns its dict."""
    raw = random_weights(seed)
    np.save(path, np.array(raw, dtype=object), allow_pickle=True)
    return raw


@contextlib.contextmanager
def trusted_as_published(module, source: Path) -> Iterator[str]:
    """Tests only: within the block, ``module`` (aisfx or soundnet) takes the conversion of
    ``source`` (random weights in its package's format) for its published weights, so its
    cache keeps and verifies them like the real ones; yields their digest."""
    from soundretrain.backbones.converted_cache import weights_digest

    digest = weights_digest(module.conversion(source).convert())
    module.KNOWN_WEIGHTS[digest] = f"random test weights from {source}"
    try:
        yield digest
    finally:
        module.KNOWN_WEIGHTS.pop(digest, None)
