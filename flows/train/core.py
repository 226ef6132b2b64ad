"""``train``: class folders of audio in, a model folder out, in one command.

check the folders (one line per problem, before anything heavy) -> spectrograms (resumable,
in a work folder) -> plan the split (the per-class table, before TensorFlow) -> retrain
(bottlenecks cached; a small set evaluated by grouped k-fold, then trained on everything;
the open-set threshold calibrated) -> export into a temporary folder -> report (per-class
accuracy, confusion matrix) -> the folder replaces OUTPUT_DIR in one step.

OUTPUT_DIR is never half-written: a failure, SIGTERM or Ctrl-C leaves the old model as it
was. Progress goes to the console (bars) and, for a supervising process, to a status file
(:mod:`flows.status`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from flows.status import Cancelled, Signals, StatusFile, cancel_on_signals
from flows.train.dataset import STAGING_FOLDER, AudioFolders, FlowError, check_audio_folders
from retrain.observer import RunObserver
from soundretrain.open_set import BACKGROUND_LABEL

#: The backbone: the presets' three licence-clean networks (chosen by grouped CV inside
#: UrbanSound8K's training folds: configs/retrain_urbansound8k.cfg). The exported model takes
#: sound (audio-in TFLite) when the module can be traced into one graph; otherwise
#: label_image computes its features.
DEFAULT_MODULE = "aisfx,soundnet,efficientnet_lite0"
#: The spectrograms preset whose image the flow renders (long recordings are split into
#: windows, so every second of a field recording trains).
SPECTROGRAM_PRESET = "urbansound8k"
EVALUATIONS = ("auto", "holdout", "kfold", "none")

# What the model folder holds (docs/train.md; the report's files: flows.train.report).
AUDIO_TFLITE = "model_audio.tflite"
TFLITE = "model.tflite"
LABELS = "labels.txt"
TFJS = "tfjs"  # the audio-in model for the browser: a TF.js graph model folder (--tfjs)


@dataclass(frozen=True)
class TrainSettings:
    audio_dir: str
    output_dir: str
    background_dir: Optional[str] = None
    tfhub_module: str = DEFAULT_MODULE
    evaluation: str = "auto"
    how_many_training_steps: int = 4000
    open_set_reject_rate: float = 0.05  # retrain's: the "unknown" threshold; 0: none
    head: str = "auto"  # retrain --head
    random_seed: Optional[int] = None
    work_dir: Optional[str] = None  # spectrograms and TensorBoard runs; default in the user cache
    bottleneck_dir: Optional[str] = None  # default: the user cache's shared bottleneck cache
    module_cache_dir: Optional[str] = None
    status_file: Optional[str] = None
    progress: bool = True
    jobs: int = 0  # spectrograms' worker processes; 0: all cores
    tfjs: bool = True  # also the browser model (TFJS/) when the model takes sound and the converter is installed

    def problems(self) -> list[str]:
        p = []
        if not self.audio_dir:
            p.append("--audio_dir is required: the folder with one folder of recordings per class")
        if not self.output_dir:
            p.append("--output_dir is required: where the model folder goes")
        if self.evaluation not in EVALUATIONS:
            p.append(f"--evaluation must be one of {', '.join(EVALUATIONS)}, not {self.evaluation!r}")
        if self.how_many_training_steps <= 0:
            p.append(f"--how_many_training_steps must be positive, not {self.how_many_training_steps}")
        if not 0 <= self.open_set_reject_rate < 1:
            p.append(f"--open_set_reject_rate must be in [0, 1), not {self.open_set_reject_rate}")
        if self.jobs < 0:
            p.append(f"--jobs must be >= 0, not {self.jobs}")
        if self.audio_dir and self.output_dir:
            out, audio = os.path.abspath(self.output_dir), os.path.abspath(self.audio_dir)
            if out == audio or out.startswith(audio + os.sep) or audio.startswith(out + os.sep):
                p.append(f"--output_dir {self.output_dir} and --audio_dir {self.audio_dir} overlap: the "
                         "model folder is replaced as a whole, so it must be a folder of its own")
        return p


@dataclass
class TrainResult:
    output_dir: str
    report_path: str
    accuracy: Optional[float]
    evaluation: dict
    labels: tuple[str, ...]
    files: list[str]
    seconds: float


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "soundretrain")


def work_dir_for(settings: TrainSettings) -> str:
    """Spectrograms of an audio folder are kept between runs (a new run renders only new
    recordings): one work folder per audio folder, in the user cache by default."""
    if settings.work_dir:
        return os.path.abspath(settings.work_dir)
    key = hashlib.sha1(os.path.realpath(settings.audio_dir).encode("utf-8")).hexdigest()[:16]
    return os.path.join(cache_root(), "train", key)


def spectrogram_settings():
    """``spectrograms --preset urbansound8k --long_clips split`` as settings."""
    from soundretrain.command_line import CommandLineExit, parse_flags
    from spectrograms.cli import make_flags, settings_from_flags

    fv = make_flags()
    try:
        parse_flags(fv, ["spectrograms", f"--preset={SPECTROGRAM_PRESET}", "--long_clips=split"],
                    "train", lambda: "", presets="spectrograms")
    except CommandLineExit:
        raise FlowError(f"the spectrograms preset {SPECTROGRAM_PRESET!r} is missing or broken") from None
    return settings_from_flags(fv)


class StatusObserver(RunObserver):
    """retrain's stages and steps, into the status file, and as progress bars on a terminal
    (the k-fold evaluation's folds, the training steps; the bottlenecks have their own)."""

    MESSAGES = {"bottlenecks": "computing the module's features", "evaluating": "k-fold evaluation",
                "training": "training the model", "export": "exporting the model"}
    BARS = {"evaluating": ("k-fold evaluation", "fold"), "training": ("training", "step")}

    def __init__(self, status: StatusFile, progress: bool = True,
                 signals: Optional[Signals] = None) -> None:
        self.status = status
        self.progress = progress
        self.bar = None
        self.signals = signals or Signals()

    def stage(self, name: str, total: int = 0) -> None:
        self.signals.check()
        self.close()
        self.status.stage(name, self.MESSAGES.get(name, name), total)
        if name in self.BARS and total:
            from tqdm import tqdm

            desc, unit = self.BARS[name]
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False,
                            disable=None if self.progress else True)

    def _bar_to(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(max(0, done - self.bar.n))

    def advance(self, done: int, total: int) -> None:
        self.signals.check()
        self.status.advance(done, total)
        self._bar_to(done)

    def evaluation(self, step: int, total: int, train_accuracy: float,
                   validation_accuracy: Optional[float]) -> None:
        self.signals.check()
        self.status.point(step, train_accuracy, validation_accuracy)
        self.status.advance(step + 1, total)
        self._bar_to(step + 1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def stage_folder(folders: AudioFolders, work_dir: str) -> str:
    """The folder spectrograms reads: the audio folder itself, or (with --background_dir) a
    staging folder of links to each class folder plus ``_background_``."""
    background = [c for c in folders.classes if c.label == BACKGROUND_LABEL]
    if not background or background[0].name == BACKGROUND_LABEL and \
            os.path.dirname(os.path.abspath(background[0].path)) == os.path.abspath(folders.root):
        return folders.root
    staging = os.path.join(work_dir, STAGING_FOLDER)
    os.makedirs(staging, exist_ok=True)
    wanted = {c.name: os.path.abspath(c.path) for c in folders.classes}
    for entry in os.listdir(staging):  # classes removed since the last run go
        full = os.path.join(staging, entry)
        if entry not in wanted and os.path.islink(full):
            os.unlink(full)
    for name, target in wanted.items():
        link = os.path.join(staging, name)
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
    return staging


def render(folders: AudioFolders, work_dir: str, settings: TrainSettings, status: StatusFile,
           log: Callable[[str], None], warn: Callable[[str], None]):
    """Spectrograms of every recording into ``work_dir/spectrograms``; the listing and the
    images of exactly these recordings (a recording deleted since the last run is gone)."""
    from spectrograms.datasets import DatasetError, list_dataset
    from spectrograms.writer import OutputError, WriteOptions, write_spectrograms

    root = stage_folder(folders, work_dir)
    try:
        listing = list_dataset(root, "folders")
    except DatasetError as err:
        raise FlowError(str(err)) from None
    spec_dir = os.path.join(work_dir, "spectrograms")
    status.stage("spectrograms", f"rendering {len(listing.clips)} recordings", len(listing.clips))
    options = WriteOptions(jobs=settings.jobs, progress=settings.progress,
                           on_progress=lambda done, total: status.advance(done, total))
    try:
        summary = write_spectrograms(listing, spec_dir, spectrogram_settings(), options,
                                     log=lambda line: None)
    except OutputError as err:
        raise FlowError(str(err)) from None
    if summary.interrupted:
        raise Cancelled("interrupted while rendering spectrograms")
    for source, reason in summary.failed:
        warn(f"skipped {os.path.relpath(source, root)}: {reason}")
    log(f"Spectrograms: {len(listing.clips)} recordings, {summary.written} images rendered, "
        f"{summary.up_to_date} up to date, {len(summary.failed)} skipped ({spec_dir})")
    return listing, spec_dir


def images_of(listing, spec_dir: str, folders: AudioFolders, settings: TrainSettings):
    """The manifest's images of the listed recordings (not of recordings removed since an
    earlier run), copies of one file grouped as one recording; refused when a class is left
    with too few recordings (its files were not audio)."""
    from retrain.errors import RetrainError
    from retrain.images import ImageSet, list_images

    try:
        images = list_images(spec_dir)
    except RetrainError as err:
        if "only one class" in str(err) or "no images found" in str(err):
            raise FlowError(f"nothing left to train on after the files that are not audio: {err}") from None
        raise FlowError(str(err)) from None
    listed = {c.source for c in listing.clips}
    same = {os.path.realpath(f): g for f, g in folders.duplicate_groups.items()}
    records = []
    for r in images.records:
        if r.source not in listed:
            continue
        group = same.get(os.path.realpath(r.source or ""))
        records.append(dataclasses.replace(r, group=group) if group else r)
    labels = tuple(sorted({r.label for r in records}))
    missing = sorted(set(folders.labels) - set(labels))
    if missing:
        raise FlowError(f"class {missing[0]!r} has no recording left that could be decoded (see the "
                        "skipped files above); add recordings of it")
    return ImageSet(images.image_dir, tuple(records), labels, images.from_manifest)


def tfjs_converter_missing() -> Optional[str]:
    """Why no TF.js model can be written (the converter is not installed), or None. Cheap:
    looks the package up without importing it (that would import TensorFlow)."""
    import importlib.util

    from soundretrain.tfjs_export import INSTALL_HINT

    if importlib.util.find_spec("tensorflowjs") is None:
        return f"the TensorFlow.js converter is not installed ({INSTALL_HINT})"
    return None


def tfjs_converter_loads() -> Optional[str]:
    """Why the installed converter cannot be loaded, or None (after TensorFlow is imported)."""
    from soundretrain.audio_export import AudioExportError
    from soundretrain.tfjs_export import tfjs_converter

    try:
        tfjs_converter()
    except AudioExportError as err:
        return str(err)
    return None


def retrain_settings(settings: TrainSettings, spec_dir: str, work_dir: str, staging: str,
                     tfjs: bool = False):
    from retrain.settings import HeadSettings, RetrainSettings

    evaluation = "auto" if settings.evaluation == "none" else settings.evaluation
    return RetrainSettings(
        head=HeadSettings(kind=settings.head),
        image_dir=spec_dir, tfhub_module=settings.tfhub_module,
        module_cache_dir=settings.module_cache_dir,
        bottleneck_dir=settings.bottleneck_dir or os.path.join(cache_root(), "bottlenecks"),
        split="stratified", evaluation=evaluation,
        testing_percentage=0 if settings.evaluation == "none" else 10,
        how_many_training_steps=settings.how_many_training_steps,
        open_set_reject_rate=settings.open_set_reject_rate,
        eval_step_interval=max(10, settings.how_many_training_steps // 100),
        summaries_dir=os.path.join(work_dir, "training_summaries"),
        output_graph=None, output_graph_explicit=False,
        output_labels=os.path.join(staging, LABELS),
        output_audio_tflite=os.path.join(staging, AUDIO_TFLITE),
        audio_export_fallback=os.path.join(staging, TFLITE),  # no TF.js either then
        output_tfjs=os.path.join(staging, TFJS) if tfjs else None,
        whole_folder_export=False,  # train stages the whole model folder itself
        progress=settings.progress,
        flags_text=f"train --audio_dir={settings.audio_dir} --output_dir={settings.output_dir}")


def per_class_lines(report_path: str) -> list[str]:
    """The report's per-class accuracy, one line a class, for the console."""
    import json

    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    if report.get("accuracy") is None:
        return []
    width = max(len(c["label"]) for c in report["classes"])
    lines = ["Per class (recall on the evaluated clips):"]
    for c in report["classes"]:
        if c["accuracy"] is not None:
            lines.append(f"  {c['label']:<{width}}  {c['accuracy'] * 100:5.1f}% "
                         f"({c['correct']}/{c['evaluated_clips']} clips, {c['recordings']} recordings)")
    return lines


def train(settings: TrainSettings, log: Callable[[str], None] = print,
          warn: Optional[Callable[[str], None]] = None) -> TrainResult:
    """The whole flow; raises :class:`FlowError` (one line) on bad input and
    :class:`Cancelled` on SIGTERM/SIGINT, with OUTPUT_DIR untouched either way."""
    warn = warn or (lambda line: print(f"train: warning: {line}", file=sys.stderr, flush=True))
    start = time.perf_counter()
    problems = settings.problems()
    if problems:
        raise FlowError(problems[0])
    output_dir = os.path.abspath(settings.output_dir)
    status = StatusFile(settings.status_file, output_dir)
    signals = None
    try:
        with cancel_on_signals() as signals:
            result = _train(settings, output_dir, status, log, warn, start, signals)
    except KeyboardInterrupt:  # Cancelled, or a stage's own wrapping of it
        reason = signals.reason() if signals is not None else "interrupted"
        status.finish("cancelled", f"{reason}; {output_dir} was left as it was")
        raise Cancelled(reason) from None
    except BaseException as err:  # the status says failed, whatever the error was
        status.finish("failed", str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise
    status.finish("done", f"model written to {output_dir}", result.accuracy, result.report_path)
    return result


def _train(settings: TrainSettings, output_dir: str, status: StatusFile, log, warn,
           start: float, signals: Signals) -> TrainResult:
    from soundretrain import model_folder

    if not model_folder.replaceable(output_dir):  # never replace a folder of recordings
        raise FlowError(f"--output_dir {output_dir} exists and is not a model folder; not replacing it "
                        "(choose a new or empty folder)")
    folders = check_audio_folders(settings.audio_dir, settings.background_dir,
                                  allow_single_recordings=settings.evaluation == "none")
    for note in folders.notes:
        warn(note)
    tfjs = settings.tfjs
    why_not = tfjs_converter_missing() if tfjs else None
    if why_not:  # the rest of the folder is written as before
        warn(f"no TF.js model (tfjs/, for the browser): {why_not}; --notfjs skips it")
        tfjs = False
    work_dir = work_dir_for(settings)
    os.makedirs(work_dir, exist_ok=True)
    listing, spec_dir = render(folders, work_dir, settings, status, log, warn)
    images = images_of(listing, spec_dir, folders, settings)

    from retrain.errors import RetrainError
    from retrain.split_plan import plan_run

    probe = retrain_settings(settings, spec_dir, work_dir, os.path.join(output_dir, ".staging"))
    try:
        images, plan = plan_run(probe, log, images)  # the table, and refusals, before TensorFlow
    except RetrainError as err:
        raise FlowError(str(err)) from None
    status.stage("bottlenecks", "starting TensorFlow")
    from soundretrain.command_line import import_tensorflow_quietly

    import_tensorflow_quietly()
    why_not = tfjs_converter_loads() if tfjs else None
    if why_not:
        warn(f"no TF.js model (tfjs/, for the browser): {why_not}; --notfjs skips it")
        tfjs = False
    from flows.train.report import write_report
    from retrain.core import retrain

    with model_folder.staged_model_folder(output_dir) as staging:
        rs = retrain_settings(settings, spec_dir, work_dir, staging, tfjs)
        observer = StatusObserver(status, settings.progress, signals)
        try:  # retrain's step lines go to TensorBoard; here a bar shows the steps
            result = retrain(rs, settings.random_seed, lambda line: None if ": Step " in line else log(line),
                             images=images, plan=plan, observer=observer)
        except RetrainError as err:
            raise FlowError(str(err)) from None
        finally:
            observer.close()
        report = write_report(staging, result, settings, folders, spec_dir, time.perf_counter() - start)
        files = sorted(os.listdir(staging))
        summary = per_class_lines(report)  # read before the folder is swapped in
        signals.check()  # a signal whose exception was swallowed never swaps the folder in
    for line in summary:
        log(line)
    accuracy = result.evaluation.get("accuracy") if result.evaluation else None
    log(f"Model folder: {output_dir} ({', '.join(files)})")
    return TrainResult(output_dir, os.path.join(output_dir, os.path.basename(report)), accuracy,
                       result.evaluation or {}, result.labels, files, time.perf_counter() - start)
