"""label_image --serve: the HTTP API on a real server (uvicorn on 127.0.0.1), a tiny real
model trained on generated sirens and other sounds, and every bad upload we can think of."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install '.[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (the test extra)")

from serve_models import SR, build_siren_model, example_clip  # noqa: E402

from label.cli import main  # noqa: E402
from label.labeling import AudioInput, label_files, resolve_image_input, result_dict, spectrogram_settings_for  # noqa: E402
from label.mic import TriggerSettings, trigger_parameters  # noqa: E402
from label.models import load_labeler  # noqa: E402
from label.serve import (BackgroundServer, LabelService, ServeSettings, _host_name, bind_socket,  # noqa: E402
                         is_loopback, network_urls, url_for)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sirens(tmp_path_factory):
    return build_siren_model(str(tmp_path_factory.getbasetemp() / "siren_model"))


def make_service(model_path: str, copies: int = 1, **settings) -> LabelService:
    labelers = [load_labeler(model_path) for _ in range(copies)]
    audio_input = AudioInput(spectrogram_settings_for(labelers[0]), None, resolve_image_input(labelers[0]))
    return LabelService(labelers, audio_input, ServeSettings(**settings))


@pytest.fixture(scope="module")
def server(sirens):
    """(url, service) of a server with small limits (1 MB, 20 s) and two copies of the model."""
    service = make_service(sirens.tflite, copies=2, max_upload_bytes=2**20, max_seconds=20.0,
                           trigger=TriggerSettings(record_seconds=2.0), record_seconds=2.0, pool_size=2)
    service.warm_up()
    with BackgroundServer(service) as url:
        yield url, service


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def wav_bytes(y: np.ndarray, sr: int = SR, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, message


# --- the API ------------------------------------------------------------------------


def test_model_description(client, sirens):
    d = client.get("/v1/model").json()
    assert d["labels"] == sirens.labels
    assert d["sample_rate"] == SR and d["window_seconds"] == 1.0 and d["format"] == "tflite"
    assert d["test_accuracy"] == pytest.approx(sirens.test_accuracy)
    assert d["limits"] == {"max_upload_bytes": 2**20, "max_seconds": 20.0}
    # the page's trigger follows label/mic.py's numbers, whatever they are
    assert d["trigger"] == json.loads(json.dumps(trigger_parameters(TriggerSettings(record_seconds=2.0))))


def test_a_siren_is_labelled_as_label_image_labels_it(client, sirens, tmp_path):
    """Same answer as `label_image --json --audio` (one labelling path), for raw bytes and a form."""
    path = tmp_path / "siren.wav"
    sf.write(path, example_clip("siren", 1, 0), SR, subtype="PCM_16")
    labeler = load_labeler(sirens.tflite)
    audio_input = AudioInput(spectrogram_settings_for(labeler), None, resolve_image_input(labeler))
    ((_, expected, error),) = list(label_files(labeler, [str(path)], "audio", audio_input=audio_input))
    assert error is None
    expected = result_dict(expected, labeler.labels, 5)

    raw = client.post("/v1/label", content=path.read_bytes(), params={"filename": "siren.wav"},
                      headers={"Content-Type": "audio/wav"})
    form = client.post("/v1/label", files={"file": ("siren.wav", path.read_bytes(), "audio/wav")})
    for response in (raw, form):
        assert response.status_code == 200, response.text
        got = response.json()
        assert got["source"] == "siren.wav"
        assert got["label"] == "siren" == got["top"][0]["label"]
        assert [t["label"] for t in got["top"]] == [t["label"] for t in expected["top"]]
        np.testing.assert_allclose([t["score"] for t in got["top"]], [t["score"] for t in expected["top"]], atol=1e-6)
        assert [w["start"] for w in got["windows"]] == [w["start"] for w in expected["windows"]]
        assert got["duration"] == pytest.approx(sf.info(path).duration, abs=1e-3)
        assert "spectrogram" not in got["windows"][0]  # only with ?display=1


def test_long_recording_gives_time_stamped_windows(client):
    y = np.concatenate([example_clip("siren", 2, 0)[: 3 * SR], example_clip("engine", 2, 0)[: 3 * SR]])
    got = client.post("/v1/label", content=wav_bytes(y), params={"top_k": 2}).json()
    starts = [w["start"] for w in got["windows"]]
    assert starts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [w["end"] for w in got["windows"]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert all(len(w["top"]) == 2 for w in got["windows"]) and len(got["top"]) == 2
    assert [w["top"][0]["label"] for w in got["windows"][:3]] == ["siren"] * 3
    assert [w["top"][0]["label"] for w in got["windows"][3:]] == ["engine"] * 3


def test_display_sends_the_spectrogram_the_model_saw(client, sirens):
    """?display=1: each window's image decodes to render_clip's pixels, exactly."""
    from PIL import Image

    from soundretrain.audio import split_windows
    from soundretrain.render import render_clip
    from soundretrain.spectrogram_settings import SpectrogramSettings

    y = example_clip("siren", 3, 1)[: int(2.5 * SR)]
    got = client.post("/v1/label", content=wav_bytes(y, subtype="FLOAT"), params={"display": 1}).json()
    settings = SpectrogramSettings.from_dict(json.loads(Path(sirens.tflite + ".json").read_text())["spectrogram"])
    windows = split_windows(y, SR, settings.duration, None, settings.pad_mode)
    assert len(got["windows"]) == len(windows) == 3
    for entry, (start, w) in zip(got["windows"], windows):
        assert entry["start"] == start
        prefix = "data:image/png;base64,"
        assert entry["spectrogram"].startswith(prefix)
        png = Image.open(io.BytesIO(base64.b64decode(entry["spectrogram"][len(prefix):])))
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), render_clip(w, SR, settings))
    assert got["spectrogram_as_model_input"] is True
    envelope = got["waveform"]
    assert len(envelope["min"]) == len(envelope["max"]) == 1000
    assert max(envelope["max"]) == pytest.approx(float(y.max()), abs=1e-3)
    assert min(envelope["min"]) == pytest.approx(float(y.min()), abs=1e-3)


def test_a_three_channel_model_shows_its_rgb_spectrogram(sirens, tmp_path):
    """A model trained on three-channel images (the presets' db/pcen/delta) serves, and each
    window's image decodes to render_clip's RGB pixels (the server crashed at start-up,
    rendering palette indices for an RGB image)."""
    from PIL import Image

    from soundretrain.audio import split_windows
    from soundretrain.export import export_model
    from soundretrain.render import render_clip
    from soundretrain.spectrogram_settings import SpectrogramSettings

    sidecar = dict(sirens.sidecar)
    settings = SpectrogramSettings.from_dict({**sidecar["spectrogram"], "channels": ["db", "pcen", "delta"]})
    sidecar["spectrogram"] = settings.to_dict()
    path = export_model(sirens.backbone, sirens.head, sirens.labels, sidecar,
                        output_tflite=str(tmp_path / "rgb.tflite"))["output_tflite"]
    service = make_service(path)
    service.warm_up()
    y = example_clip("siren", 3, 1)[: int(1.5 * SR)]
    with BackgroundServer(service) as url:
        got = httpx.post(url + "v1/label", content=wav_bytes(y, subtype="FLOAT"), params={"display": 1},
                         timeout=30).json()
    windows = split_windows(y, SR, settings.duration, None, settings.pad_mode)
    assert len(got["windows"]) == len(windows) >= 1
    prefix = "data:image/png;base64,"
    for entry, (_, w) in zip(got["windows"], windows):
        png = Image.open(io.BytesIO(base64.b64decode(entry["spectrogram"][len(prefix):])))
        assert png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), render_clip(w, SR, settings))


def test_an_audio_in_model_is_served(sirens, tmp_path):
    """A model that takes sound (the spectrogram front-end inside): same labels as the
    image model, and its spectrogram shown as the model computes it."""
    pytest.importorskip("soundretrain.audio_export", reason="audio-in export (issue 10) is not on this branch")
    from soundretrain.export import export_model

    path = export_model(sirens.backbone, sirens.head, sirens.labels, dict(sirens.sidecar),
                        output_audio_tflite=str(tmp_path / "sirens_audio.tflite"))["output_audio_tflite"]
    data = wav_bytes(np.concatenate([example_clip("siren", 2, 1)[: 2 * SR], example_clip("rain", 2, 1)[: 2 * SR]]))
    answers = {}
    for name, model in (("image", sirens.tflite), ("audio", path)):
        service = make_service(model)
        with BackgroundServer(service) as url:
            info = httpx.get(url + "v1/model").json()
            answers[name] = httpx.post(url + "v1/label", content=data, params={"display": 1}, timeout=30).json()
        assert info["labels"] == sirens.labels and info["sample_rate"] == SR
    image, audio = answers["image"], answers["audio"]
    assert service.labeler.input_kind == "waveform"
    assert [w["top"][0]["label"] for w in audio["windows"]] == [w["top"][0]["label"] for w in image["windows"]]
    assert audio["windows"][0]["top"][0]["label"] == "siren" and audio["windows"][-1]["top"][0]["label"] == "rain"
    np.testing.assert_allclose([t["score"] for t in audio["top"]], [t["score"] for t in image["top"]], atol=1e-3)
    assert audio["spectrogram_as_model_input"] is True
    assert [w["spectrogram"] for w in audio["windows"]] == [w["spectrogram"] for w in image["windows"]]


def test_other_formats_and_rates(client):
    y = example_clip("siren", 4, 0)
    for data in (wav_bytes(y, fmt="FLAC", subtype="PCM_16"), wav_bytes(y, fmt="OGG", subtype="VORBIS")):
        got = client.post("/v1/label", content=data)
        assert got.status_code == 200 and got.json()["label"] == "siren"
    import soxr

    stereo44 = np.stack([soxr.resample(y, SR, 44100)] * 2, axis=1)
    got = client.post("/v1/label", content=wav_bytes(stereo44, sr=44100))
    assert got.status_code == 200 and got.json()["label"] == "siren"


# --- bad input: always a clear 4xx JSON error, and the server goes on ------------------


def _truncated_wav() -> bytes:
    data = wav_bytes(example_clip("siren", 0, 0))
    return data[: len(data) // 3]


def _nan_wav() -> bytes:
    y = example_clip("rain", 0, 0)
    y[100] = np.nan
    return wav_bytes(y, subtype="FLOAT")


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


BAD_UPLOADS = {
    "empty": (b"", 400, "empty upload"),
    "text": (b"hello, I am not a sound\n" * 20, 422, "cannot decode audio"),
    "random bytes": (np.random.default_rng(0).bytes(5000), 422, "cannot decode audio"),
    "image": (_png(), 422, "cannot decode audio"),
    "truncated wav": (_truncated_wav(), 422, "truncated"),
    "wav header only": (wav_bytes(np.zeros(0, np.float32)), 422, ""),
    "silent wav": (wav_bytes(np.zeros(SR, np.float32)), 422, "silent"),
    "nan samples": (_nan_wav(), 422, "NaN"),
    "json": (b'{"audio": [0.1, 0.2]}', 422, "cannot decode audio"),
    "riff garbage": (b"RIFF\xff\xff\xff\xffWAVEfmt " + b"\x00" * 64, 422, ""),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_upload_is_a_clear_4xx(client, name):
    data, status, words = BAD_UPLOADS[name]
    response = client.post("/v1/label", content=data, params={"filename": f"{name}.wav"})
    assert_error(response, status, words)
    if status == 422:
        assert response.json()["error"].startswith(f"{name}.wav: ")  # the name given, not a temp path
        assert "/tmp" not in response.json()["error"]


def test_too_large_and_too_long(client):
    too_big = np.random.default_rng(1).bytes(2**20 + 1)
    assert_error(client.post("/v1/label", content=too_big), 413, "too large", "1 MB")
    # a lying Content-Length does not help: the body is counted as it arrives
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536
    assert_error(client.post("/v1/label", content=chunks()), 413, "too large")
    assert_error(client.post("/v1/label", files={"file": ("big.wav", too_big, "audio/wav")}), 413, "too large")
    long_quiet = (0.01 * np.random.default_rng(2).standard_normal(25 * 8000)).astype(np.float32)
    assert_error(client.post("/v1/label", content=wav_bytes(long_quiet, sr=8000), params={"filename": "long.wav"}),
                 413, "long.wav: 25.0 s", "20 s")


def test_curls_data_binary_content_type_is_the_audio(client):
    """`curl --data-binary @clip.wav` (the README's line) sends the file as
    application/x-www-form-urlencoded; the body is still the audio (it was refused with 415)."""
    got = client.post("/v1/label", content=wav_bytes(example_clip("siren", 3, 1)),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert got.status_code == 200 and got.json()["label"] == "siren"


def test_bad_requests(client):
    assert_error(client.post("/v1/label", content=b"x", params={"top_k": "many"}), 400, "top_k")
    assert_error(client.post("/v1/label", content=wav_bytes(example_clip("bird")), params={"top_k": 0}), 400, "top_k")
    assert_error(client.post("/v1/label", content=b"--xyz\r\nnonsense",
                             headers={"Content-Type": "multipart/form-data; boundary=xyz"}), 400)
    # A url-encoded form is not audio: its bytes are decoded as audio and refused as such.
    refused = client.post("/v1/label", data={"note": "no file here"})
    assert 400 <= refused.status_code < 500 and "audio" in refused.json()["error"]
    no_file = b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--xyz--\r\n'
    assert_error(client.post("/v1/label", content=no_file,
                             headers={"Content-Type": "multipart/form-data; boundary=xyz"}), 400, "no file")
    assert_error(client.get("/v1/label"), 405, "GET")
    assert_error(client.get("/v1/nothing"), 404, "/v1/nothing")
    assert_error(client.get("/static/../serve.py"), 404)
    assert client.get("/v1/model").status_code == 200  # still serving


def test_only_localhost_names_are_answered_on_loopback(server):
    url = server[0]
    assert_error(httpx.get(url + "v1/model", headers={"Host": "evil.example"}), 400, "localhost")
    assert httpx.get(url + "v1/model", headers={"Host": "localhost:1234"}).status_code == 200
    assert _host_name("[::1]:8000") == "::1" and _host_name("127.0.0.1:80") == "127.0.0.1"
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("app.js", "trigger.js", "wav.js", "capture-worklet.js", "style.css", "favicon.svg", "backend.js",
                 "audio.js", "view.js", "live.js", "studio.js", "project-api.js"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200, name
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    web = ROOT / "label" / "web"
    for path in web.iterdir():  # nothing from a CDN or anywhere else: the page works offline
        if path.is_dir():  # vendor/: TF.js from npm, whose text names URLs; the in-browser test
            continue       # checks every request that page makes (test_label_web_browser.py)
        text = path.read_text()
        for needle in ("http://", "https://", "//cdn", "@import url"):
            assert needle not in text.replace("http://www.w3.org/2000/svg", ""), f"{path.name} loads {needle}"


# --- concurrency ---------------------------------------------------------------------


def test_load_200_requests_from_4_clients(server):
    """Bounded load test: 200 requests, 4 clients, 120 s at most; no error, same answers."""
    url, service = server
    clips = [wav_bytes(example_clip(cls, 5, 0)[: int(1.5 * SR)]) for cls in ("siren", "engine", "bird", "rain")]
    expected = [httpx.post(url + "v1/label", content=c, timeout=30).json()["top"] for c in clips]
    deadline = time.monotonic() + 120
    latencies, failures = [], []

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(50):
                if time.monotonic() > deadline:
                    failures.append("deadline")
                    return
                which = (k + i) % len(clips)
                t = time.perf_counter()
                r = c.post("/v1/label", content=clips[which])
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200 or r.json()["top"] != expected[which]:
                    failures.append(f"{r.status_code}: {r.text[:200]}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client_loop, range(4)))
    assert failures == []
    assert len(latencies) == 200
    assert service.pool.qsize() == service.pool_size == 2  # every copy came back
    q = statistics.quantiles(latencies, n=20)
    print(f"\n200 requests, 4 clients: p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {q[18] * 1000:.0f} ms")
    assert service.waiting == 0


def test_answers_are_not_held_back_by_nagle(sirens):
    """Connections get TCP_NODELAY: without it each answer on a keep-alive connection
    waited ~40 ms for the client's delayed ACK (asyncio sets it only for IPPROTO_TCP sockets)."""
    import socket

    service = make_service(sirens.tflite)
    background = BackgroundServer(service)
    assert background.sock.proto == socket.IPPROTO_TCP
    with background as url, httpx.Client(base_url=url) as c:
        assert c.get("/v1/model").status_code == 200  # the connection stays open
        (connection,) = background.server.server_state.connections
        accepted = connection.transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_full_queue_answers_503_and_recovers(sirens):
    service = make_service(sirens.tflite, max_waiting=2)
    data = wav_bytes(example_clip("alarm", 0, 0))
    with BackgroundServer(service) as url:
        busy_model = service.pool.get()  # the one copy of the model is busy
        try:
            with ThreadPoolExecutor(2) as pool:
                waiting = [pool.submit(httpx.post, url + "v1/label", content=data, timeout=30) for _ in range(2)]
                deadline = time.monotonic() + 20
                while service.waiting < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                busy = httpx.post(url + "v1/label", content=data, timeout=30)
                assert_error(busy, 503, "busy")
                assert busy.headers["retry-after"] == "1"
                assert httpx.get(url + "v1/model").status_code == 200  # the page still loads
                service.pool.put(busy_model)
                busy_model = None
                assert [f.result().status_code for f in waiting] == [200, 200]
        finally:
            if busy_model is not None:
                service.pool.put(busy_model)
        assert httpx.post(url + "v1/label", content=data, timeout=30).status_code == 200


def _half_sent_upload(url: str, declared: int = 100_000, sent: bytes = b"RIFF"):
    """A socket that sent a POST /v1/label's headers and the first bytes of its body, then waits."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    s = socket.create_connection((where.hostname, where.port), timeout=60)
    s.sendall(b"POST /v1/label HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % declared + sent)
    return s


def _read_all(s) -> bytes:
    chunks = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_slow_uploads_never_block_other_clients(sirens):
    """Issue 19 item 1: half-sent uploads held every place in the queue (503 for everyone,
    for as long as they stayed open). Only fully received requests wait for the model now, and
    a body that has not arrived by the deadline is answered 408 and its connection closed."""
    service = make_service(sirens.tflite, max_waiting=4, upload_timeout=3.0)
    data = wav_bytes(example_clip("siren", 1, 0))
    with BackgroundServer(service) as url:
        stalled = [_half_sent_upload(url) for _ in range(12)]  # three times the queue
        try:
            for _ in range(3):
                got = httpx.post(url + "v1/label", content=data, timeout=60)
                assert got.status_code == 200 and got.json()["label"] == "siren", got.text
            assert service.waiting == 0
            for s in stalled:  # the deadline answers each, then closes (the test waits up to 60 s)
                answer = _read_all(s).decode("latin-1")
                assert answer.startswith("HTTP/1.1 408"), answer[:200]
                assert "upload too slow" in answer and "--upload_timeout" in answer
        finally:
            for s in stalled:
                s.close()
        assert httpx.post(url + "v1/label", content=data, timeout=60).status_code == 200


def test_a_request_whose_headers_never_end_is_closed(sirens):
    """A client sending a header byte now and then held its connection for ever (uvicorn
    has no deadline for headers): it is closed at the deadline, and others are answered."""
    import socket
    from urllib.parse import urlsplit

    service = make_service(sirens.tflite, upload_timeout=2.0)
    with BackgroundServer(service) as url:
        where = urlsplit(url)
        idle = socket.create_connection((where.hostname, where.port), timeout=60)
        partial = socket.create_connection((where.hostname, where.port), timeout=60)
        partial.sendall(b"POST /v1/label HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        try:
            assert httpx.get(url + "v1/model", timeout=60).status_code == 200
            assert _read_all(idle) == b"" and _read_all(partial) == b""  # closed, nothing answered
        finally:
            idle.close()
            partial.close()


def test_an_aborted_upload_is_one_log_line(sirens, caplog):
    """Issue 19 item 7: one aborted upload logged 132 lines and two tracebacks."""
    import logging

    service = make_service(sirens.tflite)
    with BackgroundServer(service) as url:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            s = _half_sent_upload(url)
            s.close()
            deadline = time.monotonic() + 60
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # anything else it would log comes with it
            assert httpx.get(url + "v1/model", timeout=60).status_code == 200
    records = [r for r in caplog.records if r.name.startswith(("label", "uvicorn")) and r.levelno >= logging.INFO]
    assert len(records) == 1, [r.getMessage() for r in records]
    (record,) = records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert re.search(r"^POST /v1/label: 127\.0\.0\.1:\d+ disconnected after sending [04] bytes of its body$",
                     record.getMessage()), record.getMessage()


def test_the_printed_url_can_be_opened():
    """Issue 19 item 11: `--host ::` printed http://[::]:PORT/, which no browser opens."""
    import socket

    v4 = bind_socket("0.0.0.0", 0)
    try:
        assert url_for(v4, "0.0.0.0") == f"http://127.0.0.1:{v4.getsockname()[1]}/"
        for other in network_urls(v4, "0.0.0.0"):
            assert not other.startswith("http://0.0.0.0") and other.endswith(f":{v4.getsockname()[1]}/")
    finally:
        v4.close()
    assert network_urls(bind_socket("127.0.0.1", 0), "127.0.0.1") == []
    try:
        v6 = bind_socket("::", 0)
    except OSError:
        pytest.skip("no IPv6 on this machine")
    try:
        port = v6.getsockname()[1]
        assert url_for(v6, "::") == f"http://[::1]:{port}/"
        assert url_for(v6, "[::]", "https") == f"https://[::1]:{port}/"
        assert all("[::]" not in u for u in network_urls(v6, "::"))
        with socket.create_connection(("::1", port), timeout=10):
            pass  # the printed address is one the server answers on
    finally:
        v6.close()


# --- the command line ----------------------------------------------------------------


def test_serve_flags_are_checked(sirens, capsys):
    assert main(["label_image", "--serve", "--graph", sirens.tflite, "--audio", "x.wav"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["label_image", "--serve"]) == 2
    assert "--graph" in capsys.readouterr().err
    assert main(["label_image", "--serve", "--graph", sirens.tflite, "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["label_image", "--serve", "--graph", sirens.tflite, "--max_seconds", "0"]) == 2
    assert "--max_seconds" in capsys.readouterr().err
    assert main(["label_image", "--serve", "--graph", sirens.tflite, "--max_upload_mb", "-1"]) == 2
    assert "--max_upload_mb" in capsys.readouterr().err
    assert main(["label_image", "--serve", "--graph", sirens.tflite, "--pool_size", "0"]) == 2
    assert "--pool_size" in capsys.readouterr().err
    for bad in ("0", "nan"):
        assert main(["label_image", "--serve", "--graph", sirens.tflite, "--upload_timeout", bad]) == 2
        assert "--upload_timeout" in capsys.readouterr().err


def test_serve_port_in_use_and_missing_model(sirens, tmp_path, capsys):
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert main(["label_image", "--serve", "--graph", sirens.tflite, "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    finally:
        taken.close()
    assert main(["label_image", "--serve", "--graph", str(tmp_path / "none.tflite"), "--port", "0"]) == 1
    assert "model not found" in capsys.readouterr().err


def test_label_image_serve_runs_until_ctrl_c(sirens):
    """The real command in a new process: it prints its URL, answers, and stops on SIGINT."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "label.cli", "--serve", "--graph", sirens.tflite, "--port", "0",
                             "--pool_size", "2"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 90
        lines = []
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving "):
                url = line.split(" at ")[1].split()[0]
        assert url and url.startswith("http://127.0.0.1:"), "".join(lines)
        info = httpx.get(url + "v1/model").json()
        assert info["labels"] == sirens.labels and info["pool_size"] == 2
        got = httpx.post(url + "v1/label", content=wav_bytes(example_clip("siren", 6, 0)), timeout=30).json()
        assert got["label"] == "siren"
        _half_sent_upload(url).close()  # an aborted upload: one line in the log, no traceback
        time.sleep(1.0)
        assert httpx.get(url + "v1/model").status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        log = proc.stderr.read()
        assert "stopped" in log
        assert "Traceback" not in log and "ERROR" not in log, log
        assert len([line for line in log.splitlines() if "disconnected" in line]) == 1, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl, as the docs tell users to make one)."""
    import shutil

    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (apt-get install openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_with_a_certificate(sirens, certificate):
    cert, key = certificate
    service = make_service(sirens.tflite, ssl_certfile=cert, ssl_keyfile=key)
    with BackgroundServer(service) as url:
        assert url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=url, verify=False, timeout=30) as c:  # self-signed
            assert c.get("/v1/model").json()["labels"] == sirens.labels
            assert c.post("/v1/label", content=wav_bytes(example_clip("siren", 1, 1))).json()["label"] == "siren"
        with pytest.raises(httpx.TransportError):  # plain http is not answered
            httpx.get(url.replace("https:", "http:") + "v1/model", timeout=10)


def test_a_bad_certificate_is_one_line_before_the_model_loads(sirens, certificate, tmp_path, capsys):
    cert, key = certificate
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("not a certificate\n")
    for args, words in (
        (["--ssl_certfile", str(not_pem), "--ssl_keyfile", key], "cannot use --ssl_certfile"),
        (["--ssl_certfile", cert], "cannot use --ssl_certfile"),  # the key is not in it
        (["--ssl_certfile", str(tmp_path / "none.pem")], "no such file"),
    ):
        assert main(["label_image", "--serve", "--graph", sirens.tflite, "--port", "0", *args]) == 1
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert main(["label_image", "--serve", "--graph", sirens.tflite, "--ssl_keyfile", key]) == 2
    assert "--ssl_keyfile goes with --ssl_certfile" in capsys.readouterr().err


def test_trigger_parameters_cover_the_trigger():
    p = trigger_parameters(TriggerSettings(record_seconds=1.5, trigger_db=9.0))
    assert p["record_seconds"] == 1.5 and p["trigger_db"] == 9.0
    assert {"block_seconds", "preroll_seconds", "adapt_seconds", "min_floor_db", "silence_db", "silence_rms",
            "loud_slowdown"} <= set(p)


def test_anti_phase_stereo_is_labelled_not_called_silent(client):
    """Probe: an upload with L = -R got 422 "the audio is silent" (its mono mix cancels)."""
    y = example_clip("siren", 1, 0)
    anti = client.post("/v1/label", content=wav_bytes(np.stack([y, -y], axis=1), subtype="FLOAT"),
                       params={"filename": "anti.wav"})
    mono = client.post("/v1/label", content=wav_bytes(y, subtype="FLOAT"))
    assert anti.status_code == 200, anti.text
    assert anti.json()["label"] == "siren" == mono.json()["label"]
    assert anti.json()["top"] == mono.json()["top"]
