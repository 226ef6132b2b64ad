"""Export models that take sound for the browser: a TensorFlow.js graph model.

``retrain --output_tfjs DIR`` (through :func:`soundretrain.export.export_model`) writes the
audio-in model of :mod:`soundretrain.audio_export` (waveform windows in, probabilities out,
the spectrogram front-end inside) as a TF.js graph model::

    DIR/model.json            topology, signature {waveform -> probabilities}, and the
                              sidecar as userDefinedMetadata.soundretrain
    DIR/group1-shard*of*.bin  the weights (float32)
    DIR/soundretrain.json     the sidecar, as beside every artifact

``tf.loadGraphModel("DIR/model.json")`` loads it; ``label_image --export_web`` puts it in a
static page that labels sound in the browser (``label/web/backend.js``).

The graph is the very function the audio-in SavedModel and TFLite serve, converted by the
``tensorflowjs`` converter's Python module. Two things make that work beside TensorFlow 2.21:

* The converter package imports JAX and TensorFlow Decision Forests at the top of modules
  this export never runs (and TFDF pins another TensorFlow), so it is installed with
  ``--no-deps`` (the Makefile does) and only its graph-model converter is loaded, with an
  empty stand-in for TFDF when that is not installed.
* TF.js has no ``UnsortedSegmentSum`` (the front-end's mel filterbank: two sparse layers,
  :func:`soundretrain.render_tf.mel_layers`), and its WASM back-end has no complex numbers
  (no ``RFFT``). :func:`rewrite_for_tfjs` rewrites both with matrix products (a 0/1 matrix,
  which adds the same terms plus exact zeros; the DFT in two stages of small products,
  :func:`real_dft_function`) in the frozen graph before conversion. The front-end's bit-cast constants are folded into plain float32
  constants by the converter's own graph optimisation.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import types
from typing import Optional, Sequence

import numpy as np

from soundretrain import atomic_files
from soundretrain.audio_export import (INPUT_NAME, OUTPUT_NAME, AudioExportError, audio_features_fn,
                                       audio_sidecar, check_audio_export)
from soundretrain.sidecar import SAVED_MODEL_SIDECAR, write_sidecar

TFJS_PACKAGE = "tensorflowjs==4.22.0"
INSTALL_HINT = f"pip install --no-deps {TFJS_PACKAGE} (make install does)"
MODEL_JSON = "model.json"
METADATA_KEY = "soundretrain"  # model.json's userDefinedMetadata key holding the sidecar


def tfjs_converter():
    """The converter's graph-model module (``tf_saved_model_conversion_v2``), without the
    package's ``__init__`` (which imports JAX); raises :class:`AudioExportError` naming the
    install command when the package is missing."""
    if "tensorflowjs" not in sys.modules and importlib.util.find_spec("tensorflowjs") is None:
        raise AudioExportError(f"--output_tfjs needs the TensorFlow.js converter: {INSTALL_HINT}")
    if "tensorflow_decision_forests" not in sys.modules and \
            importlib.util.find_spec("tensorflow_decision_forests") is None:
        # Imported at the top of the converter for decision-forest models only.
        sys.modules.setdefault("tensorflow_decision_forests", types.ModuleType("tensorflow_decision_forests"))
    for name in ("tensorflowjs", "tensorflowjs.converters"):
        if name not in sys.modules:
            spec = importlib.util.find_spec(name)
            package = types.ModuleType(name)
            package.__path__ = list(spec.submodule_search_locations or [])
            package.__spec__ = spec
            sys.modules[name] = package
    try:
        return importlib.import_module("tensorflowjs.converters.tf_saved_model_conversion_v2")
    except ImportError as e:
        raise AudioExportError(f"cannot load the TensorFlow.js converter ({e}); {INSTALL_HINT}") from None


def check_tfjs_export(backbone, sidecar: Optional[dict]) -> None:
    """Raise :class:`AudioExportError` (one line) before training when ``--output_tfjs``
    cannot be written: the module cannot take sound, or the converter is missing."""
    check_audio_export(backbone, sidecar)
    tfjs_converter()


def supported_ops() -> set[str]:
    """The TensorFlow ops TF.js runs (the converter's own list)."""
    from tensorflowjs import resource_loader

    names: set[str] = set()
    for filename in resource_loader.list_dir("op_list"):
        if filename.endswith(".json"):
            with resource_loader.open_file(os.path.join("op_list", filename)) as f:
                names |= {op["tfOpName"] for op in json.load(f)}
    return names


def export_tfjs_model(backbone, head, labels: Sequence[str], sidecar: dict, output_dir: str) -> dict[str, str]:
    """Write ``backbone`` + ``head`` as an audio-in TF.js graph model into ``output_dir``
    (replaced whole: a failed export leaves the old folder). Returns ``{"output_tfjs": dir,
    "output_tfjs_sidecar": path}``."""
    labels = [str(label) for label in labels]
    if not labels:
        raise AudioExportError("cannot export a model without labels")
    settings, spec = check_audio_export(backbone, sidecar)
    converter = tfjs_converter()
    full_sidecar = audio_sidecar(sidecar, backbone, labels, settings, spec)

    import tensorflow as tf

    from soundretrain.audio_export import _serving_function

    serve = _serving_function(tf, audio_features_fn(backbone, settings, spec), head, spec)
    write_tfjs_model(converter, serve, full_sidecar, output_dir)
    return {"output_tfjs": output_dir, "output_tfjs_sidecar": os.path.join(output_dir, SAVED_MODEL_SIDECAR)}


def convert_audio_saved_model(saved_model_dir: str, output_dir: str) -> dict:
    """An audio-in SavedModel (``retrain --audio_saved_model_dir``) as a TF.js graph model in
    ``output_dir``; returns its sidecar. Raises AudioExportError for anything else."""
    from soundretrain.sidecar import read_sidecar

    sidecar = read_sidecar(saved_model_dir)
    if not sidecar or sidecar.get("model_input") != "waveform":
        raise AudioExportError(f"{saved_model_dir} is not a SavedModel that takes sound "
                               "(write one with retrain --audio_saved_model_dir or --output_tfjs)")
    converter = tfjs_converter()
    import tensorflow as tf

    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    write_tfjs_model(converter, serve, dict(sidecar), output_dir)
    return sidecar


def write_tfjs_model(converter, serve, sidecar: dict, output_dir: str) -> None:
    """Freeze ``serve`` (waveform -> probabilities), rewrite it for TF.js, convert it and
    write ``output_dir`` whole (model.json, weight shards, soundretrain.json)."""
    import tensorflow as tf
    from google.protobuf.json_format import MessageToDict
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    sidecar = dict(sidecar, artifact="tfjs_graph_model")
    sidecar.pop("artifact_sha256", None)
    frozen = convert_variables_to_constants_v2(serve)
    graph_def = frozen.graph.as_graph_def()
    rewrite_for_tfjs(graph_def)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    signature = _signature_def(graph, frozen.inputs[0].name, frozen.outputs[0].name)
    with atomic_files.replacing_folder(output_dir) as tmp_dir:
        optimized = converter.optimize_graph(graph, signature, skip_op_check=True)
        missing = sorted({n.op for n in optimized.node} - supported_ops())
        if missing:
            raise AudioExportError(f"cannot export the model to TF.js: it uses {', '.join(missing)}, "
                                   "which TF.js does not run")
        weights = converter.extract_weights(optimized)
        converter.write_artifacts(MessageToDict(optimized), weights, os.path.join(tmp_dir, MODEL_JSON),
                                  tf.__version__, signature, metadata={METADATA_KEY: sidecar})
        write_sidecar(tmp_dir, sidecar)


def _signature_def(graph, input_name: str, output_name: str):
    """``{waveform: [None, num_samples]} -> {probabilities: [None, classes]}`` for model.json."""
    from tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef()
    for key, name, into in ((INPUT_NAME, input_name, signature.inputs), (OUTPUT_NAME, output_name, signature.outputs)):
        tensor = graph.get_tensor_by_name(name)
        into[key].name = name
        into[key].dtype = tensor.dtype.as_datatype_enum
        into[key].tensor_shape.CopyFrom(tensor.shape.as_proto())
    return signature


class _GraphEdit:
    """Small helpers to add nodes to a GraphDef (the rewrites below)."""

    def __init__(self, graph_def) -> None:
        from tensorflow.core.framework import attr_value_pb2

        self.graph_def = graph_def
        self.attr = attr_value_pb2.AttrValue
        self.new_nodes: list = []
        self.consts = {n.name: n for n in graph_def.node if n.op == "Const"}
        self.int32 = self.attr(type=self.dtype_enum(np.int32))
        self.float32 = self.attr(type=self.dtype_enum(np.float32))
        self._same_values: dict = {}  # equal constants are written once (the model's size)

    @staticmethod
    def dtype_enum(dtype) -> int:
        from tensorflow.python.framework import dtypes

        return dtypes.as_dtype(dtype).as_datatype_enum

    def const_value(self, ref: str):
        from tensorflow.python.framework import tensor_util

        node = self.consts.get(ref.split(":")[0].lstrip("^"))
        return None if node is None else tensor_util.MakeNdarray(node.attr["value"].tensor)

    def node(self, name: str, op: str, inputs: Sequence[str] = (), **attrs) -> str:
        from tensorflow.core.framework import node_def_pb2

        n = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
        for key, value in attrs.items():
            n.attr[key].CopyFrom(value)
        self.new_nodes.append(n)
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        import hashlib

        from tensorflow.python.framework import tensor_util

        key = (value.dtype.str, value.shape, hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest())
        if key not in self._same_values:
            self._same_values[key] = self.node(name, "Const", dtype=self.attr(type=self.dtype_enum(value.dtype)),
                                               value=self.attr(tensor=tensor_util.make_tensor_proto(value)))
        return self._same_values[key]

    def reshape(self, name: str, data: str, shape: str) -> str:
        return self.node(name, "Reshape", [data, shape], T=self.float32, Tshape=self.int32)

    def shape_with(self, base: str, data: str, new: int, leading: bool) -> str:
        """The shape of ``data`` with its first (``leading``) or last axis replaced by ``new``."""
        zero = self.attr(i=0)
        shape = self.node(base + "/shape", "Shape", [data], T=self.float32, out_type=self.int32)
        begin, end = (1, 0) if leading else (0, -1)
        kept = self.node(base + "/kept", "StridedSlice",
                         [shape, self.const(base + "/begin", np.array([begin], np.int32)),
                          self.const(base + "/end", np.array([end], np.int32)),
                          self.const(base + "/strides", np.array([1], np.int32))],
                         T=self.int32, Index=self.int32, begin_mask=self.attr(i=0 if leading else 1),
                         end_mask=self.attr(i=1 if leading else 0), ellipsis_mask=zero, new_axis_mask=zero,
                         shrink_axis_mask=zero)
        size = self.const(base + "/new", np.array([new], np.int32))
        return self.node(base + "/out_shape", "ConcatV2",
                         ([size, kept] if leading else [kept, size]) + [self.const(base + "/axis", np.array(0, np.int32))],
                         T=self.int32, Tidx=self.int32, N=self.attr(i=2))

    def matmul_first_axis(self, base: str, data: str, matrix: np.ndarray) -> str:
        """``matrix [m, S] @ data [S, ...]`` -> ``[m, ...]`` (TF.js's MatMul takes two dimensions)."""
        flat = self.reshape(base + "/flat", data, self.const(base + "/flat_shape", np.array([matrix.shape[1], -1], np.int32)))
        product = self.node(base + "/matmul", "MatMul", [self.const(base + "/matrix", matrix.astype(np.float32)), flat],
                            T=self.float32, transpose_a=self.attr(b=False), transpose_b=self.attr(b=False))
        return self.reshape(base + "/out", product, self.shape_with(base, data, matrix.shape[0], leading=True))

    def splice(self, prefix: str, function, inputs: Sequence[str]) -> list[str]:
        """Copy the graph of the concrete ``function`` in under ``prefix``, its placeholders
        fed by ``inputs``; returns the names of its outputs."""
        graph_def = function.graph.as_graph_def()
        placeholders = [t.name.split(":")[0] for t in function.inputs]
        feeds = dict(zip(placeholders, inputs))

        def renamed(ref: str) -> str:
            control = ref.startswith("^")
            name, _, port = ref.lstrip("^").partition(":")
            return ("^" if control else "") + prefix + name + (":" + port if port else "")

        for original in graph_def.node:
            n = type(original)()
            n.CopyFrom(original)
            n.name = prefix + original.name
            n.ClearField("device")
            if original.name in feeds:
                dtype = n.attr["dtype"].type
                n.op = "Identity"
                n.ClearField("attr")
                n.attr["T"].CopyFrom(self.attr(type=dtype))
                n.input[:] = [feeds[original.name]]
            else:
                n.input[:] = [renamed(i) for i in original.input]
            self.new_nodes.append(n)
        return [renamed(t.name) for t in function.outputs]

    def finish(self, removed: set) -> None:
        kept = [n for n in self.graph_def.node if n.name not in removed]
        del self.graph_def.node[:]
        self.graph_def.node.extend(kept + self.new_nodes)


def real_dft_function(n_fft: int):
    """``frames [N, n_fft] -> (real, imag) [N, n_fft // 2 + 1]``: TensorFlow's ``rfft`` with
    real-valued ops only, as two stages of small matrix products (Cooley-Tukey with
    ``n_fft = n1 * n2``: ``n1`` DFTs of ``n2`` points' interleaved samples, twiddle factors,
    then DFTs of ``n2`` points; ``2 * n1 + 4 * n2`` products per sample instead of
    ``n_fft + 2``, and tables of ``n1**2 + n2**2 + n_fft`` floats instead of ``n_fft**2``)."""
    import tensorflow as tf

    n1 = max(d for d in range(1, int(np.sqrt(n_fft)) + 1) if n_fft % d == 0)
    n2 = n_fft // n1
    bins, k2s = n_fft // 2 + 1, n2 // 2 + 1
    j1 = np.arange(n1)
    c1, s1 = np.cos(2 * np.pi * np.outer(j1, j1) / n1), np.sin(2 * np.pi * np.outer(j1, j1) / n1)
    twiddle = 2 * np.pi * np.outer(np.arange(n2), j1) / n_fft  # [j2, k1]
    tr, ti = np.cos(twiddle), -np.sin(twiddle)
    angle2 = 2 * np.pi * np.outer(np.arange(n2), np.arange(k2s)) / n2  # [j2, k2]
    c2, s2 = np.cos(angle2), np.sin(angle2)
    f32 = lambda a: tf.constant(a.astype(np.float32))  # noqa: E731

    @tf.function(input_signature=[tf.TensorSpec([None, n_fft], tf.float32)])
    def rdft(x):
        x = tf.reshape(tf.transpose(tf.reshape(x, [-1, n1, n2]), [0, 2, 1]), [-1, n1])  # rows (frame, j2), j1
        ar, ai = tf.matmul(x, f32(c1)), -tf.matmul(x, f32(s1))  # rows (frame, j2), k1
        ar, ai = tf.reshape(ar, [-1, n2, n1]), tf.reshape(ai, [-1, n2, n1])
        br, bi = ar * f32(tr) - ai * f32(ti), ar * f32(ti) + ai * f32(tr)
        br = tf.reshape(tf.transpose(br, [0, 2, 1]), [-1, n2])  # rows (frame, k1), j2
        bi = tf.reshape(tf.transpose(bi, [0, 2, 1]), [-1, n2])
        # One product each (no MatMul + Add: the converter would fuse the second product in as
        # a "bias", which TF.js refuses): xr = br c2 + bi s2, xi = bi c2 - br s2.
        xr = tf.matmul(tf.concat([br, bi], 1), f32(np.concatenate([c2, s2])))  # rows (frame, k1), k2
        xi = tf.matmul(tf.concat([bi, br], 1), f32(np.concatenate([c2, -s2])))

        def bins_in_order(z):  # bin k1 + n1 * k2
            return tf.reshape(tf.transpose(tf.reshape(z, [-1, n1, k2s]), [0, 2, 1]), [-1, k2s * n1])[:, :bins]

        return bins_in_order(xr), bins_in_order(xi)

    return rdft.get_concrete_function()


def rewrite_for_tfjs(graph_def) -> dict[str, int]:
    """Rewrite, in place, what TF.js cannot run on every back-end:

    * ``UnsortedSegmentSum(data [S, ...], ids const, n const)`` (the mel filterbank's sparse
      layers): a product with a 0/1 matrix ``[n, S]``. TF.js has no such op.
    * ``RFFT(frames [..., n_fft])`` and its ``Real``/``Imag``: :func:`real_dft_function`. TF.js's
      WASM back-end has no complex numbers (no RFFT), and its WebGL FFT failed on these shapes.

    Returns how many nodes of each kind were rewritten. A segment sum with ids computed at
    run time, or an FFT used other than through Real and Imag, raises AudioExportError."""
    edit = _GraphEdit(graph_def)
    removed: set = set()
    counts = {"UnsortedSegmentSum": 0, "RFFT": 0}
    consumers: dict = {}
    for n in graph_def.node:
        for ref in n.input:
            consumers.setdefault(ref.split(":")[0].lstrip("^"), []).append(n)
    dfts: dict = {}
    for n in list(graph_def.node):
        if n.op == "UnsortedSegmentSum":
            ids, segments = edit.const_value(n.input[1]), edit.const_value(n.input[2])
            if ids is None or segments is None or ids.ndim != 1:
                raise AudioExportError(f"cannot export the model to TF.js: segment sum {n.name} has "
                                       "segment ids computed at run time")
            segments = int(segments)
            onehot = np.zeros((segments, ids.shape[0]), np.float32)
            keep = (ids >= 0) & (ids < segments)
            onehot[ids[keep], np.nonzero(keep)[0]] = 1.0
            _become_identity(n, edit.matmul_first_axis(n.name + "/tfjs", n.input[0], onehot), edit.float32)
            counts["UnsortedSegmentSum"] += 1
        elif n.op == "RFFT":
            length = edit.const_value(n.input[1])
            if length is None or length.size != 1:
                raise AudioExportError(f"cannot export the model to TF.js: FFT {n.name} has a length "
                                       "computed at run time")
            n_fft = int(length.reshape(-1)[0])
            users = consumers.get(n.name, [])
            for user in users:
                if user.op not in ("Real", "Imag"):
                    raise AudioExportError(f"cannot export the model to TF.js: FFT {n.name} feeds "
                                           f"{user.op}, which has no real-valued form here")
            base = n.name + "/tfjs"
            if n_fft not in dfts:
                dfts[n_fft] = real_dft_function(n_fft)
            flat = edit.reshape(base + "/flat", n.input[0], edit.const(base + "/flat_shape", np.array([-1, n_fft], np.int32)))
            real, imag = edit.splice(base + "/dft/", dfts[n_fft], [flat])
            shape = edit.shape_with(base, n.input[0], n_fft // 2 + 1, leading=False)
            for user in users:
                part = real if user.op == "Real" else imag
                _become_identity(user, edit.reshape(f"{base}/{user.op.lower()}", part, shape), edit.float32)
            removed.add(n.name)
            counts["RFFT"] += 1
    edit.finish(removed)
    return counts


def _become_identity(node, source: str, float32) -> None:
    """Turn ``node`` into ``Identity(source)`` (float32), keeping its name for its consumers."""
    name = node.name
    node.Clear()
    node.name, node.op = name, "Identity"
    node.input.append(source)
    node.attr["T"].CopyFrom(float32)


__all__ = ["export_tfjs_model", "convert_audio_saved_model", "write_tfjs_model", "check_tfjs_export", "tfjs_converter", "rewrite_for_tfjs", "MODEL_JSON",
           "METADATA_KEY", "INSTALL_HINT"]
