"""spectrograms on a full disk (issue 19, item 4): one line, exit 1, nothing half-written,
and a rerun with room continues from what was written. The disks are real (a tiny tmpfs,
where the tests may mount one); failures.csv, the one write that comes after the others,
is failed at the OS boundary."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from small_disk import fill, grow_tmpfs, small_tmpfs
from soundretrain.manifest import read_manifest
from spectrograms.cli import main

SMALL = ["--jobs=1", "--sample_rate=8000", "--duration=0.5", "--n_fft=256", "--hop_length=64",
         "--n_mels=32", "--image_size=32"]


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data"
    t = np.arange(4000) / 8000
    for k in range(30):
        label = "hi" if k % 2 else "lo"
        (folder / label).mkdir(parents=True, exist_ok=True)
        sf.write(folder / label / f"c{k}.wav", 0.3 * np.sin(2 * np.pi * (200 + 40 * k) * t), 8000)
    return folder


def one_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("spectrograms: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def hidden_entries(folder: Path) -> list[str]:
    """Temp files and folders anywhere under ``folder`` (the journal is not one)."""
    return [str(p) for p in folder.rglob(".*") if p.name not in (".manifest-journal.csv",)]


def test_a_disk_that_is_already_full(tmp_path, data, capsys):
    """The probe: a traceback from folder_lock's os.pwrite."""
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        fill(disk)
        line = one_error(capsys, ["spectrograms", f"--data_dir={data}", f"--output_dir={disk / 'spec'}", *SMALL])
        assert "No space left on device" in line and str(disk / "spec") in line
        assert not (disk / "spec").exists() or list((disk / "spec").iterdir()) == []


def test_a_disk_that_fills_up_during_the_run_then_a_rerun_with_room(tmp_path, data, capsys):
    """The probe: a traceback from writing the manifest and failures.csv once the disk filled."""
    with small_tmpfs(tmp_path / "disk", "48k") as disk:
        out = disk / "spec"
        line = one_error(capsys, ["spectrograms", f"--data_dir={data}", f"--output_dir={out}", *SMALL])
        assert "no space left for" in line and "No space left on device" in line
        assert "a rerun continues from them" in line and "free some space and run again" in line
        assert not hidden_entries(out)  # no temp file, no lock file
        written = sorted(out.rglob("*.png"))
        assert 0 < len(written) < 30
        assert not (out / "failures.csv").exists()  # the clips did not fail: the disk did

        grow_tmpfs(disk, "8m")  # the user frees some space
        assert main(["spectrograms", f"--data_dir={data}", f"--output_dir={out}", *SMALL]) == 0
        summary = capsys.readouterr().out
        assert f"up to date {len(written)}" in summary and f"written {30 - len(written)}" in summary
        rows = read_manifest(str(out / "manifest.csv"))
        assert len(rows) == 30 and not hidden_entries(out)


def test_failures_csv_that_cannot_be_written_is_one_line(tmp_path, data, capsys, monkeypatch):
    from soundretrain import filesystems

    (data / "hi" / "broken.wav").write_bytes(b"RIFF not audio")  # one failure to list
    write_text = filesystems.write_text

    def full_disk(path, text, **kwargs):
        if str(path).endswith("failures.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_text(path, text, **kwargs)

    monkeypatch.setattr(filesystems, "write_text", full_disk)
    out = tmp_path / "spec"
    line = one_error(capsys, ["spectrograms", f"--data_dir={data}", f"--output_dir={out}", *SMALL])
    assert "failures.csv" in line and "No space left on device" in line
    assert "manifest.csv are written" in line
    assert len(read_manifest(str(out / "manifest.csv"))) == 30
