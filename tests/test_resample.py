"""The shared polyphase resampler: numpy against scipy's reference, the TensorFlow twin
against numpy, its TFLite form (one CONV_2D, kept exact when quantised), its response."""
from __future__ import annotations

import numpy as np
import pytest

from soundretrain.resample import RESAMPLER, polyphase, prototype, resample, resample_tf

PAIRS = [(22050, 44100), (44100, 22050), (48000, 22050), (8000, 44100), (44100, 48000), (16000, 22050)]


def noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("sr_in,sr_out", PAIRS)
def test_numpy_matches_scipys_polyphase_reference(sr_in, sr_out):
    import scipy.signal

    x = noise(20011)
    p = polyphase(sr_in, sr_out)
    expected = scipy.signal.resample_poly(x.astype(np.float64), p.up, p.down, window=prototype(p.up, p.down))
    got = resample(x, sr_in, sr_out)
    assert got.dtype == np.float32 and got.shape == expected.shape == (p.num_out(len(x)),)
    np.testing.assert_allclose(got, expected, atol=5e-6)


@pytest.mark.parametrize("sr_in,sr_out", PAIRS)
def test_tensorflow_twin_gives_numpys_samples(sr_in, sr_out):
    import tensorflow as tf

    x = np.stack([noise(9001, 1), noise(9001, 2), np.zeros(9001, np.float32)])
    expected = resample(x, sr_in, sr_out)
    got = resample_tf(tf.constant(x), sr_in, sr_out).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=3e-6)


def test_batches_lengths_and_equal_rates():
    x = np.stack([noise(4000, 3), noise(4000, 4)])
    both = resample(x, 22050, 44100)
    np.testing.assert_array_equal(both[1], resample(x[1], 22050, 44100))
    assert resample(x, 22050, 44100, num_samples=7999).shape == (2, 7999)
    longer = resample(x, 22050, 44100, num_samples=8005)
    np.testing.assert_array_equal(longer[:, :8000], both)
    assert np.abs(longer[:, 8000:]).max() < 0.05  # past the end: the filter's tail, then zeros
    assert resample(x, 16000, 16000) is not None and np.array_equal(resample(x, 16000, 16000), x)
    assert resample(x, 16000, 16000, num_samples=10).shape == (2, 10)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 16000)


def test_a_long_signal_is_done_in_chunks_with_the_same_samples(monkeypatch):
    from soundretrain import resample as module

    x = noise(30000, 5)
    whole = resample(x, 22050, 44100)
    monkeypatch.setattr(module, "_CHUNK", 1000)
    np.testing.assert_allclose(resample(x, 22050, 44100), whole, atol=1e-6)  # BLAS blocks differ


def test_response_keeps_the_band_and_rejects_images():
    """Tones below 90 % of the lower Nyquist pass within 0.01 dB; the images and aliases
    of a 2x change are 100 dB down (the stop band starts at the lower Nyquist)."""
    sr = 22050
    t = np.arange(sr) / sr
    for f in (100.0, 3000.0, 9500.0):
        up = resample(np.sin(2 * np.pi * f * t).astype(np.float32), sr, 2 * sr)
        core = up[4000:-4000]  # away from the edges, where the signal starts and stops
        spectrum = np.abs(np.fft.rfft(core * np.hanning(len(core))))
        freqs = np.fft.rfftfreq(len(core), 1 / (2 * sr))
        peak = spectrum.max()
        assert abs(freqs[spectrum.argmax()] - f) < 3
        image = spectrum[np.abs(freqs - (sr - f)) < 20].max()  # where zero-stuffing puts the image
        assert 20 * np.log10(image / peak) < -100
        gain = np.sqrt(np.mean(core ** 2)) / np.sqrt(0.5)
        assert abs(20 * np.log10(gain)) < 0.01
    # a tone above the lower Nyquist frequency does not survive the way down
    high = np.sin(2 * np.pi * 16000 * np.arange(2 * sr) / (2 * sr)).astype(np.float32)
    assert np.abs(resample(high, 2 * sr, sr)[2000:-2000]).max() < 1e-4


def test_kernel_rows_sum_to_one_per_phase():
    """Each phase of an upsampler is an interpolator: a constant stays constant."""
    for sr_in, sr_out in PAIRS:
        p = polyphase(sr_in, sr_out)
        sums = p.kernel.sum(axis=0)
        assert np.allclose(sums, 1.0, atol=1e-3) if p.up > 1 else np.isclose(sums[0], 1.0, atol=1e-4)
    assert "kaiser" in RESAMPLER


@pytest.mark.parametrize("quantization", ["none", "float16", "dynamic"])
def test_tflite_form_is_one_conv_and_exact_under_quantisation(quantization):
    import tensorflow as tf

    from soundretrain.audio_export import tflite_operators

    n = 8820

    @tf.function(input_signature=[tf.TensorSpec([None, n], tf.float32)])
    def up(y):
        return resample_tf(y, 22050, 44100)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([up.get_concrete_function()], tf.Module())
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    model = converter.convert()
    ops = tflite_operators(model)
    assert ops["CONV_2D"] == 1 and not any("FLEX" in op or "CUSTOM" in op for op in ops)
    from label.models import _tflite_interpreter

    import tempfile, os

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "r.tflite")
        open(path, "wb").write(model)
        runner = _tflite_interpreter(path, 1).get_signature_runner()
        x = np.stack([noise(n, 6), noise(n, 7)])
        got = next(iter(runner(y=x).values()))
    np.testing.assert_allclose(got, resample(x, 22050, 44100), atol=3e-6)
