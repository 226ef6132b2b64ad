"""The TensorFlow twin of render_clip gives the numpy path's images, and the resize taps are
Pillow's bilinear resize (bit for bit in 8 bits, to float32 rounding on floats).

Pillow >= 13 may resize the height before the width when that is cheaper, and rounding
between the passes then differs by one level; the toolkit fixes the order (width, then
height) in its own taps, so the reference here is Pillow one axis at a time in that order."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from soundretrain.image_resize import resize_float32, resize_uint8, taps
from soundretrain.render import _mel_basis, render_clip, render_clip_indices
from soundretrain.spectrogram_settings import SpectrogramSettings

SIZES = [(224, 224, 299, 299), (224, 224, 96, 128), (50, 70, 224, 224), (224, 224, 224, 100),
         (7, 300, 13, 17), (128, 173, 224, 224), (128, 431, 224, 224), (1, 5, 3, 2)]


def pillow_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's bilinear resize, the width pass first, then the height pass."""
    image = Image.fromarray(pixels)
    image = image.resize((width, image.height), Image.Resampling.BILINEAR)
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("h,w,height,width", SIZES + [(32, 32, 24, 40)])
def test_resize_uint8_is_pillows_bilinear_bit_for_bit(h, w, height, width):
    rgb = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_uint8(rgb, height, width), pillow_bilinear(rgb, height, width))


@pytest.mark.parametrize("h,w,height,width", SIZES + [(32, 32, 24, 40)])
def test_resize_float32_is_pillows_mode_f_to_float32_rounding(h, w, height, width):
    v = np.random.default_rng(h + w).random((h, w)).astype(np.float32) * 255
    expected = pillow_bilinear(v, height, width)
    got = resize_float32(v, height, width)
    assert got.dtype == np.float32 and got.shape == (height, width)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_taps_are_normalised_and_in_range():
    for n_in, n_out in [(128, 224), (431, 224), (3, 3), (1, 7), (300, 2)]:
        index, weight = taps(n_in, n_out)
        assert index.shape == weight.shape and index.shape[0] == n_out
        assert index.min() >= 0 and index.max() < n_in
        np.testing.assert_allclose(weight.sum(axis=1), 1.0, atol=1e-12)
        assert (weight >= 0).all()


def test_bad_resize_inputs():
    with pytest.raises(ValueError, match="positive"):
        taps(0, 3)
    with pytest.raises(ValueError, match="uint8"):
        resize_uint8(np.zeros((4, 4, 3), np.float32), 2, 2)


# ------------------------------------------------------------------ the TensorFlow twin

def clips(settings: SpectrogramSettings) -> np.ndarray:
    """Tones, sweeps, noise, clicks, quiet hiss and digital silence, one window each."""
    sr, n = settings.sample_rate, settings.num_samples
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    ys = [
        0.3 * np.sin(2 * np.pi * 440 * t),
        0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t),
        0.1 * rng.standard_normal(n),
        np.where((t % 0.25) < 0.01, 0.8, 0.0) + 1e-3 * rng.standard_normal(n),
        3e-4 * rng.standard_normal(n),
        np.zeros(n),
        0.99 * np.sign(np.sin(2 * np.pi * 97 * t)),
    ]
    return np.stack(ys).astype(np.float32)


SETTINGS = [
    dict(sample_rate=8000, duration=1.0, n_fft=256, hop_length=64, n_mels=32, image_size=32),
    dict(),  # the defaults: 22,050 Hz, 4 s, 128 mels, 224 x 224
    dict(sample_rate=16000, duration=2.5, n_fft=512, hop_length=160, n_mels=64, image_size=96,
         fmin=50.0, fmax=7000.0, top_db=60.0, colormap="magma"),
    dict(sample_rate=8000, duration=6.0, n_fft=256, hop_length=64, n_mels=40, image_size=64,
         colormap="gray"),  # 751 frames: the time axis shrinks (antialiased taps)
    dict(sample_rate=8000, duration=1.0, n_fft=200, hop_length=80, n_mels=24, image_size=48),  # not 2**k
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_tf_front_end_renders_the_numpy_images(kwargs):
    import tensorflow as tf

    from soundretrain.render_tf import SpectrogramFrontEnd

    settings = SpectrogramSettings(**kwargs)
    y = clips(settings)
    front = SpectrogramFrontEnd(settings)
    got = front.indices(tf.constant(y)).numpy()
    expected = np.stack([render_clip_indices(w, settings.sample_rate, settings) for w in y]).astype(np.int32)
    diff = np.abs(got - expected)
    # Same function: identical except, at most, one colour step at a rounding boundary
    # in a handful of pixels (TensorFlow's FFT rounds differently from scipy's).
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3
    rgb = front.rgb(tf.constant(y)).numpy()
    reference = np.stack([render_clip(w, settings.sample_rate, settings) for w in y])
    assert rgb.shape == reference.shape
    same = (diff == 0)
    np.testing.assert_array_equal(rgb[same].astype(np.uint8), reference[same])


def test_silent_window_is_the_minimum_colour_in_both_paths():
    import tensorflow as tf

    from soundretrain.render_tf import SpectrogramFrontEnd

    settings = SpectrogramSettings(**SETTINGS[0])
    silent = np.zeros((1, settings.num_samples), np.float32)
    assert (SpectrogramFrontEnd(settings).indices(tf.constant(silent)).numpy() == 0).all()
    assert (render_clip_indices(silent[0], settings.sample_rate, settings) == 0).all()


def test_mel_layers_rebuild_the_filterbank():
    from soundretrain.render_tf import mel_layers

    settings = SpectrogramSettings()
    basis = _mel_basis(settings.sample_rate, settings.n_fft, settings.n_mels, 0.0, None).toarray()
    rebuilt = np.zeros((settings.n_mels + 1, basis.shape[1]), np.float32)
    layers = mel_layers(settings)
    assert len(layers) == 2  # triangles overlap pairwise: two bands per FFT bin at most
    for layer in layers:
        np.add.at(rebuilt, (layer.band, np.arange(basis.shape[1])), layer.weight)
    np.testing.assert_array_equal(rebuilt[: settings.n_mels], basis)
    assert not rebuilt[settings.n_mels].any()


@pytest.mark.parametrize("size", [(299, 299), (24, 40), (32, 32)])
def test_tf_pixel_resize_is_pillows(size):
    import tensorflow as tf

    from soundretrain.render_tf import resize_pixels

    rgb = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = resize_pixels(tf.constant(rgb.astype(np.float32)), *size).numpy()
    for k in range(2):
        np.testing.assert_array_equal(got[k], pillow_bilinear(rgb[k], *size))
        np.testing.assert_array_equal(got[k], resize_uint8(rgb[k], *size))


@pytest.mark.parametrize("kwargs", [SETTINGS[0], SETTINGS[4]], ids=["n_fft=256", "n_fft=200"])
def test_front_end_converts_to_tflite_and_stays_exact_when_quantised(kwargs):
    """The front-end is built from ops TFLite runs natively, and its constants escape both
    quantisers (float16 rounds every float constant; dynamic range makes large matmul
    weights int8): every variant renders the numpy path's indices."""
    import tensorflow as tf

    from label.models import _tflite_interpreter
    from soundretrain.render_tf import SpectrogramFrontEnd

    settings = SpectrogramSettings(**kwargs)
    front = SpectrogramFrontEnd(settings)
    y = clips(settings)
    expected = np.stack([render_clip_indices(w, settings.sample_rate, settings) for w in y]).astype(np.int32)

    @tf.function(input_signature=[tf.TensorSpec([None, settings.num_samples], tf.float32, name="waveform")])
    def serving_default(waveform):
        return {"indices": front.indices(waveform)}

    for quantization in ("none", "float16", "dynamic"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([serving_default.get_concrete_function()],
                                                                   tf.Module())
        if quantization != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "front.tflite")
            with open(path, "wb") as f:
                f.write(converter.convert())
            runner = _tflite_interpreter(path, 1).get_signature_runner("serving_default")
            got = runner(waveform=y)["indices"]
        assert np.abs(got - expected).max() <= 1, quantization
        assert (got != expected).mean() < 1e-3, quantization
