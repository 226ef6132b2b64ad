"""writer.py: images + manifest, resuming, refusing other settings, bad inputs, windows, processes."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from soundretrain import atomic_files
from spectrograms.datasets import list_dataset
from soundretrain.manifest import read_manifest
from soundretrain.audio import load_audio
from soundretrain.render import colormap_lut, render_clip
from soundretrain.spectrogram_settings import CONFIG_FILENAME, SpectrogramSettings
from spectrograms.writer import JOURNAL_FILENAME, OutputError, WriteOptions, write_spectrograms

SR = 8000
FAST = SpectrogramSettings(sample_rate=SR, duration=0.5, n_fft=256, hop_length=64, n_mels=32, image_size=32)
ONE = WriteOptions(jobs=1, progress=False)
REPO = Path(__file__).resolve().parents[1]


def _wav(path: Path, seconds=0.4, freq=440.0, amp=0.5, sr=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, amp * np.sin(2 * np.pi * freq * t), sr)
    return path


def make_folders(root: Path, n_per_class=2) -> Path:
    for k in range(n_per_class):
        _wav(root / "beep" / f"b{k}_nohash_0.wav", freq=500 + 300 * k)
        _wav(root / "buzz" / f"z{k}.wav", seconds=0.3, freq=150 + 20 * k)
    return root


def rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write(data: Path, out: Path, settings=FAST, options=ONE, **kw):
    return write_spectrograms(list_dataset(str(data), **kw), str(out), settings, options, log=lambda line: None)


def test_writes_images_manifest_and_config(tmp_path):
    data = make_folders(tmp_path / "data")
    out = tmp_path / "out"
    summary = write(data, out)
    assert (summary.written, summary.up_to_date, summary.failed, summary.silent) == (4, 0, [], 0)
    assert summary.exit_code() == 0
    assert SpectrogramSettings.load_json(out / CONFIG_FILENAME) == FAST
    rows = read_manifest(out / "manifest.csv")
    assert [r.image for r in rows] == ["beep/b0_nohash_0.png", "beep/b1_nohash_0.png", "buzz/z0.png", "buzz/z1.png"]
    r = rows[0]
    assert (r.label, r.fold, r.group, r.start, r.duration, r.silent) == ("beep", None, "b0", 0.0, 0.4, False)
    assert r.source == str(data / "beep" / "b0_nohash_0.wav")
    assert rows[2].duration == pytest.approx(0.3)
    for row in rows:  # the stored pixels are exactly render_clip's
        expected = render_clip(load_audio(row.source, SR), SR, FAST)
        assert np.array_equal(rgb(out / row.image), expected)
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted(["beep", "buzz", CONFIG_FILENAME, "manifest.csv"])  # no journal, no temp files


def test_second_run_skips_up_to_date_and_redoes_what_changed(tmp_path):
    data = make_folders(tmp_path / "data")
    out = tmp_path / "out"
    write(data, out)
    image = out / "beep" / "b0_nohash_0.png"
    before = image.stat().st_mtime_ns
    again = write(data, out)
    assert (again.written, again.up_to_date, again.images) == (0, 4, 4)
    assert again.exit_code() == 0
    assert image.stat().st_mtime_ns == before
    # A newer source and a deleted image are redone; the rest is kept.
    future = time.time() + 100
    os.utime(data / "buzz" / "z1.wav", (future, future))
    (out / "beep" / "b1_nohash_0.png").unlink()
    third = write(data, out)
    assert (third.written, third.up_to_date, third.images) == (2, 2, 4)
    forced = write(data, out, options=WriteOptions(jobs=1, overwrite=True, progress=False))
    assert (forced.written, forced.up_to_date) == (4, 0)


def test_other_settings_are_refused_unless_overwrite(tmp_path):
    data = make_folders(tmp_path / "data")
    out = tmp_path / "out"
    write(data, out)
    other = SpectrogramSettings(**{**FAST.to_dict(), "n_mels": 16})
    with pytest.raises(OutputError, match="other settings \\(n_mels 32 -> 16\\)") as info:
        write(data, out, settings=other)
    assert "\n" not in str(info.value)
    summary = write(data, out, settings=other, options=WriteOptions(jobs=1, overwrite=True, progress=False))
    assert summary.written == 4
    assert SpectrogramSettings.load_json(out / CONFIG_FILENAME) == other


def test_resumes_after_an_interrupted_run(tmp_path):
    data = make_folders(tmp_path / "data", n_per_class=3)
    out = tmp_path / "out"
    write(data, out)
    full = (out / "manifest.csv").read_text().splitlines()
    header, rows = full[0], full[1:]
    # What a run killed midway leaves: an older manifest with one row, a journal with
    # two more rows and a torn third line, one image with no row yet, a temp file.
    (out / "manifest.csv").write_text("\n".join([header, rows[0]]) + "\n")
    (out / JOURNAL_FILENAME).write_text(rows[1] + "\n" + rows[2] + "\n" + rows[3][:25])
    stray = out / "buzz" / "z2.png.tmp-4242"
    stray.write_bytes(b"\x89PNG half an image")
    (out / "buzz" / "z2.png").unlink()
    summary = write(data, out)
    assert summary.up_to_date == 3  # manifest row + two journal rows
    assert summary.written == 3  # the torn row's image, the two after it
    assert not stray.exists() and not (out / JOURNAL_FILENAME).exists()
    assert (out / "manifest.csv").read_text().splitlines() == full


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_or_interrupted_run_loses_nothing(tmp_path, sig):
    data = tmp_path / "data"
    for k in range(60):
        _wav(data / ("hi" if k % 2 else "lo") / f"c{k}.wav", seconds=1.0, freq=200 + 40 * k)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "spectrograms", "--data_dir", str(data), "--output_dir", str(out), "--jobs=1",
           "--sample_rate=8000", "--duration=0.5", "--n_fft=256", "--hop_length=64", "--n_mels=32",
           "--image_size=32"]
    # A background job may inherit an ignored SIGINT; give the child the default, as a terminal would.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = out / JOURNAL_FILENAME
    # The signal is five finished clips in the journal (or the run's end), however long that
    # takes on a busy machine (it took over 60 s at a load of 20: the test then killed a run
    # that had written nothing yet and failed); the deadline is only a safety net.
    deadline = time.time() + 600
    while proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 5:
            break
        assert time.time() < deadline, "the run wrote no 5 clips in 10 minutes"
        time.sleep(0.02)
    finished_first = proc.poll() is not None
    proc.send_signal(sig)
    code = proc.wait(timeout=600)
    if sig == signal.SIGINT and not finished_first:
        assert code == 130  # Ctrl-C: manifest written with the finished clips
        assert len(read_mani(out)) >= 5
    done_before = journal.read_text().count("\n") if journal.exists() else 60
    summary = write(data, out)
    assert summary.up_to_date >= min(done_before, 60)
    assert summary.up_to_date + summary.written == 60 and not summary.failed
    rows = read_manifest(out / "manifest.csv")
    assert len(rows) == 60
    for row in rows:  # every image listed is whole
        assert rgb(out / row.image).shape == (32, 32, 3)
    assert not [p for p in out.glob("*/*") if atomic_files.is_temp_name(p.name)]


def read_mani(out: Path):
    return read_manifest(out / "manifest.csv")


def _bad_inputs(root: Path) -> dict[str, Path]:
    cls = root / "mixed"
    cls.mkdir(parents=True)
    good = _wav(cls / "good.wav")
    raw = good.read_bytes()
    bad = {
        "empty": cls / "empty.wav",
        "zero-length": cls / "zero_length.wav",
        "non-audio": cls / "text.wav",
        "corrupt": cls / "noise.flac",
        "truncated": cls / "truncated.wav",
        "unreadable": cls / "dangling.wav",
    }
    bad["empty"].write_bytes(b"")
    sf.write(bad["zero-length"], np.zeros(0), SR)
    bad["non-audio"].write_text("hello, I am a text file\n" * 20)
    bad["corrupt"].write_bytes(np.random.default_rng(0).bytes(3000))
    bad["truncated"].write_bytes(raw[:40])
    os.symlink(cls / "nowhere.wav", bad["unreadable"])
    return bad


def test_bad_inputs_never_crash_the_run(tmp_path):
    data = tmp_path / "data"
    bad = _bad_inputs(data)
    summary = write(data, tmp_path / "out")
    assert summary.written == 1
    failed = dict(summary.failed)
    assert set(failed) == {str(p) for p in bad.values()}
    assert all(reason and "\n" not in reason for reason in failed.values())
    assert summary.exit_code() == 0
    assert summary.exit_code(strict=True) == 1
    assert [r.image for r in read_manifest(tmp_path / "out" / "manifest.csv")] == ["mixed/good.png"]


def test_nothing_written_is_a_failure(tmp_path):
    data = tmp_path / "data"
    _bad_inputs(data)
    (data / "mixed" / "good.wav").unlink()
    summary = write(data, tmp_path / "out")
    assert summary.written == 0 and len(summary.failed) == 6
    assert summary.exit_code() == 1


def test_silent_clip_is_flagged_and_dark(tmp_path):
    data = make_folders(tmp_path / "data", n_per_class=1)
    sf.write(data / "beep" / "quiet.wav", np.zeros(SR // 2), SR)
    summary = write(data, tmp_path / "out")
    assert summary.silent == 1
    rows = {r.image: r for r in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert rows["beep/quiet.png"].silent and not rows["beep/b0_nohash_0.png"].silent
    assert np.all(rgb(tmp_path / "out" / "beep" / "quiet.png") == colormap_lut(FAST.colormap)[0])


def test_split_long_clips_into_windows(tmp_path):
    data = tmp_path / "data"
    _wav(data / "long" / "l.wav", seconds=1.3)
    _wav(data / "long" / "s.wav", seconds=0.2)
    split = SpectrogramSettings(**{**FAST.to_dict(), "long_clips": "split"})
    out = tmp_path / "out"
    summary = write(data, out, settings=split)
    rows = read_manifest(out / "manifest.csv")
    assert [(r.image, r.start, round(r.duration, 3)) for r in rows] == [
        ("long/l_w0.png", 0.0, 0.5),
        ("long/l_w1.png", 0.5, 0.5),
        ("long/l_w2.png", 0.8, 0.5),  # the tail window is aligned to the clip's end
        ("long/s_w0.png", 0.0, 0.2),
    ]
    assert summary.written == 4
    # "2 clips: written 4, up to date 0" read as if the counts did not add up: say images of clips
    assert "2 clips -> " in summary.line("out") and "written 4 images of 2 clips, up to date 0" in summary.line("out")
    y = load_audio(data / "long" / "l.wav", SR)
    assert np.array_equal(rgb(out / "long" / "l_w1.png"), render_clip(y[int(0.5 * SR):], SR, split))
    assert write(data, out, settings=split).up_to_date == 2


def test_two_processes_write_the_same_as_one(tmp_path):
    data = make_folders(tmp_path / "data", n_per_class=4)
    write(data, tmp_path / "one")
    summary = write(data, tmp_path / "two", options=WriteOptions(jobs=2, progress=False))
    assert summary.written == 8
    one = (tmp_path / "one" / "manifest.csv").read_text()
    assert (tmp_path / "two" / "manifest.csv").read_text() == one
    for png in (tmp_path / "one").glob("*/*.png"):
        assert png.read_bytes() == (tmp_path / "two" / png.relative_to(tmp_path / "one")).read_bytes()


def test_jpeg_output(tmp_path):
    data = make_folders(tmp_path / "data", n_per_class=1)
    jpg = SpectrogramSettings(**{**FAST.to_dict(), "image_format": "jpg"})
    write(data, tmp_path / "out", settings=jpg)
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert [r.image for r in rows] == ["beep/b0_nohash_0.jpg", "buzz/z0.jpg"]
    img = rgb(tmp_path / "out" / rows[0].image)
    expected = render_clip(load_audio(rows[0].source, SR), SR, jpg)
    assert np.abs(img.astype(int) - expected.astype(int)).mean() < 3


def test_runs_over_other_folds_keep_earlier_rows(tmp_path):
    from test_spectrograms_datasets import make_us8k

    root = make_us8k(str(tmp_path / "us8k"))
    out = tmp_path / "out"
    first = write(Path(root), out, folds=[1])
    assert first.written == 2 and len(first.missing) == 1
    second = write(Path(root), out, folds=[2])
    assert second.written == 2 and second.images == 4
    assert {r.fold for r in read_manifest(out / "manifest.csv")} == {1, 2}


def _dies_on_crash_wav(clip, output_dir, settings):
    """Stands in for a decoder that crashes the whole process on one file."""
    from spectrograms.writer import render_source

    if clip.name == "crash":
        os._exit(3)
    return render_source(clip, output_dir, settings)


@pytest.mark.parametrize("n_per_class", [6, 40])  # one clip per task; chunks of several
def test_a_worker_that_dies_is_reported_not_hung(tmp_path, n_per_class):
    import functools

    from spectrograms.writer import _results

    data = make_folders(tmp_path / "data", n_per_class=n_per_class)
    _wav(data / "beep" / "crash.wav")
    out = tmp_path / "out"
    listing = list_dataset(str(data))
    for label in {c.label for c in listing.clips}:
        (out / label).mkdir(parents=True, exist_ok=True)
    work = functools.partial(_dies_on_crash_wav, output_dir=str(out), settings=FAST)
    results = list(_results(listing.clips, str(out), FAST, jobs=2, work=work))
    assert sorted(r.source for r in results) == sorted(c.source for c in listing.clips)  # each once
    failed = [r for r in results if r.error]
    assert [os.path.basename(r.source) for r in failed] == ["crash.wav"]
    assert "worker process died" in failed[0].error


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_of_a_killed_run_do_not_linger(tmp_path):
    # kill -9 of the parent used to leave its worker processes waiting forever as orphans.
    data = tmp_path / "data"
    for k in range(80):
        _wav(data / ("hi" if k % 2 else "lo") / f"c{k}.wav", seconds=1.0, freq=200 + 40 * k)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "spectrograms", "--data_dir", str(data), "--output_dir", str(out), "--jobs=2",
           "--sample_rate=8000", "--duration=0.5", "--n_fft=256", "--hop_length=64", "--n_mels=32",
           "--image_size=32"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and len(workers) < 2:
        workers = _children(proc.pid)
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("the run finished before its workers could be seen")
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    lingering = [w for w in workers if _alive(w)]
    for w in lingering:
        os.kill(w, signal.SIGKILL)
    assert not lingering, "worker processes outlived their killed parent"


def test_a_redone_clip_leaves_no_earlier_rendering_beside_the_new_one(tmp_path):
    # --overwrite from split to cut (or png to jpg) used to leave <name>_w0.png beside
    # <name>.png: two renderings of one clip in its class folder.
    data = tmp_path / "data"
    _wav(data / "long" / "l.wav", seconds=1.2)
    _wav(data / "long" / "s.wav", seconds=0.3)
    out = tmp_path / "out"
    write(data, out, settings=SpectrogramSettings(**{**FAST.to_dict(), "long_clips": "split"}))
    assert sorted(p.name for p in (out / "long").iterdir()) == ["l_w0.png", "l_w1.png", "l_w2.png", "s_w0.png"]
    write(data, out, options=WriteOptions(jobs=1, progress=False, overwrite=True))
    assert sorted(p.name for p in (out / "long").iterdir()) == ["l.png", "s.png"]
    jpg = SpectrogramSettings(**{**FAST.to_dict(), "image_format": "jpg"})
    write(data, out, settings=jpg, options=WriteOptions(jobs=1, progress=False, overwrite=True))
    assert sorted(p.name for p in (out / "long").iterdir()) == ["l.jpg", "s.jpg"]
    assert sorted(r.image for r in read_mani(out)) == ["long/l.jpg", "long/s.jpg"]


def test_a_run_with_new_settings_killed_early_leaves_no_old_rows_to_trust(tmp_path, monkeypatch):
    # kill -9 of an --overwrite run right after it recorded the new settings left the old
    # manifest beside them: the next run took the old images as up to date.
    import spectrograms.writer as writer

    data = make_folders(tmp_path / "data")
    out = tmp_path / "out"
    write(data, out)
    new = SpectrogramSettings(**{**FAST.to_dict(), "top_db": 60.0})

    def killed(settings):
        raise RuntimeError("killed")

    monkeypatch.setattr(writer, "_warm_up", killed)
    with pytest.raises(RuntimeError):
        write(data, out, settings=new, options=WriteOptions(jobs=1, progress=False, overwrite=True))
    monkeypatch.undo()
    assert SpectrogramSettings.load_json(out / CONFIG_FILENAME) == new
    again = write(data, out, settings=new)
    assert (again.written, again.up_to_date) == (4, 0)


def test_cut_image_of_a_long_clip_equals_rendering_the_whole_file(tmp_path):
    data = tmp_path / "data"
    _wav(data / "long" / "l.wav", seconds=6.0, sr=11025)  # resampled to 8000: prefix decoding must not show
    out = tmp_path / "out"
    write(data, out)
    whole = load_audio(data / "long" / "l.wav", SR)
    assert np.array_equal(rgb(out / "long" / "l.png"), render_clip(whole, SR, FAST))
    assert read_mani(out)[0].duration == FAST.duration


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock, as a second spectrograms run would."""
    code = ("import sys; from soundretrain.folder_lock import folder_lock\n"
            f"with folder_lock({str(folder)!r}, 'spectrograms run'):\n"
            "    print('locked', flush=True); sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_into_a_busy_output_folder_is_refused_and_loses_nothing(tmp_path):
    # Two runs at once (--classes beep, --classes buzz) both exited 0 and the manifest lost
    # one run's class; one run's cleanup deleted the other's in-flight temp files.
    data = make_folders(tmp_path / "data")
    out = tmp_path / "out"
    write(data, out, classes=["beep"])
    before = (out / "manifest.csv").read_text()
    holder = _hold_lock(out)
    try:
        in_flight = out / "beep" / ".b0_nohash_0.png.0123abcd.tmp"  # the other run's, mid-write
        in_flight.write_bytes(b"half")
        with pytest.raises(OutputError) as info:
            write(data, out, classes=["buzz"])
        message = str(info.value)
        assert "\n" not in message and f"{out} is in use by another spectrograms run (pid {holder.pid}" in message
        assert "one at a time" in message
        assert in_flight.exists() and (out / "manifest.csv").read_text() == before
        assert not (out / "buzz").exists()
    finally:
        holder.communicate("\n", timeout=30)
    in_flight.unlink()
    write(data, out, classes=["buzz"])  # the lock is gone with its holder
    assert sorted({r.label for r in read_mani(out)}) == ["beep", "buzz"]
    assert not (out / ".soundretrain.lock").exists()


def test_a_killed_holder_leaves_no_lock(tmp_path):
    data = make_folders(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock(out)
    holder.kill()
    holder.wait(timeout=30)
    assert (out / ".soundretrain.lock").exists()  # its file stays; the kernel dropped the lock
    assert write(data, out).written == 4


def test_the_cli_says_the_folder_is_busy_in_one_line(tmp_path):
    data = make_folders(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        done = subprocess.run([sys.executable, "-m", "spectrograms", f"--data_dir={data}", f"--output_dir={out}",
                               "--sample_rate=8000", "--duration=0.5", "--n_fft=256", "--hop_length=64",
                               "--n_mels=32", "--image_size=32", "--jobs=1"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        holder.communicate("\n", timeout=30)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 1 and len(errors) == 1
    assert errors[0].startswith("spectrograms: error: ") and "in use by another spectrograms run" in errors[0]


def test_a_truncated_image_is_not_up_to_date_and_retrain_agrees(tmp_path):
    # A PNG cut short counted as up to date (it exists and is newer than its audio), while
    # retrain refused to read it: both now test it against the manifest's size and hash.
    from retrain.errors import RetrainError
    from retrain.images import list_images

    data = make_folders(tmp_path / "data")
    out = tmp_path / "out"
    write(data, out)
    rows = {r.image: r for r in read_mani(out)}
    image = out / "beep" / "b0_nohash_0.png"
    whole = image.read_bytes()
    assert rows["beep/b0_nohash_0.png"].bytes == len(whole)
    assert rows["beep/b0_nohash_0.png"].sha256 == hashlib.sha256(whole).hexdigest()
    image.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RetrainError, match=r"b0_nohash_0.png'.*truncated or changed.*re-run spectrograms"):
        list_images(str(out))
    # Same size, other content (a bit flipped on disk).
    other = out / "buzz" / "z1.png"
    flipped = bytearray(other.read_bytes())
    flipped[-20] ^= 0xFF
    other.write_bytes(bytes(flipped))
    again = write(data, out)
    assert (again.written, again.up_to_date) == (2, 2)
    assert image.read_bytes() == whole and rgb(other).shape == (32, 32, 3)
    assert len(list_images(str(out)).records) == 4


def test_a_manifest_without_sizes_and_hashes_is_still_read_and_upgraded(tmp_path):
    from retrain.images import list_images

    data = make_folders(tmp_path / "data")
    out = tmp_path / "out"
    write(data, out)
    lines = (out / "manifest.csv").read_text().splitlines()
    old = [line.rsplit(",", 2)[0] for line in lines]  # drop the bytes and sha256 columns
    assert old[0] == "image,label,fold,group,source,start,duration,silent"
    (out / "manifest.csv").write_text("\n".join(old) + "\n")  # as spectrograms wrote it before
    assert all(r.sha256 is None for r in read_mani(out))
    assert len(list_images(str(out)).records) == 4  # retrain reads it
    (out / "buzz" / "z0.png").write_bytes((out / "buzz" / "z0.png").read_bytes()[:300])  # truncated
    again = write(data, out)
    assert (again.written, again.up_to_date) == (1, 3)  # whole images kept, the cut one redone
    assert all(r.sha256 and r.bytes for r in read_mani(out))


def test_a_file_listed_under_two_classes_leaves_no_row_and_no_image(tmp_path):
    # It used to render both, keep one row and leave the other image behind, listed nowhere.
    from spectrograms.datasets import US8K_CSV

    root = tmp_path / "us8k"
    (root / "metadata").mkdir(parents=True)
    rows = ["slice_file_name,fsID,start,end,salience,fold,classID,class",
            "1-3-0-0.wav,1,0,1,1,1,3,dog_bark", "2-8-0-0.wav,2,0,1,1,1,8,siren", "3-8-0-0.wav,3,0,1,1,1,8,siren"]
    for k in (1, 2, 3):
        _wav(root / "audio" / "fold1" / f"{k}-{3 if k == 1 else 8}-0-0.wav", freq=300 * k)
    (root / US8K_CSV).write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert write(root, out).written == 3
    (root / US8K_CSV).write_text("\n".join(rows + ["3-8-0-0.wav,3,0,1,1,1,3,dog_bark"]) + "\n")
    summary = write(root, out)
    [(source, reason)] = summary.failed
    assert source.endswith("3-8-0-0.wav") and "listed 2 times" in reason
    assert summary.exit_code() == 0 and summary.exit_code(strict=True) == 1
    listed = sorted(r.image for r in read_mani(out))
    assert listed == ["dog bark/1-3-0-0.png", "siren/2-8-0-0.png"]
    on_disk = sorted(str(p.relative_to(out)) for p in out.glob("*/*.png"))
    assert on_disk == listed  # no orphan image
