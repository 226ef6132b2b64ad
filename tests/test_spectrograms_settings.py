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
    ],
)
def test_invalid_settings_are_refused_with_a_reason(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SpectrogramSettings(**kwargs)


def _rows():
    return [
        ManifestRow("siren/b.png", "siren", 2, "77", "/data/b.wav", 0.0, 4.0, False),
        ManifestRow("dog bark/a_w1.png", "dog bark", None, "a", "/data/a, with comma.wav", 4.0, 1.25, True),
    ]


def test_manifest_round_trip(tmp_path):
    path = tmp_path / "manifest.csv"
    write_manifest(path, _rows())
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(FIELDS) == "image,label,fold,group,source,start,duration,silent"
    assert lines[1] == 'dog bark/a_w1.png,dog bark,,a,"/data/a, with comma.wav",4,1.25,1'  # sorted by image
    assert read_manifest(path) == sorted(_rows(), key=lambda r: r.image)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]


def test_malformed_manifest_is_one_clear_error(tmp_path):
    bad = tmp_path / "manifest.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ManifestError, match="missing columns"):
        read_manifest(bad)
    bad.write_text(",".join(FIELDS) + "\nx.png,x,notanint,g,/s,0,1,0\n")
    with pytest.raises(ManifestError, match="line 2"):
        read_manifest(bad)
