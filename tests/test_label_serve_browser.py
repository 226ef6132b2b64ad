"""label_image --serve end to end in a real headless Chromium (Debian's), driven by
Selenium through chromedriver, its fake microphone playing a generated siren from a WAV.

The page records, sends, and shows the label; uploads a long file and shows its
windows; listens continuously with the energy trigger and labels the event; downloads
its history as CSV; and its JavaScript trigger finds exactly the events label/mic.py
finds. Screenshots go to the test's folder (and to $SOUNDRETRAIN_SCREENSHOTS when set:
docs/images/serve.png is one of them).

CI installs chromium and chromium-driver (.ci/run), so there these tests must run;
elsewhere they skip, saying what is missing.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from chromium import missing_browser, require, start_chromium
from serve_models import SR, build_siren_model, example_clip

ROOT = Path(__file__).resolve().parents[1]
RECORD_SECONDS = 2.0
WAIT = 60  # seconds for anything the page does (the machine may be busy)


def _missing() -> list[str]:
    missing = missing_browser()
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the {package} package (pip install '.[test]')")
    return missing


@pytest.fixture(scope="module")
def requirements():
    require(_missing())  # .ci/run installs them: fails under CI=true rather than skip


@pytest.fixture(scope="session")
def sirens(tmp_path_factory):
    return build_siren_model(str(tmp_path_factory.getbasetemp() / "siren_model"))


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> str:
    """What the fake microphone plays, looped: 0.6 s of digital silence, then 2.4 s of
    a siren the model never trained on (48 kHz, as a sound card would give)."""
    from spectrograms.example import synthesize

    sr = 48000
    siren = synthesize("siren", 1, 0, sr, seed=7)[: int(2.4 * sr)]
    y = np.concatenate([np.zeros(int(0.6 * sr), np.float32), siren])
    path = tmp_path_factory.mktemp("mic") / "siren_mic.wav"
    sf.write(path, y, sr, subtype="PCM_16")
    return str(path)


@pytest.fixture(scope="module")
def server(requirements, sirens):
    """`label_image --serve` in a new process, as a user starts it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "label.cli", "--serve", "--graph", sirens.tflite, "--port", "0",
         "--record_seconds", str(RECORD_SECONDS)],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines, url = [], None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving "):
            url = line.split(" at ")[1].split()[0]
    if url is None:
        proc.kill()
        pytest.fail("label_image --serve did not start:\n" + "".join(lines))
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(requirements, mic_wav, downloads, tmp_path_factory):
    driver = start_chromium(str(tmp_path_factory.mktemp("chromium-profile")), mic_wav, downloads, script_timeout=WAIT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    WebDriverWait(browser, WAIT).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    return browser


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a real picture, not a blank page
    target = os.environ.get("SOUNDRETRAIN_SCREENSHOTS")
    if target:
        os.makedirs(target, exist_ok=True)
        shutil.copy(path, os.path.join(target, path.name))
    return path


def wait_for(driver, condition, message: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.2).until(condition)
    except TimeoutException:
        status = driver.execute_script("return document.getElementById('status').textContent")
        raise AssertionError(f"{message} (page status: {status!r})") from None


def text(driver, css: str) -> str:
    """The element's text as written (``.text`` would apply CSS text-transform)."""
    return driver.execute_script("return document.querySelector(arguments[0]).textContent.trim()", css)


def history_rows(driver) -> list[list[str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#history tbody tr')].map(r => [...r.cells].map(c => c.textContent))")


def test_page_shows_the_model(page, sirens):
    info = text(page, "#model-info")
    assert "sirens.tflite" in info and "5 labels" in info and "siren" in info
    assert f"{100 * sirens.test_accuracy:.1f} %" in info


def test_record_from_the_microphone_shows_siren(page, tmp_path):
    from selenium.webdriver.common.by import By

    page.find_element(By.ID, "record").click()
    wait_for(page, lambda d: text(d, "#result-label"), "no result after recording")
    assert text(page, "#result-label") == "siren"
    bars = page.execute_script(
        "return [...document.querySelectorAll('#top li')].map(li => [li.dataset.label, +li.dataset.score])")
    assert len(bars) == 5 and bars[0][0] == "siren"
    assert [s for _, s in bars] == sorted((s for _, s in bars), reverse=True)
    assert text(page, "#result-source").startswith("recording-")
    assert f"{RECORD_SECONDS:.2f} s" in text(page, "#result-source")  # the trigger's record_seconds, from GET /v1/model
    size = page.execute_script("const i = document.getElementById('spectrogram'); return [i.naturalWidth, i.naturalHeight]")
    assert size == [32, 32]  # the model's input image, from render_clip on the server
    assert page.execute_script("return document.getElementById('waveform').width") > 0
    assert history_rows(page)[0][3] == "siren"
    screenshot(page, tmp_path, "serve-record")


def test_upload_a_long_file_shows_its_windows(page, tmp_path):
    from selenium.webdriver.common.by import By

    y = np.concatenate([example_clip("siren", 2, 0)[: 3 * SR], example_clip("engine", 2, 0)[: 3 * SR]])
    path = tmp_path / "street.flac"
    sf.write(path, y, SR)
    page.find_element(By.ID, "file").send_keys(str(path))
    wait_for(page, lambda d: text(d, "#result-source").startswith("street.flac"), "the upload was not labelled")
    rows = page.execute_script(
        "return [...document.querySelectorAll('#windows tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
    assert [r[0] for r in rows] == [f"{s:.2f}–{s + 1:.2f} s" for s in range(6)]
    assert [r[1] for r in rows] == ["siren"] * 3 + ["engine"] * 3
    page.find_elements(By.CSS_SELECTOR, "#windows tbody tr")[4].click()
    assert text(page, "#top-scope") == "(window 4.00–5.00 s)"
    assert text(page, "#top li:first-child .name") == "engine"
    assert "window 4.00–5.00 s: exactly what the model saw (32×32)" in text(page, "#spectrogram-caption")
    # a long file is headed by what it holds over time, not by the mean of its windows
    assert text(page, "#result-label") == "siren, engine"
    assert [li.text for li in page.find_elements(By.CSS_SELECTOR, "#detections li")][:2] == [
        text(page, "#detections li:nth-child(1)"), text(page, "#detections li:nth-child(2)")]
    assert text(page, "#detections li:nth-child(1)").startswith("siren 0.00–3.00 s")
    assert text(page, "#detections li:nth-child(2)").startswith("engine 3.00–6.00 s")
    assert page.execute_script("return document.getElementById('timeline').height") > 0
    screenshot(page, tmp_path, "serve-windows")


def test_drop_a_file_on_the_page(page):
    """A drag-and-drop: a DragEvent carrying a File, dropped on the drop zone, labelled once."""
    before = len(history_rows(page))
    siren = example_clip("siren", 3, 0)[: 2 * SR]
    page.execute_async_script("""
        const [samples, sr, done] = arguments;
        import('/static/wav.js').then(m => {
            const file = new File([m.encodeWav(Float32Array.from(samples), sr)], 'dropped.wav', {type: 'audio/wav'});
            const data = new DataTransfer();
            data.items.add(file);
            const zone = document.getElementById('dropzone');
            zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: data, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
            done();
        });
    """, siren.tolist(), SR)
    wait_for(page, lambda d: text(d, "#result-source").startswith("dropped.wav"), "the dropped file was not labelled")
    assert text(page, "#result-label") == "siren"
    time.sleep(1.0)  # a second (duplicate) answer would arrive by now
    rows = history_rows(page)
    assert len(rows) == before + 1 and rows[0][1] == "dropped.wav"
    assert "over" not in page.execute_script("return document.getElementById('dropzone').className")


def test_a_bad_file_shows_the_servers_error(page, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "notes.wav"
    path.write_text("not a sound\n" * 50)
    page.find_element(By.ID, "file").send_keys(str(path))
    wait_for(page, lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"), "no error shown")
    assert text(page, "#status").startswith("notes.wav: cannot decode audio")


def test_listen_continuously_labels_the_event(page, tmp_path):
    from selenium.webdriver.common.by import By

    before = len(history_rows(page))
    page.find_element(By.ID, "listen").click()
    try:
        wait_for(page, lambda d: len(history_rows(d)) > before and history_rows(d)[0][1].startswith("event-"),
                 "listening labelled no event")
        assert "floor" in text(page, "#meter-text")
    finally:
        page.find_element(By.ID, "listen").click()
    assert page.find_element(By.ID, "listen").get_attribute("aria-pressed") == "false"
    event = history_rows(page)[0]
    assert event[3] == "siren"  # its windows' detections (all siren)
    assert event[2] == f"{RECORD_SECONDS + 0.25:.2f} s"  # pre-roll + record_seconds, as in label/mic.py
    assert "at t=" in text(page, "#result-source")
    screenshot(page, tmp_path, "serve-listen")


def test_history_downloads_as_csv(page, downloads):
    from selenium.webdriver.common.by import By

    shown = history_rows(page)
    page.find_element(By.ID, "download-csv").click()
    deadline = time.monotonic() + WAIT
    files = []
    while not files and time.monotonic() < deadline:
        files = [p for p in downloads.glob("*.csv")]
        time.sleep(0.2)
    assert files, "no CSV was downloaded"
    with open(files[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["clip"] for r in rows] == [row[1] for row in shown]
    assert {r["model"] for r in rows} == {"sirens.tflite"}
    assert [r["label"] for r in rows] == [row[3] for row in shown]
    assert {"label_5", "score_5", "detections"} <= set(rows[0])
    long = next(r for r in rows if r["clip"] == "street.flac")
    assert long["label"] == "siren, engine" and long["detections"].startswith("siren 0.00-3.00 s")


def test_page_trigger_finds_the_events_label_mic_finds(page, tmp_path):
    """trigger.js (in this browser) and label/mic.py's detect_events on the same samples."""
    from label.mic import FileSource, TriggerSettings, detect_events

    sr = 8000
    rng = np.random.default_rng(3)

    def quiet(seconds, rms=0.001):
        return rng.standard_normal(int(seconds * sr)) * rms

    def tone(seconds, amplitude=0.3):
        return amplitude * np.sin(2 * np.pi * 700 * np.arange(int(seconds * sr)) / sr)

    y = np.concatenate([quiet(1.0), tone(0.8), quiet(3.0), tone(2.6), quiet(2.0), quiet(20, rms=0.02),
                        tone(0.3, 0.9), quiet(1.5), np.zeros(sr), tone(1.0, 0.05)]).astype(np.float32)
    wav = tmp_path / "events.wav"
    sf.write(wav, y, sr, subtype="FLOAT")
    settings = TriggerSettings(record_seconds=1.5)
    expected = [[e.start_seconds, len(e.y), e.level_db, e.floor_db] for e in detect_events(FileSource(str(wav)), settings)]
    params = page.execute_script("return fetch('/v1/model').then(r => r.json()).then(m => m.trigger)")
    params.update(record_seconds=1.5)
    got = page.execute_async_script("""
        const [samples, sr, p, done] = arguments;
        import('/static/trigger.js').then(m => done(
            m.detectEvents(Float32Array.from(samples), sr, p).map(e => [e.start, e.y.length, e.levelDb, e.floorDb])));
    """, y.tolist(), sr, params)
    assert len(expected) >= 4
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g[0] == pytest.approx(e[0], abs=1e-9) and g[1] == e[1]
        assert g[2] == pytest.approx(e[2], abs=1e-6) and g[3] == pytest.approx(e[3], abs=1e-6)
