"""render.py: decoding odd formats, fitting durations, windows, silence, the image."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import soundfile as sf

from soundretrain.audio import AudioReadError, fit_duration, is_silent, load_audio, split_windows

from soundretrain.render import colormap_lut, log_mel, power_stft, render_clip, render_clip_indices, spectrogram_image
from soundretrain.spectrogram_settings import SpectrogramSettings

SR = 22050


def tone(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------- the image

def test_render_clip_shape_dtype_and_range():
    s = SpectrogramSettings(image_size=64)
    img = render_clip(tone(440, 1.0), SR, s)
    assert img.shape == (64, 64, 3)
    assert img.dtype == np.uint8
    assert img.max() > img.min()


@pytest.mark.parametrize("size", [32, 224, 299])
def test_image_size_is_respected(size):
    img = render_clip(tone(440, 0.5), SR, SpectrogramSettings(image_size=size, duration=0.5))
    assert img.shape == (size, size, 3)


def test_render_is_deterministic():
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(SR * 2)).astype(np.float32)
    s = SpectrogramSettings(image_size=96, duration=2.0)
    a, b = render_clip(y, SR, s), render_clip(y.copy(), SR, s)
    assert np.array_equal(a, b)


def test_low_frequencies_at_the_bottom():
    s = SpectrogramSettings(image_size=64, duration=1.0, colormap="gray")
    low = render_clip(tone(100, 1.0), SR, s)[..., 0].astype(float)
    high = render_clip(tone(8000, 1.0), SR, s)[..., 0].astype(float)
    # Brightest row: near the bottom (last rows) for the low tone, near the top for the high one.
    assert low.mean(axis=1).argmax() > 48
    assert high.mean(axis=1).argmax() < 24


def test_loudness_does_not_change_the_image():
    # power_to_db relative to the clip max: a quieter copy renders the same.
    rng = np.random.default_rng(1)
    y = (0.3 * rng.standard_normal(SR)).astype(np.float32)
    s = SpectrogramSettings(image_size=48, duration=1.0)
    diff = render_clip(y, SR, s).astype(int) - render_clip(y * 0.01, SR, s).astype(int)
    assert np.abs(diff).max() <= 1


def test_silent_clip_renders_as_the_minimum_not_bright():
    s = SpectrogramSettings(image_size=32, duration=1.0)
    for y in (np.zeros(SR, np.float32), np.full(SR, 1e-6, np.float32)):
        assert is_silent(y)
        S_db = log_mel(y, SR, s)
        assert np.all(S_db == -s.top_db)
        img = render_clip(y, SR, s)
        assert np.all(img == colormap_lut(s.colormap)[0])
    assert not is_silent(tone(440, 0.1, amp=0.01))


def test_log_mel_shape_and_range():
    s = SpectrogramSettings(n_mels=40, hop_length=256, top_db=60.0)
    S_db = log_mel(tone(1000, 1.0), SR, s)
    assert S_db.dtype == np.float32
    assert S_db.shape == (40, 1 + SR // 256)
    assert S_db.max() == pytest.approx(0.0)
    assert S_db.min() >= -60.0


def test_log_mel_matches_librosa_melspectrogram():
    import librosa

    rng = np.random.default_rng(2)
    y = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    s = SpectrogramSettings(fmin=50.0, fmax=8000.0)
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=SR, n_fft=2048, hop_length=512, n_mels=128, fmin=50.0, fmax=8000.0),
        ref=np.max,
        top_db=80.0,
    )
    assert np.allclose(log_mel(y, SR, s), ref, atol=1e-3)


@pytest.mark.filterwarnings("ignore:n_fft=.*too large:UserWarning")
@pytest.mark.parametrize("n,n_fft,hop", [(22050, 2048, 512), (1000, 512, 128), (300, 512, 100), (4001, 1024, 333)])
def test_power_stft_matches_librosa(n, n_fft, hop):
    import librosa

    y = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    ref = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop)) ** 2
    got = power_stft(y, n_fft, hop)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.allclose(got, ref, rtol=1e-4, atol=1e-3 * ref.max())


def test_colormaps_gray_and_matplotlib():
    gray = colormap_lut("gray")
    assert gray.shape == (256, 3) and gray.dtype == np.uint8
    assert np.array_equal(gray[:, 0], np.arange(256))
    viridis = colormap_lut("viridis")
    assert viridis.shape == (256, 3)
    assert not np.array_equal(viridis, gray)
    with pytest.raises(ValueError, match="unknown colormap"):
        colormap_lut("no-such-map")


def test_render_clip_is_lut_of_indices():
    s = SpectrogramSettings(image_size=40, duration=1.0, colormap="magma")
    y = tone(3000, 1.0)
    assert np.array_equal(render_clip(y, SR, s), colormap_lut("magma")[render_clip_indices(y, SR, s)])
    S_db = log_mel(fit_duration(y, SR, 1.0), SR, s)
    assert np.array_equal(render_clip(y, SR, s), spectrogram_image(S_db, s))


def test_render_clip_resamples_other_rates_like_load_audio(tmp_path):
    y48 = tone(1500, 1.0, sr=48000)
    sf.write(tmp_path / "t.wav", y48, 48000, subtype="FLOAT")
    s = SpectrogramSettings(image_size=48, duration=1.0)
    from_file = render_clip(load_audio(tmp_path / "t.wav", SR), SR, s)
    assert np.array_equal(render_clip(y48, 48000, s), from_file)


# ---------------------------------------------------------------- durations and windows

def test_fit_duration_cut_repeat_zero():
    y = np.arange(1, 11, dtype=np.float32)  # 10 samples at sr=10 -> 1 s
    assert np.array_equal(fit_duration(y, 10, 0.5), y[:5])
    rep = fit_duration(y[:4], 10, 1.0, "repeat")
    assert np.array_equal(rep, [1, 2, 3, 4, 1, 2, 3, 4, 1, 2])
    zero = fit_duration(y[:4], 10, 1.0, "zero")
    assert np.array_equal(zero, [1, 2, 3, 4, 0, 0, 0, 0, 0, 0])
    assert np.array_equal(fit_duration(np.zeros(0, np.float32), 10, 1.0), np.zeros(10))
    for out in (rep, zero):
        assert out.dtype == np.float32
    with pytest.raises(ValueError):
        fit_duration(y[:4], 10, 1.0, "mirror")


def test_repeat_and_zero_padding_render_differently():
    short = tone(1000, 0.5)
    rep = render_clip(short, SR, SpectrogramSettings(image_size=64, duration=2.0, pad_mode="repeat"))
    zero = render_clip(short, SR, SpectrogramSettings(image_size=64, duration=2.0, pad_mode="zero"))
    lut0 = colormap_lut("viridis")[0]
    # Zero padding leaves the right three quarters at the minimum colour; repeat does not.
    assert np.all(zero[:, 40:] == lut0)
    assert not np.all(rep[:, 40:] == lut0)


def test_split_windows_non_overlapping_with_tail_aligned_to_end():
    y = np.arange(25, dtype=np.float32)  # 2.5 s at sr=10
    wins = split_windows(y, 10, 1.0)
    assert [s for s, _ in wins] == [0.0, 1.0, 1.5]
    assert all(w.shape == (10,) for _, w in wins)
    assert np.array_equal(wins[-1][1], y[15:25])


def test_split_windows_overlapping_hop_and_short_clip():
    y = np.arange(30, dtype=np.float32)
    wins = split_windows(y, 10, 1.0, hop_seconds=0.5)
    assert [s for s, _ in wins] == [0.0, 0.5, 1.0, 1.5, 2.0]
    short = split_windows(y[:4], 10, 1.0, pad_mode="zero")
    assert len(short) == 1 and short[0][0] == 0.0
    assert np.array_equal(short[0][1], [0, 1, 2, 3, 0, 0, 0, 0, 0, 0])
    exact = split_windows(y[:20], 10, 1.0)
    assert [s for s, _ in exact] == [0.0, 1.0]


# ---------------------------------------------------------------- decoding odd formats

@pytest.mark.parametrize(
    "fmt,subtype,sr,channels,ext",
    [
        ("WAV", "PCM_U8", 22050, 1, "wav"),
        ("WAV", "PCM_16", 22050, 1, "wav"),
        ("WAV", "PCM_24", 44100, 1, "wav"),
        ("WAV", "PCM_32", 48000, 1, "wav"),
        ("WAV", "FLOAT", 16000, 1, "wav"),
        ("WAV", "PCM_16", 44100, 2, "wav"),
        ("WAV", "PCM_16", 8000, 1, "wav"),
        ("WAV", "PCM_24", 96000, 2, "wav"),
        ("FLAC", "PCM_16", 44100, 1, "flac"),
        ("FLAC", "PCM_24", 96000, 2, "flac"),
        ("OGG", "VORBIS", 44100, 2, "ogg"),
        ("AIFF", "PCM_16", 22050, 1, "aiff"),
        ("MP3", "MPEG_LAYER_III", 44100, 1, "mp3"),
    ],
)
def test_load_audio_odd_formats(tmp_path, fmt, subtype, sr, channels, ext):
    seconds = 0.5
    y = tone(1000, seconds, sr=sr)
    data = np.stack([y] * channels, axis=1) if channels > 1 else y
    path = tmp_path / f"clip.{ext}"
    sf.write(path, data, sr, format=fmt, subtype=subtype)
    out = load_audio(path, SR)
    assert out.dtype == np.float32 and out.ndim == 1
    # Resampled to SR (mp3 and vorbis may add a few ms of codec delay/padding).
    assert abs(out.shape[0] - seconds * SR) < 0.06 * SR
    assert 0.3 < np.abs(out).max() < 0.7
    # The tone survives decoding and resampling: the image's brightest row is in the same place.
    s = SpectrogramSettings(image_size=64, duration=seconds, colormap="gray")
    ref = render_clip(tone(1000, seconds), SR, s)[..., 0].mean(axis=1).argmax()
    assert abs(render_clip(out, SR, s)[..., 0].mean(axis=1).argmax() - ref) <= 2


def test_load_audio_stereo_is_averaged_to_mono(tmp_path):
    y = tone(440, 0.2)
    sf.write(tmp_path / "lr.wav", np.stack([y, np.zeros_like(y)], axis=1), SR, subtype="FLOAT")
    out = load_audio(tmp_path / "lr.wav", SR)
    assert np.allclose(out, y / 2, atol=1e-6)


# ---------------------------------------------------------------- bad input

def _bad_files(tmp_path):
    good = tone(440, 0.5)
    sf.write(tmp_path / "good.wav", good, SR)
    raw = (tmp_path / "good.wav").read_bytes()
    cases = {}
    (tmp_path / "empty.wav").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.wav"
    sf.write(tmp_path / "zero_length.wav", np.zeros(0, np.float32), SR)
    cases["zero-length"] = tmp_path / "zero_length.wav"
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 50)
    cases["non-audio"] = tmp_path / "notes.wav"
    (tmp_path / "noise.flac").write_bytes(np.random.default_rng(0).bytes(4000))
    cases["corrupt"] = tmp_path / "noise.flac"
    (tmp_path / "header_only.wav").write_bytes(raw[:30])
    cases["truncated header"] = tmp_path / "header_only.wav"
    cases["missing"] = tmp_path / "does_not_exist.wav"
    (tmp_path / "a_folder.wav").mkdir()
    cases["directory"] = tmp_path / "a_folder.wav"
    sf.write(tmp_path / "nan.wav", np.full(100, np.nan, np.float32), SR, subtype="FLOAT")
    cases["nan"] = tmp_path / "nan.wav"
    return cases


def test_bad_inputs_raise_one_line_audio_read_error(tmp_path):
    for what, path in _bad_files(tmp_path).items():
        with pytest.raises(AudioReadError) as info:
            load_audio(path, SR)
        err = info.value
        assert err.path == str(path), what
        assert err.reason and "\n" not in err.reason, what
        assert "\n" not in str(err)


def test_truncated_wav_is_refused_with_its_reason(tmp_path):
    # libsndfile quietly reads what is left of a cut-short WAV: 28 samples of a 2 s clip
    # became a "written" image of a 1 ms sound looped 4 s. It must fail with a reason.
    sf.write(tmp_path / "full.wav", tone(440, 1.0), SR)
    raw = (tmp_path / "full.wav").read_bytes()
    for keep in (100, len(raw) // 2):
        (tmp_path / "cut.wav").write_bytes(raw[:keep])
        with pytest.raises(AudioReadError) as info:
            load_audio(tmp_path / "cut.wav", SR)
        assert re.match(r"truncated file: its header announces \d+ bytes of audio, only \d+", info.value.reason)
    # A streaming writer's placeholder size (0xFFFFFFFF) is not truncation.
    data = raw.index(b"data") + 4
    (tmp_path / "streamed.wav").write_bytes(raw[:data] + b"\xff\xff\xff\xff" + raw[data + 4:])
    assert load_audio(tmp_path / "streamed.wav", SR).shape[0] == SR


def test_non_audio_reason_names_the_format_not_an_exception_type(tmp_path):
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 50)
    with pytest.raises(AudioReadError) as info:
        load_audio(tmp_path / "notes.wav", SR)
    assert "Format not recognised" in info.value.reason


@pytest.mark.parametrize("native_sr,channels,subtype,ext", [
    (8000, 1, "PCM_16", "wav"), (96000, 2, "PCM_24", "wav"), (44100, 2, "FLOAT", "wav"),
    (11025, 1, "PCM_U8", "wav"), (22050, 1, "PCM_16", "flac"), (48000, 2, "VORBIS", "ogg"),
])
def test_load_audio_equals_librosa_load(tmp_path, native_sr, channels, subtype, ext):
    """load_audio skips librosa's audio module for speed; its samples must stay librosa.load's."""
    import librosa

    y = np.random.default_rng(1).standard_normal((int(native_sr * 1.37), channels)).astype(np.float32) * 0.2
    path = tmp_path / f"clip.{ext}"
    sf.write(path, y, native_sr, subtype=subtype)
    for sr in (22050, 48000):
        expected, _ = librosa.load(path, sr=sr, mono=True)
        np.testing.assert_array_equal(load_audio(path, sr), expected)


def test_unreadable_file_reason_is_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.wav"
    sf.write(path, tone(440, 0.5), SR)
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: pretend it may not
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(path) else real_access(p, mode))
    with pytest.raises(AudioReadError) as info:
        load_audio(path, SR)
    assert info.value.reason == "permission denied"


@pytest.mark.parametrize("native_sr,ext", [(44100, "wav"), (8000, "flac"), (22050, "wav")])
def test_max_seconds_decodes_a_prefix_identical_to_the_whole_files_start(tmp_path, native_sr, ext):
    # --long_clips=cut decoded an hour-long recording whole to keep its first 4 s.
    y = np.random.default_rng(2).standard_normal((native_sr * 20, 2)).astype(np.float32) * 0.1
    path = tmp_path / f"long.{ext}"
    sf.write(path, y, native_sr)
    whole = load_audio(path, 22050)
    prefix = load_audio(path, 22050, max_seconds=2.0)
    assert 2 * 22050 <= prefix.shape[0] < whole.shape[0] // 4
    np.testing.assert_array_equal(prefix[: 2 * 22050], whole[: 2 * 22050])
