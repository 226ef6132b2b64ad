"""The README's "Your own recordings" commands, run exactly as written (parsed out of
README.md, no flag added) on generated audio: 5 recordings a class with plain file names.
Slow (the default networks, their exports): make test-all."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from spectrograms.example import synthesize

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("siren", "engine", "bird")
SR = 22050


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- own-recordings:[^>]*-->\s*```sh\n(.*?)```", text, re.S)
    assert match, "README.md lost its own-recordings block"
    return [line for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_block_is_the_one_command_path():
    commands = readme_commands()
    assert commands[0].startswith("train --audio_dir my_sounds --output_dir my_model")
    assert all(shlex.split(c)[0] in ("train", "label_image") for c in commands)


@pytest.mark.slow
def test_the_readme_commands_train_and_label_as_written(tmp_path):
    for cls in CLASSES:  # 5 recordings a class, named as a field recorder names them
        (tmp_path / "my_sounds" / cls).mkdir(parents=True)
        for k in range(5):
            sf.write(tmp_path / "my_sounds" / cls / f"{cls}_{k + 1}.wav", synthesize(cls, k, 0, SR), SR)
    sf.write(tmp_path / "new_recording.wav", synthesize("siren", 11, 1, SR), SR)
    (tmp_path / "more_recordings").mkdir()
    for cls in CLASSES:
        for k in (12, 13):
            sf.write(tmp_path / "more_recordings" / f"{cls}_{k}.wav", synthesize(cls, k, 2, SR), SR)
    bin_dir = os.path.dirname(sys.executable)  # the venv's console scripts
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    outputs = []
    for command in readme_commands():
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=1800)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        outputs.append(done.stdout)
    report = json.loads((tmp_path / "my_model" / "report.json").read_text())
    assert report["evaluation"]["method"] == "kfold" and report["recordings"] == 15
    assert report["accuracy"] >= 0.8
    first = next(line for line in outputs[1].splitlines() if not line.startswith("#"))
    assert first.split()[0] == "siren", outputs[1]  # new_recording.wav
    with open(tmp_path / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    right = [Path(r["path"]).name.split("_")[0] == r["label"] for r in rows]
    assert len(rows) == 6 and sum(right) >= 5
