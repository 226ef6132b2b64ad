"""Augmentation that keeps the bottleneck cache: ``--augmentation_copies K`` computes K
augmented versions of every training example once, caches their bottlenecks like any
other, and adds them to the training set. retrain.py's distortions instead switched the
cache off and ran the whole network at every step.

On a spectrogram image (width = time, height = frequency, low frequencies at the bottom):

* time shift: roll the image along the time axis (a sound event may start anywhere);
* SpecAugment-style masking: a few bands of time columns and of frequency rows are set to
  the image's quietest colour (the colour of silence in its colormap);
* mixing: blend with another clip of the same class, from the same fold (or the same
  split side), so no augmented example ever carries test audio into training.

On a waveform (waveform modules): roll, mixing at a random level, and a random gain.

Every random choice comes from a per-copy seed (``--random_seed``, the image's path and
the copy number), so the copies, and their cache keys, are reproducible.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence

import numpy as np

from retrain.images import ImageRecord
from soundretrain.image_resize import resize_uint8

RECIPE_VERSION = 1


@dataclass(frozen=True)
class AugmentSettings:
    copies: int = 0
    time_shift: bool = True
    time_masks: int = 2
    freq_masks: int = 2
    max_mask_fraction: float = 0.1  # of the image's width (time) or height (frequency)
    mix_probability: float = 0.5
    max_mix_weight: float = 0.4  # the partner's share of the blend
    seed: int = 0

    def recipe(self) -> str:
        """What the augmented vectors depend on (part of their cache key)."""
        return (f"v{RECIPE_VERSION}|shift={self.time_shift}|tm={self.time_masks}|"
                f"fm={self.freq_masks}|mf={self.max_mask_fraction}|mp={self.mix_probability}|"
                f"mw={self.max_mix_weight}|seed={self.seed}")


@dataclass(frozen=True)
class AugmentedCopy:
    index: int  # the record augmented
    copy: int  # 0 .. K-1
    partner: Optional[int]  # the record mixed in, or None
    seed: int  # every random choice of this copy comes from it


def _seed_of(*parts: object) -> int:
    return int(hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def plan_copies(records: Sequence[ImageRecord], indices: Sequence[int], settings: AugmentSettings,
                class_ids: Sequence[int], partition: Callable[[int], Hashable]) -> list[AugmentedCopy]:
    """K copies per record in ``indices``. A mixing partner is drawn from records of the
    same class and the same ``partition`` (fold, or split side), preferably from another
    recording, so augmented training data never contains audio from the test set."""
    if settings.copies <= 0:
        return []
    pools: dict[tuple, list[int]] = {}
    for i in indices:
        pools.setdefault((class_ids[i], partition(i)), []).append(i)
    plan = []
    for i in indices:
        r = records[i]
        pool = pools[(class_ids[i], partition(i))]
        others = [j for j in pool if records[j].group != r.group] or [j for j in pool if j != i]
        for c in range(settings.copies):
            seed = _seed_of(settings.seed, r.relpath, c)
            rng = np.random.default_rng(seed)
            partner = None
            if others and rng.random() < settings.mix_probability:
                partner = others[int(rng.integers(len(others)))]
            plan.append(AugmentedCopy(i, c, partner, seed))
    return plan


def copy_key(base_key: str, partner_key: Optional[str], copy: AugmentedCopy,
             settings: AugmentSettings, fill: Optional[np.ndarray] = None) -> str:
    text = f"aug|{settings.recipe()}|{base_key}|{partner_key}|{copy.copy}|{copy.seed}"
    if fill is not None:  # masks of a given colour (three-channel images)
        text += f"|fill={','.join(str(int(v)) for v in fill)}"
    return hashlib.sha1(text.encode()).hexdigest()


def _silence_colour(image: np.ndarray) -> np.ndarray:
    flat = image.reshape(-1, image.shape[-1])
    return flat[int(np.argmin(flat.astype(np.int32).sum(axis=1)))]


def augment_image(image: np.ndarray, partner: Optional[np.ndarray], seed: int,
                  settings: AugmentSettings, fill: Optional[np.ndarray] = None) -> np.ndarray:
    """One augmented copy of a uint8 spectrogram image ``[H, W, 3]``. Masks are painted
    with ``fill`` (the colour of silence, known from the spectrogram settings), else with
    the image's quietest colour (its darkest: right for one coloured channel, not for
    three channels where silence is not the darkest colour, e.g. a derivative's mid-grey)."""
    rng = np.random.default_rng(seed)
    rng.random()  # the draw plan_copies used for the mixing decision
    out = image.astype(np.float32)
    if partner is not None:
        if partner.shape != image.shape:
            partner = resize_uint8(partner, *image.shape[:2])
        w = rng.uniform(0.1, settings.max_mix_weight)
        out = (1.0 - w) * out + w * partner.astype(np.float32)
    height, width = image.shape[:2]
    if settings.time_shift:
        out = np.roll(out, int(rng.integers(width)), axis=1)
    fill = (_silence_colour(image) if fill is None else np.asarray(fill)).astype(np.float32)
    for _ in range(settings.time_masks):
        size = int(rng.integers(0, max(1, int(width * settings.max_mask_fraction)) + 1))
        start = int(rng.integers(0, width - size + 1))
        out[:, start:start + size] = fill
    for _ in range(settings.freq_masks):
        size = int(rng.integers(0, max(1, int(height * settings.max_mask_fraction)) + 1))
        start = int(rng.integers(0, height - size + 1))
        out[start:start + size, :] = fill
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def augment_waveform(y: np.ndarray, partner: Optional[np.ndarray], seed: int,
                     settings: AugmentSettings) -> np.ndarray:
    """One augmented copy of a waveform window (same length out)."""
    rng = np.random.default_rng(seed)
    rng.random()
    out = np.asarray(y, np.float32).copy()
    if partner is not None:
        p = np.resize(np.asarray(partner, np.float32), out.shape)
        out = out + rng.uniform(0.1, settings.max_mix_weight) * p
    if settings.time_shift:
        out = np.roll(out, int(rng.integers(out.shape[0])))
    out *= rng.uniform(0.7, 1.0)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    return out / peak if peak > 1.0 else out
