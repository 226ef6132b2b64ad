"""``label_image``: label images, audio files, folders or the microphone with an
exported model (frozen ``.pb``, SavedModel folder or ``.tflite``).

TensorFlow's label_image flags keep their names (``--graph``, ``--labels``,
``--image``, ``--input_height``, ``--input_width``, ``--input_mean``,
``--input_std``, ``--input_layer``, ``--output_layer``); their defaults come from the
model's sidecar, so usually ``label_image --graph model.pb --audio clip.wav`` is all.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

# TensorFlow's C++ INFO lines ("MLIR V1 optimization pass is not enabled" on every .pb
# run) are noise beside label_image's output; set before TensorFlow loads, as retrain
# does. An explicit user setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from dataclasses import dataclass  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

from absl import flags

from soundretrain.command_line import (CommandLineExit, FlagGroup, FlagGroups, InterruptWatch,
                                       audio_warnings_as_lines, import_tensorflow_quietly, non_finite_float_flags,
                                       parse_flags)
from soundretrain.command_line import error as print_error

PROG = "label_image"
MIC_RECORD_SECONDS = 3.0  # --mic's --record_seconds when not given
DETECTION_FORMATS = ("csv", "audacity", "raven")  # label.detections.FORMATS, without importing it here
USAGE = f"""{PROG}: label images, audio or the microphone with an exported model.

  {PROG} --graph output_graph.pb --audio clip.wav           # settings from the sidecar
  {PROG} --graph model.tflite --audio_dir recordings/ --output_csv labels.csv
  {PROG} --graph saved_model/ --mic                         # Ctrl-C stops
  {PROG} --graph retrained_graph.pb --labels retrained_labels.txt --image x.jpg
  {PROG} --graph model.tflite --serve                       # web page + HTTP API on 127.0.0.1:8000
"""


HELP_GROUPS = FlagGroups(
    FlagGroup("inputs", "Inputs: what to label"),
    FlagGroup("model", "Model (label_image's flags; defaults from the model's sidecar)"),
    FlagGroup("microphone", "Microphone"),
    FlagGroup("output", "Output"),
    FlagGroup("serve", "Web page and HTTP API (--serve; the microphone's trigger flags apply to its page)"),
    FlagGroup("detections", "Detections over long recordings (time-stamped tables)"),
)


def define_flags(fv: flags.FlagValues) -> None:
    """The command's flags on ``fv``; every flag names its --help group (HELP_GROUPS)."""
    define = HELP_GROUPS.definer(fv)
    define("string", "graph", None, "Model to use: a frozen .pb, a SavedModel folder or a .tflite file.", group="model")
    define("string", "labels", None, "Labels file, one per line (default: the labels in the model's sidecar).", group="model")
    define("multi_string", "image", None, "Image file(s) to label; comma separated or repeated. A value that names "
           "an existing file is that file, commas and all.", group="inputs")
    define("multi_string", "audio", None, "Audio file(s) to label; comma separated or repeated. A value that names "
           "an existing file is that file, commas and all.", group="inputs")
    define("string", "image_dir", None, "Label every image under this folder (recursively).", group="inputs")
    define("string", "audio_dir", None, "Label every audio file under this folder (recursively).", group="inputs")
    define("string", "output_csv", None, "With --image_dir/--audio_dir: write one CSV row per file here.", group="output")
    define("integer", "input_height", None, "Model input height (default: sidecar, else the graph's input shape).", group="model")
    define("integer", "input_width", None, "Model input width (default: sidecar, else the graph's input shape).", group="model")
    define("float", "input_mean", None, "Subtracted from pixel values (default: sidecar, else 0). 0 is a value.", group="model")
    define("float", "input_std", None, "Pixel values are divided by it (default: sidecar, else 255).", group="model")
    define("string", "input_layer", None, "Input tensor name (default: sidecar, else Placeholder).", group="model")
    define("string", "output_layer", None, "Output tensor name (default: sidecar, else final_result).", group="model")
    define("integer", "top_k", 5, "How many classes to print.", lower_bound=1, group="output")
    define("boolean", "json", False, "Print JSON (one document; JSON lines with --mic) instead of text.", group="output")
    define("float", "hop_seconds", None, "Seconds between windows of a long audio file (default: the sidecar's window hop, else the training duration).", group="inputs")
    define("integer", "batch_size", 32, "Model inputs per call (images, audio windows).", lower_bound=1, group="inputs")
    define("boolean", "mic", False, "Listen to the default input device; label each sound event until Ctrl-C.", group="microphone")
    define("string", "mic_device", None, "Input device name or index for --mic (default: the system default).", group="microphone")
    define("string", "mic_file", None, "Drive the --mic loop from an audio file instead of a device.", group="microphone")
    define("boolean", "mic_realtime", False, "Stream --mic_file at real-time speed, as a microphone would.", group="microphone")
    define("float", "record_seconds", None, "Seconds recorded after a sound event starts (--mic: 3; --serve: "
           "the model's window, also what the page's Record button records).", group="microphone")
    define("float", "trigger_db", 12.0, "An event starts when a 50 ms block is this many dB above the noise floor.", group="microphone")
    define("integer", "num_threads", None, "Threads for the TFLite interpreter (default: its own choice).", group="model")
    define("boolean", "keep_going", True, "Go on after an input that cannot be labelled. Each failure is reported "
           "and the exit status is 1 if any input failed; --nokeep_going stops at the first.", group="inputs")
    define("boolean", "serve", False, "Serve a web page and HTTP API (POST /v1/label, GET /v1/model) for the model; Ctrl-C stops.", group="serve")
    define("string", "project_dir", None, "With --serve: the studio. Collect clips into this folder (one folder "
           "per class, as train and spectrograms read them), train and use the model in the page; "
           "--graph is optional (an empty folder is the normal start).", group="serve")
    define("string", "train_flagfile", None, "With --project_dir: flags for the train command the page's Train "
           "button runs (e.g. --tfhub_module, --how_many_training_steps).", group="serve")
    define("string", "export_web", None, "Write the labelling page as a static folder here that runs the model in the "
           "browser (TF.js; no server, nothing leaves the device); --graph: a retrain --output_tfjs folder.", group="serve")
    define("string", "host", "127.0.0.1", "Address to listen on; anything but loopback lets other machines use the model.", group="serve")
    define("integer", "port", 8000, "TCP port (0: any free port).", group="serve")
    define("float", "max_upload_mb", 25.0, "Largest upload accepted, in MB.", group="serve")
    define("float", "max_seconds", 300.0, "Longest audio accepted, in seconds.", group="serve")
    define("integer", "pool_size", 1, "Copies of the model labelling requests in parallel (1: one at a time); "
           "each takes the model's memory.", group="serve")
    define("float", "upload_timeout", 60.0, "Seconds a request may take to arrive: its headers, then its body "
           "(a slower upload gets 408 and never holds a place in the queue).", group="serve")
    define("string", "ssl_certfile", None, "Serve https with this PEM certificate (a phone's browser allows the "
           "microphone only over https or on localhost).", group="serve")
    define("string", "ssl_keyfile", None, "The certificate's private key (PEM), unless --ssl_certfile holds it.", group="serve")
    define("float", "min_confidence", None, "Detect: every class at or above this probability in a window becomes "
           "a time-stamped detection (audio only).", group="detections")
    define("boolean", "merge_consecutive", False, "Join detections of one class in overlapping or touching "
           "windows into one (highest confidence kept).", group="detections")
    define("string", "detections_dir", None, "Write the detection tables here (default: print them).",
           group="detections")
    define("list", "detections_format", list(DETECTION_FORMATS), "Tables to write: csv, audacity (label "
           "track), raven (selection table).", group="detections")
    define("boolean", "combine_detections", False, "One CSV and one Raven table for all recordings instead of "
           "one per recording (Audacity label tracks stay per recording).", group="detections")


@dataclass(frozen=True)
class LabelSettings:
    """Everything the command was asked to do, parsed from the flags."""

    graph: Optional[str]
    labels: Optional[str] = None
    images: tuple = ()
    audio: tuple = ()
    image_dir: Optional[str] = None
    audio_dir: Optional[str] = None
    output_csv: Optional[str] = None
    input_height: Optional[int] = None
    input_width: Optional[int] = None
    input_mean: Optional[float] = None
    input_std: Optional[float] = None
    input_layer: Optional[str] = None
    output_layer: Optional[str] = None
    top_k: int = 5
    json: bool = False
    hop_seconds: Optional[float] = None
    batch_size: int = 32
    mic: bool = False
    mic_device: Optional[str] = None
    mic_file: Optional[str] = None
    mic_realtime: bool = False
    record_seconds: Optional[float] = None  # None: 3 s for --mic, the model's window for --serve
    trigger_db: float = 12.0
    num_threads: Optional[int] = None
    keep_going: bool = True
    serve: bool = False
    project_dir: Optional[str] = None
    train_flagfile: Optional[str] = None
    export_web: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 25.0
    max_seconds: float = 300.0
    pool_size: int = 1
    upload_timeout: float = 60.0
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    min_confidence: Optional[float] = None
    merge_consecutive: bool = False
    detections_dir: Optional[str] = None
    detections_format: tuple = DETECTION_FORMATS
    combine_detections: bool = False

    @property
    def detecting(self) -> bool:
        return self.min_confidence is not None

    @property
    def mode(self) -> str:
        if self.serve:
            return "serve"
        if self.export_web:
            return "export_web"
        if self.mic or self.mic_file:
            return "mic"
        if self.image_dir or self.audio_dir:
            return "dir"
        return "files"

    def problems(self) -> list[str]:
        p = []
        chosen = [bool(self.images or self.audio), bool(self.image_dir or self.audio_dir), bool(self.mic or self.mic_file),
                  self.serve, bool(self.export_web)]
        if not any(chosen):
            p.append("nothing to label: pass --image, --audio, --image_dir, --audio_dir, --mic, --serve or --export_web")
        elif sum(chosen) > 1 or (self.image_dir and self.audio_dir):
            p.append("choose one of: --image/--audio files, --image_dir, --audio_dir, --mic, --serve, --export_web")
        for name in ("input_mean", "input_std", "hop_seconds", "record_seconds", "trigger_db",
                     "max_upload_mb", "max_seconds", "upload_timeout"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                p.append(f"--{name} must be a finite number, not {value}")
        if self.hop_seconds is not None and not self.hop_seconds > 0:
            p.append(f"--hop_seconds must be positive, not {self.hop_seconds}")
        if self.input_std == 0:
            p.append("--input_std must not be 0 (pixels are divided by it)")
        if self.output_csv and self.mode != "dir":
            p.append("--output_csv goes with --image_dir or --audio_dir")
        elif self.output_csv and os.path.isdir(self.output_csv):
            p.append(f"--output_csv {self.output_csv} is a folder; give a file name (labels.csv)")
        if not self.graph and any(chosen) and not (self.serve and self.project_dir):
            p.append("no model given: pass --graph (a .pb, a SavedModel folder or a .tflite file)")
        if (self.project_dir or self.train_flagfile) and not self.serve:
            p.append(f"{'--project_dir' if self.project_dir else '--train_flagfile'} goes with --serve")
        elif self.train_flagfile and not self.project_dir:
            p.append("--train_flagfile goes with --project_dir")
        elif self.train_flagfile and not os.path.isfile(self.train_flagfile):
            p.append(f"--train_flagfile {self.train_flagfile}: no such file")
        if self.project_dir and os.path.exists(self.project_dir) and not os.path.isdir(self.project_dir):
            p.append(f"--project_dir {self.project_dir} is a file; give a folder")
        p += self._detection_problems()
        return p

    def _detection_problems(self) -> list[str]:
        if not self.detecting:
            given = [flag for flag, on in (("--merge_consecutive", self.merge_consecutive),
                                           ("--detections_dir", self.detections_dir),
                                           ("--combine_detections", self.combine_detections)) if on]
            return [f"{given[0]} goes with --min_confidence (which turns detections on)"] if given else []
        p = []
        if not 0.0 < self.min_confidence <= 1.0:
            p.append(f"--min_confidence must be in (0, 1], not {self.min_confidence:g}")
        if self.images or self.image_dir or self.mode not in ("files", "dir"):
            p.append("--min_confidence detects sounds in recordings: use it with --audio or --audio_dir")
        unknown = [f for f in self.detections_format if f not in DETECTION_FORMATS]
        if unknown or not self.detections_format:
            p.append(f"--detections_format takes {', '.join(DETECTION_FORMATS)}, not {','.join(unknown) or 'nothing'}")
        if self.detections_dir and os.path.exists(self.detections_dir) and not os.path.isdir(self.detections_dir):
            p.append(f"--detections_dir {self.detections_dir} is a file; give a folder")
        if self.output_csv and self.detections_dir and self.combine_detections and "csv" in self.detections_format \
                and os.path.abspath(self.output_csv) == os.path.abspath(os.path.join(self.detections_dir, "detections.csv")):
            p.append("--output_csv would overwrite the combined detections.csv; choose another name")
        return p


def _split(values: Optional[Sequence[str]]) -> tuple:
    """``--audio a.wav,b.wav`` is two files; a value naming an existing file is that file,
    so ``--audio "rain, heavy.wav"`` works."""
    out = []
    for value in values or ():
        if os.path.exists(value):
            out.append(value)
        else:
            out.extend(v.strip() for v in value.split(",") if v.strip())
    return tuple(out)


def settings_from_flags(fv: flags.FlagValues, extra: Sequence[str]) -> LabelSettings:
    images, audio = _split(fv.image), _split(fv.audio)
    if extra:  # `--audio a.wav b.wav`: positional files join the kind that was named
        if audio and not images:
            audio += tuple(extra)
        elif images and not audio:
            images += tuple(extra)
        else:
            raise flags.Error(f"unexpected argument(s): {' '.join(extra)}")
    return LabelSettings(
        graph=fv.graph, labels=fv.labels, images=images, audio=audio,
        image_dir=fv.image_dir, audio_dir=fv.audio_dir, output_csv=fv.output_csv,
        input_height=fv.input_height, input_width=fv.input_width,
        input_mean=fv.input_mean, input_std=fv.input_std,
        input_layer=fv.input_layer, output_layer=fv.output_layer,
        top_k=fv.top_k, json=fv.json, hop_seconds=fv.hop_seconds, batch_size=fv.batch_size,
        mic=fv.mic, mic_device=fv.mic_device, mic_file=fv.mic_file, mic_realtime=fv.mic_realtime,
        record_seconds=fv.record_seconds, trigger_db=fv.trigger_db, num_threads=fv.num_threads,
        keep_going=fv.keep_going,
        serve=fv.serve, export_web=fv.export_web, project_dir=fv.project_dir, train_flagfile=fv.train_flagfile, host=fv.host, port=fv.port, max_upload_mb=fv.max_upload_mb, max_seconds=fv.max_seconds,
        pool_size=fv.pool_size, upload_timeout=fv.upload_timeout, ssl_certfile=fv.ssl_certfile,
        ssl_keyfile=fv.ssl_keyfile,
        min_confidence=fv.min_confidence, merge_consecutive=fv.merge_consecutive,
        detections_dir=fv.detections_dir, combine_detections=fv.combine_detections,
        detections_format=tuple(f.strip().lower() for f in (fv.detections_format or ()) if f.strip()),
    )


def _error(message: object, code: int = 1) -> int:
    print_error(PROG, message)
    return code


def _finite(value):
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(document, **kwargs) -> str:
    """Strict JSON (never ``NaN``/``Infinity``, which JSON parsers reject)."""
    return json.dumps(_finite(document), allow_nan=False, **kwargs)


@audio_warnings_as_lines(PROG)
def main(argv: Sequence[str]) -> int:
    """Run the command for ``argv`` (``argv[0]`` is the program name); return the exit code."""
    fv = flags.FlagValues()
    define_flags(fv)
    try:
        rest = parse_flags(fv, argv, PROG, lambda: f"{USAGE}\n{HELP_GROUPS.help(fv)}", positional=True,
                           full_usage=lambda: f"{USAGE}\n{HELP_GROUPS.help(fv, full=True)}")
        settings = settings_from_flags(fv, rest[1:])
    except CommandLineExit as done:
        return done.code
    except flags.Error as e:
        return _error(str(e).splitlines()[0], 2)
    problems = non_finite_float_flags(fv) + settings.problems()
    if problems:
        return _error(problems[0], 2)
    return run_settings(settings)


def run_settings(settings: LabelSettings) -> int:
    """Do what ``settings`` asks; print results; return the exit code."""
    from label.labeling import LabelInputError, LabelSettingsError
    from label.mic import NoInputDeviceError
    from label.models import ModelLoadError, ModelRunError

    try:
        if settings.mode == "mic":
            return _run_mic(settings)
        if settings.mode == "serve":
            return _run_serve(settings)
        if settings.mode == "export_web":
            return _run_export_web(settings)
        labeler = _load(settings)
        if settings.mode == "dir":
            return _run_dir(settings, labeler)
        return _run_files(settings, labeler)
    except LabelSettingsError as e:  # a flag the model makes absurd
        return _error(str(e), 2)
    except (ModelLoadError, ModelRunError, LabelInputError, NoInputDeviceError) as e:
        return _error(str(e))
    except OSError as e:  # writing --output_csv
        return _error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else e)


def _load(settings: LabelSettings):
    from label.models import load_labeler

    if not str(settings.graph).endswith(".tflite"):
        import_tensorflow_quietly()  # a .tflite file runs without TensorFlow

    labeler = load_labeler(
        settings.graph, labels_path=settings.labels, input_layer=settings.input_layer,
        output_layer=settings.output_layer, num_threads=settings.num_threads,
    )
    from soundretrain.model_folder import other_exports_beside

    for other in other_exports_beside(settings.graph, labeler.sidecar):
        print(f"{PROG}: warning: {other} comes from another export than {settings.graph} (an export "
              "interrupted half-way, or outputs exported again one by one); export them together, "
              "or into one folder, to have one set", file=sys.stderr)
    return labeler


def _inputs(settings: LabelSettings, labeler):
    from label.labeling import AudioInput, resolve_image_input, spectrogram_settings_for

    image_input = None
    if labeler.input_kind == "image":
        image_input = resolve_image_input(
            labeler, settings.input_height, settings.input_width, settings.input_mean, settings.input_std
        )
    audio_input = AudioInput(spectrogram_settings_for(labeler), settings.hop_seconds, image_input)
    wants_audio = settings.audio or settings.audio_dir or settings.mode in ("mic", "serve")
    if wants_audio and not (labeler.sidecar or {}).get("spectrogram"):
        print(f"{PROG}: warning: {settings.graph} records no spectrogram settings; rendering audio with the "
              "defaults (pass the model's sidecar to render as in training)", file=sys.stderr)
    return image_input, audio_input


def _print_result(result, labeler, settings: LabelSettings, header: bool) -> None:
    from label.labeling import decision, top_k
    from soundretrain.open_set import UNKNOWN

    open_set = labeler.open_set
    windowed = result.kind == "audio" and len(result.windows) > 1
    if header or windowed:
        note = ""
        if windowed:
            note = f": {len(result.windows)} windows, summary = mean of the non-silent windows"
        print(f"# {result.source}{note}")
    label, _ = decision(result.probabilities, labeler.labels, open_set)
    if label == UNKNOWN:  # then the nearest classes, as always
        print(f"{UNKNOWN} (no class reaches this model's threshold {open_set.threshold:.4g}, or "
              "its background class wins); the nearest:")
    for label_name, score in top_k(result.probabilities, labeler.labels, settings.top_k):
        print(f"{label_name} {score:.5f}")
    if windowed:
        for w in result.windows:
            (best, score), = top_k(w.probabilities, labeler.labels, 1)
            said = decision(w.probabilities, labeler.labels, open_set)[0]
            shown = f"{best} {score:.5f}" if said == best else f"{said} ({best} {score:.5f})"
            print(f"#   window {w.start:7.2f} s: {shown}{' (silent)' if w.silent else ''}")


def _detections(settings: LabelSettings, labeler, audio_input, root: str, sources: Sequence[str]):
    """A :class:`label.detections.DetectionRun` when --min_confidence asks for detections.
    Tables an earlier run left where this run writes are named now, before labelling, since
    they will be replaced (atomically, like --output_csv and the exports)."""
    if not settings.detecting:
        return None
    from label.detections import DetectionRun, DetectionSettings, DetectionWriter
    from label.labeling import LabelInputError

    spectrogram = audio_input.settings
    writer = None
    if settings.detections_dir:
        nyquist = (labeler.sample_rate or spectrogram.sample_rate) / 2
        high = spectrogram.fmax if spectrogram.fmax and not labeler.sample_rate else nyquist
        writer = DetectionWriter(settings.detections_dir, settings.detections_format, settings.combine_detections,
                                 os.path.abspath(root), float(spectrogram.fmin), float(high), sources)
        if settings.output_csv and os.path.abspath(settings.output_csv) in map(os.path.abspath, writer.planned_paths()):
            raise LabelInputError(f"--output_csv {settings.output_csv} is also a detection table of this run; "
                                  "choose another name")
        existing = writer.existing()
        if existing:
            print(f"{PROG}: note: {len(existing)} detection table(s) in {settings.detections_dir} from an earlier "
                  f"run will be replaced ({os.path.relpath(existing[0], settings.detections_dir)}"
                  f"{', ...' if len(existing) > 1 else ''})", file=sys.stderr)
    return DetectionRun(labeler.labels, spectrogram.duration,
                        DetectionSettings(settings.min_confidence, settings.merge_consecutive,
                                          labeler.open_set), writer)


def _report_detections(run, settings: LabelSettings) -> None:
    written = run.finish()
    where = f" in {len(written)} file(s) under {settings.detections_dir}" if written else ""
    threshold = run.settings.open_set.threshold if run.settings.open_set is not None else 0.0
    floor = (f" (and the model's unknown threshold {threshold:.4g})"
             if threshold > settings.min_confidence else "")
    print(f"{run.count} detection(s) at --min_confidence {settings.min_confidence:g}{floor}{where}",
          file=sys.stderr)


def _show(result, labeler, settings: LabelSettings, detections, header: bool):
    """Print a result (text mode) and return its JSON view (its detections included)."""
    from label.detections import detection_dict, detection_line
    from label.labeling import result_dict

    found = detections.add(result) if detections is not None else None
    if not settings.json:
        if found is None:
            _print_result(result, labeler, settings, header=header)
        elif not settings.detections_dir:
            for d in found:
                print(detection_line(d))
        return None
    d = result_dict(result, labeler.labels, settings.top_k, labeler.open_set)
    if found is not None:
        d["detections"] = [detection_dict(x) for x in found]
    return d


def _run_files(settings: LabelSettings, labeler) -> int:
    from label.labeling import LabelInputError, label_files

    image_input, audio_input = _inputs(settings, labeler)
    if settings.images and labeler.input_kind != "image":
        raise LabelInputError(f"{settings.graph} labels audio (its module takes waveforms): use --audio")
    folders = [os.path.dirname(os.path.abspath(p)) for p in settings.audio]
    detections = _detections(settings, labeler, audio_input, os.path.commonpath(folders) if folders else ".",
                             settings.audio)
    jobs = [("image", list(settings.images)), ("audio", list(settings.audio))]
    shown, failures = [], []
    for kind, paths in jobs:
        if not paths or (failures and not settings.keep_going):
            continue
        for path, result, error in label_files(
            labeler, paths, kind, image_input=image_input, audio_input=audio_input, batch_size=settings.batch_size
        ):
            if error:
                failures.append(error)
                print(f"{PROG}: error: {error}", file=sys.stderr)
                if not settings.keep_going:
                    break
            else:
                shown.append(_show(result, labeler, settings, detections,
                                   header=len(settings.images) + len(settings.audio) > 1))
    if detections is not None:
        _report_detections(detections, settings)
    if settings.json:
        print(json_text({"model": settings.graph, "format": labeler.format, "results": shown,
                         "errors": failures}, indent=2))
    return _exit_status(settings, failures, len(settings.images) + len(settings.audio), "inputs")


def _exit_status(settings: LabelSettings, failures: list, total: int, what: str) -> int:
    """One rule for files and folders: 1 when any input could not be labelled, else 0."""
    if not failures:
        return 0
    if total > 1:
        stopped = "" if settings.keep_going else " (stopped at the first: --nokeep_going)"
        print(f"{PROG}: {len(failures)} of {total} {what} could not be labelled{stopped}", file=sys.stderr)
    return 1


def _run_dir(settings: LabelSettings, labeler) -> int:
    from label.labeling import (AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, LabelInputError, find_files, label_files,
                                write_csv)

    kind = "image" if settings.image_dir else "audio"
    folder = settings.image_dir or settings.audio_dir
    if kind == "image" and labeler.input_kind != "image":
        raise LabelInputError(f"{settings.graph} labels audio (its module takes waveforms): use --audio_dir")
    if not os.path.isdir(folder):
        raise LabelInputError(f"folder not found: {folder}")
    paths = find_files(folder, IMAGE_EXTENSIONS if kind == "image" else AUDIO_EXTENSIONS)
    if not paths:
        raise LabelInputError(f"no {kind} files under {folder}")
    image_input, audio_input = _inputs(settings, labeler)
    detections = _detections(settings, labeler, audio_input, folder, paths)
    results, shown, errors = [], [], []
    for path, result, error in label_files(
        labeler, paths, kind, image_input=image_input, audio_input=audio_input,
        batch_size=settings.batch_size, progress=True,
    ):
        if error:
            errors.append(error)
            print(f"{PROG}: error: {error}", file=sys.stderr)
            if not settings.keep_going:
                break
            continue
        results.append(result)
        if detections is not None or settings.json:
            shown.append(_show(result, labeler, settings, detections, header=True))
        elif not settings.output_csv:
            best = int(result.probabilities.argmax())
            print(f"{path} {labeler.labels[best]} {result.probabilities[best]:.5f}")
    if detections is not None:
        _report_detections(detections, settings)
    if settings.output_csv:
        write_csv(settings.output_csv, results, labeler.labels, labeler.open_set)
        print(f"wrote {len(results)} rows to {settings.output_csv}", file=sys.stderr)
    if settings.json:
        print(json_text({"model": settings.graph, "format": labeler.format, "results": shown,
                         "errors": errors}, indent=2))
    return _exit_status(settings, errors, len(paths), "files")


def _run_mic(settings: LabelSettings) -> int:
    from label.labeling import decision, label_waveform, top_k
    from label.mic import FileSource, SoundDeviceSource, TriggerSettings, detect_events

    record = MIC_RECORD_SECONDS if settings.record_seconds is None else settings.record_seconds
    trigger = TriggerSettings(record_seconds=record, trigger_db=settings.trigger_db)
    problems = trigger.problems()
    if problems:
        return _error(problems[0], 2)
    # Ctrl-C stops the loop even when Python lost its KeyboardInterrupt in a finalizer
    # (the model's objects have many): the watch's flag is checked after loading and per block.
    with InterruptWatch() as watch:
        try:
            if settings.mic_file:
                source = FileSource(settings.mic_file, realtime=settings.mic_realtime)
            else:
                device = settings.mic_device
                if device is not None and device.isdigit():
                    device = int(device)
                source = SoundDeviceSource(device)  # fail before the slow model load
            labeler = _load(settings)
            _, audio_input = _inputs(settings, labeler)
            watch.check()
            if isinstance(source, SoundDeviceSource):
                source.prefer_sample_rate(audio_input.settings.sample_rate)
            where = settings.mic_file or f"input device {getattr(source, 'name', '')!r}"
            print(f"listening to {where} at {source.sample_rate} Hz; Ctrl-C stops", file=sys.stderr, flush=True)
            count = 0
            for event in detect_events(source, trigger, stop=watch.check):
                result = label_waveform(labeler, event.y, event.sr, audio_input, source=f"t={event.start_seconds:.2f}s")
                best = top_k(result.probabilities, labeler.labels, settings.top_k)
                said, score = decision(result.probabilities, labeler.labels, labeler.open_set)
                stamp = event.wall_time.isoformat(timespec="milliseconds")
                count += 1
                if settings.json:
                    print(json_text({"time": stamp, "start": round(event.start_seconds, 3),
                                     "level_db": round(event.level_db, 1), "floor_db": round(event.floor_db, 1),
                                     "label": said, "score": round(score, 6),
                                     "top": [{"label": n, "score": round(s, 6)} for n, s in best]}), flush=True)
                else:
                    text = "  ".join(f"{n} {s:.3f}" for n, s in best)
                    lead = "" if said == best[0][0] else f"{said}:  "  # unknown, then the nearest
                    print(f"{stamp} t={event.start_seconds:.2f}s  {lead}{text}", flush=True)
            watch.check()
            print(f"end of {where}: {count} event(s)", file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
            return 0


def _run_export_web(settings: LabelSettings) -> int:
    from label.mic import TriggerSettings
    from label.web_export import WebExportError, WebExportSettings, export_web

    options = WebExportSettings(top_k=settings.top_k, max_upload_bytes=int(settings.max_upload_mb * 2**20),
                                max_seconds=settings.max_seconds,
                                trigger=TriggerSettings(record_seconds=settings.record_seconds,
                                                        trigger_db=settings.trigger_db))
    try:
        folder = export_web(settings.graph, settings.export_web, options)
    except WebExportError as e:
        return _error(e)
    print(f"Wrote the in-browser page to {folder}: serve it with any static file server, e.g.\n"
          f"    python -m http.server --bind 127.0.0.1 --directory {folder} 8000   # then open http://127.0.0.1:8000/")
    return 0


def _run_serve(settings: LabelSettings) -> int:
    from label.mic import TriggerSettings

    try:
        from label import serve
    except ImportError as e:  # fastapi, uvicorn: the `serve` extra
        return _error(f"--serve needs the web server packages ({e.name or e}): pip install 'soundretrain[serve]'")
    options = serve.ServeSettings(
        host=settings.host, port=settings.port, max_upload_bytes=int(settings.max_upload_mb * 2**20),
        max_seconds=settings.max_seconds, top_k=settings.top_k, batch_size=settings.batch_size,
        trigger=TriggerSettings(record_seconds=MIC_RECORD_SECONDS if settings.record_seconds is None
                                else settings.record_seconds, trigger_db=settings.trigger_db),
        pool_size=settings.pool_size, upload_timeout=settings.upload_timeout,
        record_seconds=settings.record_seconds,
        ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile,
    )
    problems = options.problems()
    if problems:
        return _error(problems[0], 2)
    options.check_certificate()  # fail before the slow model load
    sock = serve.bind_socket(settings.host, settings.port)
    studio = None
    try:
        service = None
        if settings.graph:
            service = _serve_model(settings, options, settings.graph)
        if settings.project_dir:
            studio = _open_studio(settings, options, service)
        if not serve.is_loopback(settings.host):
            mic = "" if settings.ssl_certfile else " (and the page's microphone needs https: --ssl_certfile)"
            others = serve.network_urls(sock, settings.host, options.scheme)
            where = f"; from other machines: {', '.join(others)}" if others else ""
            print(f"{PROG}: warning: listening on {settings.host}: anyone who can reach this machine can use "
                  f"the model{mic}{where}", file=sys.stderr)
        url = serve.url_for(sock, settings.host, options.scheme)
        what = f"the project {settings.project_dir}" if studio else settings.graph
        print(f"serving {what} at {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
        serve.serve(service, sock, studio=studio)
    except KeyboardInterrupt:  # during the model load; uvicorn handles it once serving
        pass
    finally:
        sock.close()
        if studio is not None:
            studio.shutdown()
            studio.project.close()
    print("stopped", file=sys.stderr)
    return 0


def _serve_model(settings: LabelSettings, options, graph: str):
    """A :class:`label.serve.LabelService` for the model ``graph`` (``--pool_size`` copies)."""
    from label import serve

    model_settings = dataclasses.replace(settings, graph=graph)
    labelers = [_load(model_settings) for _ in range(options.pool_size)]
    _, audio_input = _inputs(model_settings, labelers[0])
    options = dataclasses.replace(options, top_k=min(settings.top_k, len(labelers[0].labels)))
    service = serve.LabelService(labelers, audio_input, options)
    service.warm_up()
    return service


def _open_studio(settings: LabelSettings, options, service):
    """The project folder (locked), its model (``--graph`` wins at start; training replaces
    it), and a training interrupted by a kill resumed."""
    from label.project import Project, ProjectError
    from label.studio import Studio
    from soundretrain.spectrogram_settings import SpectrogramSettings

    try:
        project = Project(settings.project_dir).open()
    except ProjectError as e:
        raise OSError(e.message) from None
    studio = Studio(project, lambda path: _serve_model(settings, options, path), options, SpectrogramSettings(),
                    train_flagfile=os.path.abspath(settings.train_flagfile) if settings.train_flagfile else None,
                    log_line=lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
    try:
        if service is not None:
            studio.service, studio.model_path = service, settings.graph
            studio.worker.resume()
        else:
            studio.start()
    except BaseException:
        project.close()
        raise
    return studio


def run() -> None:
    """Console-script entry point."""
    try:
        code = main(sys.argv)
    except KeyboardInterrupt:  # Ctrl-C outside the microphone loop: no traceback
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    run()
