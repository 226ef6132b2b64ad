"""The converted-module cache is not trusted (issue 19, item 2): whoever can write the cache
folder must not be able to run code through it, nor slip in other weights, nor leave
bottlenecks of other weights to be reused. Each test is one of the probes that broke it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from soundretrain.backbones import converted_cache as cc
from soundretrain.backbones import efficientnet_lite0 as lite0
from soundretrain.backbones.registry import ModuleError

REPO = Path(__file__).resolve().parent.parent

# A SavedModel whose loading runs its own ops: a resource initialiser that writes a file
# (tf.saved_model.load runs every restored resource's initialiser). Built in a child
# process so this test process's TensorFlow state stays clean.
PLANT = r"""
import sys, numpy as np, tensorflow as tf
out, flag = sys.argv[1], sys.argv[2]

class RunsAtLoad(tf.saved_model.experimental.TrackableResource):
    def __init__(self, path):
        self._path = path
        super().__init__()
    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="planted")
    def _initialize(self):
        tf.io.write_file(self._path, "the cache's own graph ran")
        return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

module = tf.Module()
module.planted = RunsAtLoad(flag)
module.weights = {"stem_kernel": tf.Variable(np.zeros((3, 3, 3, 32), np.float32))}
tf.saved_model.save(module, out)
"""


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """A cache holding efficientnet_lite0 converted from the installed package."""
    folder = tmp_path_factory.mktemp("real_module_cache")
    return {"dir": folder, "backbone": lite0.load(folder)}


def images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 224, 224, 3), np.float32)


def plant_saved_model(folder: Path, flag: Path, marker: dict) -> None:
    subprocess.run([sys.executable, "-c", PLANT, str(folder), str(flag)], check=True,
                   capture_output=True)
    (folder / cc.MARKER_FILE).write_text(json.dumps(marker))
    assert not flag.exists()  # saving it ran nothing; loading it would


def test_a_planted_saved_model_in_the_cache_never_runs(real_cache, tmp_path, capsys):
    """The probe: a SavedModel planted where the cache lives, the marker copied, wrote a file
    when `retrain --bottlenecks_only` loaded it. Planted under the old layout's name
    (efficientnet_lite0-v1, what the toolkit loaded before) and beside the new layout's
    verified arrays: neither is ever executed, and the features are the real network's."""
    from retrain.cli import main
    from tiny_models import make_colour_image_folders

    cache = tmp_path / "cache"
    flag = tmp_path / "planted_code_ran"
    old = cache / "efficientnet_lite0-v1"
    plant_saved_model(old, flag, {"cache_format": 1, "name": "efficientnet_lite0"})
    new = lite0.cached_model_dir(cache)
    plant_saved_model(new, flag, {})
    shutil.copy(lite0.cached_model_dir(real_cache["dir"]) / cc.WEIGHTS_FILE, new / cc.WEIGHTS_FILE)
    shutil.copy(lite0.cached_model_dir(real_cache["dir"]) / cc.MARKER_FILE, new / cc.MARKER_FILE)

    make_colour_image_folders(tmp_path / "img", per_class=2, size=224)
    code = main(["retrain", f"--image_dir={tmp_path / 'img'}", "--tfhub_module=efficientnet_lite0",
                 f"--module_cache_dir={cache}", f"--bottleneck_dir={tmp_path / 'bn'}",
                 "--bottlenecks_only", "--noprogress"])
    assert code == 0, capsys.readouterr().err
    assert not flag.exists()
    backbone = lite0.load(cache)
    np.testing.assert_array_equal(backbone.compute(images()), real_cache["backbone"].compute(images()))


def test_right_shaped_wrong_weights_are_detected_and_replaced(real_cache, tmp_path, capsys):
    """The probe: right-shaped random weights in the cache (its marker edited to match) gave
    features uncorrelated with the real ones, silently. Now: one warning line, the real
    weights converted again, the cache repaired."""
    folder = lite0.cached_model_dir(tmp_path)
    shutil.copytree(lite0.cached_model_dir(real_cache["dir"]), folder)
    rng = np.random.default_rng(1)
    wrong = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in lite0.expected_weight_shapes().items()}
    cc.write_arrays(folder, wrong)
    marker = json.loads((folder / cc.MARKER_FILE).read_text())
    marker["weights_sha256"] = cc.weights_digest(wrong)  # a careful attacker edits it too
    (folder / cc.MARKER_FILE).write_text(json.dumps(marker))
    capsys.readouterr()

    backbone = lite0.load(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("efficientnet_lite0: warning: the cache in")
    assert "unknown digest" in err[0] and "converting them again" in err[0]
    np.testing.assert_array_equal(backbone.compute(images()), real_cache["backbone"].compute(images()))
    assert backbone.weights_digest in lite0.KNOWN_WEIGHTS
    assert cc.weights_digest(cc.read_arrays(folder, lite0.expected_weight_shapes())) in lite0.KNOWN_WEIGHTS
    lite0.load(tmp_path)
    assert capsys.readouterr().err == ""  # repaired: the next load is silent


def test_a_pickle_in_the_cached_arrays_is_never_loaded(real_cache, tmp_path, capsys):
    """An .npz member holding an object array (a pickle that would run code when loaded)."""
    import os
    import pickle

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pickle_ran'}",))

    folder = lite0.cached_model_dir(tmp_path)
    shutil.copytree(lite0.cached_model_dir(real_cache["dir"]), folder)
    arrays = dict(np.load(folder / cc.WEIGHTS_FILE))
    evil = np.empty(1, object)
    evil[0] = RunsCode()
    arrays["stem_kernel"] = evil
    with open(folder / cc.WEIGHTS_FILE, "wb") as f:
        np.savez(f, **arrays)
    with zipfile.ZipFile(folder / cc.WEIGHTS_FILE) as zf:  # the pickle really is in there
        assert pickle.PROTO in zf.read("stem_kernel.npy")
    backbone = lite0.load(tmp_path)
    assert "warning" in capsys.readouterr().err
    assert not (tmp_path / "pickle_ran").exists()
    np.testing.assert_array_equal(backbone.compute(images(1)), real_cache["backbone"].compute(images(1)))


@pytest.mark.parametrize("damage", ["truncated", "extra_member", "wrong_dtype", "huge_member"])
def test_damaged_or_padded_arrays_are_refused_before_reading(real_cache, tmp_path, damage):
    folder = lite0.cached_model_dir(tmp_path)
    shutil.copytree(lite0.cached_model_dir(real_cache["dir"]), folder)
    path = folder / cc.WEIGHTS_FILE
    shapes = lite0.expected_weight_shapes()
    arrays = dict(np.load(path))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100_000])
    elif damage == "extra_member":
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("payload.npy", b"x")
    elif damage == "wrong_dtype":
        arrays["stem_bias"] = arrays["stem_bias"].astype(np.float64)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    else:  # a member whose header claims the right shape but which holds far more bytes
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for k, v in arrays.items():
                with zf.open(f"{k}.npy", "w") as f:
                    np.lib.format.write_array(f, v)
                    if k == "stem_bias":
                        f.write(b"\0" * 10_000_000)  # deflates to almost nothing
    assert cc.read_arrays(folder, shapes) is None
    assert cc.read_arrays(lite0.cached_model_dir(real_cache["dir"]), shapes) is not None


def test_bottlenecks_are_keyed_by_the_weights_digest(tmp_path):
    """The probe: bottlenecks computed with planted weights were reused after the real cache
    was restored (the key named the module only). Now the weights' digest is in the key."""
    from retrain.bottlenecks import compute_bottlenecks
    from retrain.images import ImageRecord
    from tiny_models import make_colour_image_folders, make_tiny_efficientnet_lite

    root = Path(make_colour_image_folders(tmp_path / "img", per_class=2))
    paths = sorted(root.rglob("*.png"))
    records = [ImageRecord(str(p), p.relative_to(root).as_posix(), p.parent.name, p.stem)
               for p in paths]
    real = make_tiny_efficientnet_lite(seed=0, name="tiny_lite")
    planted = make_tiny_efficientnet_lite(seed=1, name="tiny_lite")  # same name, other weights
    real.weights_digest, planted.weights_digest = "a" * 64, "b" * 64
    bn = str(tmp_path / "bn")

    with_planted, computed = compute_bottlenecks(planted, records, bn, progress=False)
    assert computed == len(records)
    with_real, computed = compute_bottlenecks(real, records, bn, progress=False)
    assert computed == len(records)  # not the planted weights' vectors
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in paths])
    np.testing.assert_allclose(with_real, real.compute(pixels), atol=1e-5)
    assert not np.allclose(with_real, with_planted)
    again, computed = compute_bottlenecks(real, records, bn, progress=False)
    assert computed == 0 and np.array_equal(again, with_real)


def test_every_converted_module_carries_its_digest_into_the_sidecar(real_cache):
    backbone = real_cache["backbone"]
    assert backbone.weights_digest in lite0.KNOWN_WEIGHTS
    assert backbone.description()["weights_sha256"] == backbone.weights_digest


def test_an_unknown_checkpoint_is_used_but_never_cached(tmp_path, capsys, monkeypatch):
    """Weights that are not the published ones (a checkpoint given by path) are used from
    memory, with one warning line, and nothing is written that could later pass for them."""
    from soundretrain.backbones import aisfx
    from audio_weights import write_fake_aisfx

    write_fake_aisfx(tmp_path / "checkpoint.pth", seed=7)  # not the other tests' trusted fakes
    backbone = aisfx.load(tmp_path / "cache", checkpoint=tmp_path / "checkpoint.pth")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aisfx: warning: these are not the packaged aiSFX")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert backbone.weights_digest not in aisfx.KNOWN_WEIGHTS


def test_known_digests_are_this_toolkits_conversion_of_the_installed_packages():
    """The table the cache is checked against is what converting the packages gives (a
    change to a conversion must update it, and bump CACHE_FORMAT)."""
    from soundretrain.backbones import aisfx, soundnet

    for module in (lite0, aisfx, soundnet):
        try:
            arrays = module.conversion().convert()
        except ModuleError as err:  # the weights package is not installed here
            pytest.skip(str(err))
        digest = cc.weights_digest({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()})
        assert digest in module.KNOWN_WEIGHTS, module.NAME
