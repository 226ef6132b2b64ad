"""The built-in example dataset: five synthetic sound classes, no download needed.

    python -m spectrograms.example --output_dir demo_output/audio [--clips_per_class 20]

Writes ``<output_dir>/<class>/<recording>_nohash_<k>.wav`` (the ``folders`` layout,
with retrain.py's ``_nohash_`` naming: clips of one "recording" share its start, so
a group-aware split keeps them together). Everything comes from a seeded RNG, so the
same flags always give the same files.

* siren: a tone whose pitch wails (slow sine) or yelps (fast sawtooth) between two pitches
* engine: a low harmonic hum (25-60 Hz fundamental) with firing-rate throb and rumble
* bird: bursts of fast up/down chirps at 2-7 kHz
* rain: broadband filtered noise with droplet clicks
* alarm: regular beeps of a bright square-ish tone

Every clip gets background noise at a random level and a random length (1.5-4.5 s),
so the classes are separable but no two clips are alike.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

import numpy as np

from soundretrain import atomic_files

CLASSES = ("siren", "engine", "bird", "rain", "alarm")
CLIPS_PER_RECORDING = 4


def _phase(freq: np.ndarray, sr: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / sr


def _noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    """White noise band-limited to ``[low, high]`` Hz (FFT mask)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec[(f < low) | (f > high)] = 0
    out = np.fft.irfft(spec, n)
    return out / (np.abs(out).max() + 1e-9)


def siren(rng: np.random.Generator, rec: dict, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    lo, hi = rec["f0"], rec["f0"] * rng.uniform(1.4, 1.9)
    if rec["yelp"]:
        shape = (t * rec["rate"] * 4) % 1.0  # sawtooth sweeps up, drops back
    else:
        shape = 0.5 + 0.5 * np.sin(2 * np.pi * rec["rate"] * t + rng.uniform(0, 2 * np.pi))
    ph = _phase(lo + (hi - lo) * shape, sr)
    return np.sin(ph) + 0.35 * np.sin(2 * ph) + 0.15 * np.sin(3 * ph)


def engine(rng: np.random.Generator, rec: dict, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    f0 = rec["f0"] * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t))
    ph = _phase(f0, sr)
    hum = sum(np.sin(k * ph + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 9))
    throb = 1 + 0.4 * np.sin(ph / 2)
    return hum * throb + 0.5 * _noise(rng, n, sr, 20, 300)


def bird(rng: np.random.Generator, rec: dict, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    pos = int(rng.uniform(0, 0.3) * sr)
    while pos < n:
        for _ in range(rng.integers(2, 7)):  # one burst of chirps
            length = int(rng.uniform(0.03, 0.11) * sr)
            if pos + length >= n:
                break
            f_start = rec["f0"] * rng.uniform(0.85, 1.15)
            f_end = f_start * rng.choice([0.55, 1.6]) * rng.uniform(0.9, 1.1)
            freq = np.linspace(f_start, f_end, length)
            out[pos : pos + length] += np.sin(_phase(freq, sr)) * np.hanning(length)
            pos += length + int(rng.uniform(0.02, 0.06) * sr)
        pos += int(rng.uniform(0.2, 0.7) * sr)
    return out


def rain(rng: np.random.Generator, rec: dict, n: int, sr: int) -> np.ndarray:
    out = _noise(rng, n, sr, rec["f0"], min(sr / 2, rec["f0"] * 12))
    drops = rng.integers(0, n, size=int(rec["rate"] * n / sr))
    for d in drops:
        length = min(int(0.004 * sr), n - d)
        out[d : d + length] += rng.uniform(0.5, 2.0) * np.exp(-np.arange(length) / (0.0008 * sr))
    return out


def alarm(rng: np.random.Generator, rec: dict, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    period = rec["on"] + rec["off"]
    gate = ((t + rng.uniform(0, period)) % period) < rec["on"]
    ph = 2 * np.pi * rec["f0"] * t
    tone = np.sin(ph) + np.sin(3 * ph) / 3 + np.sin(5 * ph) / 5
    return tone * gate


SYNTHS: dict[str, Callable[..., np.ndarray]] = {
    "siren": siren, "engine": engine, "bird": bird, "rain": rain, "alarm": alarm,
}


def _recording(cls: str, rng: np.random.Generator) -> dict:
    """Per-recording parameters, shared by the clips cut from one 'recording'."""
    return {
        "siren": lambda: {"f0": rng.uniform(550, 900), "rate": rng.uniform(0.25, 1.0), "yelp": bool(rng.random() < 0.4)},
        "engine": lambda: {"f0": rng.uniform(25, 60)},
        "bird": lambda: {"f0": rng.uniform(2500, 5000)},
        "rain": lambda: {"f0": rng.uniform(400, 1500), "rate": rng.uniform(5, 40)},
        "alarm": lambda: {"f0": rng.uniform(900, 3000), "on": rng.uniform(0.08, 0.3), "off": rng.uniform(0.08, 0.3)},
    }[cls]()


def synthesize(cls: str, recording: int, clip: int, sr: int = 22050, seed: int = 0) -> np.ndarray:
    """One clip of class ``cls`` (float32 mono, peak 0.3-0.9), fully determined by its arguments."""
    class_index = CLASSES.index(cls)
    rec = _recording(cls, np.random.default_rng([seed, class_index, recording]))
    rng = np.random.default_rng([seed, class_index, recording, clip + 1])
    n = int(rng.uniform(1.5, 4.5) * sr) // 512 * 512  # FFT-friendly lengths keep the noise fast
    y = SYNTHS[cls](rng, rec, n, sr)
    y = y / (np.abs(y).max() + 1e-9)
    y = y + 10 ** (rng.uniform(-35, -15) / 20) * _noise(rng, n, sr, 50, sr / 2)
    fade = min(n // 4, int(0.01 * sr))
    ramp = np.linspace(0, 1, fade)
    y[:fade] *= ramp
    y[n - fade :] *= ramp[::-1]
    return (y / np.abs(y).max() * rng.uniform(0.3, 0.9)).astype(np.float32)


def write_example(output_dir: str, clips_per_class: int = 20, sr: int = 22050, seed: int = 0) -> list[str]:
    """Write the example dataset (folders layout); returns the paths written."""
    import soundfile as sf

    paths = []
    for cls in CLASSES:
        folder = os.path.join(output_dir, cls)
        os.makedirs(folder, exist_ok=True)
        for i in range(clips_per_class):
            recording, clip = divmod(i, CLIPS_PER_RECORDING)
            y = synthesize(cls, recording, clip, sr, seed)
            path = os.path.join(folder, f"{cls}{recording:03d}_nohash_{clip}.wav")
            with atomic_files.replacing_file(path, durable=False) as tmp:  # many small files
                sf.write(tmp, y, sr, format="WAV", subtype="PCM_16")
            paths.append(path)
    return paths


MODULE = "spectrograms.example"


def main(argv: Sequence[str]) -> int:
    from absl import flags

    fv = flags.FlagValues()
    # module_name: run as ``python -m``, absl would head the help with this file's full path
    flags.DEFINE_string("output_dir", None, "Folder to write <class>/<clip>.wav into.", flag_values=fv, module_name=MODULE)
    flags.DEFINE_integer("clips_per_class", 20, "Clips per class.", lower_bound=1, flag_values=fv, module_name=MODULE)
    flags.DEFINE_integer("sample_rate", 22050, "Sample rate of the WAV files.", lower_bound=8000, flag_values=fv, module_name=MODULE)
    flags.DEFINE_integer("seed", 0, "Seed: the same seed always gives the same files.", flag_values=fv, module_name=MODULE)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print("usage: python -m spectrograms.example --output_dir=DIR [--clips_per_class=20]\n\n"
              + __doc__.split("\n\n", 1)[1].split("\n\n")[0] + "\n\n" + fv.get_help(include_special_flags=False))
        return 0
    try:
        rest = fv(list(argv))
    except flags.Error as e:
        print(f"spectrograms.example: error: {e}", file=sys.stderr)
        return 2
    if len(rest) > 1 or not fv.output_dir:
        print("spectrograms.example: error: --output_dir is required (and nothing else positional)", file=sys.stderr)
        return 2
    try:
        paths = write_example(fv.output_dir, fv.clips_per_class, fv.sample_rate, fv.seed)
    except OSError as e:
        print(f"spectrograms.example: error: cannot write to {fv.output_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"spectrograms.example: wrote {len(paths)} clips ({fv.clips_per_class} per class: "
          f"{', '.join(CLASSES)}) to {fv.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
