"""Load an exported model (frozen ``.pb``, SavedModel folder or ``.tflite``) for labelling.

Every format is wrapped into a :class:`Labeler` with one method,
``predict(batch) -> probabilities``. A head-only artifact (exported for a waveform
backbone such as BirdNET) is chained behind its backbone, loaded by name through
:func:`soundretrain.backbones.registry.load_module`, so ``predict`` takes audio for it.

TensorFlow is imported only for the ``.pb`` and SavedModel formats: a ``.tflite``
model runs on ``ai-edge-litert`` when it is installed, which keeps a cold start
(a new process) well under TensorFlow's own import time.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from soundretrain.model_folder import ModelFolderError, check_artifact as check_model_folder
from soundretrain.sidecar import (SidecarError, file_sha256, labels_sha256, read_labels, read_sidecar,
                                  sidecar_problem)

# Audio-in models describe themselves in a signature (soundretrain.audio_export); "metadata"
# was its first name, before it had to sort after "serving_default".
METADATA_SIGNATURES = ("sidecar", "metadata")
RETRAIN_INPUT_LAYER = "Placeholder"  # retrain.py's input node
RETRAIN_OUTPUT_LAYER = "final_result"  # retrain.py's --final_tensor_name default
TFLITE_MAGIC = b"TFL3"


class ModelLoadError(ValueError):
    """A model or its labels cannot be loaded; the message is one line."""


class ModelRunError(ValueError):
    """A loaded model failed on its input (wrong shape, broken graph); one line."""


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ runtime chatter such as TFLite's "INFO: Created
    TensorFlow Lite XNNPACK delegate for CPU."); Python exceptions still propagate."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _tensor_name(name: str) -> str:
    """``"x"`` or ``"x:0"`` -> ``"x:0"``."""
    return name if ":" in name else f"{name}:0"


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


class FrozenGraphModel:
    """A frozen GraphDef run by a ``tf.compat.v1`` session, as label_image.py does."""

    format = "frozen_graph"

    def __init__(self, path: str, input_layer: str, output_layer: str) -> None:
        import tensorflow as tf

        graph_def = tf.compat.v1.GraphDef()
        try:
            with open(path, "rb") as f:
                graph_def.ParseFromString(f.read())
        except OSError as e:
            raise ModelLoadError(f"cannot read graph {path}: {e.strerror or e}") from None
        except Exception:  # protobuf's DecodeError and friends
            raise ModelLoadError(f"{path} is not a TensorFlow GraphDef (cannot parse it; corrupt or wrong file?)") from None
        nodes = {node.name: node for node in graph_def.node}
        for flag, layer in (("--input_layer", input_layer), ("--output_layer", output_layer)):
            if layer.split(":")[0] not in nodes:
                hint = ", ".join(n.name for n in graph_def.node if n.op == "Placeholder")[:120] or "none"
                raise ModelLoadError(
                    f"graph {path} has no node {layer!r} (corrupt graph or wrong {flag}; placeholders in it: {hint})"
                )
        self.graph = tf.Graph()
        try:
            with self.graph.as_default():
                tf.compat.v1.import_graph_def(graph_def, name="")
        except Exception as e:
            raise ModelLoadError(f"cannot import graph {path}: {_one_line(e)}") from None
        try:
            self.input = self.graph.get_tensor_by_name(_tensor_name(input_layer))
            self.output = self.graph.get_tensor_by_name(_tensor_name(output_layer))
        except (KeyError, ValueError) as e:
            raise ModelLoadError(f"graph {path}: {_one_line(e)} (check --input_layer/--output_layer)") from None
        if self.output.name == self.input.name:
            raise ModelLoadError(f"--output_layer {output_layer!r} is the graph's input, not its output "
                                 f"(retrain's graphs output {RETRAIN_OUTPUT_LAYER!r})")
        if self.output.shape.rank is not None and self.output.shape.rank != 2:
            raise ModelLoadError(
                f"node {output_layer!r} of {path} is not a [batch, classes] output (its shape is "
                f"{self.output.shape}); pass the graph's output node with --output_layer "
                f"(retrain's graphs: {RETRAIN_OUTPUT_LAYER!r})")
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.input_shape = tuple(self.input.shape.as_list()) if self.input.shape.rank is not None else None
        self.num_outputs = self.output.shape[-1] if self.output.shape.rank else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(self.output, {self.input: batch}), dtype=np.float32)


class SavedModelModel:
    """A TF2 SavedModel's signature (``serving_default`` unless it has only another)."""

    format = "saved_model"

    def __init__(self, path: str, input_layer: Optional[str], output_layer: Optional[str]) -> None:
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(path)
        except Exception as e:
            raise ModelLoadError(f"cannot load SavedModel {path}: {_one_line(e)}") from None
        signatures = dict(loaded.signatures)
        if not signatures:
            raise ModelLoadError(f"SavedModel {path} has no signatures (export it with a serving_default signature)")
        self._loaded = loaded  # keep the variables alive
        self.signature = signatures.get("serving_default") or next(iter(signatures.values()))
        inputs = self.signature.structured_input_signature[1]
        outputs = self.signature.structured_outputs
        self.input_key = _pick(inputs, input_layer, "input", path)
        self.output_key = _pick(outputs, output_layer, "output", path)
        self.input_shape = tuple(inputs[self.input_key].shape.as_list())
        shape = outputs[self.output_key].shape
        self.num_outputs = shape[-1] if shape.rank else None
        self._tf = tf
        self.embedded_sidecar = None
        key = next((k for k in METADATA_SIGNATURES if k in signatures), None)
        if key and "serving_default" in signatures:
            self.embedded_sidecar = _embedded_sidecar(path, lambda: signatures[key]())

    def predict(self, batch: np.ndarray) -> np.ndarray:
        result = self.signature(**{self.input_key: self._tf.constant(batch, dtype=self._tf.float32)})
        return np.asarray(result[self.output_key].numpy(), dtype=np.float32)

    def run_signature(self, name: str, x: np.ndarray) -> dict:
        """Another signature of the model (a carried backbone part), on one input."""
        fn = self._loaded.signatures[name]
        (key,) = fn.structured_input_signature[1]
        return {k: v.numpy() for k, v in fn(**{key: self._tf.constant(x, dtype=self._tf.float32)}).items()}

    def signature_names(self) -> list:
        return list(self._loaded.signatures)


def _pick(named: dict, wanted: Optional[str], what: str, path: str) -> str:
    """The signature key for ``wanted`` (a name, maybe with ``:0``), or the only one."""
    if wanted:
        name = wanted.split(":")[0]
        if name in named:
            return name
    if len(named) == 1:
        return next(iter(named))
    if wanted:
        raise ModelLoadError(f"{path} has no {what} named {wanted!r} (it has {', '.join(sorted(named))})")
    raise ModelLoadError(f"{path} has several {what}s ({', '.join(sorted(named))}): choose one with --{what}_layer")


def _embedded_sidecar(path: str, call) -> Optional[dict]:
    """The sidecar an audio-in model carries in its ``sidecar`` signature
    (:mod:`soundretrain.audio_export`), or None when it has none."""
    try:
        raw = call()["sidecar_json"]
        raw = raw.numpy() if hasattr(raw, "numpy") else raw
        raw = raw.item() if hasattr(raw, "item") else raw
        data = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except KeyError:
        return None
    except Exception as e:  # a broken sidecar signature: say which model
        raise ModelLoadError(f"cannot read the metadata of {path}: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"cannot read the metadata of {path}: not a JSON object")
    problem = sidecar_problem(data)
    if problem:
        raise ModelLoadError(f"invalid metadata in {path}: {problem}")
    return data


def _tflite_interpreter(path: str, num_threads: Optional[int]):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # fall back on TensorFlow's bundled (deprecated) interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        return Interpreter(model_path=path, num_threads=num_threads)


class TFLiteModel:
    """A TFLite flatbuffer, through its signature runner when it has one."""

    format = "tflite"

    def __init__(self, path: str, input_layer: Optional[str], output_layer: Optional[str],
                 num_threads: Optional[int] = None) -> None:
        try:
            self.interpreter = _tflite_interpreter(path, num_threads)
        except Exception as e:
            raise ModelLoadError(f"cannot load TFLite model {path}: {_one_line(e)}") from None
        signatures = self.interpreter.get_signature_list()
        self.runner = None
        self.embedded_sidecar = None
        key = next((k for k in METADATA_SIGNATURES if k in signatures), None)
        if key and "serving_default" in signatures:
            runner = self.interpreter.get_signature_runner(key)
            self.embedded_sidecar = _embedded_sidecar(
                path, lambda: runner(**{name: np.int32(0) for name in runner.get_input_details()}))
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            self.runner = self.interpreter.get_signature_runner(key)
            inputs = self.runner.get_input_details()
            outputs = self.runner.get_output_details()
            self.input_key = _pick(inputs, input_layer, "input", path)
            self.output_key = _pick(outputs, output_layer, "output", path)
            in_detail, out_detail = inputs[self.input_key], outputs[self.output_key]
        else:
            self.interpreter.allocate_tensors()
            in_detail = self.interpreter.get_input_details()[0]
            out_detail = self.interpreter.get_output_details()[0]
        self._in_index, self._out_index = in_detail["index"], out_detail["index"]
        shape = list(in_detail.get("shape_signature", in_detail["shape"]))
        self.input_shape = tuple(None if d < 0 else int(d) for d in shape)
        self.num_outputs = int(out_detail["shape"][-1])
        self._batch = None
        self._invoked = False

    def run_signature(self, name: str, x: np.ndarray) -> dict:
        """Another signature of the model (a carried backbone part), on one input."""
        runner = self.interpreter.get_signature_runner(name)
        (key,) = runner.get_input_details()
        with _quiet_stderr():
            return runner(**{key: np.ascontiguousarray(x, dtype=np.float32)})

    def signature_names(self) -> list:
        return list(self.interpreter.get_signature_list())

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if not self._invoked:  # the runtime announces its CPU delegate on the first invoke
            self._invoked = True
            with _quiet_stderr():
                return self._predict(batch)
        return self._predict(batch)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.runner is not None:
            return np.asarray(self.runner(**{self.input_key: batch})[self.output_key], dtype=np.float32)
        if self._batch != batch.shape:
            self.interpreter.resize_tensor_input(self._in_index, batch.shape)
            self.interpreter.allocate_tensors()
            self._batch = batch.shape
        self.interpreter.set_tensor(self._in_index, batch)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self._out_index), dtype=np.float32)


@dataclass
class Labeler:
    """An exported model and its labels: ``predict(batch) -> probabilities [N, classes]``.

    ``input_kind`` says what ``predict`` takes: ``"image"`` (float32 ``[N, H, W, 3]``,
    already scaled) or ``"waveform"`` (float32 ``[N, samples]`` at the backbone's
    ``sample_rate``; a head-only artifact chained behind its backbone).
    """

    path: str
    model: object
    labels: list
    sidecar: Optional[dict]
    backbone: object = None

    @property
    def format(self) -> str:
        return self.model.format

    @property
    def open_set(self):
        """How probabilities become a decision: the sidecar's "unknown" threshold and the
        ``_background_`` class (:class:`soundretrain.open_set.OpenSet`)."""
        from soundretrain.open_set import OpenSet

        return OpenSet.from_sidecar(self.sidecar, self.labels)

    @property
    def head_only(self) -> bool:
        """The artifact holds the head only; features come from :attr:`backbone`."""
        return self.backbone is not None

    @property
    def backbone_parts(self) -> list:
        """The backbone's parts (a concatenation of modules), each fed its own input."""
        if self.backbone is None:
            return []
        return list(getattr(self.backbone, "parts", None) or [self.backbone])

    @property
    def audio_in(self) -> bool:
        """The model takes sound: waveform windows at :attr:`sample_rate`, the spectrogram
        front-end inside (an ``--output_audio_tflite`` / ``--audio_saved_model_dir`` export)."""
        return self.backbone is None and (self.sidecar or {}).get("model_input") == "waveform"

    @property
    def input_kind(self) -> str:
        """``"image"`` or ``"waveform"``: what :meth:`predict` takes; ``"audio"`` for a
        backbone mixing image and waveform modules (only audio can feed both)."""
        if self.audio_in:
            return "waveform"
        if self.backbone is None:
            return "image"
        kinds = {p.input_spec.kind for p in self.backbone_parts}
        return kinds.pop() if len(kinds) == 1 else "audio"

    @property
    def input_size(self) -> tuple[Optional[int], Optional[int]]:
        """``(height, width)`` the image model takes, as far as the model says."""
        shape = self.model.input_shape
        if shape is not None and len(shape) == 4:
            return shape[1], shape[2]
        return None, None

    @property
    def sample_rate(self) -> Optional[int]:
        """The rate the model hears: an audio-in model's input rate; for a head-only model
        of several modules, the one rate they are fed from (sidecar ``audio``,
        :mod:`soundretrain.module_inputs`), else its first module's."""
        if self.audio_in:
            return int(self.sidecar["input"]["sample_rate"])
        if self.backbone is None:
            return None
        if self.module_rates is not None:
            return int(self.module_rates["sample_rate"])
        return self.backbone.input_spec.sample_rate

    @property
    def module_rates(self) -> Optional[dict]:
        """The sidecar's ``audio`` entry of a head-only model: its modules are fed windows
        at one rate, resampled per module by the shared filter. None for models exported
        before it (each module then decodes the file at its own rate)."""
        audio = (self.sidecar or {}).get("audio")
        return audio if self.backbone is not None and isinstance(audio, dict) else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if self.backbone is not None:
            batch = np.asarray(self.backbone.compute(batch), dtype=np.float32)
        return self.predict_features(batch) if self.backbone is not None else self._run(batch)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """The head alone on backbone features (head-only artifacts)."""
        return self._run(np.asarray(features, dtype=np.float32))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        want = self.model.input_shape
        if want is not None and (
            len(want) != batch.ndim or any(w is not None and w != b for w, b in zip(want[1:], batch.shape[1:]))
        ):
            shown = tuple(-1 if w is None else w for w in want)
            raise ModelRunError(f"{self.path} failed on input of shape {tuple(batch.shape)}: it takes {shown}")
        try:
            out = self.model.predict(batch)
        except Exception as e:  # TF and TFLite raise many types for a bad feed
            raise ModelRunError(
                f"{self.path} failed on input of shape {tuple(batch.shape)}: {_one_line(e)}"
            ) from None
        if out.shape != (batch.shape[0], len(self.labels)):
            raise ModelRunError(f"{self.path} gave outputs of shape {tuple(out.shape)} for {batch.shape[0]} "
                                f"input(s), not [{batch.shape[0]}, {len(self.labels)}] scores: is "
                                "--output_layer the model's output?")
        if not np.all(np.isfinite(out)):
            raise ModelRunError(f"{self.path} gave non-finite scores (NaN or infinite): the model is broken "
                                "(a diverged training run?) or --input_mean/--input_std are wrong")
        return out


def detect_format(path: str) -> str:
    """``"saved_model"``, ``"tflite"`` or ``"frozen_graph"`` for ``path``."""
    if os.path.isdir(path):
        return "saved_model"
    if path.lower().endswith(".tflite"):
        return "tflite"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return "frozen_graph"
    return "tflite" if head[4:8] == TFLITE_MAGIC else "frozen_graph"


def load_labeler(
    path: str,
    *,
    labels_path: Optional[str] = None,
    input_layer: Optional[str] = None,
    output_layer: Optional[str] = None,
    backbone=None,
    num_threads: Optional[int] = None,
) -> Labeler:
    """Load the model at ``path`` with its labels (``labels_path``, else the sidecar's).

    ``input_layer``/``output_layer`` default to the sidecar's tensor names, else to
    retrain.py's ``Placeholder``/``final_result``. ``backbone`` overrides the module a
    head-only artifact names. Raises :class:`ModelLoadError` with one line.
    """
    if not path:
        raise ModelLoadError("no model given: pass --graph (a .pb, a SavedModel folder or a .tflite file)")
    if not os.path.exists(path):
        raise ModelLoadError(f"model not found: {path}")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ModelLoadError(f"{path} is a folder but not a SavedModel (no saved_model.pb in it)")
    try:
        sidecar = read_sidecar(path)
    except SidecarError as e:
        raise ModelLoadError(str(e)) from None
    side = sidecar or {}
    _check_artifact(path, side)
    try:  # in a model folder, the folder must be the one export its manifest lists
        check_model_folder(path, labels_path)
    except ModelFolderError as e:
        raise ModelLoadError(str(e)) from None
    kind = detect_format(path)
    if kind == "frozen_graph":
        model = FrozenGraphModel(
            path,
            input_layer or side.get("input_tensor_name") or RETRAIN_INPUT_LAYER,
            output_layer or side.get("final_tensor_name") or RETRAIN_OUTPUT_LAYER,
        )
    elif kind == "saved_model":
        model = SavedModelModel(path, input_layer or side.get("input_tensor_name"),
                                output_layer or side.get("final_tensor_name"))
    else:
        model = TFLiteModel(path, input_layer or side.get("input_tensor_name"),
                            output_layer or side.get("final_tensor_name"), num_threads=num_threads)
    if sidecar is None:  # an audio-in model describes itself (its sidecar signature)
        sidecar = getattr(model, "embedded_sidecar", None)
        side = sidecar or {}

    for flag, wanted, key in (("--input_layer", input_layer, "input_key"),
                              ("--output_layer", output_layer, "output_key")):
        # A signature with one input/output answers to any default name; a name the user
        # asked for must exist (it was silently ignored).
        have = getattr(model, key, None)
        if wanted and have is not None and wanted.split(":")[0] != have:
            raise ModelLoadError(f"{path} has no {key[:-4]} named {wanted!r} (its signature's "
                                 f"{key[:-4]} is {have!r}); fix or drop {flag}")
    labels = _resolve_labels(path, labels_path, side)
    if model.num_outputs is not None and int(model.num_outputs) != len(labels):
        source = labels_path or "the sidecar"
        raise ModelLoadError(
            f"label count does not match the model: {path} has {int(model.num_outputs)} outputs "
            f"but {source} lists {len(labels)} labels"
        )
    expected = side.get("labels_sha256")
    if labels_path and expected and labels_sha256(labels) != expected:
        # A model and the labels of another training run (an export killed half-way, a
        # copied file): same count, wrong names. The sidecar knows the right ones.
        raise ModelLoadError(
            f"{labels_path} is not the labels file {path} was trained with (its checksum differs from "
            "the sidecar's); drop --labels to use the labels recorded with the model, or re-export")
    if side.get("model_input") == "features":
        _check_resampler(path, side)
        if backbone is None:
            backbone = _load_backbone(side, model, path)
    return Labeler(path=path, model=model, labels=labels, sidecar=sidecar, backbone=backbone)


def _check_resampler(path: str, side: dict) -> None:
    """A head-only model whose modules were fed through another resampling filter than this
    toolkit's cannot be fed as it was trained (an audio-in model carries its own)."""
    audio = side.get("audio")
    if not isinstance(audio, dict):
        return
    from soundretrain.resample import RESAMPLER

    if audio.get("resampler") != RESAMPLER:
        raise ModelLoadError(f"{path} was trained on audio resampled by {audio.get('resampler')!r}, which this "
                             f"version of the toolkit does not have ({RESAMPLER}); label it with the version "
                             "that trained it, or train it again")


def _check_artifact(path: str, side: dict) -> None:
    """The sidecar must describe this very file: an export killed between writing a model
    and its sidecar leaves one run's model beside another run's sidecar (wrong labels)."""
    expected = side.get("artifact_sha256")
    if not expected or os.path.isdir(path):  # a SavedModel's sidecar is swapped in with it
        return
    try:
        actual = file_sha256(path)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from None
    if actual != expected:
        raise ModelLoadError(f"{path} does not match its sidecar {path}.json (written by another export, "
                             "perhaps one that was interrupted); export the model again")


def _resolve_labels(path: str, labels_path: Optional[str], side: dict) -> list[str]:
    if labels_path:
        try:
            labels = read_labels(labels_path)
        except (OSError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"cannot read labels {labels_path}: {getattr(e, 'strerror', None) or _one_line(e)}") from None
        if not labels:
            raise ModelLoadError(f"labels file {labels_path} is empty")
        return labels
    labels = side.get("labels")
    if labels:
        return [str(label) for label in labels]
    raise ModelLoadError(f"no labels for {path}: pass --labels (the --output_labels file retrain wrote)")


def _load_backbone(side: dict, model=None, path: str = ""):
    """The backbone a head-only artifact names: by registry name, else by the folder
    it was loaded from (a local SavedModel's name carries a fingerprint, not a path).
    Parts the artifact carries itself (a fine-tuned network: the sidecar names its
    ``signature``) run from the artifact."""
    module = side.get("module") or {}
    name = module.get("name")
    if not name:
        raise ModelLoadError("the sidecar of this head-only model names no backbone module")
    try:
        from soundretrain.backbones.registry import ConcatBackbone, ModuleError, load_module
        from soundretrain.command_line import import_tensorflow_quietly

        # A head-only .tflite skipped the quiet import (it runs without TensorFlow), but its
        # module needs TensorFlow (all but BirdNET, which runs in the TFLite runtime): without
        # this, TF's C++ start-up lines (oneDNN, "E0000 ... failed call to cuInit") came first.
        if any(not part.strip().startswith("birdnet") for part in name.split(",")):
            import_tensorflow_quietly()
    except ImportError as e:
        raise ModelLoadError(f"cannot load backbone {name!r}: {_one_line(e)}") from None
    parts = module.get("parts") or []
    if any(isinstance(p, dict) and p.get("signature") for p in [module, *parts]):
        loaded = [_load_part(p, model, path) for p in (parts or [module])]
        return ConcatBackbone(loaded) if parts else loaded[0]
    joined = ",".join(p.get("source") or p.get("name") or "" for p in parts) if parts else None
    first_error = None
    for handle in (name, module.get("source"), joined):
        if not handle:
            continue
        try:
            return load_module(handle)
        except ModuleError as e:
            first_error = first_error or e
    raise ModelLoadError(f"cannot load backbone {name!r}: {_one_line(first_error)}")


def _load_part(description: dict, model, path: str):
    """One part of a head-only model's backbone: carried by the artifact, or by name."""
    from soundretrain.backbones.registry import ModuleError, load_module

    if description.get("signature"):
        return CarriedPart(model, description, path)
    first_error = None
    for handle in (description.get("name"), description.get("source")):
        if handle:
            try:
                return load_module(handle)
            except ModuleError as e:
                first_error = first_error or e
    raise ModelLoadError(f"cannot load backbone {description.get('name')!r}: {_one_line(first_error)}")


class CarriedPart:
    """A backbone part that a head-only artifact carries as a signature (a fine-tuned
    network): the :class:`soundretrain.backbones.registry.Backbone` interface
    (``name``, ``input_spec``, ``feature_size``, ``compute``) over that signature."""

    def __init__(self, model, description: dict, path: str) -> None:
        from soundretrain.backbones.registry import InputSpec

        self.signature = str(description["signature"])
        names = model.signature_names() if hasattr(model, "signature_names") else []
        if self.signature not in names:
            raise ModelLoadError(f"{path} lacks the signature {self.signature!r} its sidecar names "
                                 f"for module {description.get('name')!r}; export the model again")
        self.model = model
        self.name = str(description.get("name"))
        kind = description.get("input_kind", "image")
        self.input_spec = InputSpec(kind, height=description.get("height"),
                                    width=description.get("width"),
                                    sample_rate=description.get("sample_rate"),
                                    num_samples=description.get("num_samples"))
        self.feature_size = int(description.get("feature_size"))
        self.path = path

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        from soundretrain.export import PART_OUTPUT

        try:
            out = self.model.run_signature(self.signature, np.asarray(inputs, np.float32))[PART_OUTPUT]
        except Exception as e:  # TF and TFLite raise many types for a bad feed
            raise ModelRunError(f"{self.path}: module {self.name} failed on input of shape "
                                f"{tuple(np.shape(inputs))}: {_one_line(e)}") from None
        return np.asarray(out, dtype=np.float32)

    def tf_callable(self):
        return None

    def description(self) -> dict:
        return {"name": self.name, "signature": self.signature, "feature_size": self.feature_size}
