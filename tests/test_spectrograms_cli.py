"""cli.py: flags, flag files, exit codes, one-line errors, the preview, the example, real data."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from spectrograms import cli
from spectrograms.example import CLASSES, synthesize
from spectrograms.example import main as example_main
from soundretrain.manifest import read_manifest
from soundretrain.audio import load_audio
from soundretrain.render import render_clip
from soundretrain.spectrogram_settings import CONFIG_FILENAME, SpectrogramSettings

REPO = Path(__file__).resolve().parents[1]
FAST_FLAGS = ["--sample_rate=8000", "--duration=0.5", "--n_fft=256", "--hop_length=64", "--n_mels=32",
              "--image_size=32", "--jobs=1"]


def _wav(path: Path, seconds=0.4, freq=440.0, sr=8000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t), sr)


def _folders(root: Path) -> Path:
    for k in range(3):
        _wav(root / "low" / f"l{k}.wav", freq=200 + 10 * k)
        _wav(root / "high" / f"h{k}.wav", freq=3000 + 100 * k)
    return root


def run_main(argv, capsys):
    code = cli.main(["spectrograms", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_help_is_readable(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    assert out.startswith("usage: spectrograms")
    for flag in ("--dataset", "--data_dir", "--output_dir", "--esc10", "--classes", "--folds", "--sample_rate",
                 "--duration", "--pad_mode", "--long_clips", "--window_hop", "--n_mels", "--n_fft",
                 "--hop_length", "--fmin", "--fmax", "--top_db", "--image_size", "--colormap",
                 "--image_format", "--channels", "--jobs", "--overwrite", "--strict", "--preview"):
        assert re.search(rf"--(\[no\])?{flag[2:]}:", out), flag


def test_a_run_writes_images_manifest_config_and_preview(tmp_path, capsys):
    data = _folders(tmp_path / "data")
    out_dir = tmp_path / "out"
    code, out, err = run_main(["--data_dir", str(data), "--output_dir", str(out_dir), "--preview=2",
                               "--colormap=magma", *FAST_FLAGS], capsys)
    assert code == 0
    assert "dataset auto-detected as folders" in err
    assert "written 6, up to date 0, failed 0, silent 0, missing 0" in out
    settings = SpectrogramSettings.load_json(out_dir / CONFIG_FILENAME)
    assert (settings.sample_rate, settings.duration, settings.n_mels, settings.colormap) == (8000, 0.5, 32, "magma")
    rows = read_manifest(out_dir / "manifest.csv")
    assert len(rows) == 6 and {r.label for r in rows} == {"low", "high"}
    with Image.open(out_dir / rows[0].image) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")),
                              render_clip(load_audio(rows[0].source, 8000), 8000, settings))
    with Image.open(out_dir / "preview.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    code, out, _ = run_main(["--data_dir", str(data), "--output_dir", str(out_dir), "--colormap=magma",
                             *FAST_FLAGS], capsys)
    assert code == 0 and "written 0, up to date 6" in out


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["--n_mels=abc"], 2, "--n_mels=abc"),
        (["--no_such_flag=1"], 2, "no_such_flag"),
        (["--dataset=timit"], 2, "--dataset"),
        (["--output_dir=/tmp/x"], 2, "--data_dir is required"),
        (["--data_dir=/tmp"], 2, "--output_dir is required"),
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "stray"], 2, "unexpected argument"),
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "--pad_mode=zero", "--fmax=99999"], 2, "Nyquist"),
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "--colormap=nope"], 2, "unknown colormap"),
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "--folds=one"], 2, "--folds takes whole numbers"),
        (["--data_dir=/definitely/not/here", "--output_dir=/tmp/x"], 1, "does not exist"),
        # was "spectrograms: error: ERROR:: Unable to open flagfile"
        (["--flagfile=/definitely/not/here.cfg"], 2, "error: Unable to open flagfile: "),
        # accepted and ignored before: the hop only exists between split windows
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "--window_hop=1"], 2, "--window_hop applies only with"),
        # 100000 px asked for 40 GB per image and got the run OOM-killed
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "--image_size=100000"], 2, "image_size must be at most 4096"),
        # inf overflowed (and was saved as Infinity), 1e9 asked for 238 GiB, nan drew flat images
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "--duration=inf"], 2, "duration must be a finite number, not inf"),
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "--n_fft=1000000000"], 2, "n_fft must be between 1 and 65536"),
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "--fmin=nan"], 2, "fmin must be a finite number, not nan"),
        (["--data_dir=/tmp", "--output_dir=/tmp/x", "--fmax=nan"], 2, "fmax must be a finite number, not nan"),
    ],
)
def test_bad_flags_and_paths_are_one_line(argv, code, message, capsys):
    got, _, err = run_main(argv, capsys)
    assert got == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectrograms: error:") and message in lines[0]


def test_wrong_layout_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(["--data_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 1 and err.count("\n") == 1 and "cannot tell what dataset" in err


def test_other_settings_in_output_dir_refused(tmp_path, capsys):
    data = _folders(tmp_path / "data")
    base = ["--data_dir", str(data), "--output_dir", str(tmp_path / "out"), *FAST_FLAGS]
    assert run_main(base, capsys)[0] == 0
    code, _, err = run_main([*base, "--top_db=60"], capsys)
    assert code == 1 and "other settings (top_db 80.0 -> 60.0)" in err
    code, _, err = run_main([*base, "--top_db=60", "--overwrite"], capsys)
    assert code == 0 and "settings changed or unknown" in err
    assert "spectrograms: spectrograms:" not in err  # the writer's notes used to be prefixed twice


def test_failures_listed_strict_and_nothing_written(tmp_path, capsys):
    data = _folders(tmp_path / "data")
    (data / "low" / "broken.wav").write_text("not audio")
    base = ["--data_dir", str(data), *FAST_FLAGS]
    code, out, err = run_main([*base, "--output_dir", str(tmp_path / "a")], capsys)
    assert code == 0 and "failed 1" in out
    assert f"failed: {data / 'low' / 'broken.wav'}: " in err
    code, _, _ = run_main([*base, "--output_dir", str(tmp_path / "b"), "--strict"], capsys)
    assert code == 1
    only_bad = tmp_path / "bad"
    (only_bad / "x").mkdir(parents=True)
    (only_bad / "x" / "a.wav").write_bytes(b"")
    code, _, err = run_main(["--data_dir", str(only_bad), "--output_dir", str(tmp_path / "c")], capsys)
    assert code == 1 and "no image could be written" in err


@pytest.mark.parametrize("name,dataset,duration", [("urbansound8k.cfg", "urbansound8k", 4.0),
                                                    ("esc50.cfg", "esc50", 5.0)])
def test_flag_files(name, dataset, duration):
    fv = cli.make_flags()
    fv(["spectrograms", f"--flagfile={REPO / 'configs' / name}", "--data_dir=d", "--output_dir=o"])
    assert fv.dataset == dataset
    settings = cli.settings_from_flags(fv)
    # the image chosen on validation (benchmarks/bench_images.py), the rest built-in defaults
    assert settings == SpectrogramSettings(duration=duration, channels="db,pcen,delta", n_mels=224,
                                           fmin=50.0, fmax=10000.0)


def test_flag_file_used_by_main(tmp_path, capsys):
    data = _folders(tmp_path / "data")
    cfg = tmp_path / "mine.cfg"
    cfg.write_text("# my settings\n--dataset=folders\n" + "\n".join(FAST_FLAGS) + "\n--image_size=48\n")
    code, _, _ = run_main([f"--flagfile={cfg}", "--data_dir", str(data), "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 0
    assert SpectrogramSettings.load_json(tmp_path / "o" / CONFIG_FILENAME).image_size == 48


def test_python_dash_m_spectrograms(tmp_path):
    result = subprocess.run([sys.executable, "-m", "spectrograms", "--data_dir", str(tmp_path / "none"),
                             "--output_dir", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"spectrograms: error: --data_dir {tmp_path / 'none'} does not exist"


# ---------------------------------------------------------------- the built-in example

def test_example_dataset_is_deterministic_and_in_folders_layout(tmp_path, capsys):
    assert example_main(["example", "--output_dir", str(tmp_path / "a"), "--clips_per_class=5"]) == 0
    assert example_main(["example", "--output_dir", str(tmp_path / "b"), "--clips_per_class=5"]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.wav"))
    assert len(files) == 25 and {p.parts[0] for p in files} == set(CLASSES)
    assert Path("siren/siren001_nohash_0.wav") in files  # 4 clips per recording group
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert example_main(["example"]) == 2


def test_example_classes_differ_and_clips_vary():
    sr = 22050
    clips = {c: synthesize(c, 0, 0, sr) for c in CLASSES}
    for y in clips.values():
        assert y.dtype == np.float32 and 1.5 * sr <= y.shape[0] <= 4.5 * sr and 0.29 < np.abs(y).max() <= 0.9
    assert not np.array_equal(synthesize("siren", 0, 0, sr), synthesize("siren", 0, 1, sr)[: clips["siren"].shape[0]])

    def centroid(y):  # where the energy sits in frequency
        mag = np.abs(np.fft.rfft(y)) ** 2
        return float((np.fft.rfftfreq(len(y), 1 / sr) * mag).sum() / mag.sum())

    c = {k: centroid(v) for k, v in clips.items()}
    assert c["engine"] < 600 < c["siren"] < c["bird"]


# ---------------------------------------------------------------- the real UrbanSound8K folds

def test_shared_urbansound8k_handful(shared_us8k, tmp_path, capsys):
    """A handful of real clips (one class, one fold) through the whole CLI."""
    out_dir = tmp_path / "us8k"
    code, out, err = run_main(["--flagfile", str(REPO / "configs" / "urbansound8k.cfg"), "--data_dir",
                               str(shared_us8k), "--output_dir", str(out_dir), "--classes=gun_shot",
                               "--folds=2", "--image_size=64", "--jobs=2"], capsys)
    assert code == 0, err
    assert "dataset urbansound8k (as asked)" in err
    rows = read_manifest(out_dir / "manifest.csv")
    assert {r.label for r in rows} == {"gun shot"} and {r.fold for r in rows} == {2}
    assert len(rows) == 35 and all(0 < r.duration <= 4.0 for r in rows)
    groups = {r.group for r in rows}
    assert len(groups) < len(rows)  # slices of one freesound recording share its fsID
    with Image.open(out_dir / rows[0].image) as im:
        assert im.size == (64, 64)


def test_preview_picks_spread_over_recordings_and_non_silent_first():
    from soundretrain.manifest import ManifestRow
    from spectrograms.preview import pick_preview_rows

    def row(name, group, silent=False, label="dog"):
        return ManifestRow(f"{label}/{name}.png", label, None, group, f"/a/{name}.wav", 0.0, 1.0, silent)

    rows = [row("a0", "a"), row("a1", "a"), row("a2", "a"), row("b0", "b", silent=True), row("c0", "c"),
            row("x0", "x", label="cat")]
    picked = pick_preview_rows(rows, 3)
    assert [r.image for r in picked["dog"]] == ["dog/a0.png", "dog/a1.png", "dog/c0.png"]
    assert [r.image for r in picked["cat"]] == ["cat/x0.png"]
    assert list(picked) == ["cat", "dog"]


@pytest.mark.parametrize("per_class", [1, 2, 5])
def test_preview_title_fits_the_figure(tmp_path, monkeypatch, per_class):
    # With 1-3 images per class the one-line title was cut off at both edges.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from soundretrain.manifest import ManifestRow
    from spectrograms.preview import write_preview

    rows = []
    for k in range(per_class):
        (tmp_path / "dog").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "dog" / f"d{k}.png")
        rows.append(ManifestRow(f"dog/d{k}.png", "dog", None, f"g{k}", f"/a/d{k}.wav", 0.0, 1.0, False))
    seen = {}
    real_savefig = Figure.savefig

    def savefig(fig, *args, **kwargs):
        renderer = fig.canvas.get_renderer()
        box = fig._suptitle.get_window_extent(renderer)
        seen["inside"] = box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
        seen["title"] = fig._suptitle.get_text()
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    write_preview(str(tmp_path), rows, per_class)
    assert seen["inside"], seen["title"]
    assert seen["title"].startswith(f"{per_class} spectrogram{'s' if per_class > 1 else ''} per class")


def test_empty_mel_bands_are_one_note_not_a_librosa_warning(tmp_path, capsys):
    data = _folders(tmp_path / "data")
    flags = [f for f in FAST_FLAGS if not f.startswith("--n_mels")]
    code, _, err = run_main(["--data_dir", str(data), "--output_dir", str(tmp_path / "o"), *flags, "--n_mels=300"],
                            capsys)
    assert code == 0
    assert "UserWarning" not in err and "librosa" not in err
    assert re.search(r"spectrograms: \d+ of the 300 mel bands are empty at n_fft 256", err)


def test_example_help_is_headed_by_the_module_not_a_file_path():
    result = subprocess.run([sys.executable, "-m", "spectrograms.example", "--help"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert "\nspectrograms.example:\n" in result.stdout and "example.py:" not in result.stdout
