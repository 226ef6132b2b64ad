"""The shared audio layer against hostile files: channels in opposite phase (whose plain
mean is silence), decoded whole and block by block to the same samples."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from soundretrain.audio import is_silent, load_audio, to_mono
from soundretrain.audio_stream import AudioStream

SR = 8000


def sound(seconds: float, seed: int = 0) -> np.ndarray:
    """A chirp over noise: something every model hears, float32 in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = 0.3 * np.sin(2 * np.pi * (300 * t + 400 * t**2)) + 0.1 * rng.standard_normal(t.size)
    return y.astype(np.float32)


def streamed(path, sr: int, block_seconds: float) -> np.ndarray:
    return np.concatenate(list(AudioStream(path, sr, block_seconds=block_seconds).blocks()))


def test_anti_phase_stereo_is_not_silent_and_decodes_as_its_sound(tmp_path):
    """Probe: L = -R mixed to silence, and --serve answered 422 "the audio is silent"."""
    y = sound(3.0)
    sf.write(tmp_path / "anti.wav", np.stack([y, -y], axis=1), SR, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", y, SR, subtype="FLOAT")
    for sr in (SR, 22050):
        mixed = load_audio(tmp_path / "anti.wav", sr)
        assert not is_silent(mixed)
        np.testing.assert_array_equal(mixed, load_audio(tmp_path / "mono.wav", sr))


def test_only_blocks_that_cancel_are_realigned(tmp_path):
    """Ordinary stereo keeps librosa's mean (what the training images had); a second in
    opposite phase among in-phase ones is realigned on its own; the first channel keeps
    its polarity, whichever channel is louder."""
    y = sound(4.0, seed=1)
    rng = np.random.default_rng(2)
    other = (0.2 * rng.standard_normal(y.size)).astype(np.float32)
    ordinary = np.stack([y, other], axis=1)
    np.testing.assert_array_equal(to_mono(ordinary, SR), ordinary.mean(axis=1, dtype=np.float32))
    right = y.copy()
    right[SR:2 * SR] *= -1  # the second second in opposite phase
    mono = to_mono(np.stack([y, right], axis=1), SR)
    np.testing.assert_array_equal(mono, y)
    quiet_left = to_mono(np.stack([-0.9 * y, y], axis=1), SR)  # the right channel is louder
    np.testing.assert_allclose(quiet_left, -0.95 * y, rtol=1e-5)
    wide = np.stack([-0.5 * y, y], axis=1)  # the mean keeps 10 % of the energy (-10 dB): not cancelling
    np.testing.assert_array_equal(to_mono(wide, SR), wide.mean(axis=1, dtype=np.float32))
    np.testing.assert_array_equal(to_mono(np.zeros((SR, 2), np.float32), SR), np.zeros(SR, np.float32))
    three = to_mono(np.stack([y, -0.5 * y, -0.5 * y], axis=1), SR)  # any number of channels
    np.testing.assert_allclose(three, 2 / 3 * y, rtol=1e-5)


@pytest.mark.parametrize("native_sr, block_seconds", [(SR, 2.5), (11025, 0.3), (44100, 20.0)])
def test_a_stream_mixes_as_a_whole_decode(tmp_path, native_sr, block_seconds):
    """Block by block (long recordings) gives load_audio's samples, bit for bit, for a file
    whose phase flips in places that fall inside the stream's blocks."""
    rng = np.random.default_rng(3)
    seconds = 7.3
    left = (0.2 * rng.standard_normal(int(seconds * native_sr))).astype(np.float32)
    right = left.copy()
    flips = np.sin(np.arange(left.size) / native_sr * 1.7) > 0.3  # runs of opposite phase
    right[flips] *= -1
    right += (0.001 * rng.standard_normal(left.size)).astype(np.float32)
    path = tmp_path / "flips.flac"
    sf.write(path, np.stack([left, right], axis=1), native_sr, subtype="PCM_24")
    for sr in (SR, native_sr):
        whole = load_audio(path, sr)
        np.testing.assert_array_equal(streamed(path, sr, block_seconds), whole)
        assert not is_silent(whole[: sr // 2])
