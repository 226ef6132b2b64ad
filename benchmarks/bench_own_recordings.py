"""The README's own-recordings commands on real recordings, as a user would run them: class
folders of ``--per_class`` UrbanSound8K recordings a class (one clip each, from fold 1,
copied with plain names ``siren_1.flac``), ``train --audio_dir ... --output_dir ...`` with no
other flag, then every fold-2 clip of those classes labelled with ``label_image
--audio_dir ... --json``: top-1, the share labelled ``unknown``, and the accuracy when
``unknown`` counts as wrong.

    python -m benchmarks.bench_own_recordings --classes dog_bark,siren,drilling --seed 1

Needs the shared folds (``--data_dir``); the recordings are copied into ``--work`` (default
a temporary folder). The train command's caches are the user's (``~/.cache/soundretrain``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
SHARED_US8K = ROOT.parent / "shared" / "datasets" / "urbansound8k-folds1-2"


def copy_recordings(data_dir: Path, out: Path, classes: Sequence[str], per_class: int, seed: int) -> dict:
    """``out/train/<class>/<class>_<k>.<ext>`` (one clip of each of ``per_class`` fold-1
    recordings) and ``out/unseen/<class>/...`` (every fold-2 clip); the counts."""
    rows = list(csv.DictReader(open(data_dir / "metadata" / "UrbanSound8K.csv", encoding="utf-8")))
    rng = random.Random(seed)
    counts = {}
    for cls in classes:
        by_recording: dict = {}
        for r in rows:
            if r["class"] == cls and r["fold"] == "1":
                by_recording.setdefault(r["fsID"], []).append(r)
        if len(by_recording) < per_class:
            raise SystemExit(f"{cls} has {len(by_recording)} recordings in fold 1, fewer than {per_class}")
        (out / "train" / cls).mkdir(parents=True)
        for k, recording in enumerate(rng.sample(sorted(by_recording), per_class)):
            r = rng.choice(by_recording[recording])
            src = data_dir / "audio" / "fold1" / r["slice_file_name"]
            shutil.copy(src, out / "train" / cls / f"{cls}_{k + 1}{src.suffix}")
        (out / "unseen" / cls).mkdir(parents=True)
        unseen = [r for r in rows if r["class"] == cls and r["fold"] == "2"]
        for k, r in enumerate(unseen):
            src = data_dir / "audio" / "fold2" / r["slice_file_name"]
            shutil.copy(src, out / "unseen" / cls / f"{cls}_new_{k + 1}{src.suffix}")
        counts[cls] = len(unseen)
    return counts


def run(command: list, cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(SHARED_US8K))
    parser.add_argument("--classes", default="dog_bark,siren,drilling")
    parser.add_argument("--per_class", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default=None, help="folder for the copies and the model (kept)")
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="own-recordings-"))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    copy_recordings(Path(args.data_dir), work, classes, args.per_class, args.seed)
    train_s, out = run([str(bin_dir / "train"), "--audio_dir", "train", "--output_dir", "model"], work)
    report = json.loads((work / "model" / "report.json").read_text())
    label_s, out = run([str(bin_dir / "label_image"), "--graph", "model/model_audio.tflite",
                        "--audio_dir", "unseen", "--json"], work)
    results = json.loads(out)["results"]
    truth = [Path(r["source"]).parent.name.replace("_", " ") for r in results]
    top1 = sum(t == r["top"][0]["label"] for t, r in zip(truth, results)) / len(results)
    said = sum(t == r["label"] for t, r in zip(truth, results)) / len(results)
    unknown = sum(r["label"] == "unknown" for r in results) / len(results)
    print(f"{len(classes)} classes x {args.per_class} recordings (seed {args.seed}): train says "
          f"{report['accuracy'] * 100:.1f}% ({report['evaluation'].get('method')}); fold-2 clips: "
          f"{len(results)}, top-1 {top1 * 100:.1f}%, unknown {unknown * 100:.1f}%, correct with unknown "
          f"counted wrong {said * 100:.1f}%; train {train_s:.0f} s, label {label_s:.0f} s ({work})")


if __name__ == "__main__":
    main()
