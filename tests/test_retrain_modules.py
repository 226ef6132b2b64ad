"""The module resolver: local SavedModels, TF Hub URLs (served on 127.0.0.1), lists, errors."""
from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest

from soundretrain.backbones.registry import ConcatBackbone, ModuleError, load_module
from tiny_models import make_module_archive, make_tiny_image_module, make_tiny_waveform_module


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_image_module(tmp_path_factory.mktemp("m") / "tiny", image_size=32,
                                  feature_size=8)


def test_local_savedmodel_folder_reads_size_from_signature(tiny_dir):
    b = load_module(tiny_dir)
    assert b.input_spec.kind == "image"
    assert (b.input_spec.height, b.input_spec.width) == (32, 32)
    assert b.feature_size == 8
    x = np.random.default_rng(0).random((5, 32, 32, 3), dtype=np.float32)
    f = b.compute(x)
    assert f.shape == (5, 8) and f.dtype == np.float32
    # Deterministic, batch-independent.
    np.testing.assert_allclose(b.compute(x[:2]), f[:2], rtol=1e-5, atol=1e-6)
    assert b.tf_callable() is not None
    assert b.description()["feature_size"] == 8


def test_name_changes_when_the_model_changes(tmp_path):
    a = load_module(make_tiny_image_module(tmp_path / "net", seed=0))
    b = load_module(make_tiny_image_module(tmp_path / "net", seed=1))
    assert a.name != b.name


def test_waveform_savedmodel(tmp_path):
    b = load_module(make_tiny_waveform_module(tmp_path / "w", sample_rate=8000, feature_size=6))
    assert b.input_spec.kind == "waveform" and b.input_spec.sample_rate == 8000
    assert b.compute(np.zeros((3, 8000), np.float32)).shape == (3, 6)


def test_comma_separated_list_concatenates(tiny_dir, tmp_path):
    other = make_tiny_image_module(tmp_path / "big", image_size=40, feature_size=5, seed=3)
    b = load_module(f"{tiny_dir}, {other}")
    assert isinstance(b, ConcatBackbone) and b.feature_size == 13
    x = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    f = b.compute(x)
    np.testing.assert_allclose(f[:, :8], load_module(tiny_dir).compute(x), rtol=1e-5, atol=1e-6)
    import tensorflow as tf
    g = b.tf_callable()(tf.constant(x)).numpy()
    np.testing.assert_allclose(g, f, rtol=1e-4, atol=1e-5)


def test_mixed_inputs_have_no_single_graph(tiny_dir, tmp_path):
    b = load_module(f"{tiny_dir},{make_tiny_waveform_module(tmp_path / 'w')}")
    assert b.mixed_inputs and b.tf_callable() is None
    with pytest.raises(ModuleError):
        b.compute(np.zeros((1, 32, 32, 3), np.float32))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_hub_url_downloads_into_cache_dir(tiny_dir, http_root, tmp_path):
    root, base = http_root
    make_module_archive(tiny_dir, root / "tiny.tar.gz")
    cache = tmp_path / "cache"
    b = load_module(f"{base}/tiny.tar.gz", cache_dir=str(cache))
    assert b.feature_size == 8 and b.input_spec.height == 32
    assert any((cache / "tfhub").iterdir())  # tensorflow_hub cached it there
    # Second load comes from the cache, even with the server gone.
    (root / "tiny.tar.gz").unlink()
    assert load_module(f"{base}/tiny.tar.gz", cache_dir=str(cache)).feature_size == 8


def test_unreachable_url_is_one_line(http_root, tmp_path):
    _, base = http_root
    with pytest.raises(ModuleError) as err:
        load_module(f"{base}/missing.tar.gz", cache_dir=str(tmp_path / "c"))
    msg = str(err.value)
    assert "\n" not in msg and "missing.tar.gz" in msg and "404" in msg


def test_tensorflow_hub_imports_without_its_pkg_resources_warning(tmp_path, monkeypatch):
    # tensorflow_hub imports pkg_resources, which newer setuptools deprecate with a warning
    # that used to print two lines above retrain's one-line module error. Whether it warns
    # depends on the setuptools installed (a new venv's 65.5 does not), so the warning is
    # made here: a stand-in tensorflow_hub that emits it, imported afresh.
    import importlib
    import sys
    import warnings

    from soundretrain.backbones.registry import _import_hub

    (tmp_path / "tensorflow_hub.py").write_text(
        "import warnings\n"
        "warnings.warn('pkg_resources is deprecated as an API. See "
        "https://setuptools.pypa.io/en/latest/pkg_resources.html', UserWarning, stacklevel=2)\n"
        "def resolve(handle):\n    return handle\n")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the stand-in is rewritten below
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorflow_hub", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hub = _import_hub()
    assert hub.__file__ == str(tmp_path / "tensorflow_hub.py")  # the stand-in did run
    assert not [w for w in caught if "pkg_resources" in str(w.message)]
    # Other warnings still reach the user.
    monkeypatch.delitem(sys.modules, "tensorflow_hub")
    (tmp_path / "tensorflow_hub.py").write_text("import warnings\nwarnings.warn('something else')\n")
    importlib.invalidate_caches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _import_hub()
    assert [str(w.message) for w in caught] == ["something else"]


@pytest.mark.parametrize("handle, words", [
    ("no_such_module", "unknown module"),
    ("", "no module given"),
])
def test_unknown_handles(handle, words):
    with pytest.raises(ModuleError) as err:
        load_module(handle)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_folder_without_savedmodel_and_plain_file(tmp_path):
    with pytest.raises(ModuleError, match="no saved_model.pb"):
        load_module(str(tmp_path))
    f = tmp_path / "model.tflite"
    f.write_bytes(b"x")
    with pytest.raises(ModuleError, match="is a file"):
        load_module(str(f))


def test_online_registry_name_offline_is_one_line(tmp_path, monkeypatch):
    # No internet here: the registry handle must fail with advice, not a traceback.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(ModuleError) as err:
        load_module("mobilenet_v2", cache_dir=str(tmp_path))
    assert "mobilenet_v2" in str(err.value) and "\n" not in str(err.value)


def test_yamnet_wrapper_pools_frame_embeddings(tmp_path):
    import tensorflow as tf

    from soundretrain.backbones.registry import YamnetBackbone
    from tiny_models import make_tiny_yamnet_like_module

    b = YamnetBackbone(make_tiny_yamnet_like_module(tmp_path / "yamnet"))
    assert b.input_spec.kind == "waveform" and b.input_spec.sample_rate == 16000
    y = np.random.default_rng(0).normal(0, 0.1, (3, 16000)).astype(np.float32)
    f = b.compute(y)
    assert f.shape == (3, 1024)
    np.testing.assert_allclose(f[1], b.compute(y[1:2])[0], rtol=1e-5, atol=1e-6)
    assert b.tf_callable()(tf.constant(y)).shape == (3, 1024)
