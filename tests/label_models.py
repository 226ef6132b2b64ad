"""Tiny trained models for the label tests, built once per test session.

A tiny image backbone (``tiny_models.make_tiny_image_module``) plus a
``retrain.head.ClassificationHead`` trained on generated audio of three classes
(pure tones, white noise, rising chirps) rendered with ``render_clip``, exported to
every format by ``soundretrain.export.export_model``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

SR = 8000
LABELS = ["tone", "noise", "chirp"]
# Small, fast spectrograms: 1 s clips at 8 kHz, 32 x 32 images.
SPECTROGRAM = dict(sample_rate=SR, duration=1.0, n_fft=256, hop_length=64, n_mels=32, image_size=32)


def make_clip(kind: str, seconds: float = 1.0, seed: int = 0, amplitude: float = 0.5) -> np.ndarray:
    """One generated clip of class ``kind`` at :data:`SR`."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SR))) / SR
    if kind == "tone":
        y = np.sin(2 * np.pi * rng.uniform(300, 900) * t)
    elif kind == "noise":
        y = rng.standard_normal(t.size) * 0.5
    elif kind == "chirp":
        f0, f1 = rng.uniform(200, 600), rng.uniform(2500, 3500)
        y = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(seconds, 1e-3))))
    elif kind == "silence":
        y = np.zeros_like(t)
    else:
        raise ValueError(kind)
    return (amplitude * y).astype(np.float32)


def write_wav(path, y: np.ndarray, sr: int = SR) -> str:
    sf.write(str(path), y, sr)
    return str(path)


@dataclass
class TinyModel:
    folder: str
    backbone: object
    head: object
    settings: object  # SpectrogramSettings
    paths: dict  # output_graph, saved_model_dir, output_tflite, output_labels, ...

    def in_memory(self, images01: np.ndarray) -> np.ndarray:
        """Probabilities of backbone + head in memory, for images in [0, 1]."""
        return self.head.predict(self.backbone.compute(images01))


_CACHE: dict = {}


def build_tiny_model(folder: str) -> TinyModel:
    """Train and export the tiny model under ``folder`` (cached per folder)."""
    if folder in _CACHE:
        return _CACHE[folder]
    from retrain.head import ClassificationHead, HeadSettings, HeadTrainer
    from soundretrain.backbones.registry import load_module
    from soundretrain.render import render_clip
    from soundretrain.spectrogram_settings import SpectrogramSettings
    from tiny_models import make_tiny_image_module

    from soundretrain.export import export_model

    os.makedirs(folder, exist_ok=True)
    settings = SpectrogramSettings(**SPECTROGRAM)
    backbone = load_module(make_tiny_image_module(os.path.join(folder, "tiny_module"), image_size=32, feature_size=8))
    images, y = [], []
    for c, kind in enumerate(LABELS):
        for seed in range(12):
            images.append(render_clip(make_clip(kind, seed=100 + seed), SR, settings))
            y.append(c)
    x = backbone.compute(np.stack(images).astype(np.float32) / 255.0)
    head = ClassificationHead(backbone.feature_size, len(LABELS), seed=0)
    HeadTrainer(head, x, y, HeadSettings(learning_rate=0.05, optimizer="adam", train_batch_size=36)).train(1000)
    accuracy = float(np.mean(head.predict(x).argmax(1) == np.asarray(y)))
    paths = export_model(
        backbone, head, LABELS, {"spectrogram": settings.to_dict(), "test_accuracy": accuracy},
        output_graph=os.path.join(folder, "output_graph.pb"),
        output_labels=os.path.join(folder, "output_labels.txt"),
        saved_model_dir=os.path.join(folder, "saved_model"),
        output_tflite=os.path.join(folder, "model.tflite"),
    )
    model = TinyModel(folder, backbone, head, settings, paths)
    _CACHE[folder] = model
    return model
