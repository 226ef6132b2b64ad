"""Image channels (``SpectrogramSettings.channels``): three window lengths, PCEN, deltas as
the image's red, green and blue; settings, rendering, the writer, the CLI, and the sidecar
that makes ``label_image`` render new audio the same way."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from soundretrain.render import (
    DELTA_IMAGE_RANGE,
    channel_plane,
    delta,
    log_mel,
    pcen_mel,
    plane_image,
    render_clip,
    render_clip_indices,
    spectrogram_indices,
)
from soundretrain.spectrogram_settings import CONFIG_FILENAME, SpectrogramSettings, parse_channel

SR = 8000
SMALL = dict(sample_rate=SR, duration=1.0, n_fft=256, hop_length=64, n_mels=32, image_size=32)
THREE_WINDOWS = "db@128,db@256,db@512"


def tone_then_silence(seed: int = 0) -> np.ndarray:
    """Noise bursts and a tone: onsets and steady parts for the derivatives to see."""
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    y = 0.3 * np.sin(2 * np.pi * 700 * t)
    y[: SR // 4] = 0.0
    y[SR // 2: SR // 2 + 400] += 0.5 * rng.standard_normal(400)
    return (y + 0.001 * rng.standard_normal(SR)).astype(np.float32)


# ---------------------------------------------------------------- settings

def test_channels_default_is_todays_image_and_old_configs_still_match(tmp_path):
    assert SpectrogramSettings().channels == ("db",)
    assert SpectrogramSettings().coloured
    old = SpectrogramSettings().to_dict()
    del old["channels"]  # a spectrogram_config.json written before channels existed
    assert SpectrogramSettings.from_dict(old) == SpectrogramSettings()


@pytest.mark.parametrize("given", ["db,delta,delta2", ["db", "delta", "delta2"], (" db", "delta ", "delta2")])
def test_channels_from_a_string_or_a_list(given):
    s = SpectrogramSettings(channels=given)
    assert s.channels == ("db", "delta", "delta2") and not s.coloured
    assert s.channel_windows() == [("db", 2048), ("delta", 2048), ("delta2", 2048)]


def test_channels_json_round_trip_and_windows(tmp_path):
    s = SpectrogramSettings(channels="db@1024,db@2048,db@4096")
    s.save_json(tmp_path / CONFIG_FILENAME)
    assert json.loads((tmp_path / CONFIG_FILENAME).read_text())["channels"] == ["db@1024", "db@2048", "db@4096"]
    assert SpectrogramSettings.load_json(tmp_path / CONFIG_FILENAME) == s
    assert s.channel_windows() == [("db", 1024), ("db", 2048), ("db", 4096)]
    assert parse_channel("pcen@512") == ("pcen", 512)


@pytest.mark.parametrize(
    "channels,words",
    [
        ("db,delta", "1 entry .* or 3"),
        ("", "not 0"),
        ("db,db,db,db", "not 4"),
        ("mfcc", "kind must be one of db, pcen, delta, delta2"),
        ("db@abc,db,db", "whole number"),
        ("db@8,db,db", "from 16 to 65536"),
        ("db@100000,db,db", "from 16 to 65536"),
        (["db", 3, "db"], "list of strings"),
        (7, "list of strings"),
        ("db@-1", "whole number"),
    ],
)
def test_bad_channels_are_refused_with_a_reason(channels, words):
    with pytest.raises(ValueError, match=words):
        SpectrogramSettings(channels=channels)


# ---------------------------------------------------------------- rendering

def test_one_db_channel_is_the_original_rendering_bit_for_bit():
    y = tone_then_silence()
    s = SpectrogramSettings(**SMALL)
    assert np.array_equal(render_clip_indices(y, SR, s), spectrogram_indices(log_mel(y, SR, s), s))
    # the generic plane path agrees to within rounding
    generic = plane_image(channel_plane(y, SR, s, "db"), s).astype(int)
    assert np.abs(generic - render_clip_indices(y, SR, s).astype(int)).max() <= 1


def test_three_windows_are_three_grey_log_mels():
    y = tone_then_silence()
    s = SpectrogramSettings(**SMALL, channels=THREE_WINDOWS)
    img = render_clip(y, SR, s)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    for c, n_fft in enumerate((128, 256, 512)):
        grey = render_clip(y, SR, SpectrogramSettings(**dict(SMALL, n_fft=n_fft), colormap="gray"))
        assert np.abs(img[..., c].astype(int) - grey[..., 0].astype(int)).max() <= 1, n_fft
    assert not np.array_equal(img[..., 0], img[..., 2])  # the windows do differ


def test_delta_is_librosas_with_nearest_edges():
    import librosa

    S = log_mel(tone_then_silence(), SR, SpectrogramSettings(**SMALL))
    for order in (1, 2):
        want = librosa.feature.delta(S, width=9, order=order, mode="nearest")
        assert np.allclose(delta(S, order), want, atol=1e-4)
    short = S[:, :5]  # fewer frames than the window: still defined, same shape
    assert delta(short).shape == short.shape


def test_delta_channels_are_grey_where_steady_and_bright_at_an_onset():
    y = tone_then_silence()
    s = SpectrogramSettings(**SMALL, channels="db,delta,delta2")
    plane = channel_plane(y, SR, s, "delta")
    onset = SR // 4 // s.hop_length  # the tone starts after 0.25 s
    band = int(np.argmax(log_mel(y, SR, s)[:, onset + 4]))  # the tone's mel band
    assert plane[band, onset] > 0.75  # rising: bright
    assert abs(plane[band, onset + 12] - 0.5) < 0.05  # steady tone: mid-grey
    steady = plane_image(plane, s)[:, 20:28]  # 0.55-0.75 s: only the tone, steady
    assert np.median(steady) == 128
    S_db = log_mel(y, SR, s)
    want = np.clip(np.float32(128 / 255) + delta(S_db) / (2 * DELTA_IMAGE_RANGE["delta"]), 0, 1)
    assert np.allclose(plane, want)


def test_pcen_is_librosas_with_the_smoother_started_at_the_first_frame():
    import librosa
    import scipy.signal

    y = tone_then_silence()
    s = SpectrogramSettings(**SMALL)
    from soundretrain.render import power_stft

    S = librosa.feature.melspectrogram(S=np.sqrt(power_stft(y, 256, 64)), sr=SR, n_fft=256, n_mels=32,
                                       power=1.0)
    S *= 2.0 ** 31 / S.max()  # relative to the clip's loudest bin, as dB is
    t_frames = 0.4 * SR / 64
    b = (np.sqrt(1 + 4 * t_frames ** 2) - 1) / (2 * t_frames ** 2)
    zi = scipy.signal.lfilter_zi([b], [1, b - 1]) * S[:, :1]
    want = librosa.pcen(S, sr=SR, hop_length=64, b=b, zi=zi)
    assert np.allclose(pcen_mel(y, SR, s), want, rtol=1e-3, atol=1e-4)
    # no start-up transient: the first frames of a steady tone are not the brightest
    steady = 0.3 * np.sin(2 * np.pi * 700 * np.arange(SR) / SR).astype(np.float32)
    P = pcen_mel(steady, SR, s)
    assert P[:, :3].max() <= P.max() * 1.01 and P[:, 0].max() < 2 * np.median(P[:, 10:].max(axis=0))


@pytest.mark.parametrize("channels", ["db,delta,delta2", THREE_WINDOWS, "pcen", "db,pcen,delta"])
def test_channels_keep_the_invariants_of_the_image(channels):
    y = tone_then_silence(1)
    s = SpectrogramSettings(**SMALL, channels=channels)
    img = render_clip(y, SR, s)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render_clip(y.copy(), SR, s))  # deterministic
    quieter = render_clip(y * 0.05, SR, s).astype(int)  # -26 dB: (nearly) the same image
    assert np.abs(quieter - img.astype(int)).max() <= 2  # float rounding
    # another sample rate is resampled first, as load_audio would
    assert render_clip(np.repeat(y, 2), 2 * SR, s).shape == img.shape


def test_silent_clip_is_dark_and_its_derivatives_mid_grey():
    s = SpectrogramSettings(**SMALL, channels="db,pcen,delta")
    img = render_clip(np.zeros(SR, np.float32), SR, s)
    assert np.all(img[..., 0] == 0) and np.all(img[..., 1] == 0) and np.all(img[..., 2] == 128)


def test_three_channels_have_no_colormap_indices():
    with pytest.raises(ValueError, match="render_clip"):
        render_clip_indices(tone_then_silence(), SR, SpectrogramSettings(**SMALL, channels=THREE_WINDOWS))


def test_one_pcen_channel_is_coloured_by_the_colormap():
    from soundretrain.render import colormap_lut

    s = SpectrogramSettings(**SMALL, channels="pcen", colormap="magma")
    y = tone_then_silence()
    assert np.array_equal(render_clip(y, SR, s),
                          np.take(colormap_lut("magma"), render_clip_indices(y, SR, s), axis=0))


# ---------------------------------------------------------------- writer, CLI and label_image

def _folders(root):
    rng = np.random.default_rng(0)
    for label, freq in (("low", 300.0), ("high", 2500.0)):
        (root / label).mkdir(parents=True)
        for k in range(2):
            t = np.arange(int(0.8 * SR)) / SR
            y = 0.4 * np.sin(2 * np.pi * (freq + 50 * k) * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(root / label / f"{label}{k}.wav", y, SR)
    return root


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_cli_writes_rgb_images_that_decode_to_render_clip(tmp_path, capsys, image_format):
    from soundretrain.audio import load_audio
    from soundretrain.manifest import read_manifest
    from spectrograms import cli

    data = _folders(tmp_path / "data")
    out = tmp_path / "out"
    flags = [f"--{k}={v}" for k, v in SMALL.items()]
    code = cli.main(["spectrograms", f"--data_dir={data}", f"--output_dir={out}", "--jobs=1",
                     "--channels=db,delta,delta2", f"--image_format={image_format}", *flags])
    _, err = capsys.readouterr()
    assert code == 0, err
    settings = SpectrogramSettings.load_json(out / CONFIG_FILENAME)
    assert settings.channels == ("db", "delta", "delta2")
    rows = read_manifest(out / "manifest.csv")
    assert len(rows) == 4
    for row in rows:
        with Image.open(out / row.image) as img:
            assert img.mode == "RGB"
            pixels = np.asarray(img.convert("RGB")).astype(int)
        want = render_clip(load_audio(row.source, SR), SR, settings).astype(int)
        if image_format == "png":
            assert np.array_equal(pixels, want)
        else:
            assert np.abs(pixels - want).mean() < 6  # JPEG: lossy, on a tiny noise-like image
    # the same settings again: everything up to date; other channels: refused, named
    assert cli.main(["spectrograms", f"--data_dir={data}", f"--output_dir={out}", "--jobs=1",
                     "--channels=db,delta,delta2", f"--image_format={image_format}", *flags]) == 0
    capsys.readouterr()
    assert cli.main(["spectrograms", f"--data_dir={data}", f"--output_dir={out}", "--jobs=1",
                     f"--image_format={image_format}", *flags]) == 1
    assert "channels" in capsys.readouterr().err


@pytest.mark.parametrize("value,words", [("db,delta", "1 entry"), ("rgb,db,db", "kind must be one of")])
def test_cli_bad_channels_is_one_line_and_exit_2(tmp_path, capsys, value, words):
    from spectrograms import cli

    code = cli.main(["spectrograms", f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'o'}",
                     f"--channels={value}"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_label_image_renders_audio_with_the_sidecars_channels(tmp_path, capsys):
    """The exported model's sidecar carries the channels: labelling a WAV (rendered on the
    fly from the sidecar alone) gives exactly what labelling the writer's PNG gives."""
    import tensorflow as tf

    from label.cli import main as label_main
    from retrain.head import ClassificationHead
    from soundretrain.backbones.registry import load_module
    from soundretrain.export import export_model
    from spectrograms.writer import encode_image, render_pixels
    from tiny_models import make_tiny_image_module

    settings = SpectrogramSettings(**SMALL, channels="db@128,db@256,delta")
    backbone = load_module(make_tiny_image_module(tmp_path / "module", image_size=32, feature_size=8))
    head = ClassificationHead(backbone.feature_size, 2, seed=0)
    head.final_weights.assign(tf.random.stateless_normal((8, 2), seed=[1, 2]))
    paths = export_model(backbone, head, ["a", "b"], {"spectrogram": settings.to_dict()},
                         output_graph=str(tmp_path / "g.pb"), output_labels=str(tmp_path / "l.txt"),
                         output_audio_tflite=str(tmp_path / "audio.tflite"))
    side = json.loads(open(paths["output_graph"] + ".json").read())
    assert side["spectrogram"]["channels"] == ["db@128", "db@256", "delta"]

    y = tone_then_silence(2)
    wav, png = tmp_path / "x.wav", tmp_path / "x.png"
    sf.write(wav, y, SR, subtype="FLOAT")
    png.write_bytes(encode_image(render_pixels(y, SR, settings), settings))
    results = []
    for flag, path in (("--audio", wav), ("--image", png)):
        code = label_main(["label_image", "--graph", paths["output_graph"], flag, str(path), "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        results.append(json.loads(out)["results"][0]["top"])
    assert results[0] == results[1]
    # the audio-in model renders the three channels inside its graph (render_tf's twin)
    from label.models import load_labeler

    image_model, audio_model = load_labeler(paths["output_graph"]), load_labeler(paths["output_audio_tflite"])
    ys = np.stack([tone_then_silence(k) for k in range(4)] + [np.zeros(SR, np.float32)])
    images = np.stack([render_clip(w, SR, settings) for w in ys]).astype(np.float32) / 255.0
    np.testing.assert_allclose(audio_model.predict(ys), image_model.predict(images), atol=1e-4)
    plain = SpectrogramSettings(**SMALL)  # a model of today's image would see another input
    assert not np.array_equal(render_clip(y, SR, plain), render_clip(y, SR, settings))


@pytest.mark.parametrize("channels,colormap", [("db", "viridis"), ("pcen", "magma"),
                                               ("db,pcen,delta", "viridis"), ("db,delta,delta2", "gray")])
def test_silence_pixel_is_what_a_silent_clip_is_made_of(channels, colormap):
    from soundretrain.render import silence_pixel

    s = SpectrogramSettings(**SMALL, channels=channels, colormap=colormap)
    img = render_clip(np.zeros(SR, np.float32), SR, s)
    assert np.all(img == silence_pixel(s))


def test_augmentation_masks_three_channel_images_with_silence_not_the_darkest_colour():
    from retrain.augment import AugmentSettings, augment_image, copy_key, plan_copies
    from retrain.images import ImageRecord
    from soundretrain.render import silence_pixel

    s = SpectrogramSettings(**SMALL, channels="db,pcen,delta")
    image = render_clip(tone_then_silence(), SR, s)
    darkest = image.reshape(-1, 3)[np.argmin(image.reshape(-1, 3).astype(int).sum(1))]
    assert not np.array_equal(darkest, silence_pixel(s))  # the heuristic would be wrong here
    settings = AugmentSettings(copies=1, time_shift=False, time_masks=2, freq_masks=2,
                               max_mask_fraction=0.3, mix_probability=0.0)
    out = augment_image(image, None, seed=3, settings=settings, fill=silence_pixel(s))
    painted = (out != image).any(axis=-1)
    assert painted.any() and np.all(out[painted] == silence_pixel(s))
    # the mask colour is part of an augmented copy's cache key
    records = [ImageRecord("/x/a.png", "a/a.png", "a", "g", fold=1)]
    copy = plan_copies(records, [0], settings, [0], lambda i: 1)[0]
    assert copy_key("k", None, copy, settings) != copy_key("k", None, copy, settings, silence_pixel(s))


def test_augmented_bottlenecks_use_the_settings_silence_for_three_channels(tmp_path):
    from retrain.augment import AugmentSettings, plan_copies
    from retrain.bottlenecks import compute_augmented_bottlenecks
    from retrain.images import list_images
    from soundretrain.backbones.registry import load_module
    from tiny_models import make_colour_image_folders, make_tiny_image_module

    backbone = load_module(make_tiny_image_module(tmp_path / "tiny"))
    images = list_images(make_colour_image_folders(tmp_path / "img", per_class=3))
    settings = AugmentSettings(copies=1, mix_probability=0.0, time_masks=3, freq_masks=3,
                               max_mask_fraction=0.3)
    plan = plan_copies(images.records, range(len(images.records)), settings,
                       images.class_ids(), lambda i: "all")
    cache = str(tmp_path / "bn")

    def run(spectrogram_settings):
        return compute_augmented_bottlenecks(backbone, images.records, plan, settings, cache,
                                             spectrogram_settings, progress=False)

    plain, computed = run(None)
    assert computed == len(plan)
    # one coloured channel: the masks and cache keys are what they always were
    assert run(SpectrogramSettings())[1] == 0
    three, computed = run(SpectrogramSettings(channels="db,pcen,delta"))
    assert computed == len(plan) and not np.allclose(three, plain)


# ---------------------------------------------------------------- the TensorFlow twin

TWIN_SETTINGS = [
    dict(SMALL, channels="db@128,db@256,db@512"),
    dict(SMALL, channels="db,pcen,delta", fmin=50.0, fmax=3500.0, n_mels=24),
    dict(SMALL, channels="pcen,delta2,db@512"),
    dict(SMALL, channels="pcen", colormap="magma"),
    dict(SMALL, channels="delta"),
]


def _twin_clips(settings):
    from test_render_tf import clips

    return np.concatenate([clips(settings), tone_then_silence()[None, :settings.num_samples]])


@pytest.mark.parametrize("kwargs", TWIN_SETTINGS, ids=lambda kw: kw["channels"])
def test_tf_twin_renders_every_channel_as_render_clip(kwargs):
    import tensorflow as tf

    from soundretrain.render_tf import SpectrogramFrontEnd

    settings = SpectrogramSettings(**kwargs)
    y = _twin_clips(settings)
    got = SpectrogramFrontEnd(settings).rgb(tf.constant(y)).numpy()
    want = np.stack([render_clip(w, SR, settings) for w in y]).astype(np.float32)
    diff = np.abs(got - want)
    # the same function: a pixel at a rounding boundary may move by one step (TensorFlow's
    # FFT and PCEN's float32 smoother round differently from scipy's float64)
    assert diff.max() <= 1
    assert (diff > 0).mean() < 5e-3


def test_tf_twin_of_three_channels_converts_to_tflite_and_stays_exact_when_quantised():
    import os
    import tempfile

    import tensorflow as tf

    from label.models import _tflite_interpreter
    from soundretrain.render_tf import SpectrogramFrontEnd

    settings = SpectrogramSettings(**TWIN_SETTINGS[1])
    front = SpectrogramFrontEnd(settings)
    y = _twin_clips(settings)
    want = np.stack([render_clip(w, SR, settings) for w in y]).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, settings.num_samples], tf.float32, name="waveform")])
    def serving_default(waveform):
        return {"rgb": front.rgb(waveform)}

    for quantization in ("none", "dynamic"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [serving_default.get_concrete_function()], tf.Module())
        if quantization != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "front.tflite")
            with open(path, "wb") as f:
                f.write(converter.convert())
            got = _tflite_interpreter(path, 1).get_signature_runner("serving_default")(waveform=y)["rgb"]
        assert np.abs(got - want).max() <= 1, quantization
        assert (got != want).mean() < 5e-3, quantization


def test_fine_tuning_fills_masks_of_three_channel_maps_with_silence(tmp_path):
    from retrain.fine_tune import silence_colour
    from retrain.images import list_images
    from tiny_models import make_colour_image_folders

    records = list_images(make_colour_image_folders(tmp_path / "img", per_class=2)).records
    darkest = silence_colour(records)
    assert np.array_equal(silence_colour(records, spectrogram_settings=SpectrogramSettings()), darkest)
    three = silence_colour(records, spectrogram_settings=SpectrogramSettings(channels="db,pcen,delta"))
    assert three.tolist() == [0, 0, 128]
