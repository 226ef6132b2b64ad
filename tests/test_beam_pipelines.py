"""The spectrogram and bottleneck stages as Apache Beam pipelines (issue 12).

On Beam's DirectRunner in multi-process mode (two worker processes, as
``--direct_num_workers=2 --direct_running_mode=multi_processing``), on generated audio:

* the pipelines write exactly the files the local path writes (images, manifest, config,
  failures.csv; cache entries), byte for byte;
* bad files are reported with their reason and never fail the pipeline;
* a rerun redoes nothing, and a pipeline killed mid-way and run again ends with the same files;
* paths of a Beam filesystem with a scheme (an object store without network: fake_remote_fs)
  give the same images and cache entries.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# The pipelines need the beam extra (`make test` installs it: the test extra includes it).
# Without it these tests skip, saying so; tests/test_beam_optional.py checks that the
# toolkit then works without Beam and that --runner says how to install it.
pytest.importorskip("apache_beam", reason="Apache Beam is not installed: pip install '.[beam]'")

from retrain.beam_bottlenecks import FAILURES_FILENAME as BN_FAILURES, RUNS_DIRNAME, compute_bottlenecks_beam
from retrain.bottlenecks import compute_bottlenecks
from retrain.core import load_spectrogram_settings
from retrain.images import list_images
from soundretrain.atomic_files import is_temp_name
from soundretrain.backbones.registry import load_module
from soundretrain.beam_runner import RunnerSettings, runner_settings
from soundretrain.manifest import read_manifest
from soundretrain.spectrogram_settings import SpectrogramSettings
from spectrograms.beam_pipeline import JOURNAL_DIRNAME, write_spectrograms_beam
from spectrograms.datasets import list_dataset
from spectrograms.writer import FAILURES_FILENAME, WriteOptions, write_spectrograms
from tiny_models import make_tiny_image_module, make_tiny_waveform_module

REPO = Path(__file__).resolve().parents[1]
SR = 8000
# Small images; --long_clips=split, so one clip gives several images and manifest rows.
SETTINGS = SpectrogramSettings(sample_rate=SR, duration=0.5, n_fft=256, hop_length=64, n_mels=32,
                               image_size=32, long_clips="split")
TWO_PROCESSES = RunnerSettings("DirectRunner", ("--direct_num_workers=2", "--direct_running_mode=multi_processing"))
IN_PROCESS = RunnerSettings("DirectRunner", ("--direct_num_workers=1", "--direct_running_mode=in_memory"))
QUIET = WriteOptions(jobs=2, progress=False)
BAD_FILES = {"beep/garbage.wav": "Format not recognised", "beep/empty.wav": "empty file (0 bytes)"}


def _wav(path: Path, seconds: float, freq: float, sr: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)), sr)


def make_audio(root: Path, per_class: int = 4, bad: bool = True) -> Path:
    """Three classes of tones (one clip long enough for two windows), plus two bad files."""
    for k in range(per_class):
        _wav(root / "beep" / f"b{k}_nohash_0.wav", 0.4, 600 + 150 * k)
        _wav(root / "buzz" / f"z{k}.wav", 0.3, 120 + 15 * k)
        _wav(root / "hum" / f"h{k}.wav", 0.9 if k == 0 else 0.45, 300 + 40 * k, sr=11025)
    if bad:
        (root / "beep" / "garbage.wav").write_bytes(b"this is not audio at all")
        (root / "beep" / "empty.wav").write_bytes(b"")
    return root


def tree(root: Path, skip=(), temp_files: bool = True) -> dict[str, bytes]:
    """Every file below ``root``: relative path -> bytes (``temp_files=False``: without the
    temp files of atomic writes that a killed process may leave, which readers skip)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(rel.startswith(s) for s in skip) \
                and (temp_files or not is_temp_name(path.name)):
            out[rel] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    return make_audio(tmp_path_factory.mktemp("audio") / "data")


@pytest.fixture(scope="module")
def local_spec(audio, tmp_path_factory) -> Path:
    """What the local writer makes of ``audio``: the reference every pipeline must match."""
    out = tmp_path_factory.mktemp("local") / "spec"
    summary = write_spectrograms(list_dataset(str(audio)), str(out), SETTINGS, QUIET, log=lambda line: None)
    assert len(summary.failed) == 2 and summary.written == 13
    return out


def test_the_spectrograms_pipeline_writes_what_the_local_writer_writes(audio, local_spec, tmp_path):
    out = tmp_path / "beam"
    summary = write_spectrograms_beam(list_dataset(str(audio)), str(out), SETTINGS, TWO_PROCESSES, QUIET,
                                      log=lambda line: None)
    # Byte for byte: every image, manifest.csv, spectrogram_config.json and failures.csv.
    assert tree(out) == tree(local_spec)
    assert (summary.written, summary.written_clips, summary.up_to_date, summary.images) == (13, 12, 0, 13)
    # Bad files are failures with their reason, listed in failures.csv; the pipeline went on.
    reasons = dict(summary.failed)
    for name, reason in BAD_FILES.items():
        assert reason in reasons[str(audio / name)]
    assert (out / FAILURES_FILENAME).read_text().splitlines()[0] == "source,reason"
    assert not (out / JOURNAL_DIRNAME).exists()
    # retrain reads it as it reads the local writer's folder.
    assert [r.relpath for r in list_images(str(out)).records] == \
        [r.relpath for r in list_images(str(local_spec)).records]

    # A rerun redoes nothing and changes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = write_spectrograms_beam(list_dataset(str(audio)), str(out), SETTINGS, TWO_PROCESSES, QUIET,
                                    log=lambda line: None)
    assert (again.written, again.up_to_date, len(again.failed)) == (0, 12, 2)
    assert tree(out) == tree(local_spec)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}


def test_three_channel_images_from_the_pipeline_are_the_local_writers(audio, tmp_path):
    """--channels (three planes as RGB, each with its own window) reaches the worker processes."""
    settings = SpectrogramSettings(**{**SETTINGS.to_dict(), "channels": ("db@128", "pcen", "delta")})
    local = tmp_path / "local"
    write_spectrograms(list_dataset(str(audio)), str(local), settings, QUIET, log=lambda line: None)
    out = tmp_path / "beam"
    summary = write_spectrograms_beam(list_dataset(str(audio)), str(out), settings, TWO_PROCESSES, QUIET,
                                      log=lambda line: None)
    assert (summary.written, len(summary.failed)) == (13, 2)
    assert tree(out) == tree(local)
    assert '"pcen"' in (out / "spectrogram_config.json").read_text()


# Makes every render take a while, in the launcher and in each worker process (Python imports
# sitecustomize at start-up), so the pipeline can be killed while it is mid-way.
SLOW_SITECUSTOMIZE = textwrap.dedent("""
    import os, time
    if os.environ.get("SLOW_RENDER_SECONDS"):
        import spectrograms.writer as writer
        _render = writer.render_source
        def render_source(*args, **kwargs):
            time.sleep(float(os.environ["SLOW_RENDER_SECONDS"]))
            return _render(*args, **kwargs)
        writer.render_source = render_source
""")

KILLED_RUN = textwrap.dedent("""
    import sys
    from soundretrain.beam_runner import RunnerSettings
    from soundretrain.spectrogram_settings import SpectrogramSettings
    from spectrograms.beam_pipeline import write_spectrograms_beam
    from spectrograms.datasets import list_dataset
    from spectrograms.writer import WriteOptions
    settings = SpectrogramSettings(**{settings!r})
    runner = RunnerSettings("DirectRunner", ("--direct_num_workers=2", "--direct_running_mode=multi_processing"))
    write_spectrograms_beam(list_dataset(sys.argv[1]), sys.argv[2], settings, runner,
                            WriteOptions(progress=False), journal_every=1)
""")


def test_a_pipeline_killed_midway_and_run_again_ends_with_the_same_outputs(tmp_path):
    data = make_audio(tmp_path / "data", per_class=8, bad=False)
    reference = tmp_path / "local"
    write_spectrograms(list_dataset(str(data)), str(reference), SETTINGS, QUIET, log=lambda line: None)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_SITECUSTOMIZE)
    out = tmp_path / "beam"
    env = dict(os.environ, SLOW_RENDER_SECONDS="0.4",
               PYTHONPATH=os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")]))
    script = KILLED_RUN.format(settings=SETTINGS.to_dict())
    run = subprocess.Popen([sys.executable, "-c", script, str(data), str(out)], env=env,
                           start_new_session=True, stderr=subprocess.PIPE)
    journal = out / JOURNAL_DIRNAME
    try:
        deadline = time.monotonic() + 240
        while len(list(journal.glob("*.jsonl"))) < 3:  # a few clips finished and journaled
            assert run.poll() is None, run.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the pipeline journaled nothing in time"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the launcher and its worker processes
        run.wait()
    assert not (out / "manifest.csv").exists()  # killed before the end
    done = len(list(journal.glob("*.jsonl")))

    summary = write_spectrograms_beam(list_dataset(str(data)), str(out), SETTINGS, TWO_PROCESSES, QUIET,
                                      log=lambda line: None)
    assert summary.up_to_date >= done >= 3  # what the killed run finished is not redone
    assert summary.up_to_date + summary.written_clips == 24 and not summary.failed
    assert tree(out) == tree(reference)


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("modules")
    return make_tiny_image_module(root / "image", image_size=32), make_tiny_waveform_module(root / "wave")


def test_the_bottleneck_pipeline_writes_the_local_cache_entries(local_spec, modules, tmp_path):
    spec = tmp_path / "spec"
    os.makedirs(spec)
    for rel, data in tree(local_spec).items():  # a copy this test may damage
        (spec / rel).parent.mkdir(parents=True, exist_ok=True)
        (spec / rel).write_bytes(data)
    module = ",".join(modules)  # an image part and a waveform part (it reads the manifest's audio)
    images = list_images(str(spec))
    local_cache = tmp_path / "bn_local"
    compute_bottlenecks(load_module(module), images.records, str(local_cache),
                        load_spectrogram_settings(images), batch_size=4, progress=False)
    assert len(list(local_cache.rglob("*.npy"))) == 2 * 13

    cache = tmp_path / "bn_beam"
    summary = compute_bottlenecks_beam(str(spec), module, str(cache), TWO_PROCESSES, batch_size=4,
                                       progress=False, log=lambda line: None)
    assert (summary.computed, summary.cached, summary.failed) == (2 * 13, 0, [])
    assert tree(cache) == tree(local_cache)  # the same entries, byte for byte; nothing else

    # A damaged image is a failure with its reason; the rest is cached, nothing is recomputed.
    damaged = images.records[0]
    Path(damaged.path).write_bytes(Path(damaged.path).read_bytes()[:100])
    again = compute_bottlenecks_beam(str(spec), module, str(cache), TWO_PROCESSES, batch_size=4,
                                     progress=False, log=lambda line: None)
    assert again.computed == 0 and again.cached == 2 * 13 - 2  # its two parts: image and waveform
    assert [image for image, _ in again.failed] == [damaged.relpath]
    assert "SHA-256 differs" in again.failed[0][1]
    assert (cache / BN_FAILURES).read_text().splitlines() == ["image,reason", f"{damaged.relpath},{again.failed[0][1]}"]
    assert tree(cache, skip=(BN_FAILURES,)) == tree(local_cache)


# Makes every backbone batch take a while, as SLOW_SITECUSTOMIZE does for renders.
SLOW_BATCH_SITECUSTOMIZE = textwrap.dedent("""
    import os, time
    if os.environ.get("SLOW_BATCH_SECONDS"):
        import retrain.bottlenecks as bottlenecks
        _compute_batch = bottlenecks.compute_batch
        def compute_batch(*args, **kwargs):
            time.sleep(float(os.environ["SLOW_BATCH_SECONDS"]))
            return _compute_batch(*args, **kwargs)
        bottlenecks.compute_batch = compute_batch
""")

KILLED_BOTTLENECKS = textwrap.dedent("""
    import sys
    from retrain.beam_bottlenecks import compute_bottlenecks_beam
    from soundretrain.beam_runner import RunnerSettings
    runner = RunnerSettings("DirectRunner", ("--direct_num_workers=2", "--direct_running_mode=multi_processing"))
    compute_bottlenecks_beam(sys.argv[1], sys.argv[2], sys.argv[3], runner, batch_size=1, progress=False)
""")


def test_a_bottleneck_pipeline_killed_midway_and_run_again_ends_with_the_local_cache(local_spec, modules, tmp_path):
    image_module = modules[0]
    local_cache = tmp_path / "bn_local"
    compute_bottlenecks(load_module(image_module), list_images(str(local_spec)).records, str(local_cache),
                        batch_size=1, progress=False)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_BATCH_SITECUSTOMIZE)
    cache = tmp_path / "bn_beam"
    env = dict(os.environ, SLOW_BATCH_SECONDS="0.5",
               PYTHONPATH=os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.Popen([sys.executable, "-c", KILLED_BOTTLENECKS, str(local_spec), image_module, str(cache)],
                           env=env, start_new_session=True, stderr=subprocess.PIPE)

    def entries() -> list[Path]:
        return [p for p in cache.rglob("*.npy") if not is_temp_name(p.name)]

    try:
        deadline = time.monotonic() + 240
        while len(entries()) < 3:  # a few entries written by the workers
            assert run.poll() is None, run.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the pipeline wrote no cache entry in time"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the launcher and its worker processes
        run.wait()
    done = len(entries())
    assert 3 <= done < 13  # killed mid-way

    summary = compute_bottlenecks_beam(str(local_spec), image_module, str(cache), TWO_PROCESSES, batch_size=1,
                                       progress=False, log=lambda line: None)
    assert summary.cached >= done and summary.cached + summary.computed == 13 and summary.failed == []
    # The local path's entries, byte for byte; besides them only the killed run's work list
    # and journal shards (removed after a week: a live run's look the same) and the hidden
    # temp file of an entry it was writing, which no reader takes for an entry.
    assert tree(cache, skip=(RUNS_DIRNAME,), temp_files=False) == tree(local_cache)
    assert not (cache / BN_FAILURES).exists()


def test_urls_of_a_beam_filesystem_give_the_same_files(audio, local_spec, modules, tmp_path, monkeypatch):
    """gs://-like paths (an object store without folders) for the data, images and cache."""
    import shutil

    import fake_remote_fs  # registers fakeremote://

    monkeypatch.setenv("FAKE_REMOTE_ROOT", str(tmp_path / "store"))
    shutil.copytree(audio, tmp_path / "store" / "bucket" / "data")
    listing = list_dataset("fakeremote://bucket/data")
    assert listing.clips[0].source == "fakeremote://bucket/data/beep/b0_nohash_0.wav"
    summary = write_spectrograms_beam(listing, "fakeremote://bucket/spec", SETTINGS, IN_PROCESS, QUIET,
                                      log=lambda line: None)
    assert summary.written == 13 and len(summary.failed) == 2
    remote = tmp_path / "store" / "bucket" / "spec"
    local = tree(local_spec)
    # Images and config byte for byte; the manifest and failures name the audio by its URL.
    assert {k: v for k, v in tree(remote).items() if k.endswith(".png") or k.endswith(".json")} == \
        {k: v for k, v in local.items() if k.endswith(".png") or k.endswith(".json")}
    url_rows = read_manifest(remote / "manifest.csv")
    local_rows = read_manifest(local_spec / "manifest.csv")
    assert [r.source.replace("fakeremote://bucket/data", str(audio)) for r in url_rows] == \
        [r.source for r in local_rows]
    assert [(r.image, r.sha256) for r in url_rows] == [(r.image, r.sha256) for r in local_rows]
    assert fake_remote_fs.to_url(str(remote)) == "fakeremote://bucket/spec"

    # The bottleneck cache from and to URLs: the image part's entries are the local ones.
    image_module = modules[0]
    bn = compute_bottlenecks_beam("fakeremote://bucket/spec", image_module, "fakeremote://bucket/bn",
                                  IN_PROCESS, batch_size=4, progress=False, log=lambda line: None)
    assert (bn.computed, bn.failed) == (13, [])
    local_cache = tmp_path / "bn_local"
    compute_bottlenecks(load_module(image_module), list_images(str(local_spec)).records, str(local_cache),
                        batch_size=4, progress=False)
    assert tree(tmp_path / "store" / "bucket" / "bn") == tree(local_cache)


# ------------------------------------------------------------------ the command lines

def _spectrograms(*args: str) -> int:
    from spectrograms.cli import main

    return main(["spectrograms", *args])


def _retrain(*args: str) -> int:
    from retrain.cli import main

    return main(["retrain", *args])


@pytest.mark.parametrize("args, message", [
    (["--runner=NoSuchRunner"], "--runner 'NoSuchRunner' is not one of DirectRunner"),
    (["--beam_pipeline_args=--direct_num_workers=2"], "--beam_pipeline_args applies only with --runner"),
    (["--runner=DirectRunner", "--beam_pipeline_args=--no_such_option=1"], "--no_such_option=1 is not a Beam pipeline option"),
    (["--runner=DirectRunner", "--beam_pipeline_args=--runner=FlinkRunner"], "give the runner with --runner"),
    (["--runner=DirectRunner", "--jobs=2"], "--jobs sets the local writer's processes"),
    (["--runner=DataflowRunner"], "the DataflowRunner's workers cannot read this machine's files"),
    (["--output_dir=gs://bucket/spec"], "the local writer writes local folders"),
])
def test_spectrograms_refuses_bad_runner_flags_in_one_line(tmp_path, capsys, args, message):
    argv = ["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), *args]
    assert _spectrograms(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spectrograms: error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--bottlenecks_only", "--cross_validate"], "drop --cross_validate"),
    (["--image_dir=gs://bucket/spec"], "training reads local files"),
    (["--runner=DirectRunner", "--bottleneck_dir=gs://bucket/bn"], "training reads local files"),
    (["--runner=Flink", "--beam_pipeline_args=--flink_master"], "--flink_master: expected one argument"),
    (["--runner=Flink", "--beam_pipeline_args=--flink_mastr=x:1"], "--flink_mastr=x:1 is not a Beam pipeline option"),
])
def test_retrain_refuses_bad_runner_flags_in_one_line(tmp_path, capsys, args, message):
    assert _retrain("--image_dir", str(tmp_path), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("retrain: error: ") and message in err[0], err


def test_runner_settings_default_to_one_worker_process_per_core():
    settings = runner_settings("directrunner", "")
    assert settings == RunnerSettings("DirectRunner", ())
    from soundretrain.beam_runner import pipeline_options

    options = pipeline_options(settings).get_all_options()
    assert (options["direct_num_workers"], options["direct_running_mode"]) == (0, "multi_processing")
    assert runner_settings("flink", "--flink_master=localhost:8081 --environment_type=LOOPBACK").runner == "FlinkRunner"
    assert runner_settings("", "") is None


def test_retrain_runner_fills_the_cache_then_trains_locally(local_spec, modules, tmp_path, capsys):
    """retrain --runner=...: the pipeline computes every bottleneck, the training finds them cached."""
    cache = tmp_path / "bn"
    common = ["--image_dir", str(local_spec), "--tfhub_module", modules[0], "--bottleneck_dir", str(cache),
              "--runner=DirectRunner", "--beam_pipeline_args=--direct_num_workers=1 --direct_running_mode=in_memory",
              "--noprogress"]
    assert _retrain(*common, "--bottlenecks_only") == 0
    out = capsys.readouterr().out
    assert "13 computed, 0 from the cache, 0 image(s) failed" in out and "Step" not in out
    assert _retrain(*common, "--how_many_training_steps=5", "--random_seed=0", "--summaries_dir=",
                    "--output_graph=", "--output_labels", str(tmp_path / "labels.txt"), "--split=hash",
                    "--testing_percentage=45", "--validation_percentage=10") == 0
    out = capsys.readouterr().out
    assert "0 computed, 13 from the cache" in out  # the pipeline's run, then the training's listing
    assert "Bottlenecks: 0 computed, 13 from the cache" in out
    assert (tmp_path / "labels.txt").read_text().split() == ["beep", "buzz", "hum"]


def test_retrain_bottlenecks_only_without_a_runner_fills_the_cache_and_stops(local_spec, modules, tmp_path, capsys):
    cache = tmp_path / "bn"
    assert _retrain("--image_dir", str(local_spec), "--tfhub_module", modules[0], "--bottleneck_dir", str(cache),
                    "--bottlenecks_only", "--noprogress", "--output_graph", str(tmp_path / "g.pb")) == 0
    out = capsys.readouterr().out
    assert "Bottlenecks: 13 computed, 0 from the cache" in out and "Step" not in out
    assert len(list(cache.rglob("*.npy"))) == 13 and not (tmp_path / "g.pb").exists()
