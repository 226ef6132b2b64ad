"""settings.py and manifest.py: the config file and the manifest round-trip."""
from __future__ import annotations

import dataclasses
import json

import pytest

from soundretrain.manifest import FIELDS, ManifestError, ManifestRow, read_manifest, write_manifest
from soundretrain.spectrogram_settings import CONFIG_FILENAME, SpectrogramSettings


def test_defaults_match_the_contract():
    s = SpectrogramSettings()
    assert s.to_dict() == {
        "sample_rate": 22050, "duration": 4.0, "pad_mode": "repeat", "long_clips": "cut",
        "window_hop": None, "n_mels": 128, "n_fft": 2048, "hop_length": 512, "fmin": 0.0,
        "fmax": None, "top_db": 80.0, "image_size": 224, "colormap": "viridis", "image_format": "png",
        "channels": ["db"],
    }
    assert CONFIG_FILENAME == "spectrogram_config.json"
    assert s.num_samples == 88200 and s.hop_seconds == 4.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_mels = 64  # type: ignore[misc]


def test_json_round_trip_and_unknown_keys(tmp_path):
    s = SpectrogramSettings(duration=5.0, fmax=8000.0, colormap="gray", long_clips="split", window_hop=2.5)
    s.save_json(tmp_path / CONFIG_FILENAME)
    assert SpectrogramSettings.load_json(tmp_path / CONFIG_FILENAME) == s
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_FILENAME]  # no temp file left behind
    d = json.loads((tmp_path / CONFIG_FILENAME).read_text())
    d["added_in_a_later_version"] = 1
    assert SpectrogramSettings.from_dict(d) == s


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"pad_mode": "mirror"}, "pad_mode"),
        ({"long_clips": "drop"}, "long_clips"),
        ({"duration": 0}, "duration"),
        ({"fmax": 20000.0}, "Nyquist"),
        ({"fmin": 5000.0, "fmax": 4000.0}, "above fmin"),
        ({"image_size": 2}, "image_size"),
        ({"image_size": 100000}, "at most 4096"),
        ({"top_db": -1.0}, "top_db"),
        ({"window_hop": 0.0}, "window_hop"),
        ({"image_format": "gif"}, "image_format"),
        # Extremes: inf overflowed, 1e9 asked for 238 GiB, nan gave flat images with exit 0.
        ({"duration": float("inf")}, "duration must be a finite number, not inf"),
        ({"duration": float("nan")}, "duration must be a finite number, not nan"),
        ({"duration": 3601.0}, "duration must be above 0 and at most 600 s"),
        ({"n_fft": 1_000_000_000}, "n_fft must be between 1 and 65536"),
        ({"hop_length": 10**9}, "hop_length must be between 1 and 65536"),
        ({"n_mels": 100_000}, "n_mels must be between 1 and 1024"),
        ({"sample_rate": 10**9}, "sample_rate must be between 1 and 384000"),
        ({"fmin": float("nan")}, "fmin must be a finite number, not nan"),
        ({"fmax": float("nan")}, "fmax must be a finite number, not nan"),
        ({"fmax": float("inf")}, "fmax must be a finite number"),
        ({"top_db": float("inf")}, "top_db must be a finite number"),
        ({"top_db": 1e6}, "top_db must be above 0 and at most 200"),
        ({"window_hop": float("inf")}, "window_hop must be a finite number"),
        ({"hop_length": 1, "duration": 60.0}, r"one clip's spectrogram would need \d+\.\d GiB"),
        ({"n_fft": "2048"}, "n_fft must be a whole number, not '2048'"),
        ({"n_mels": True}, "n_mels must be a whole number, not True"),
        ({"duration": None}, "duration must be a number, not None"),
    ],
)
def test_invalid_settings_are_refused_with_a_reason(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SpectrogramSettings(**kwargs)


def test_limits_leave_every_sensible_setting_alone():
    SpectrogramSettings(sample_rate=48000, duration=600.0, n_fft=65536, hop_length=16384, n_mels=1024,
                        fmin=20.0, fmax=20000.0, top_db=120.0, image_size=4096)
    SpectrogramSettings(sample_rate=8000, duration=0.01, n_fft=1, hop_length=1, n_mels=1)
    assert SpectrogramSettings(duration=4).duration == 4  # an int is a number


def test_a_config_holding_infinity_or_nan_is_refused_and_never_written(tmp_path):
    path = tmp_path / CONFIG_FILENAME
    SpectrogramSettings().save_json(path)
    d = json.loads(path.read_text())
    for key, bad in (("duration", "Infinity"), ("fmax", "NaN"), ("n_fft", "1e9")):
        path.write_text(json.dumps(d).replace(f'"{key}": {json.dumps(d[key])}', f'"{key}": {bad}'))
        with pytest.raises(ValueError, match=key):
            SpectrogramSettings.load_json(path)
    # Even a settings object forced past validation is never saved as Infinity.
    forced = SpectrogramSettings()
    object.__setattr__(forced, "duration", float("inf"))
    path.write_text("{}")
    with pytest.raises(ValueError):
        forced.save_json(path)
    assert path.read_text() == "{}"


def _rows():
    return [
        ManifestRow("siren/b.png", "siren", 2, "77", "/data/b.wav", 0.0, 4.0, False),
        ManifestRow("dog bark/a_w1.png", "dog bark", None, "a", "/data/a, with comma.wav", 4.0, 1.25, True),
    ]


def test_manifest_round_trip(tmp_path):
    path = tmp_path / "manifest.csv"
    write_manifest(path, _rows())
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(FIELDS) == "image,label,fold,group,source,start,duration,silent,bytes,sha256"
    assert lines[1] == 'dog bark/a_w1.png,dog bark,,a,"/data/a, with comma.wav",4,1.25,1,,'  # sorted by image
    assert read_manifest(path) == sorted(_rows(), key=lambda r: r.image)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]


def test_manifest_sizes_and_hashes_round_trip_and_are_checked(tmp_path):
    path = tmp_path / "manifest.csv"
    digest = "ab" * 32
    row = ManifestRow("siren/b.png", "siren", 2, "77", "/data/b.wav", 0.0, 4.0, False, 51234, digest)
    write_manifest(path, [row])
    assert path.read_text().splitlines()[1].endswith(f",51234,{digest}")
    assert read_manifest(path) == [row]
    path.write_text(path.read_text().replace(digest, "xyz"))
    with pytest.raises(ManifestError, match="line 2 is malformed .*sha256 'xyz'"):
        read_manifest(path)


def test_malformed_manifest_is_one_clear_error(tmp_path):
    bad = tmp_path / "manifest.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ManifestError, match="missing columns"):
        read_manifest(bad)
    bad.write_text(",".join(FIELDS) + "\nx.png,x,notanint,g,/s,0,1,0\n")
    with pytest.raises(ManifestError, match="line 2"):
        read_manifest(bad)
