"""Apache Beam is an optional extra. Without it (a child process in which ``import apache_beam``
fails, as where the extra is not installed) the local path works, and ``--runner`` stops in
one line that says how to install it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]

WITHOUT_BEAM = textwrap.dedent("""
    import contextlib, io, json, sys
    sys.modules["apache_beam"] = None  # import apache_beam raises ImportError, as when it is absent
    from spectrograms.cli import main as spectrograms
    from retrain.cli import main as retrain
    data, out = sys.argv[1], sys.argv[2]
    results = {}
    for name, main, argv in [
        ("local", spectrograms, ["spectrograms", "--data_dir", data, "--output_dir", out + "/local",
                                 "--jobs", "1"]),
        ("spectrograms_runner", spectrograms, ["spectrograms", "--data_dir", data, "--output_dir",
                                               out + "/beam", "--runner=DirectRunner"]),
        ("retrain_runner", retrain, ["retrain", "--image_dir", out + "/local", "--bottlenecks_only",
                                     "--bottleneck_dir", out + "/bn", "--runner=DirectRunner"]),
    ]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
        results[name] = [rc, err.getvalue()]
    print(json.dumps(results))
""")


def test_without_beam_the_local_path_works_and_runner_says_how_to_install_it(tmp_path):
    sr = 8000
    t = np.arange(sr // 2) / sr
    for label, freq in (("high", 900.0), ("low", 200.0)):
        (tmp_path / "data" / label).mkdir(parents=True)
        sf.write(tmp_path / "data" / label / "a.wav", 0.5 * np.sin(2 * np.pi * freq * t), sr)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", WITHOUT_BEAM, str(tmp_path / "data"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])

    rc, err = results["local"]
    assert rc == 0, err
    assert len(list((tmp_path / "out" / "local").rglob("*.png"))) == 2

    for name, program in (("spectrograms_runner", "spectrograms"), ("retrain_runner", "retrain")):
        rc, err = results[name]
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"{program}: error: --runner needs Apache Beam, which is not installed")
        assert "pip install 'soundretrain[beam]'" in lines[0]
    assert not (tmp_path / "out" / "beam").exists() and not (tmp_path / "out" / "bn").exists()
