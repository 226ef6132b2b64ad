"""Small real-world-like sounds generated in the tests (nothing checked in), and the
shared UrbanSound8K clips when this machine has them."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def generated_sounds(sr: int, seconds: float = 4.0, seed: int = 0) -> dict[str, np.ndarray]:
    """A siren sweep, an engine hum, noise bursts (a drill), clicks (gunshots) and
    faint rain, float32 mono at ``sr`` in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    siren = 0.6 * np.sin(2 * np.pi * (700 * t + 300 * np.sin(2 * np.pi * 0.5 * t) / (np.pi)))
    engine = sum(0.3 / k * np.sin(2 * np.pi * 55 * k * t + k) for k in range(1, 8))
    drill = rng.normal(0, 0.3, n) * (np.sin(2 * np.pi * 6 * t) > 0) * np.sin(2 * np.pi * 900 * t)
    clicks = np.zeros(n)
    for start in (0.1, 0.3, 1.7, 2.9):
        i = int(start * sr)
        click = rng.normal(0, 0.8, sr // 20) * np.exp(-np.arange(sr // 20) / (sr / 200))
        clicks[i:i + len(click)] = click[:max(0, n - i)]
    rain = 0.02 * rng.normal(0, 1, n)
    sounds = {"siren": siren, "engine": engine, "drill": drill, "clicks": clicks, "rain": rain}
    return {k: np.clip(v, -1, 1).astype(np.float32) for k, v in sounds.items()}


def shared_clips(folder: Path, count: int, per_class: bool = True) -> list[Path]:
    """Up to ``count`` clips of the shared folds, one per class first."""
    import csv

    rows = list(csv.DictReader(open(folder / "metadata" / "UrbanSound8K.csv")))
    chosen, seen = [], set()
    for row in rows:
        if per_class and row["class"] in seen:
            continue
        seen.add(row["class"])
        chosen.append(folder / "audio" / f"fold{row['fold']}" / row["slice_file_name"])
        if len(chosen) == count:
            break
    return chosen
