"""The shared audio layer against hostile files: channels in opposite phase (whose plain
mean is silence), MP3s whose header misstates their length, decoded whole and block by
block to the same samples."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from soundretrain.audio import is_silent, load_audio, to_mono
from soundretrain.audio_stream import AudioStream

SR = 8000


def sound(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """A chirp over noise: something every model hears, float32 in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
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


# ------------------------------------------------------------------ damaged MP3s (issue 19 item 5)

# soundfile's wheels bundle libsndfile with MP3 (1.1+); a system libsndfile may lack it.
needs_mp3 = pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile cannot write MP3")


def write_mp3(path, y: np.ndarray, sr: int) -> bytes:
    """An MP3 as libsndfile (LAME) writes it: a Xing tag frame first (frame count, bytes,
    TOC), then the audio frames."""
    sf.write(str(path), y, sr, format="MP3")
    return open(path, "rb").read()


def damaged_mp3s(folder, y: np.ndarray, sr: int) -> dict:
    """The probe's files, built from ``y``: ``clean``; ``lying`` (the tag's frame count says 3
    frames); ``no_tag`` (the tag's magic damaged: libsndfile then estimates the length from
    the size and the tag frame's bit rate); ``overstated`` (the tag says 100,000 frames)."""
    import struct

    clean = write_mp3(folder / "clean.mp3", y, sr)
    at = clean.find(b"Xing")
    assert at > 0, "libsndfile wrote no Xing tag"
    variants = {"lying": clean[:at + 8] + struct.pack(">I", 3) + clean[at + 12:],
                "no_tag": clean[:at] + b"Xyng" + clean[at + 4:],
                "overstated": clean[:at + 8] + struct.pack(">I", 100_000) + clean[at + 12:]}
    paths = {"clean": folder / "clean.mp3"}
    for name, data in variants.items():
        paths[name] = folder / f"{name}.mp3"
        paths[name].write_bytes(data)
    return paths


def hum(seconds: float, sr: int) -> np.ndarray:
    """A swelling 440 Hz tone: few bits a frame, so a VBR file's size over the tag frame's
    bit rate (libsndfile's estimate without a tag) falls far short, as in the probe."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.1 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def mp3s(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mp3")
    y = hum(40.0, 22050)
    return damaged_mp3s(folder, np.stack([y, 0.5 * y], axis=1), 22050), 40.0


@needs_mp3
def test_damaged_mp3s_decode_to_their_last_frame_with_a_warning(mp3s):
    """Probe: a 400 s MP3 with a damaged Xing tag decoded as 96 s, one whose frame count lies
    as 1 window, with exit 0 and no warning."""
    from soundretrain.audio import AudioWarning

    paths, seconds = mp3s
    assert sf.info(str(paths["lying"])).frames < 22050 and sf.info(str(paths["no_tag"])).duration < seconds / 2
    with warnings.catch_warnings(record=True) as seen:  # the clean file: nothing to say
        warnings.simplefilter("always")
        clean = load_audio(paths["clean"], SR)
    assert not [w for w in seen if issubclass(w.category, AudioWarning)]
    assert len(clean) == seconds * SR
    for name in ("lying", "no_tag", "overstated"):
        with pytest.warns(AudioWarning) as seen:
            y = load_audio(paths[name], SR)
        message, = {str(w.message) for w in seen if issubclass(w.category, AudioWarning)}
        assert message.startswith(f"{paths[name]}: its MP3 header says ") and "its frames hold 40." in message
        if name == "lying":  # the tag's gapless trimming is kept: the very samples of the clean file
            np.testing.assert_array_equal(y, clean)
            assert message.endswith("decoded to the last frame (other programs may stop at 0.007 s)")
        elif name == "no_tag":  # the damaged tag frame decodes as a silent frame, and no gapless trim
            extra = len(y) - len(clean)
            assert 0 <= extra < 0.1 * SR
            shift = max(range(extra + 1), key=lambda k: float(np.dot(y[k:k + len(clean)][-SR:], clean[-SR:])))
            np.testing.assert_allclose(y[shift:shift + len(clean)][-SR:], clean[-SR:], atol=0.02)
        else:
            assert message.endswith("decoded what is there")
            np.testing.assert_array_equal(y, clean)


@needs_mp3
def test_damaged_mp3s_stream_block_by_block_to_the_same_samples(mp3s):
    """The block-by-block path of long recordings reads the frames the whole decode reads,
    and each block exactly: libsndfile's MP3 decoder is not exact across soundfile's seek
    around every read (runs of near-silence after each block, in clean files too)."""
    from soundretrain.audio import AudioWarning, audio_header

    paths, _ = mp3s
    for name, path in paths.items():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            whole = load_audio(path, SR)
            stream = AudioStream(path, SR, block_seconds=3.0)
            blocks = streamed(path, SR, 3.0)
        assert stream.num_samples == len(whole) and stream.bounded
        np.testing.assert_array_equal(blocks, whole)
        assert (name == "clean") == (not [w for w in seen if issubclass(w.category, AudioWarning)])
        frames, rate, channels = audio_header(path)
        assert (rate, channels) == (22050, 2) and abs(frames / rate - len(whole) / SR) < 0.01


@needs_mp3
def test_mp3_frames_are_counted_past_tags_and_damage(tmp_path):
    from soundretrain import mp3_frames

    data = write_mp3(tmp_path / "a.mp3", sound(5.0), SR)
    found = mp3_frames.scan(tmp_path / "a.mp3")
    assert found.tag == "Xing" and found.tag_frames == found.audio_frames
    assert found.sample_rate == SR and found.skipped_bytes == 0
    id3v2 = b"ID3\x04\x00\x00\x00\x00\x01\x00" + bytes(128)  # a 128-byte ID3v2 tag
    id3v1 = b"TAG" + bytes(125)
    middle = data.find(b"\xff", len(data) // 2)
    damaged = id3v2 + data[:middle] + b"garbage!" * 20 + data[middle:] + id3v1
    (tmp_path / "b.mp3").write_bytes(damaged)
    other = mp3_frames.scan(tmp_path / "b.mp3")
    assert other.first_frame == len(id3v2) and other.audio_frames == found.audio_frames
    assert other.skipped_bytes >= 160
    (tmp_path / "c.mp3").write_bytes(b"\x00" * 1000)
    assert mp3_frames.scan(tmp_path / "c.mp3") is None


@needs_mp3
def test_the_cli_labels_a_lying_mp3_to_its_end_and_says_so(tmp_path, tmp_path_factory, capsys):
    """label_image: the windows of the whole file, one warning line; the same whole or streamed."""
    from label_models import build_tiny_model

    from label.cli import main
    from label.labeling import AudioInput, label_files, resolve_image_input
    from label.models import load_labeler

    tiny = build_tiny_model(str(tmp_path_factory.getbasetemp() / "label_tiny_model"))  # the label tests' model
    paths = damaged_mp3s(tmp_path, hum(12.0, SR), SR)
    code = main(["label_image", "--graph", tiny.paths["output_tflite"], "--audio", str(paths["lying"]), "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    assert len(json.loads(out)["results"][0]["windows"]) == 12  # the probe: 1 window
    lines = [line for line in err.splitlines() if "warning" in line]
    assert lines == [f"label_image: warning: {paths['lying']}: its MP3 header says 0.048 s but its frames hold "
                        "12.0 s; decoded to the last frame (other programs may stop at 0.048 s)"]
    labeler = load_labeler(tiny.paths["output_tflite"])
    audio = AudioInput(tiny.settings, 0.5, resolve_image_input(labeler))
    with pytest.warns(Warning):
        (_, whole, _), = label_files(labeler, [str(paths["no_tag"])], "audio", audio_input=audio)
        (_, streamed_result, _), = label_files(labeler, [str(paths["no_tag"])], "audio", audio_input=audio,
                                               stream_seconds=1.0)
    assert len(whole.windows) == len(streamed_result.windows) >= 23
    np.testing.assert_array_equal(np.stack([w.probabilities for w in whole.windows]),
                                  np.stack([w.probabilities for w in streamed_result.windows]))
