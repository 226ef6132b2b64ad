"""Export models that take sound: waveform windows in, class probabilities out.

``retrain --audio_saved_model_dir DIR --output_audio_tflite FILE`` (through the hook in
:func:`soundretrain.export.export_model`) writes the trained model with its spectrogram
front-end inside the graph (:mod:`soundretrain.render_tf`), so users outside this
package feed it audio, not images, and cannot get the rendering wrong:

* SavedModel, signature ``serving_default``: ``{"waveform": float32 [N, num_samples]}``
  -> ``{"probabilities": float32 [N, classes]}``; TF Serving serves it as is.
* TFLite, the same signature, optionally ``float16`` or ``dynamic``-range quantised
  (the front-end is built from ops the quantiser leaves in float32).

The input is mono float32 audio in [-1, 1] at the training sample rate, exactly one
window (``duration`` seconds) per row. Resampling and cutting a recording into windows
stay outside: they are a few lines of numpy (README) and ``label_image`` does them.

Both models carry their own description in a second signature, ``sidecar``: sample
rate, window length, window hop, labels, and the whole sidecar as JSON (the TFLite one
takes a dummy int32 ``unused`` input: TFLite drops signatures without inputs). So the
model file alone is enough to label sound; the usual JSON sidecar is written too. The
name is not ``metadata`` on purpose: TFLite orders signatures by name and applies its
XNNPACK CPU delegate to the first subgraph only, so the serving signature must sort first
("metadata" < "serving_default" < "sidecar"); with it second the network ran 3-4x slower.

Any concatenation of modules with a ``tf_callable`` exports: image parts get the
front-end and Pillow-exact resizing to each part's input size; waveform parts get the
window, resampled by :func:`soundretrain.resample.resample_tf` when their rate is not the
model's (:mod:`soundretrain.module_inputs`: the spectrograms' rate when any part takes
images, else the highest module rate), exactly as the bottleneck stage fed them. A
backbone that cannot be traced into a TensorFlow graph is refused with one line.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from soundretrain import atomic_files
from soundretrain.module_inputs import SIDECAR_KEY, describe, model_rate, part_rate, parts_of
from soundretrain.sidecar import SIDECAR_FORMAT, labels_sha256, write_sidecar, SAVED_MODEL_SIDECAR
from soundretrain.spectrogram_settings import SpectrogramSettings

INPUT_NAME = "waveform"
OUTPUT_NAME = "probabilities"
METADATA_SIGNATURE = "sidecar"  # sorts after "serving_default": see the module docstring
METADATA_DUMMY_INPUT = "unused"
TFLITE_QUANTIZATIONS = ("none", "float16", "dynamic")


class AudioExportError(ValueError):
    """The model cannot be exported audio-in as asked; the message is one line."""


@dataclass(frozen=True)
class AudioModelSpec:
    """What an audio-in model eats: ``num_samples`` at ``sample_rate``, windows
    ``hop_samples`` apart when labelling a longer recording."""

    sample_rate: int
    num_samples: int
    hop_samples: int

    @property
    def window_seconds(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def hop_seconds(self) -> float:
        return self.hop_samples / self.sample_rate


def _parts(backbone) -> list:
    return parts_of(backbone)


def audio_model_spec(backbone, settings: SpectrogramSettings) -> AudioModelSpec:
    """The input of ``backbone``'s audio-in model: one ``settings.duration`` window at the
    model rate (:func:`soundretrain.module_inputs.model_rate`)."""
    rate = model_rate(_parts(backbone), settings)
    num_samples = int(round(settings.duration * rate))
    hop_samples = max(1, int(round(settings.hop_seconds * rate)))
    return AudioModelSpec(rate, num_samples, hop_samples)


def check_audio_export(backbone, sidecar: Optional[dict], quantization: str = "none"
                       ) -> tuple[SpectrogramSettings, AudioModelSpec]:
    """Raise :class:`AudioExportError` (one line) when ``backbone`` cannot be exported
    audio-in, before anything is trained or written; else return the spectrogram
    settings and the model's input."""
    try:
        settings = SpectrogramSettings.from_dict((sidecar or {}).get("spectrogram") or {})
    except (TypeError, ValueError) as e:
        raise AudioExportError(f"invalid spectrogram settings for the audio-in model: {e}") from None
    if (quantization or "none").lower() not in TFLITE_QUANTIZATIONS:
        raise AudioExportError(f"unknown TFLite quantization {quantization!r} "
                               f"(use one of {', '.join(TFLITE_QUANTIZATIONS)})")
    spec = audio_model_spec(backbone, settings)
    for part in _parts(backbone):
        if part.tf_callable() is None:
            raise AudioExportError(
                f"cannot export module {part.name!r} audio-in: it cannot be traced into a TensorFlow graph "
                "(export --saved_model_dir/--output_tflite instead; label_image runs the module, then the head)")
    return settings, spec


def audio_features_fn(backbone, settings: SpectrogramSettings, spec: AudioModelSpec):
    """``waveform [N, num_samples] -> features [N, feature_size]`` as TensorFlow ops:
    the front-end and each part's ``tf_callable``, features concatenated in order."""
    from soundretrain.render_tf import SpectrogramFrontEnd
    from soundretrain.resample import resample_tf

    parts = _parts(backbone)
    fns = []
    for part in parts:
        fn = part.tf_callable()
        if fn is None:
            raise AudioExportError(
                f"cannot export module {part.name!r} audio-in: it cannot be traced into a TensorFlow graph "
                "(export --saved_model_dir/--output_tflite instead; label_image runs the module, then the head)")
        fns.append(fn)
    front = SpectrogramFrontEnd(settings) if any(p.input_spec.kind == "image" for p in parts) else None

    def features(y):
        import tensorflow as tf

        rgb = front.rgb(y) if front is not None else None  # rendered once, shared by image parts
        out = []
        for part, fn in zip(parts, fns):
            s = part.input_spec
            if s.kind == "image":
                from soundretrain.render_tf import resize_pixels, scale_pixels

                x = scale_pixels(resize_pixels(rgb, int(s.height), int(s.width)), 0.0, 255.0)
            else:  # the bottleneck stage's window, resampled by the same filter
                x = resample_tf(y, spec.sample_rate, part_rate(part, settings))
            out.append(tf.cast(fn(x), tf.float32))
        return out[0] if len(out) == 1 else tf.concat(out, axis=1)

    return features


def audio_sidecar(sidecar: dict, backbone, labels: Sequence[str], settings: SpectrogramSettings,
                  spec: AudioModelSpec) -> dict:
    """``sidecar`` completed for an audio-in artifact."""
    out = copy.deepcopy(dict(sidecar or {}))
    out["format"] = SIDECAR_FORMAT
    out["labels"] = list(labels)
    out["labels_sha256"] = labels_sha256(labels)
    out.setdefault("module", backbone.description())
    out.setdefault("test_accuracy", None)
    out["spectrogram"] = settings.to_dict()
    out["input_tensor_name"] = INPUT_NAME
    out["final_tensor_name"] = OUTPUT_NAME
    out["model_input"] = "waveform"
    out["input"] = {
        "kind": "waveform",
        "sample_rate": spec.sample_rate,
        "num_samples": spec.num_samples,
        "window_seconds": spec.window_seconds,
        "hop_samples": spec.hop_samples,
        "pad_mode": settings.pad_mode,
    }
    audio = describe(_parts(backbone), settings)
    if audio is not None:
        out[SIDECAR_KEY] = audio
    return out


def export_audio_model(
    backbone,
    head,
    labels: Sequence[str],
    sidecar: dict,
    *,
    audio_saved_model_dir: Optional[str] = None,
    output_audio_tflite: Optional[str] = None,
    tflite_quantization: Optional[str] = None,
) -> dict[str, str]:
    """Write the audio-in SavedModel and/or TFLite of ``backbone`` + ``head``.

    ``sidecar["spectrogram"]`` holds the settings the training images were rendered
    with (defaults when absent). Returns ``{kind: path}`` with the keys
    ``audio_saved_model_dir``, ``output_audio_tflite`` and their ``*_sidecar``.
    """
    labels = [str(label) for label in labels]
    if not labels:
        raise AudioExportError("cannot export a model without labels")
    quantization = (tflite_quantization or "none").lower()
    if quantization not in TFLITE_QUANTIZATIONS:
        raise AudioExportError(f"unknown TFLite quantization {tflite_quantization!r} "
                               f"(use one of {', '.join(TFLITE_QUANTIZATIONS)})")
    if not (audio_saved_model_dir or output_audio_tflite):
        return {}
    settings, spec = check_audio_export(backbone, sidecar, quantization if output_audio_tflite else "none")
    full_sidecar = audio_sidecar(sidecar, backbone, labels, settings, spec)

    import tensorflow as tf

    serve = _serving_function(tf, audio_features_fn(backbone, settings, spec), head, spec)
    num_outputs = serve.structured_outputs[OUTPUT_NAME].shape[-1]
    if num_outputs is not None and int(num_outputs) != len(labels):
        raise AudioExportError(f"the head has {int(num_outputs)} outputs but there are {len(labels)} labels")

    written: dict[str, str] = {}
    if audio_saved_model_dir:
        saved_sidecar = dict(full_sidecar, artifact="audio_saved_model")
        with atomic_files.replacing_folder(audio_saved_model_dir) as tmp_dir:
            _save_saved_model(tf, serve, _metadata_function(tf, saved_sidecar, spec), tmp_dir, spec)
            write_sidecar(tmp_dir, saved_sidecar)
        written["audio_saved_model_dir"] = audio_saved_model_dir
        written["audio_saved_model_dir_sidecar"] = os.path.join(audio_saved_model_dir, SAVED_MODEL_SIDECAR)
    if output_audio_tflite:
        tflite_sidecar = dict(full_sidecar, artifact="audio_tflite", tflite_quantization=quantization)
        metadata = _metadata_function(tf, tflite_sidecar, spec, dummy_input=True)
        serve_tflite = serve
        if any(getattr(p, "traced_from_tflite", False) for p in _parts(backbone)):
            # A network replayed from a .tflite file is traced again with TFLite's own forms
            # of its operators (its RFFT2D takes float32; TensorFlow's graph needs float64).
            from soundretrain.backbones.tflite_graph import tracing_for_tflite

            with tracing_for_tflite():
                serve_tflite = _serving_function(tf, audio_features_fn(backbone, settings, spec), head, spec)
        flatbuffer = _convert_tflite(tf, serve_tflite, metadata, quantization)
        atomic_files.write_bytes(output_audio_tflite, flatbuffer)
        written["output_audio_tflite"] = output_audio_tflite
        # The file's sidecar also names the file (the embedded copy cannot hold its own hash).
        written["output_audio_tflite_sidecar"] = write_sidecar(
            output_audio_tflite, dict(tflite_sidecar, artifact_sha256=hashlib.sha256(flatbuffer).hexdigest()))
    return written


def _serving_function(tf, features_fn, head, spec: AudioModelSpec):
    """``serving_default``: waveform -> probabilities, every variable folded into a constant."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([None, spec.num_samples], tf.float32, name=INPUT_NAME)])
    def serve(y):
        probabilities = head(features_fn(y))
        if isinstance(probabilities, dict):
            probabilities = next(iter(probabilities.values()))
        return {OUTPUT_NAME: tf.identity(probabilities, name=OUTPUT_NAME)}

    try:
        frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    except (TypeError, ValueError) as e:
        raise AudioExportError(f"cannot trace the audio-in model for export: {str(e).splitlines()[0]}") from None

    @tf.function(input_signature=[tf.TensorSpec([None, spec.num_samples], tf.float32, name=INPUT_NAME)])
    def serving_default(waveform):
        return {OUTPUT_NAME: tf.nest.flatten(frozen(waveform))[0]}

    return serving_default.get_concrete_function()


def _metadata_function(tf, sidecar: dict, spec: AudioModelSpec, dummy_input: bool = False):
    """The ``sidecar`` signature: constants describing the model (TFLite needs a dummy input)."""
    values = metadata_values(sidecar, spec)

    def constants(zero):
        return {
            "sample_rate": tf.constant(values["sample_rate"], tf.int32) + zero,
            "num_samples": tf.constant(values["num_samples"], tf.int32) + zero,
            "hop_samples": tf.constant(values["hop_samples"], tf.int32) + zero,
            "labels": tf.constant(values["labels"]),
            "sidecar_json": tf.constant(values["sidecar_json"]),
        }

    if dummy_input:
        def metadata(unused):
            return constants(unused * 0)
        signature = [tf.TensorSpec([], tf.int32, name=METADATA_DUMMY_INPUT)]
    else:
        def metadata():
            return constants(0)
        signature = []
    metadata.__name__ = METADATA_SIGNATURE  # the signature's key in the TFLite model
    return tf.function(metadata, input_signature=signature).get_concrete_function()


def metadata_values(sidecar: dict, spec: AudioModelSpec) -> dict:
    """What the ``sidecar`` signature returns."""
    return {
        "sample_rate": spec.sample_rate,
        "num_samples": spec.num_samples,
        "hop_samples": spec.hop_samples,
        "labels": list(sidecar["labels"]),
        "sidecar_json": json.dumps(sidecar, sort_keys=True),
    }


def _save_saved_model(tf, serve, metadata, folder: str, spec: AudioModelSpec) -> None:
    module = tf.Module()
    module.serve, module.meta = serve, metadata  # keep them reachable from the saved object
    module.sample_rate = tf.constant(spec.sample_rate)
    tf.saved_model.save(module, folder, signatures={"serving_default": serve, METADATA_SIGNATURE: metadata})


def _convert_tflite(tf, serve, metadata, quantization: str) -> bytes:
    # from_concrete_functions keeps both signatures, named after the functions
    # (from_saved_model with two signature keys kept only the first here).
    holder = tf.Module()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve, metadata], holder)
    if quantization in ("float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as e:  # the converter raises ConverterError and friends
        raise AudioExportError(f"cannot convert the audio-in model to TFLite: {str(e).strip().splitlines()[0]}") from None


def tflite_operators(flatbuffer: bytes, subgraph: int = 0) -> dict[str, int]:
    """How many of each operator a TFLite model's ``subgraph`` runs (``{"CONV_2D": 8,
    ...}``; custom operators as ``CUSTOM:<name>``, TensorFlow fallbacks as ``FLEX...``),
    read with TensorFlow's schema module: what an app's TFLite runtime must provide."""
    from collections import Counter

    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(flatbuffer), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.Subgraphs(subgraph)
    counts: Counter = Counter()
    for i in range(graph.OperatorsLength()):
        code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        counts[f"CUSTOM:{custom.decode()}" if custom else names.get(builtin, str(builtin))] += 1
    return dict(counts)


def read_model_metadata(signature_call) -> dict:
    """The sidecar a model's ``sidecar`` signature carries, from the call's outputs."""
    out = signature_call
    raw = out["sidecar_json"]
    raw = raw.numpy() if hasattr(raw, "numpy") else raw
    raw = raw.item() if hasattr(raw, "item") else raw
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    return json.loads(raw)


__all__ = ["AudioExportError", "AudioModelSpec", "audio_model_spec", "audio_features_fn", "export_audio_model",
           "INPUT_NAME", "OUTPUT_NAME", "METADATA_SIGNATURE", "read_model_metadata", "tflite_operators"]
