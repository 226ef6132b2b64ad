"""The studio's training (label_image --serve --project_dir): POST /v1/train runs the real train
command (flows) in a child process, on a tiny local module, against a real server on 127.0.0.1.
Live status, the new model swapped in and used by /v1/label, uploads during training kept,
cancel and failure keeping the old model, one training at a time, and a server killed with
kill -9 mid-training resuming it when it starts again."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install '.[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (the test extra)")
pytest.importorskip("flows.train", reason="the flows package (the train command) is not on this branch")

from test_label_serve import assert_error  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("siren", "rain", "alarm")
SR = 22050
TRAIN_WAIT = 900  # seconds: the train command on a busy 2-core machine


def clip(cls: str, k: int, seconds: float = 1.5, seed: int = 5) -> bytes:
    from spectrograms.example import synthesize

    buf = io.BytesIO()
    sf.write(buf, synthesize(cls, k, 0, SR, seed)[: int(seconds * SR)], SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def train_flags(tmp_path_factory) -> Path:
    """The train command's flags for these tests: a tiny local module (a SavedModel path), the
    SGD head's steps (the logistic head is one step: no curve to watch), a bottleneck cache of
    their own."""
    from tiny_models import make_tiny_image_module

    folder = tmp_path_factory.mktemp("train")
    module = make_tiny_image_module(folder / "tiny_module", image_size=32, feature_size=16)
    path = folder / "train.cfg"
    path.write_text(f"--tfhub_module={module}\n--head=sgd\n--how_many_training_steps=200\n--bottleneck_dir={folder / 'bn'}\n")
    return path


def wait_until(client, states=("done", "failed", "cancelled"), timeout=TRAIN_WAIT) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        status = client.get("/v1/train").json()
        seen.append((status["state"], status.get("stage"), status.get("step")))
        if status["state"] in states:
            return status | {"seen": seen}
        time.sleep(0.3)
    raise AssertionError(f"training still {status['state']} after {timeout} s: {seen[-5:]}")


def ended(pid: int) -> bool:
    """The process is gone, or a zombie (it has exited; nothing reaps an orphan at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except OSError:
        return True


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


class Server:
    """`label_image --serve --project_dir FOLDER --train_flagfile FLAGS` in a new process."""

    def __init__(self, folder: Path, flags: Path, logs: Path) -> None:
        self.command = [sys.executable, "-m", "label.cli", "--serve", "--project_dir", str(folder), "--port", "0",
                        "--train_flagfile", str(flags), "--max_upload_mb", "4"]
        self.logs = logs
        self.proc = None

    def start(self) -> str:
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
        self.log = open(self.logs / f"server-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=env, stderr=self.log, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.log.seek(0)
            for line in self.log.read().splitlines():
                if line.startswith("serving "):
                    return line.split(" at ")[1].split()[0]
            time.sleep(0.2)
        self.stop()
        self.log.seek(0)
        raise AssertionError("the server did not start:\n" + self.log.read())

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_flags):
    """A project with 5 clips of each class, whose first training is interrupted by kill -9 of
    its server and finished by the next server; the other tests use that server."""
    folder = tmp_path_factory.mktemp("studio") / "project"
    server = Server(folder, train_flags, tmp_path_factory.mktemp("logs"))
    url = server.start()
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for cls in CLASSES:
                for k in range(5):
                    assert client.post(f"/v1/dataset/{cls}", content=clip(cls, k),
                                       params={"filename": f"{cls}{k}.wav"}).status_code == 201
            started = client.post("/v1/train")
            assert started.status_code == 202, started.text
            wait_until(client, states=("running",), timeout=60)
            child = json.loads((folder / ".studio" / "train.json").read_text())["pid"]
        killed = {"child": child, "snapshot": sorted(p.name for p in folder.iterdir())}
        server.stop(signal.SIGKILL)  # kill -9 mid-training
        deadline = time.monotonic() + 120
        while not ended(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        killed["child_ended"] = ended(child)
        killed["model_after_kill"] = (folder / ".studio" / "model").exists()
        killed["clips_after_kill"] = {cls: len(list((folder / cls).iterdir())) for cls in CLASSES}
        url = server.start()
        client = httpx.Client(base_url=url, timeout=60)
        resumed = client.get("/v1/train").json()
        # uploads during training are kept (in the project), and not in this training's snapshot
        late = client.post("/v1/dataset/siren", content=clip("siren", 9), params={"filename": "late.wav"})
        assert late.status_code == 201
        if client.get("/v1/train").json()["state"] == "running":
            assert_error(client.post("/v1/train"), 409, "running already")
        status = wait_until(client)
        yield {"client": client, "folder": folder, "first": started.json(), "status": status, "url": url,
               "flags": train_flags, "killed": killed, "resumed": resumed}
        client.close()
    finally:
        server.stop()


def test_a_server_killed_mid_training_resumes_it_when_it_starts_again(trained):
    """kill -9 of the server: the train command stops with it (its parent-death signal), the
    project folder is as it was, nothing half-written; the next server trains again."""
    killed, resumed = trained["killed"], trained["resumed"]
    assert killed["child_ended"], "the train command outlived its killed server"
    assert killed["snapshot"] == [".studio", *sorted(CLASSES)]
    assert killed["clips_after_kill"] == {cls: 5 for cls in CLASSES}
    assert killed["model_after_kill"] is False  # nothing half-written
    assert resumed["state"] in ("running", "done") and resumed["resumed"] is True
    assert trained["status"]["state"] == "done"


def test_training_runs_the_train_command_and_swaps_the_model_in(trained):
    client, status, first = trained["client"], trained["status"], trained["first"]
    assert first["state"] == "running" and first["classes"] == {cls: 5 for cls in CLASSES}
    assert status["state"] == "done", status
    assert status["classes"] == {cls: 5 for cls in CLASSES}  # the late clip came after the snapshot
    stages = [stage for _, stage, _ in status["seen"] if stage]
    assert "training" in stages and stages[-1] == "export"  # live progress, stage by stage
    assert status["progress"] == 1.0 and status["curve"] and isinstance(status["accuracy"], float)
    assert max(step for _, stage, step in status["seen"] if stage == "training") > 0
    info = client.get("/v1/model").json()
    assert info["model"] == "model_audio.tflite" and sorted(info["labels"]) == sorted(CLASSES)
    assert info["window_seconds"] == 4.0 and info["project"]["trained"] is True
    report = client.get("/v1/train/report").json()
    assert sorted(c["label"] for c in report["classes"]) == sorted(CLASSES)
    assert np.asarray(report["confusion_matrix"]["counts"]).shape == (3, 3)
    # /v1/label uses the new model
    answer = client.post("/v1/label", content=clip("rain", 7, 4.0, seed=11), params={"display": 1}).json()
    assert answer["label"] in CLASSES and answer["windows"][0]["spectrogram"].startswith("data:image/png")
    folder = trained["folder"]
    assert sorted(p.name for p in (folder / "siren").iterdir()) == ["late.wav"] + [f"siren{k}.wav" for k in range(5)]
    assert sorted(os.listdir(folder / ".studio" / "snapshot" / "siren")) == [f"siren{k}.wav" for k in range(5)]
    data = client.get("/v1/dataset").json()
    assert {c["name"]: c["in_model"] for c in data["classes"]} == {cls: True for cls in CLASSES}
    log = client.get("/v1/train/log").text
    assert "Done in" in log
    files = {f["name"] for f in client.get("/v1/export").json()["model"]}
    assert {"model_audio.tflite", "labels.txt", "report.json"} <= files
    assert_browser_downloads(client, trained["folder"])


def assert_browser_downloads(client, folder: Path) -> None:
    """The model's TF.js version (the train command's tfjs/) as a zip, and the in-browser
    page built around it (label_image --export_web) as a zip: listed by /v1/export, served."""
    import importlib.util
    import zipfile

    exports = client.get("/v1/export").json()
    if importlib.util.find_spec("tensorflowjs") is None:  # make install installs it (CI runs this)
        assert exports["tfjs"] is None and exports["web_zip"] is None
        return
    entry = next(f for f in exports["model"] if f["name"] == "tfjs.zip")
    assert entry["kind"] == "tfjs" and entry["folder"] is True and exports["tfjs"] == entry["url"]
    got = client.get(exports["tfjs"])
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    model = folder / ".studio" / "model" / "tfjs"
    with zipfile.ZipFile(io.BytesIO(got.content)) as z:
        assert sorted(z.namelist()) == sorted(f"model/tfjs/{p.name}" for p in model.iterdir())
        graph = json.loads(z.read("model/tfjs/model.json"))
    described = graph["userDefinedMetadata"]["soundretrain"]
    assert described["model_input"] == "waveform" and sorted(described["labels"]) == sorted(CLASSES)
    from label.web_vendor import missing_files

    if missing_files():  # TF.js is vendored from npm by make install
        assert exports["web_zip"] is None
        assert_error(client.get("/v1/export/web.zip"), 503, "needs TF.js")
        return
    got = client.get(exports["web_zip"])
    assert got.status_code == 200 and 'filename="project-web.zip"' in got.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(got.content)) as z:
        names = set(z.namelist())
        assert {"project-web/index.html", "project-web/backend.json", "project-web/model/model.json",
                "project-web/vendor/tf.min.js"} <= names
        assert '<meta name="soundretrain-backend" content="browser">' in z.read("project-web/index.html").decode()
        assert json.loads(z.read("project-web/model/model.json")) == graph
        config = json.loads(z.read("project-web/backend.json"))
    assert config["model"] == "model/model.json" and config["top_k"] == 3  # this server's top_k, 3 labels


def test_cancel_keeps_the_old_model(trained):
    client = trained["client"]
    model = trained["folder"] / ".studio" / "model"
    before = digest(model)
    assert client.post("/v1/train").status_code == 202
    wait_until(client, states=("running",), timeout=60)
    cancelled = client.delete("/v1/train")
    assert cancelled.status_code == 202
    status = wait_until(client)
    assert status["state"] == "cancelled" and "previous model" in status["message"]
    assert digest(model) == before
    assert client.post("/v1/label", content=clip("siren", 8, 4.0, seed=11)).status_code == 200
    assert_error(client.delete("/v1/train"), 409, "no training")


def test_a_failed_training_says_why_and_keeps_the_old_model(trained):
    """The train command refuses its flags (read from --train_flagfile at each start): one line
    in the status, the old model still serving."""
    client, flags = trained["client"], trained["flags"]
    model = trained["folder"] / ".studio" / "model"
    before = digest(model)
    good = flags.read_text()
    flags.write_text(good + "--how_many_training_steps=0\n")
    try:
        assert client.post("/v1/train").status_code == 202
        status = wait_until(client)
    finally:
        flags.write_text(good)
    assert status["state"] == "failed"
    assert "how_many_training_steps" in status["message"] and "\n" not in status["message"]
    assert digest(model) == before
    assert client.get("/v1/model").json()["model"] == "model_audio.tflite"
    assert client.post("/v1/label", content=clip("alarm", 8, 4.0, seed=11)).status_code == 200
