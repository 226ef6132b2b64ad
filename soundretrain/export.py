"""Export a trained head (with its backbone) as the artifacts labelling uses.

``retrain`` calls :func:`export_model` at the end of training. One model, several
containers, all built from the same frozen function so they agree:

* ``output_graph``: a frozen GraphDef (``.pb``) of backbone + head, image in,
  probabilities out, loadable with ``tf.compat.v1.import_graph_def`` exactly as
  TensorFlow's ``label_image.py`` loads retrain.py's graphs (input node
  ``Placeholder``, output node ``final_result``).
* ``output_labels``: one label per line in class-index order.
* ``saved_model_dir``: a TF2 SavedModel with a ``serving_default`` signature
  (input key = the input tensor name, output key = the final tensor name), and the same
  model under retrain.py's names as signature ``retrain_py`` (``image`` -> ``prediction``),
  for TF Serving clients written for retrain.py's SavedModels.
* ``output_tflite``: a TFLite flatbuffer with the same signature, optionally
  ``float16`` or ``dynamic``-range quantised.

A backbone that cannot be traced into a TensorFlow graph (a waveform network run by
a TFLite interpreter, such as BirdNET) is exported head-only (features in); the
sidecar names the backbone and labelling runs backbone then head. A frozen ``.pb``
cannot hold such a model and is refused. A part of that backbone which cannot be loaded
again by its name (``Backbone.reloadable`` False: a fine-tuned network, whose tuned
weights exist nowhere else) travels inside the head-only SavedModel and TFLite as one
more signature, ``part_<i>`` (its input -> its features), which the sidecar names and
labelling runs (:data:`PART_SIGNATURE`).

Every artifact gets a JSON sidecar (see :mod:`soundretrain.sidecar`); a file artifact's
sidecar records the file's SHA-256, so a model and a sidecar of two different exports (one
killed between the two renames) are refused when loaded, as are labels files of another run
(``labels_sha256``). Everything is written atomically: re-exporting over an old artifact
never leaves a broken one. When all the artifacts go into one folder, the set is atomic too:
the folder is built aside and swapped in whole, with a manifest of its files' digests
(:mod:`soundretrain.model_folder`), so a killed export never leaves a new ``.pb`` beside an
old TFLite.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
from typing import Any, Optional, Sequence

from soundretrain import atomic_files, model_folder
from soundretrain.sidecar import SIDECAR_FORMAT, labels_sha256, labels_text, write_sidecar, SAVED_MODEL_SIDECAR

TFLITE_QUANTIZATIONS = ("none", "float16", "dynamic")
#: retrain.py's SavedModel names (``simple_save(inputs={'image': ...}, outputs={'prediction': ...})``),
#: offered as a second signature beside ``serving_default``.
RETRAIN_PY_SIGNATURE, RETRAIN_PY_INPUT, RETRAIN_PY_OUTPUT = "retrain_py", "image", "prediction"
#: A GraphDef node name (what --final_tensor_name may be).
NODE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")
#: The signature of a head-only artifact that computes part ``i`` of its backbone's
#: features, for parts that cannot be loaded again by name; input ``inputs``, output
#: ``features``.
PART_SIGNATURE, PART_INPUT, PART_OUTPUT = "part_{}", "inputs", "features"


def carried_parts(backbone) -> list:
    """``(index, part)`` of the backbone's parts that a head-only artifact must carry:
    those that cannot be loaded again from their description (``reloadable`` False)."""
    parts = list(getattr(backbone, "parts", None) or [backbone])
    return [(i, p) for i, p in enumerate(parts) if not getattr(p, "reloadable", True)]


def tensor_name_problem(final_tensor_name: str, input_tensor_name: str = "Placeholder") -> Optional[str]:
    """Why ``final_tensor_name`` cannot name the exported output node, or None."""
    if not NODE_NAME.match(final_tensor_name or ""):
        return (f"--final_tensor_name {final_tensor_name!r} is not a graph node name (letters, digits, "
                "'_', '.', '-', '/'; no ':')")
    if final_tensor_name == input_tensor_name:
        return (f"--final_tensor_name {final_tensor_name!r} is the name of the graph's input node; "
                "choose another (retrain.py's is final_result)")
    return None


class ExportError(ValueError):
    """The model cannot be exported as asked; the message is one line."""


def export_model(
    backbone,
    head,
    labels: Sequence[str],
    sidecar: dict,
    *,
    output_graph: Optional[str] = None,
    output_labels: Optional[str] = None,
    saved_model_dir: Optional[str] = None,
    output_tflite: Optional[str] = None,
    tflite_quantization: Optional[str] = None,
    audio_saved_model_dir: Optional[str] = None,
    output_audio_tflite: Optional[str] = None,
    output_tfjs: Optional[str] = None,
    input_tensor_name: str = "Placeholder",
    final_tensor_name: str = "final_result",
    whole_folder: bool = True,
) -> dict[str, str]:
    """Write the requested artifacts of ``backbone`` + ``head``; return ``{kind: path}``.

    ``head`` is called as ``head(features)`` (a ``tf.function`` over float32
    ``[None, feature_size]`` returning probabilities ``[None, num_classes]``).
    ``sidecar`` is completed with the labels, their checksum, the module description,
    the input size and scaling and the tensor names, and written beside every artifact.
    Keys of the result: ``output_graph``, ``output_labels``, ``saved_model_dir``,
    ``output_tflite`` and ``<key>_sidecar`` for the sidecars.
    ``audio_saved_model_dir`` / ``output_audio_tflite``: models that take sound, the
    spectrogram front-end inside (:mod:`soundretrain.audio_export`; keys of the same names).
    ``whole_folder``: when every artifact goes into one folder that can be replaced whole
    (:func:`soundretrain.model_folder.swappable_folder`), build that folder aside and swap it
    in at once with a manifest of its files; False for a caller already writing into a
    :func:`soundretrain.model_folder.staged_model_folder`. Every sidecar records the
    export's id (``export_id``).
    ``output_tfjs``: the same audio-in model as a TF.js graph model in that folder
    (:mod:`soundretrain.tfjs_export`; key ``output_tfjs``).
    """
    labels = [str(label) for label in labels]
    problem = tensor_name_problem(final_tensor_name, input_tensor_name)
    if problem:
        raise ExportError(problem)
    if not labels:
        raise ExportError("cannot export a model without labels")
    if any(("\n" in label or not label.strip()) for label in labels):
        raise ExportError("labels must be non-empty single-line strings")
    quantization = (tflite_quantization or "none").lower()
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ExportError(
            f"unknown TFLite quantization {tflite_quantization!r} (use one of {', '.join(TFLITE_QUANTIZATIONS)})"
        )

    if audio_saved_model_dir or output_audio_tflite:  # refuse before writing anything
        from soundretrain.audio_export import AudioExportError, check_audio_export

        try:
            check_audio_export(backbone, sidecar, quantization if output_audio_tflite else "none")
        except AudioExportError as e:
            raise ExportError(str(e)) from None
    if output_tfjs:
        from soundretrain.audio_export import AudioExportError
        from soundretrain.tfjs_export import check_tfjs_export

        try:
            check_tfjs_export(backbone, sidecar)
        except AudioExportError as e:
            raise ExportError(f"--output_tfjs: {e}") from None
    export_id = model_folder.new_export_id()
    sidecar = dict(sidecar or {}, export_id=export_id)
    spec = backbone.input_spec
    backbone_fn = backbone.tf_callable() if spec.kind == "image" else None
    head_only = backbone_fn is None
    if head_only and output_graph:
        raise ExportError(
            f"cannot write a frozen graph (--output_graph) for module {backbone.name!r}: it runs outside "
            "TensorFlow; export --saved_model_dir or --output_tflite instead (labelling runs the module, then the head)"
        )
    if head_only:
        for i, part in carried_parts(backbone):
            if part.tf_callable() is None:
                raise ExportError(f"module {part.name} cannot be loaded again by name and does not "
                                  "run in TensorFlow, so no head-only model can carry it")
    full_sidecar = complete_sidecar(
        sidecar, backbone, labels, head_only=head_only,
        input_tensor_name=input_tensor_name, final_tensor_name=final_tensor_name,
    )
    paths = {"output_graph": output_graph, "output_labels": output_labels,
             "saved_model_dir": saved_model_dir, "output_tflite": output_tflite,
             "audio_saved_model_dir": audio_saved_model_dir, "output_audio_tflite": output_audio_tflite,
             "output_tfjs": output_tfjs}
    targets = [p for p in paths.values() if p]

    def write_all(at: dict) -> dict[str, str]:
        written = _write_artifacts(
            backbone, head, labels, full_sidecar, head_only, output_graph=at["output_graph"],
            output_labels=at["output_labels"], saved_model_dir=at["saved_model_dir"],
            output_tflite=at["output_tflite"], quantization=quantization,
            input_tensor_name=input_tensor_name, final_tensor_name=final_tensor_name)
        if at["audio_saved_model_dir"] or at["output_audio_tflite"]:  # models that take sound
            from soundretrain.audio_export import AudioExportError, export_audio_model

            try:
                written.update(export_audio_model(
                    backbone, head, labels, sidecar, audio_saved_model_dir=at["audio_saved_model_dir"],
                    output_audio_tflite=at["output_audio_tflite"], tflite_quantization=quantization))
            except AudioExportError as e:
                raise ExportError(str(e)) from None
        if at["output_tfjs"]:  # the same audio-in model for the browser
            from soundretrain.audio_export import AudioExportError
            from soundretrain.tfjs_export import export_tfjs_model

            try:
                written.update(export_tfjs_model(backbone, head, labels, sidecar, at["output_tfjs"]))
            except AudioExportError as e:
                raise ExportError(f"--output_tfjs: {e}") from None
        return written

    folder = model_folder.swappable_folder(targets) if whole_folder else None
    if folder:
        # One folder holds the whole set: build it aside, swap it in at once (a kill leaves
        # the old set or the new one, never a mix) with a manifest that label_image checks.
        owned = [os.path.basename(os.path.abspath(p)) for p in targets]
        with model_folder.staged_model_folder(folder, export_id, owned) as stage:
            inside = {k: p and os.path.join(stage, os.path.relpath(os.path.abspath(p), folder))
                      for k, p in paths.items()}
            written = write_all(inside)
        return {k: os.path.join(folder, os.path.relpath(p, stage)) for k, p in written.items()}
    # Scattered outputs cannot be swapped as one: each sidecar lists the export's other
    # artifacts, and label_image warns when one of them now comes from another export.
    listed = {k: os.path.abspath(p) for k, p in paths.items() if p}
    sidecar["export_artifacts"] = full_sidecar["export_artifacts"] = listed
    # One export into a folder at a time; under that lock the temp files of killed exports
    # (a .pb part, a SavedModel half-built or swapped out) are removed before writing anew.
    with atomic_files.exclusive_folders(*(os.path.dirname(os.path.abspath(p)) for p in targets)):
        for path in targets:
            atomic_files.remove_leftovers_of(path)
        return write_all(paths)


def _write_artifacts(backbone, head, labels, full_sidecar, head_only, *, output_graph, output_labels,
                     saved_model_dir, output_tflite, quantization, input_tensor_name,
                     final_tensor_name) -> dict[str, str]:
    spec = backbone.input_spec
    backbone_fn = backbone.tf_callable() if spec.kind == "image" else None
    written: dict[str, str] = {}
    wants_model = bool(output_graph or saved_model_dir or output_tflite)
    if wants_model:
        import tensorflow as tf

        if head_only:
            input_shape = [None, int(backbone.feature_size)]
        else:
            input_shape = [None, int(spec.height), int(spec.width), 3]
        frozen, graph_def = _freeze(tf, backbone_fn, head, input_shape, input_tensor_name, final_tensor_name)
        parts = {PART_SIGNATURE.format(i): _freeze_part(tf, part)
                 for i, part in (carried_parts(backbone) if head_only else [])}
        num_outputs = frozen.outputs[0].shape[-1]
        if num_outputs is not None and int(num_outputs) != len(labels):
            raise ExportError(f"the head has {int(num_outputs)} outputs but there are {len(labels)} labels")

        if output_graph:
            data = graph_def.SerializeToString()
            atomic_files.write_bytes(output_graph, data)
            written["output_graph"] = output_graph
            written["output_graph_sidecar"] = write_sidecar(output_graph, dict(
                full_sidecar, artifact="frozen_graph", artifact_sha256=hashlib.sha256(data).hexdigest()))

        if saved_model_dir:
            with atomic_files.replacing_folder(saved_model_dir) as tmp_dir:
                _save_serving_model(tf, frozen, tmp_dir, input_shape, input_tensor_name, final_tensor_name,
                                    retrain_py_signature=not head_only, parts=parts)
                write_sidecar(tmp_dir, dict(full_sidecar, artifact="saved_model"))
            written["saved_model_dir"] = saved_model_dir
            written["saved_model_dir_sidecar"] = os.path.join(saved_model_dir, SAVED_MODEL_SIDECAR)

        if output_tflite:
            if saved_model_dir:
                flatbuffer = _convert_tflite(tf, saved_model_dir, quantization, list(parts))
            else:
                # The converter reads a SavedModel: a scratch one beside the TFLite file under a
                # hidden temp name (not in /tmp), so one left by a killed run is where the next
                # export to this path removes it.
                os.makedirs(os.path.dirname(os.path.abspath(output_tflite)), exist_ok=True)
                scratch = atomic_files.new_temp_folder(output_tflite)
                try:
                    source_dir = os.path.join(scratch, "saved_model")
                    _save_serving_model(tf, frozen, source_dir, input_shape, input_tensor_name, final_tensor_name,
                                        retrain_py_signature=False, parts=parts)
                    flatbuffer = _convert_tflite(tf, source_dir, quantization, list(parts))
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            atomic_files.write_bytes(output_tflite, flatbuffer)
            written["output_tflite"] = output_tflite
            written["output_tflite_sidecar"] = write_sidecar(
                output_tflite, dict(full_sidecar, artifact="tflite", tflite_quantization=quantization,
                                    artifact_sha256=hashlib.sha256(flatbuffer).hexdigest()))

    if output_labels:
        atomic_files.write_text(output_labels, labels_text(labels))
        written["output_labels"] = output_labels
    return written


def complete_sidecar(
    sidecar: dict,
    backbone,
    labels: Sequence[str],
    *,
    head_only: bool,
    input_tensor_name: str = "Placeholder",
    final_tensor_name: str = "final_result",
) -> dict[str, Any]:
    """``sidecar`` plus everything labelling needs that the caller left out."""
    out = copy.deepcopy(dict(sidecar or {}))
    spec = backbone.input_spec
    out["format"] = SIDECAR_FORMAT
    out["labels"] = list(labels)
    out["labels_sha256"] = labels_sha256(labels)
    out.setdefault("module", backbone.description())
    if head_only:  # parts the artifact carries, by the signature that computes them
        module = out["module"] = copy.deepcopy(out["module"])
        described = module.get("parts") if getattr(backbone, "parts", None) else [module]
        for i, _ in carried_parts(backbone):
            described[i]["signature"] = PART_SIGNATURE.format(i)
    out.setdefault("test_accuracy", None)
    out["input_tensor_name"] = input_tensor_name
    out["final_tensor_name"] = final_tensor_name
    # What the artifact itself eats: the image, or (head only) the module's features.
    out["model_input"] = "features" if head_only else "image"
    inp = dict(out.get("input") or {})
    inp.setdefault("kind", spec.kind)
    if spec.kind == "image":
        inp.setdefault("height", spec.height)
        inp.setdefault("width", spec.width)
        inp.setdefault("input_mean", 0.0)
        inp.setdefault("input_std", 255.0)
    else:
        inp.setdefault("sample_rate", spec.sample_rate)
        inp.setdefault("num_samples", spec.num_samples)
    if head_only:
        inp["feature_size"] = int(backbone.feature_size)
    out["input"] = inp
    audio = _module_rates(backbone, out.get("spectrogram"))
    if audio is not None:  # several rates: how label_image must feed each module
        from soundretrain.module_inputs import SIDECAR_KEY

        out[SIDECAR_KEY] = audio
    return out


def _module_rates(backbone, spectrogram: Optional[dict]) -> Optional[dict]:
    """:func:`soundretrain.module_inputs.describe` for the settings the images had."""
    from soundretrain.module_inputs import describe, parts_of
    from soundretrain.spectrogram_settings import SpectrogramSettings

    try:
        settings = SpectrogramSettings.from_dict(spectrogram or {})
    except (TypeError, ValueError):
        return None
    return describe(parts_of(backbone), settings)


def _freeze(tf, backbone_fn, head, input_shape, input_name: str, final_name: str):
    """Trace ``head(backbone_fn(x))`` and fold every variable into a constant.

    Returns the frozen concrete function and its GraphDef, after checking that the
    input and output nodes carry the names label_image users pass.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    traced_names = []

    @tf.function(input_signature=[tf.TensorSpec(input_shape, tf.float32, name=input_name)])
    def serve(x):
        features = backbone_fn(x) if backbone_fn is not None else x
        probabilities = head(features)
        if isinstance(probabilities, dict):  # a head that returns a dict of outputs
            probabilities = next(iter(probabilities.values()))
        out = tf.identity(probabilities, name=final_name)
        traced_names.append(out.op.name)  # TF renames a node whose name is taken ("mul" -> "mul_1")
        return out

    try:
        concrete = serve.get_concrete_function()
        frozen = convert_variables_to_constants_v2(concrete)
    except (TypeError, ValueError) as e:
        raise ExportError(f"cannot trace the model for export: {str(e).splitlines()[0]}") from None
    graph_def = frozen.graph.as_graph_def()
    nodes = {node.name: node for node in graph_def.node}
    if input_name not in nodes or nodes[input_name].op != "Placeholder":
        raise ExportError(f"frozen graph has no input placeholder named {input_name!r}")
    if traced_names and traced_names[-1] != final_name:
        raise ExportError(f"--final_tensor_name {final_name!r} is already the name of a node inside the "
                          "network; choose another name (retrain.py's is final_result)")
    if final_name not in nodes:
        raise ExportError(f"frozen graph has no output node named {final_name!r}")
    return frozen, graph_def


def _freeze_part(tf, part):
    """``part``'s features as a frozen function of its input (images ``[N, H, W, 3]`` or
    waveforms ``[N, samples]``), every weight a constant."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = part.input_spec
    shape = [None, spec.height, spec.width, 3] if spec.kind == "image" else [None, spec.num_samples]
    fn = part.tf_callable()
    traced = tf.function(lambda x: fn(x), input_signature=[tf.TensorSpec(shape, tf.float32, name=PART_INPUT)])
    return convert_variables_to_constants_v2(traced.get_concrete_function())


def _save_serving_model(tf, frozen, folder: str, input_shape, input_name: str, final_name: str,
                        retrain_py_signature: bool = True, parts: Optional[dict] = None) -> None:
    """A SavedModel whose ``serving_default`` maps ``{input_name: x}`` to ``{final_name: p}``
    and, with ``retrain_py_signature``, whose ``retrain_py`` signature maps retrain.py's
    ``{"image": x}`` to ``{"prediction": p}`` (the same frozen function); ``parts``:
    ``{signature: frozen part}`` carried as ``{PART_INPUT: x} -> {PART_OUTPUT: features}``."""
    module = tf.Module()
    module.frozen = frozen  # keep it reachable from the saved object

    @tf.function(input_signature=[tf.TensorSpec(input_shape, tf.float32, name=input_name)])
    def serving_default(x):
        return {final_name: tf.nest.flatten(frozen(x))[0]}

    module.serving_default = serving_default
    signatures = {"serving_default": serving_default}
    if retrain_py_signature:
        @tf.function(input_signature=[tf.TensorSpec(input_shape, tf.float32, name=RETRAIN_PY_INPUT)])
        def retrain_py(image):
            return {RETRAIN_PY_OUTPUT: tf.nest.flatten(frozen(image))[0]}

        module.retrain_py = retrain_py
        signatures[RETRAIN_PY_SIGNATURE] = retrain_py
    for name, part in (parts or {}).items():
        signatures[name] = _part_signature(tf, part)
        setattr(module, name, signatures[name])
        setattr(module, f"{name}_frozen", part)
    tf.saved_model.save(module, folder, signatures=signatures)


def _part_signature(tf, part):
    """``{PART_INPUT: x} -> {PART_OUTPUT: features}`` over a frozen part."""

    @tf.function(input_signature=[tf.TensorSpec(part.inputs[0].shape, tf.float32, name=PART_INPUT)])
    def carried(x):
        return {PART_OUTPUT: tf.nest.flatten(part(x))[0]}

    return carried


def _convert_tflite(tf, saved_model_dir: str, quantization: str, parts: Sequence[str] = ()) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=["serving_default", *parts])
    if quantization in ("float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()
