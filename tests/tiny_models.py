"""Tiny real TensorFlow backbones for tests: built in a second, saved as TF2 SavedModels.

``make_tiny_image_module(path)`` writes a SavedModel whose default signature (and
``__call__``) maps float32 ``[None, size, size, 3]`` in ``[0, 1]`` to float32
``[None, feature_size]``: two small conv + pool layers with fixed random weights, then a
global average pool and a dense projection. Loadable with
``soundretrain.backbones.registry.load_module(path)``, so tests exercise the same loading path as a real
TF Hub module, without any download.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import tensorflow as tf


class _TinyImageNet(tf.Module):
    """conv3x3(4) -> relu -> maxpool2 -> conv3x3(8) -> relu -> global mean -> dense."""

    def __init__(self, image_size: int, feature_size: int, seed: int) -> None:
        super().__init__(name="tiny_image_module")
        rng = np.random.default_rng(seed)

        def weight(*shape: int) -> tf.Variable:
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape).astype(np.float32)
            return tf.Variable(value, trainable=False)

        self.image_size = image_size
        self.feature_size = feature_size
        self.conv1 = weight(3, 3, 3, 4)
        self.conv2 = weight(3, 3, 4, 8)
        self.dense = weight(8 + 3, feature_size)
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")
        self.__call__ = tf.function(self._features, input_signature=[spec])

    def _features(self, images: tf.Tensor) -> tf.Tensor:
        x = images * 2.0 - 1.0  # normalise inside, as TF Hub image modules do
        h = tf.nn.relu(tf.nn.conv2d(x, self.conv1, strides=1, padding="SAME"))
        h = tf.nn.max_pool2d(h, ksize=2, strides=2, padding="SAME")
        h = tf.nn.relu(tf.nn.conv2d(h, self.conv2, strides=1, padding="SAME"))
        # Also pool the raw colour means so simple colour differences stay separable.
        pooled = tf.concat(
            [tf.reduce_mean(h, axis=[1, 2]), tf.reduce_mean(x, axis=[1, 2])], axis=1)
        return tf.matmul(pooled, self.dense)


def make_tiny_image_module(path: str | os.PathLike, image_size: int = 32,
                           feature_size: int = 8, seed: int = 0) -> str:
    """Save a tiny image feature-vector SavedModel at ``path`` and return ``str(path)``."""
    module = _TinyImageNet(image_size, feature_size, seed)
    path = str(path)
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    return path


class _TinyPoolingNet(tf.Module):
    """The image averaged over a ``grid`` x ``grid`` grid of cells, every cell's three colours
    a feature: keeps where the energy is (frequency band, time), which global pooling loses, so
    generated sound classes separate as spectrograms the way a real network's features do."""

    def __init__(self, image_size: int, grid: int) -> None:
        super().__init__(name="tiny_pooling_module")
        self.image_size, self.grid = image_size, grid
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")
        self.__call__ = tf.function(self._features, input_signature=[spec])

    def _features(self, images: tf.Tensor) -> tf.Tensor:
        cell = self.image_size // self.grid
        pooled = tf.nn.avg_pool2d(images, ksize=cell, strides=cell, padding="VALID")
        return tf.reshape(pooled, [-1, self.grid * self.grid * 3])


def make_tiny_pooling_module(path: str | os.PathLike, image_size: int = 32, grid: int = 4) -> str:
    """Save :class:`_TinyPoolingNet` (``grid * grid * 3`` features) at ``path``; return ``str(path)``."""
    module = _TinyPoolingNet(image_size, grid)
    path = str(path)
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    return path


def make_module_archive(module_dir: str | os.PathLike, archive_path: str | os.PathLike) -> str:
    """Pack a SavedModel folder as a ``.tar.gz`` with the layout TF Hub serves
    (the folder's contents at the archive root)."""
    module_dir = Path(module_dir)
    with tarfile.open(archive_path, "w:gz") as tar:
        for child in sorted(module_dir.iterdir()):
            tar.add(child, arcname=child.name)
    return str(archive_path)


class _TinyWaveformNet(tf.Module):
    """Frame the waveform, take log energies of a few fixed random filters, mean-pool."""

    def __init__(self, sample_rate: int, feature_size: int, seed: int) -> None:
        super().__init__(name="tiny_waveform_module")
        rng = np.random.default_rng(seed)
        self.frame = 64
        self.sample_rate = tf.Variable(sample_rate, trainable=False)
        self.filters = tf.Variable(rng.normal(size=(self.frame, feature_size)).astype(np.float32),
                                   trainable=False)
        spec = tf.TensorSpec([None, None], tf.float32, name="waveform")
        self.__call__ = tf.function(self._features, input_signature=[spec])

    def _features(self, waveform: tf.Tensor) -> tf.Tensor:
        frames = tf.signal.frame(waveform, self.frame, self.frame, pad_end=True)
        energy = tf.math.log1p(tf.square(tf.einsum("btf,fk->btk", frames, self.filters)))
        return tf.reduce_mean(energy, axis=1)


def make_tiny_waveform_module(path: str | os.PathLike, sample_rate: int = 8000,
                              feature_size: int = 6, seed: int = 0) -> str:
    """Save a tiny waveform feature SavedModel (``[None, samples]`` at ``sample_rate``
    -> ``[None, feature_size]``) at ``path``; return ``str(path)``."""
    module = _TinyWaveformNet(sample_rate, feature_size, seed)
    path = str(path)
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    return path


# ------------------------------------------------------------------ tiny data sets

COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200), "green": (40, 200, 40)}


def write_colour_image(path: str | os.PathLike, colour, size: int = 32, seed: int = 0) -> str:
    """A noisy image of one colour (PNG or JPEG by the name's extension)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour, np.float32)[None, None, :]
                     + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path)


def make_colour_image_folders(root: str | os.PathLike, classes=("blue", "red"),
                              per_class: int = 12, size: int = 32,
                              windows_per_recording: int = 1) -> str:
    """retrain.py-style class folders ``<root>/<colour>/<colour>_<k>_nohash_<w>.png``:
    one colour per class, ``windows_per_recording`` images share a ``_nohash_`` group."""
    root = Path(root)
    for c, label in enumerate(classes):
        for i in range(per_class):
            rec, win = divmod(i, windows_per_recording)
            write_colour_image(root / label / f"{label}_{rec}_nohash_{win}.png",
                               COLOURS[label], size, seed=1000 * c + i)
    return str(root)


def make_tone_spectrogram_dir(root: str | os.PathLike, sr: int = 8000, seconds: float = 1.0,
                              recordings: int = 3) -> list:
    """A spectrograms-style folder ``<root>/spec`` whose manifest points at real tone
    recordings in ``<root>/audio`` (classes ``low`` 200 Hz and ``high`` 2 kHz; two
    windows of ``seconds`` per recording; fold = recording number). Images are grey
    placeholders: only waveform modules can tell the classes apart."""
    import soundfile as sf

    from soundretrain.manifest import ManifestRow, write_manifest
    from soundretrain.spectrogram_settings import SpectrogramSettings

    root = Path(root)
    rows = []
    for label, freq in (("low", 200.0), ("high", 2000.0)):
        for k in range(recordings):
            wav = root / "audio" / f"{label}{k}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(int(sr * 2 * seconds)) / sr
            sf.write(wav, 0.5 * np.sin(2 * np.pi * freq * (1 + 0.1 * k) * t), sr)
            for w in range(2):
                image = f"{label}/{label}{k}_{w}.png"
                write_colour_image(root / "spec" / image, (100, 100, 100), seed=k * 10 + w)
                rows.append(ManifestRow(image, label, k + 1, f"{label}{k}", str(wav.resolve()),
                                        w * seconds, seconds, False))
    write_manifest(root / "spec" / "manifest.csv", rows)
    SpectrogramSettings(sample_rate=sr, duration=seconds).save_json(
        root / "spec" / "spectrogram_config.json")
    return rows


class _TinyYamnetLike(tf.Module):
    """YAMNet's calling convention: one 1-D waveform in; (scores, embeddings, log-mel) out."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(name="tiny_yamnet_like")
        rng = np.random.default_rng(seed)
        self.filters = tf.Variable(rng.normal(size=(400, 1024)).astype(np.float32) * 0.05,
                                   trainable=False)
        spec = tf.TensorSpec([None], tf.float32, name="waveform")
        self.__call__ = tf.function(self._call, input_signature=[spec])

    def _call(self, waveform):
        frames = tf.signal.frame(waveform, 400, 160, pad_end=True)
        embeddings = tf.nn.relu(tf.matmul(frames, self.filters))
        scores = tf.nn.sigmoid(embeddings[:, :521])
        return scores, embeddings, tf.math.log1p(tf.abs(frames[:, :64]))


def make_tiny_yamnet_like_module(path: str | os.PathLike, seed: int = 0) -> str:
    """A SavedModel called like TF Hub's YAMNet (16 kHz 1-D waveform -> per-frame
    scores, 1024-d embeddings, spectrogram); return ``str(path)``."""
    module = _TinyYamnetLike(seed)
    path = str(path)
    tf.saved_model.save(module, path)
    return path


# ------------------------------------------------------------------ a tiny EfficientNet-Lite

def make_tiny_efficientnet_lite(image_size: int = 32, seed: int = 0,
                                name: str = "tiny_efficientnet_lite"):
    """An EfficientNet-Lite of four MBConv blocks with random weights, 32 x 32 images in,
    16 features out: the real port's code (``soundretrain.backbones.efficientnet_lite0``,
    its trunk/tail split included) at a size that trains in a second."""
    from soundretrain.backbones import efficientnet_lite0 as lite

    blocks = [lite.BlockSpec(0, 3, 1, 1, 8, 8), lite.BlockSpec(1, 3, 2, 4, 8, 12),
              lite.BlockSpec(2, 5, 1, 4, 12, 12), lite.BlockSpec(3, 3, 2, 4, 12, 16)]
    rng = np.random.default_rng(seed)
    weights = {}
    for key, shape in lite.expected_weight_shapes(blocks, feature_size=16, num_classes=None).items():
        if key.endswith("_bias"):
            value = rng.normal(0.0, 0.1, size=shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if "depthwise" not in key else int(np.prod(shape[:2]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)
        weights[key] = tf.Variable(value.astype(np.float32), trainable=False, name=key)
    return lite.EfficientNetLite0(weights, blocks=blocks, image_size=image_size, name=name)


def load_tiny_efficientnet_lite(cache_dir=None):
    """A registry factory (``LOCAL_FACTORIES``) for the tiny network, so the retrain
    command can name it with --tfhub_module."""
    return make_tiny_efficientnet_lite()


# ------------------------------------------------------------------ aiSFX with random weights

def load_fake_aisfx(cache_dir=None):
    """A registry factory (``LOCAL_FACTORIES``): the real aiSFX port (front-end, network,
    trunk/tail split) over random weights shaped like the packaged ones, built in memory
    (no package, no cache)."""
    from audio_weights import random_state
    from soundretrain.backbones import aisfx

    return aisfx.Aisfx(aisfx.convert_state_dict(random_state(seed=3)))
