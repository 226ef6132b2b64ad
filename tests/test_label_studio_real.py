"""The studio on real recordings (slow; skips without the shared UrbanSound8K folds): issue 17's
judging script. `label_image --serve --project_dir EMPTY` with no model, started as a user
starts it; 6 real clips of each of 3 classes POSTed (fold 1, each from its own recording);
POST /v1/train with the train command's defaults; GET /v1/train polled until done; then
/v1/label on unseen recordings of those classes (fold 2) must be right at least 70 % of the
time, and the project folder must hold the 18 clips in class folders.

The classes are drawn with a fixed seed (none is picked by looking at results), and so are the
clips; the figures are printed (run with -s) and written to $SOUNDRETRAIN_RESULTS when set.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="httpx is not installed (the test extra)")
pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install '.[serve]')")
pytest.importorskip("flows.train", reason="the flows package (the train command) is not on this branch")

ROOT = Path(__file__).resolve().parents[1]
SEED = 17
CLIPS = 6  # per class, as the script POSTs
TEST_PER_CLASS = 30  # unseen fold-2 clips labelled per class
TARGET = 0.70
TRAIN_BUDGET_S = 600  # the "within 10 minutes on 2 cores" (reported, not asserted: load varies)
# The train command draws a seed per run; fixed here (chosen before any result) so a run repeats.
TRAIN_SEED = int(os.environ.get("SOUNDRETRAIN_STUDIO_SEED", "1"))


def draw(shared_us8k: Path):
    """3 classes, 6 fold-1 clips of each from 6 recordings, and fold-2 clips to test: all by seed."""
    with open(shared_us8k / "metadata" / "UrbanSound8K.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(SEED)
    # classes with 6 recordings in fold 1 (all but jackhammer, which has 5)
    names = sorted(c for c in {r["class"] for r in rows}
                   if len({r["fsID"] for r in rows if r["class"] == c and r["fold"] == "1"}) >= CLIPS)
    classes = sorted(rng.choice(names, 3, replace=False).tolist())
    train, test = {}, {}
    for cls in classes:
        fold1 = [r for r in rows if r["class"] == cls and r["fold"] == "1"]
        recordings = sorted({r["fsID"] for r in fold1})
        train[cls] = []
        for recording in rng.choice(recordings, CLIPS, replace=False):
            slices = sorted((r for r in fold1 if r["fsID"] == recording), key=lambda r: r["slice_file_name"])
            train[cls].append(slices[int(rng.integers(0, len(slices)))])
        fold2 = sorted((r for r in rows if r["class"] == cls and r["fold"] == "2"), key=lambda r: r["slice_file_name"])
        picks = rng.choice(len(fold2), min(TEST_PER_CLASS, len(fold2)), replace=False)
        test[cls] = [fold2[i] for i in sorted(picks)]
    return classes, train, test


def audio_path(shared_us8k: Path, row: dict) -> Path:
    return shared_us8k / "audio" / f"fold{row['fold']}" / row["slice_file_name"]


@pytest.mark.slow
def test_the_judging_script_on_real_recordings(shared_us8k, tmp_path):
    classes, train, test = draw(shared_us8k)
    project = tmp_path / "EMPTY_DIR"
    project.mkdir()
    # The train command's defaults, but features computed afresh (not from the user's shared
    # bottleneck cache), so the time is what a first training takes.
    flags = tmp_path / "train.cfg"
    flags.write_text(f"--bottleneck_dir={tmp_path / 'bottlenecks'}\n--random_seed={TRAIN_SEED}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "label.cli", "--serve", "--project_dir", str(project),
                             "--port", "0", "--train_flagfile", str(flags)],
                            cwd=ROOT, env=env, stderr=log, stdout=subprocess.DEVNULL)
    try:
        url, deadline = None, time.monotonic() + 180
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            log.seek(0)
            url = next((line.split(" at ")[1].split()[0] for line in log.read().splitlines()
                        if line.startswith("serving ")), None)
        assert url, "the server did not start"
        with httpx.Client(base_url=url, timeout=300) as client:
            assert client.get("/v1/model").json()["model"] is None
            for cls in classes:
                for row in train[cls]:
                    path = audio_path(shared_us8k, row)
                    got = client.post(f"/v1/dataset/{cls}", content=path.read_bytes(), params={"filename": path.name})
                    assert got.status_code == 201, got.text
            started = time.monotonic()
            assert client.post("/v1/train").status_code == 202
            status = {"state": "running"}
            while status["state"] == "running":
                time.sleep(2)
                status = client.get("/v1/train").json()
            train_seconds = time.monotonic() - started
            assert status["state"] == "done", f"{status['state']}: {status['message']}"
            labels = client.get("/v1/model").json()["labels"]
            # top-1: the most probable class (top[0]); "label" is the model's decision, which says
            # "unknown" below its open-set threshold: both are reported
            right, decided, unknown, total, per_class, label_seconds = 0, 0, 0, 0, {}, []
            for cls in classes:
                expected = cls.replace("_", " ")
                hits = 0
                for row in test[cls]:
                    t = time.monotonic()
                    answer = client.post("/v1/label", content=audio_path(shared_us8k, row).read_bytes(),
                                         params={"filename": row["slice_file_name"]})
                    label_seconds.append(time.monotonic() - t)
                    assert answer.status_code == 200, answer.text
                    got = answer.json()
                    hits += got["top"][0]["label"] == expected
                    decided += got["label"] == expected
                    unknown += got["label"] == "unknown"
                per_class[cls] = hits / len(test[cls])
                right += hits
                total += len(test[cls])
            report = client.get("/v1/train/report").json()
        accuracy = right / total
        stored = {cls: sorted(p.name for p in (project / cls).iterdir()) for cls in classes}
        figures = {"classes": classes, "labels": labels, "train_seconds": round(train_seconds, 1),
                   "train_budget_s": TRAIN_BUDGET_S, "train_seed": TRAIN_SEED, "unseen_accuracy": round(accuracy, 4),
                   "unseen_decision_accuracy": round(decided / total, 4), "unseen_unknown_share": round(unknown / total, 4),
                   "unseen_per_class": {k: round(v, 4) for k, v in per_class.items()}, "unseen_clips": total,
                   "report_accuracy": report.get("accuracy"), "report_evaluation": report.get("evaluation", {}).get("method"),
                   "label_ms_median": round(1000 * float(np.median(label_seconds)), 1),
                   "load_average": os.getloadavg()[0]}
        print("\nstudio on real recordings:", json.dumps(figures))
        if os.environ.get("SOUNDRETRAIN_RESULTS"):
            Path(os.environ["SOUNDRETRAIN_RESULTS"]).write_text(json.dumps(figures, indent=2) + "\n")
        assert {cls: len(names) for cls, names in stored.items()} == {cls: CLIPS for cls in classes}
        assert sorted(p.name for p in project.iterdir()) == [".studio", *classes]
        assert accuracy >= TARGET, figures
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
