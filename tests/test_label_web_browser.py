"""The in-browser page (``label_image --export_web``) end to end, offline, in Debian's headless
Chromium, served by a plain static file server (``python -m http.server`` on 127.0.0.1, not
``label_image --serve``).

A tiny model trained in the test (tests/serve_models.py) is exported by ``export_model(...,
output_tfjs=...)`` and ``label_image --export_web``; the page labels a set of generated clips
(several rates, lengths, channel counts and formats) with TF.js in the browser, and its top-1
must match ``label_image``'s on at least 99 % of them. It also records from Chromium's fake
microphone (a WAV) and labels an uploaded file through the page's own controls, and it
fetches nothing but the static folder.

CI installs chromium and chromium-driver (.ci/run) and vendors TF.js (make install), so
there these tests must run; elsewhere they skip, saying what is missing.
"""
from __future__ import annotations

import base64
import json
import os
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
WAIT = 120  # seconds for anything the page does (the machine may be busy)


def _missing() -> list[str]:
    missing = missing_browser()
    from label.web_vendor import missing_files

    if missing_files():
        missing.append("TF.js vendored from npm (make install)")
    import importlib.util

    if importlib.util.find_spec("tensorflowjs") is None:
        missing.append("the TF.js converter (make install: pip install --no-deps tensorflowjs)")
    return missing


@pytest.fixture(scope="module")
def requirements():
    require(_missing(), "in-browser test")  # .ci/run and make install provide them: fails under CI=true


@pytest.fixture(scope="module")
def site(requirements, tmp_path_factory):
    """``label_image --export_web`` of the tiny model's TF.js export, and the audio-in TFLite
    of the same model (label_image's reference)."""
    from label.cli import main as label_image
    from soundretrain.export import export_model

    folder = tmp_path_factory.mktemp("web_model")
    sirens = build_siren_model(str(tmp_path_factory.getbasetemp() / "siren_model"))
    paths = export_model(sirens.backbone, sirens.head, sirens.labels, sirens.sidecar,
                         output_audio_tflite=str(folder / "sirens_audio.tflite"),
                         output_tfjs=str(folder / "sirens_tfjs"))
    root = tmp_path_factory.mktemp("static")
    assert label_image(["label_image", "--graph", paths["output_tfjs"], "--export_web", str(root / "site"),
                        "--record_seconds", str(RECORD_SECONDS)]) == 0
    return {"root": root, "tflite": paths["output_audio_tflite"], "labels": sirens.labels}


@pytest.fixture(scope="module")
def clips(site) -> list[Path]:
    """Generated clips of the five classes, as recordings come: 8, 16, 22.05, 44.1 and 48 kHz,
    0.4 to 3.5 s, mono and stereo, WAV (16-bit, float) and FLAC, some with silence around."""
    from spectrograms.example import CLASSES, synthesize

    folder = site["root"] / "clips"
    folder.mkdir()
    rng = np.random.default_rng(11)
    rates = [16000, 22050, 44100, 48000, 8000]
    out = []
    for i in range(40):
        cls = CLASSES[i % len(CLASSES)]
        sr = rates[i % len(rates)]
        y = synthesize(cls, i // len(CLASSES), i % 3, sr, seed=21 + i)
        y = y[: int(rng.uniform(0.4, 3.5) * sr)]
        if i % 4 == 1:  # silence before the sound, as a recording's start
            y = np.concatenate([np.zeros(int(0.3 * sr), np.float32), y])
        if i % 3 == 2:  # stereo, the channels not equal
            y = np.stack([y, 0.5 * y], axis=1)
        name, subtype = [("wav", "PCM_16"), ("flac", "PCM_16"), ("wav", "FLOAT")][i % 3]
        path = folder / f"clip{i:02d}_{cls}_{sr}.{name}"
        sf.write(path, y, sr, subtype=subtype)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def static_server(site):
    """``python -m http.server`` on 127.0.0.1 over the folder holding the page and the clips."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(site["root"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    if "port" not in line:
        proc.kill()
        pytest.fail(f"python -m http.server did not start: {line!r}")
    port = int(line.split(" port ")[1].split()[0])
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> str:
    """What the fake microphone plays, looped: 0.6 s of silence, then 2.4 s of a siren the
    model never trained on, at 48 kHz (as a sound card gives)."""
    from spectrograms.example import synthesize

    sr = 48000
    siren = synthesize("siren", 1, 0, sr, seed=7)[: int(2.4 * sr)]
    y = np.concatenate([np.zeros(int(0.6 * sr), np.float32), siren])
    path = tmp_path_factory.mktemp("mic") / "siren_mic.wav"
    sf.write(path, y, sr, subtype="PCM_16")
    return str(path)


@pytest.fixture(scope="module")
def page(requirements, static_server, mic_wav, tmp_path_factory):
    from selenium.webdriver.support.ui import WebDriverWait

    driver = start_chromium(str(tmp_path_factory.mktemp("chromium-profile")), mic_wav, script_timeout=WAIT)
    try:
        driver.get(f"{static_server}/site/")
        WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(
            "return document.body.dataset.ready === 'true' || document.getElementById('model-info').textContent"
            ".startsWith('cannot')"))
        yield driver
    finally:
        driver.quit()


def label_image_top1(model: str, paths) -> dict[str, tuple[str, np.ndarray]]:
    """label_image's Python path (``label_files``, as ``--audio_dir``): top-1 and probabilities."""
    from label.labeling import AudioInput, label_files, spectrogram_settings_for
    from label.models import load_labeler

    labeler = load_labeler(model)
    audio_input = AudioInput(spectrogram_settings_for(labeler))
    out = {}
    for path, result, error in label_files(labeler, [str(p) for p in paths], "audio", audio_input=audio_input):
        assert error is None, error
        out[os.path.basename(path)] = (labeler.labels[int(np.argmax(result.probabilities))], result.probabilities)
    return out


def browser_labels(page, static_server, paths) -> dict:
    """Each clip labelled by the page's in-browser back-end (the page's own createBackend)."""
    urls = [f"{static_server}/clips/{p.name}" for p in paths]
    answers = page.execute_async_script("""
        const [urls, done] = arguments;
        (async () => {
          const { createBackend } = await import(new URL('backend.js', document.baseURI).href);
          const backend = await createBackend();
          const out = {};
          for (const url of urls) {
            const blob = await (await fetch(url)).blob();
            const name = url.split('/').pop();
            try { out[name] = await backend.label(blob, name, { display: false, topK: 10 }); }
            catch (e) { out[name] = { error: e.message }; }
          }
          return out;
        })().then(done, (e) => done({ error: String(e) }));
    """, urls)
    assert "error" not in answers or isinstance(answers["error"], dict), answers.get("error")
    return answers


def text(driver, css: str) -> str:
    return driver.execute_script("return document.querySelector(arguments[0]).textContent.trim()", css)


def test_the_page_loads_the_model_in_the_browser(page, site):
    info = text(page, "#model-info")
    assert "5 labels" in info and "siren" in info, info
    assert text(page, "#runs-in").startswith("Runs entirely in this browser (TF.js, wasm back-end)")
    assert not page.find_element("id", "record").get_attribute("disabled")  # 127.0.0.1 is a secure context


def test_in_browser_top1_matches_label_image(page, site, clips, static_server):
    expected = label_image_top1(site["tflite"], clips)
    got = browser_labels(page, static_server, clips)
    failures = {name: answer["error"] for name, answer in got.items() if "error" in answer}
    assert not failures, failures
    agree = [got[name]["label"] == label for name, (label, _) in expected.items()]
    differences = []
    for name, (_, probabilities) in expected.items():
        browser = {t["label"]: t["score"] for t in got[name]["top"]}
        differences.append(max(abs(browser[label] - p) for label, p in zip(site["labels"], probabilities)))
        windows = got[name]["windows"]
        assert windows[0]["start"] == 0.0 and all(w["end"] > w["start"] for w in windows)
    print(f"in-browser top-1 agrees with label_image on {sum(agree)}/{len(agree)} clips; "
          f"largest probability difference {max(differences):.2e}")
    assert sum(agree) >= 0.99 * len(agree)
    assert max(differences) < 0.05


def test_a_silent_or_broken_file_is_refused_with_one_line(page, static_server, site):
    root = site["root"] / "clips"
    sf.write(root / "silence.wav", np.zeros(SR, np.float32), SR)
    (root / "notes.wav").write_text("not a sound\n" * 50)
    got = browser_labels(page, static_server, [root / "silence.wav", root / "notes.wav"])
    assert got["silence.wav"]["error"] == "silence.wav: the audio is silent (nothing to label)"
    assert got["notes.wav"]["error"].startswith("notes.wav: cannot decode audio")


def test_upload_through_the_page(page, site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    y = np.concatenate([example_clip("siren", 2, 0)[: 3 * SR], example_clip("engine", 2, 0)[: 3 * SR]])
    path = tmp_path / "street.flac"
    sf.write(path, y, SR)
    from label.labeling import AudioInput, label_files, spectrogram_settings_for
    from label.models import load_labeler

    labeler = load_labeler(site["tflite"])
    ((_, result, _),) = list(label_files(labeler, [str(path)], "audio",
                                         audio_input=AudioInput(spectrogram_settings_for(labeler))))
    expected = [labeler.labels[int(np.argmax(w.probabilities))] for w in result.windows]
    page.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(page, WAIT).until(lambda d: text(d, "#result-source").startswith("street.flac"))
    rows = page.execute_script(
        "return [...document.querySelectorAll('#windows tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
    assert [r[0] for r in rows] == [f"{s:.2f}–{s + 1:.2f} s" for s in range(6)]
    assert [r[1] for r in rows] == expected == ["siren"] * 3 + ["engine"] * 3
    assert text(page, "#result-label").split(", ") == ["siren", "engine"]  # the page heads a long file by its detections


def test_record_from_the_fake_microphone(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = page.execute_script("return document.querySelectorAll('#history tbody tr').length")
    page.find_element(By.ID, "record").click()
    WebDriverWait(page, WAIT).until(lambda d: d.execute_script(
        "return document.querySelectorAll('#history tbody tr').length") > before)
    assert text(page, "#result-source").startswith("recording-")
    assert f"{RECORD_SECONDS:.2f} s" in text(page, "#result-source")
    assert text(page, "#result-label") == "siren"


def test_nothing_leaves_the_static_folder(page, static_server):
    """Every resource the page fetched came from the static server that served it."""
    urls = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(static_server + "/") for u in urls), urls
    assert any(u.endswith("/site/vendor/tf.min.js") for u in urls)
    assert not any("/v1/" in u for u in urls)
