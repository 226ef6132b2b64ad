"""The wheel: built from the repository, installed into a fresh venv in an empty temp folder,
it runs the README's UrbanSound8K commands with the presets by name.

The fresh venv gets the wheel alone (``--no-deps``); the heavy third-party dependencies
(TensorFlow, librosa, ...) come from the test's own environment through a ``.pth`` line, so
the test is offline and quick. That line adds the test environment's site-packages as a plain
path: ``.pth`` files inside it (the repository's editable-install finder) are not executed,
and the test checks that every stage is imported from the installed wheel.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
# Folders of a checkout that are no part of the source (when it is not a git checkout).
NOT_SOURCE = {".git", ".venv", "build", "dist", "demo_output", "training_summaries", "models",
              "bottlenecks", "__pycache__", ".pytest_cache"}
US8K_CLASSES = {3: "dog_bark", 8: "siren"}


def _source_files() -> list[str]:
    """The repository's files: what git tracks plus new files it does not ignore."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file()
                and not NOT_SOURCE & set(p.relative_to(REPO).parts) and not p.name.endswith(".egg-info")]


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: nothing that points Python at the repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
        f"\n--- stderr\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build the wheel from a copy of the repository and install it into a new venv."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    dist = root / "dist"
    # No build isolation and no index: the setuptools (+ wheel) of this environment build it,
    # offline.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--wheel-dir", str(dist), str(src)], cwd=root)
    wheel = next(dist.glob("soundretrain-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    shared = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_test_dependencies.pth").write_text("".join(f"{p}\n" for p in shared))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          str(wheel)], cwd=root)
    return {"wheel": wheel, "venv": venv, "python": python, "site": site, "root": root}


def _make_urbansound8k(root: Path, clips_per_fold: int = 2, sr: int = 22050) -> Path:
    """A small tree shaped like UrbanSound8K: metadata/UrbanSound8K.csv, audio/fold1..10,
    slice names <fsID>-<classID>-<occurrence>-<slice>.wav, 1-3 s clips."""
    rng = np.random.default_rng(0)
    rows = []
    fs_id = 100000
    for fold in range(1, 11):
        for class_id, name in US8K_CLASSES.items():
            for k in range(clips_per_fold):
                fs_id += 1
                seconds = 1.0 + 2.0 * rng.random()
                t = np.arange(int(seconds * sr)) / sr
                if name == "siren":  # a wailing sweep
                    f = 700 + 400 * np.sin(2 * np.pi * 0.8 * t)
                    y = 0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr)
                else:  # short noise bursts
                    y = 0.4 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 3 * t) > 0.6)
                y = (y + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
                file_name = f"{fs_id}-{class_id}-0-{k}.wav"
                path = root / "audio" / f"fold{fold}" / file_name
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, y, sr, subtype="PCM_16")
                rows.append([file_name, fs_id, 0.0, seconds, 1, fold, class_id, name])
    (root / "metadata").mkdir(parents=True)
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        w.writerows(rows)
    return root


@pytest.mark.slow
def test_the_wheel_runs_the_readme_urbansound8k_commands_with_presets_by_name(installed, tmp_path):
    venv, site = installed["venv"], installed["site"]
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for preset in ("urbansound8k", "esc50", "retrain_urbansound8k", "retrain_esc50"):
        assert f"soundretrain/configs/{preset}.cfg" in names
    dist_info = [n for n in names if ".dist-info/" in n]
    for doc in ("LICENSE", "NOTICE"):
        assert any(n.endswith(f"/{doc}") for n in dist_info), doc
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    for asset in ("index.html", "app.js", "trigger.js", "wav.js", "capture-worklet.js", "style.css"):
        assert f"label/web/{asset}" in names  # label_image --serve's page

    # An empty folder, nothing of the repository on the path.
    work = tmp_path / "work"
    work.mkdir()
    probe = _run([str(installed["python"]), "-c",
                  "import json, soundretrain, spectrograms, retrain, label, soundretrain.presets as p;"
                  "print(json.dumps([m.__file__ for m in (soundretrain, spectrograms, retrain, label)]"
                  " + [str(p.presets_folder())]))"], cwd=work)
    for path in json.loads(probe.stdout):
        assert Path(path).resolve().is_relative_to(site.resolve()), f"{path} is not from the wheel"
    _make_urbansound8k(work / "UrbanSound8K")
    bin_ = venv / "bin"

    # The README's commands, the presets by name (fewer steps, a private bottleneck cache).
    out = _run([str(bin_ / "spectrograms"), "--preset", "urbansound8k", "--data_dir=UrbanSound8K",
                "--output_dir=spec/us8k", "--jobs=2"], cwd=work)
    assert "written 40" in out.stdout, out.stdout
    config = json.loads((work / "spec/us8k/spectrogram_config.json").read_text())
    assert config["duration"] == 4 and config["n_mels"] == 224  # the preset's settings
    with open(work / "spec/us8k/manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["fold"] for r in rows} == {str(k) for k in range(1, 11)}

    quick = ["--how_many_training_steps=60", "--bottleneck_dir=bottlenecks", "--checkpoint_path=ckpt/head"]
    out = _run([str(bin_ / "retrain"), "--preset=urbansound8k", "--image_dir=spec/us8k", "--test_folds=10",
                *quick], cwd=work)
    assert "Final test accuracy" in out.stdout, out.stdout
    model = work / "models" / "us8k"  # where the preset puts the model, below the working folder
    assert (model / "model.tflite").is_file() and (model / "saved_model" / "saved_model.pb").is_file()
    assert (model / "output_labels.txt").read_text().split("\n")[:2] == ["dog bark", "siren"]
    assert list((work / "training_summaries").iterdir())

    out = _run([str(bin_ / "retrain"), "--preset=urbansound8k", "--image_dir=spec/us8k", "--cross_validate",
                *quick], cwd=work)
    assert "Cross-validation accuracy" in out.stdout, out.stdout

    clip = next((work / "UrbanSound8K/audio/fold10").glob("*-8-0-*.wav"))
    out = _run([str(bin_ / "label_image"), f"--graph={model / 'model.tflite'}", f"--audio={clip}"], cwd=work)
    assert "siren" in out.stdout, out.stdout
