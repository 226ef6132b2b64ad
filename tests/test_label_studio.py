"""The studio's project API (label_image --serve --project_dir): a real server on 127.0.0.1,
a real project folder, clips generated in the test. Training has its own tests
(tests/test_label_studio_train.py)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install '.[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (the test extra)")

from serve_models import SR, build_siren_model, example_clip  # noqa: E402
from test_label_serve import BAD_UPLOADS, assert_error, make_service, wav_bytes  # noqa: E402

from label.cli import main  # noqa: E402
from label.project import Project, ProjectError, class_label  # noqa: E402
from label.serve import BackgroundServer, ServeSettings  # noqa: E402
from label.studio import Studio  # noqa: E402
from soundretrain.spectrogram_settings import SpectrogramSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sirens(tmp_path_factory):
    return build_siren_model(str(tmp_path_factory.getbasetemp() / "siren_model"))


def open_studio(folder: Path, **settings) -> Studio:
    settings.setdefault("max_upload_bytes", 2**20)
    settings.setdefault("max_seconds", 30.0)
    options = ServeSettings(**settings)
    project = Project(str(folder)).open()
    studio = Studio(project, lambda path: make_service(path, **settings), options, SpectrogramSettings())
    studio.start()
    return studio


@pytest.fixture
def studio(tmp_path):
    s = open_studio(tmp_path / "project")
    yield s
    s.shutdown()
    s.project.close()


@pytest.fixture
def client(studio):
    with BackgroundServer(None, studio=studio) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


def clip_bytes(cls: str, recording: int = 0, seconds: float = 1.0) -> bytes:
    return wav_bytes(example_clip(cls, recording, 0)[: int(seconds * SR)])


# --- an empty project -------------------------------------------------------------------


def test_an_empty_folder_is_a_project_without_a_model(client, studio):
    info = client.get("/v1/model").json()
    assert info["model"] is None and info["labels"] == []
    # before any model, the page records the window train will use (the spectrogram default)
    assert info["window_seconds"] == info["record_seconds"] == 4.0
    assert info["trigger"]["record_seconds"] == 4.0
    assert info["project"] == {"name": "project", "trained": False, "accuracy": None, "evaluation": None}
    data = client.get("/v1/dataset").json()
    assert data["classes"] == [] and data["total_clips"] == 0 and data["training"] is False
    assert_error(client.post("/v1/label", content=clip_bytes("siren")), 409, "no model yet", "POST /v1/train")
    assert client.get("/v1/train").json()["state"] == "idle"
    assert_error(client.post("/v1/train"), 400, "at least 2 classes", "no class has clips")
    assert_error(client.delete("/v1/train"), 409, "no training")
    assert_error(client.get("/v1/train/report"), 404, "no report")
    assert sorted(os.listdir(studio.project.root)) == [".studio"]


def test_without_a_project_there_is_no_dataset_api(sirens):
    service = make_service(sirens.tflite)
    with BackgroundServer(service) as url:
        assert_error(httpx.get(url + "v1/dataset"), 404, "/v1/dataset")
        assert_error(httpx.post(url + "v1/train"), 404)


# --- classes and clips ------------------------------------------------------------------


def test_collect_clips_into_class_folders(client, studio):
    root = Path(studio.project.root)
    created = client.put("/v1/dataset/siren")
    assert created.status_code == 201 and created.json() == {"name": "siren", "label": "siren", "created": True}
    assert client.put("/v1/dataset/siren").status_code == 200  # exists: nothing changes
    raw = client.post("/v1/dataset/siren", content=clip_bytes("siren"), params={"filename": "first siren.wav"})
    assert raw.status_code == 201, raw.text
    assert raw.json() == {"class": "siren", "id": "first_siren.wav", "bytes": len(clip_bytes("siren")),
                          "seconds": 1.0}
    form = client.post("/v1/dataset/siren", files={"file": ("first siren.wav", clip_bytes("siren", 1), "audio/wav")})
    assert form.status_code == 201 and form.json()["id"] == "first_siren-2.wav"  # never replaces a clip
    flac = io.BytesIO()
    sf.write(flac, example_clip("engine", 0, 0)[: SR], SR, format="FLAC")
    # a class is created by its first clip; a name without extension gets the format's own
    engine = client.post("/v1/dataset/dog_bark", content=flac.getvalue(), params={"filename": "take 1"})
    assert engine.status_code == 201 and engine.json()["id"] == "take_1.flac"
    assert sorted(p.name for p in (root / "siren").iterdir()) == ["first_siren-2.wav", "first_siren.wav"]
    assert (root / "siren" / "first_siren.wav").read_bytes() == clip_bytes("siren")
    assert (root / "dog_bark" / "take_1.flac").read_bytes() == flac.getvalue()

    data = client.get("/v1/dataset").json()
    assert [(c["name"], c["label"], c["count"]) for c in data["classes"]] == [("dog_bark", "dog bark", 1),
                                                                             ("siren", "siren", 2)]
    assert data["total_clips"] == 3
    assert {c["id"] for c in data["classes"][1]["clips"]} == {"first_siren.wav", "first_siren-2.wav"}
    assert all(c["seconds"] == 1.0 and c["added"] for cls in data["classes"] for c in cls["clips"])

    played = client.get("/v1/dataset/siren/first_siren.wav")
    assert played.status_code == 200 and played.content == clip_bytes("siren")
    assert played.headers["content-type"] == "audio/wav"

    moved = client.patch("/v1/dataset/siren/first_siren-2.wav", json={"class": "dog_bark"})
    assert moved.status_code == 200 and moved.json() == {"class": "dog_bark", "id": "first_siren-2.wav"}
    assert (root / "dog_bark" / "first_siren-2.wav").is_file() and not (root / "siren" / "first_siren-2.wav").exists()
    assert client.delete("/v1/dataset/dog_bark/first_siren-2.wav").json() == {"deleted": "first_siren-2.wav",
                                                                            "class": "dog_bark"}
    assert not (root / "dog_bark" / "first_siren-2.wav").exists()

    renamed = client.patch("/v1/dataset/dog_bark", json={"name": "Dog Bark"})
    assert renamed.json() == {"name": "Dog Bark", "label": "dog bark"}
    assert (root / "Dog Bark" / "take_1.flac").is_file() and not (root / "dog_bark").exists()
    assert client.delete("/v1/dataset/Dog%20Bark").json() == {"deleted": "Dog Bark", "clips": 1}
    assert sorted(os.listdir(root)) == [".studio", "siren"]
    assert os.listdir(root / ".studio" / "incoming") == [] and os.listdir(root / ".studio" / "trash") == []


def test_a_copy_of_a_clip_in_the_project_is_refused(client, studio):
    """Training counts byte-identical files as one recording, so a second copy adds nothing
    (and one in another class contradicts the first): refused at once, nothing stored."""
    root = Path(studio.project.root)
    assert client.post("/v1/dataset/siren", content=clip_bytes("siren"), params={"filename": "a.wav"}).status_code == 201
    for cls in ("siren", "rain"):
        again = client.post("/v1/dataset/" + cls, content=clip_bytes("siren"), params={"filename": "b.wav"})
        assert_error(again, 409, "already in the project, as siren/a.wav")
        assert again.json()["duplicate_of"] == {"class": "siren", "id": "a.wav"}  # the page skips these
    assert sorted(p.name for p in root.glob("*/*.wav")) == ["a.wav"]
    assert os.listdir(root / ".studio" / "incoming") == []
    # the same length with other samples is another recording
    assert client.post("/v1/dataset/siren", content=clip_bytes("siren", 1), params={"filename": "b.wav"}).status_code == 201
    moved = client.patch("/v1/dataset/siren/a.wav", json={"class": "rain"})  # a move is no copy
    assert moved.status_code == 200
    assert_error(client.post("/v1/dataset/siren", content=clip_bytes("siren")), 409, "as rain/a.wav")


def test_class_names_are_checked(client):
    client.put("/v1/dataset/dog_bark")
    # two folders that would train as one label
    assert_error(client.put("/v1/dataset/Dog-Bark"), 409, "'dog bark'", "'dog_bark'")
    for bad, words in ((".hidden", "leading '.'"), ("!!!", "letter or a digit"), ("x" * 65, "at most 64"),
                       ("%20", "needs a name"), ("a%5Cb", "cannot name a class folder")):
        assert_error(client.put(f"/v1/dataset/{bad}"), 400, words)
    assert client.put("/v1/dataset/a%2Fb").status_code in (400, 404, 405)  # never a folder a/b
    assert client.put("/v1/dataset/_background_").status_code == 201  # the train command's noise class
    assert_error(client.patch("/v1/dataset/dog_bark", json={"name": "_background_"}), 409, "exists already")
    assert_error(client.patch("/v1/dataset/dog_bark", content=b"not json"), 400, "JSON")
    assert_error(client.patch("/v1/dataset/dog_bark", content=b" " * 70000), 413, "too large")
    assert_error(client.patch("/v1/dataset/dog_bark", json={"nom": "x"}), 400, "new name")
    assert_error(client.patch("/v1/dataset/nothing", json={"name": "x"}), 404, "no class 'nothing'")
    assert_error(client.delete("/v1/dataset/nothing"), 404, "no class")
    assert class_label("_background_") == "_background_" and class_label("Air--Con 2") == "air con 2"


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_a_bad_clip_is_refused_as_label_refuses_it(client, studio, name):
    data, status, words = BAD_UPLOADS[name]
    response = client.post("/v1/dataset/siren", content=data, params={"filename": f"{name}.wav"})
    assert_error(response, status, words)
    root = Path(studio.project.root)
    assert not list(root.glob("siren/*")), "a refused clip was stored"
    assert os.listdir(root / ".studio" / "incoming") == []


def test_clip_limits_and_paths(client, studio):
    assert_error(client.post("/v1/dataset/siren", content=np.random.default_rng(0).bytes(2**20 + 1)), 413, "too large")
    long_quiet = (0.01 * np.random.default_rng(2).standard_normal(31 * 8000)).astype(np.float32)
    assert_error(client.post("/v1/dataset/siren", content=wav_bytes(long_quiet, sr=8000),
                             params={"filename": "long.wav"}), 413, "long.wav: 31.0 s")
    client.post("/v1/dataset/siren", content=clip_bytes("siren"), params={"filename": "a.wav"})
    for path in ("/v1/dataset/siren/b.wav", "/v1/dataset/siren/..%2F..%2Fetc%2Fpasswd", "/v1/dataset/siren/.x.wav",
                 "/v1/dataset/nothing/a.wav", "/v1/dataset/siren/a.txt"):
        assert client.get(path).status_code in (404, 405), path
        assert client.delete(path).status_code in (404, 405), path
    assert_error(client.patch("/v1/dataset/siren/a.wav", json={}), 400, "class to move it to")
    assert (Path(studio.project.root) / "siren" / "a.wav").is_file()


def test_training_needs_two_classes_of_two_clips(client):
    client.post("/v1/dataset/siren", content=clip_bytes("siren"))
    assert_error(client.post("/v1/train"), 400, "only 'siren' has clips")
    client.post("/v1/dataset/rain", content=clip_bytes("rain"))
    assert_error(client.post("/v1/train"), 400, "'rain' has 1 clip", "at least 2")


def test_project_zip_holds_the_clips_in_class_folders(client, studio):
    for k in range(2):
        client.post("/v1/dataset/siren", content=clip_bytes("siren", k), params={"filename": f"s{k}.wav"})
    client.post("/v1/dataset/rain", content=clip_bytes("rain"), params={"filename": "r.wav"})
    got = client.get("/v1/export/project.zip")
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    assert 'filename="project.zip"' in got.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(got.content)) as z:
        assert sorted(z.namelist()) == ["project/rain/r.wav", "project/siren/s0.wav", "project/siren/s1.wav"]
        assert z.read("project/siren/s0.wav") == clip_bytes("siren", 0)
    exports = client.get("/v1/export").json()
    assert exports["model"] == [] and exports["tfjs"] is None and exports["web_zip"] is None
    assert_error(client.get("/v1/export/model.zip"), 404, "no model")
    assert_error(client.get("/v1/export/web.zip"), 404, "no TF.js model yet", "make install")
    assert_error(client.get("/v1/export/model/..%2Fstatus.json"), 404)


# --- one owner, and what a kill leaves --------------------------------------------------


def test_a_project_has_one_server(tmp_path, capsys):
    folder = tmp_path / "p"
    with Project(str(folder)):
        with pytest.raises(ProjectError, match="in use by another label_image --serve"):
            Project(str(folder)).open()
        assert main(["label_image", "--serve", "--project_dir", str(folder), "--port", "0"]) == 1
        err = capsys.readouterr().err
        assert "in use by another label_image --serve" in err and len(err.strip().splitlines()) == 1
        other = subprocess.run([sys.executable, "-m", "label.cli", "--serve", "--project_dir", str(folder),
                                "--port", "0"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 1 and "in use by another label_image --serve" in other.stderr, other.stderr
        assert len(other.stderr.strip().splitlines()) == 1, other.stderr
    with Project(str(folder)):  # closed: free again
        pass
    (tmp_path / "file").write_text("x")
    assert main(["label_image", "--serve", "--project_dir", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["label_image", "--project_dir", str(folder), "--audio", "x.wav", "--graph", "m.tflite"]) == 2
    assert "--project_dir goes with --serve" in capsys.readouterr().err
    assert main(["label_image", "--serve", "--train_flagfile", str(folder / "none.cfg"), "--project_dir",
                 str(folder)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_what_a_kill_leaves_is_cleaned_at_the_next_start(tmp_path):
    """A kill -9 between writing a clip and linking it, mid-delete of a class, or mid-write of a
    temporary file: the next start removes the leftovers and the classes are intact."""
    folder = tmp_path / "p"
    with Project(str(folder)) as project:
        project.add_clip("siren", clip_bytes("siren"), "s.wav", lambda path, name: __import__(
            "label.project", fromlist=["Validated"]).Validated(1.0, ".wav"))
    studio_dir = folder / ".studio"
    (studio_dir / "incoming" / "0123456789abcdef.wav").write_bytes(b"half a clip")
    (studio_dir / "trash" / "rain.1a2b3c4d").mkdir()
    (studio_dir / "trash" / "rain.1a2b3c4d" / "r.wav").write_bytes(b"x")
    (folder / "siren" / ".s.wav.1a2b3c4d.tmp").write_bytes(b"half")
    (studio_dir / ".snapshot.1a2b3c4d.tmp" / "siren").mkdir(parents=True)  # a snapshot half-linked
    with Project(str(folder)) as project:
        assert os.listdir(studio_dir / "incoming") == [] and os.listdir(studio_dir / "trash") == []
        assert not (studio_dir / ".snapshot.1a2b3c4d.tmp").exists()
        assert os.listdir(folder / "siren") == ["s.wav"]
        assert project.counts() == {"siren": 1}


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile cannot write MP3")
def test_clip_lengths_and_formats_are_read_as_the_decoder_reads_them(tmp_path):
    """A clip's length is its frames', not what a damaged or lying MP3 header says (as
    everywhere else: soundretrain.audio.audio_header); its format, for an upload named
    without an extension, comes from the same opener."""
    from test_audio_decoding import damaged_mp3s, sound

    from label.project import extension_of

    folder = tmp_path / "project"
    (folder / "siren").mkdir(parents=True)
    paths = damaged_mp3s(folder / "siren", sound(6.0, sr=22050), 22050)
    assert sf.info(str(paths["lying"])).duration < 1  # the header says 3 frames
    project = Project(str(folder)).open()
    try:
        seconds = {c["id"]: c["seconds"] for c in project.clips("siren")}
    finally:
        project.close()
    assert set(seconds) == {"clean.mp3", "lying.mp3", "no_tag.mp3", "overstated.mp3"}
    for name in ("lying.mp3", "no_tag.mp3", "overstated.mp3"):
        assert abs(seconds[name] - seconds["clean.mp3"]) < 0.1, seconds
    assert 5.9 < seconds["clean.mp3"] < 6.2
    assert extension_of(str(paths["lying"]), "upload") == ".mp3"
    assert extension_of(str(tmp_path / "missing"), "upload") is None
