"""``train``: class folders of audio in, a model folder out, in one command.

    train --audio_dir my_sounds --output_dir my_model
    label_image --graph my_model/model_audio.tflite --audio new.wav

Flags become a :class:`flows.train.core.TrainSettings`; the work is done in
:mod:`flows.train.core`. Exit status: 0 done, 1 failed (one line), 2 bad flags,
130 cancelled (SIGTERM or Ctrl-C; the old model folder stays as it was).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow
from typing import Sequence

from absl import flags

from flows.status import Cancelled
from flows.train.core import DEFAULT_MODULE, EVALUATIONS, TrainSettings, train
from flows.train.dataset import FlowError
from soundretrain.command_line import CommandLineExit, FlagGroup, FlagGroups, error, parse_flags

PROG = "train"

HELP_GROUPS = FlagGroups(
    FlagGroup("data", "Your recordings and the model folder"),
    FlagGroup("training", "Training (good defaults; every knob of retrain is reachable there)"),
    FlagGroup("run", "Caches, progress and supervision"),
)


def make_flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    define = HELP_GROUPS.definer(fv)
    define("string", "audio_dir", "", "Folder of class folders of recordings: "
           "AUDIO_DIR/<class>/<recording>.wav (flac, ogg, mp3, ...). Plain file names are separate "
           "recordings; <recording>_nohash_<k>.wav are slices of one. A folder named _background_ "
           "holds noise and silence: trained on, never reported.", group="data")
    define("string", "output_dir", "", "The model folder to write (replaced as a whole when "
           "training succeeds; an existing model folder is left as it was otherwise).", group="data")
    define("string", "background_dir", None, "A folder of noise and silence recordings, trained "
           "as the _background_ class (never reported as a detection).", group="data")
    define("string", "tfhub_module", DEFAULT_MODULE, "The pretrained network(s) whose features "
           "the model learns from (retrain --tfhub_module).", group="training")
    define("enum", "evaluation", "auto", "How the model is evaluated: auto (grouped k-fold for "
           "small sets, a held-out test for large ones), holdout, kfold, or none (every "
           "recording trains, nothing is measured: allows one recording a class).",
           enum_values=list(EVALUATIONS), group="training")
    define("enum", "head", "auto", "The head (retrain --head): logistic (its strength chosen by "
           "inner cross-validation on your recordings), sgd (retrain.py's, trained for "
           "--how_many_training_steps) or auto (logistic up to 4000 clips).",
           enum_values=["auto", "logistic", "sgd"], group="training")
    define("integer", "how_many_training_steps", 4000, "Training steps of the SGD head.",
           lower_bound=1, group="training")
    define("float", "open_set_reject_rate", 0.05, "At most this share of new recordings of your "
           "classes may be labelled unknown (the threshold is calibrated on the k-fold's held-out "
           "predictions, and never above 0.5); 0: every sound gets its nearest class.",
           group="training")
    define("integer", "random_seed", None, "Seed for everything random; the same seed repeats "
           "a run. Default: drawn and printed.", lower_bound=0, group="training")
    define("string", "work_dir", None, "Where spectrograms and TensorBoard runs are kept between "
           "runs (a rerun renders only new recordings). Default: one folder per audio folder in "
           "~/.cache/soundretrain/train/.", group="run")
    define("string", "bottleneck_dir", None, "Cache of the network's features. Default: "
           "~/.cache/soundretrain/bottlenecks (content-addressed, shared by every run).", group="run")
    define("string", "module_cache_dir", None, "Cache of converted networks (retrain "
           "--module_cache_dir).", group="run")
    define("string", "status_file", None, "Keep a JSON status here, replaced atomically at each "
           "change (state, stage, step, progress, accuracy, curve), for a supervising process.",
           group="run")
    define("boolean", "tfjs", True, "Also write the browser model: OUTPUT_DIR/tfjs/, a TF.js graph "
           "model (model.json + weights) of the audio-in model, for label_image --export_web or "
           "tf.loadGraphModel. Needs the tensorflowjs converter (make install installs it); "
           "without it, one warning and the rest of the folder as usual.", group="data")
    define("boolean", "progress", True, "Show progress bars.", group="run")
    define("integer", "jobs", 0, "Worker processes for the spectrograms (0: all cores).",
           lower_bound=0, group="run")
    return fv


def settings_from_flags(fv: flags.FlagValues) -> TrainSettings:
    return TrainSettings(
        audio_dir=fv.audio_dir, output_dir=fv.output_dir, background_dir=fv.background_dir or None,
        tfhub_module=fv.tfhub_module, evaluation=fv.evaluation,
        how_many_training_steps=fv.how_many_training_steps, random_seed=fv.random_seed,
        open_set_reject_rate=fv.open_set_reject_rate,
        head=fv.head,
        work_dir=fv.work_dir or None, bottleneck_dir=fv.bottleneck_dir or None,
        module_cache_dir=fv.module_cache_dir or None, status_file=fv.status_file or None,
        progress=fv.progress, jobs=fv.jobs, tfjs=fv.tfjs)


def _usage(fv: flags.FlagValues, full: bool = False) -> str:
    return (f"usage: {PROG} --audio_dir=MY_SOUNDS --output_dir=MY_MODEL [flags]\n\n"
            "Trains a sound classifier on class folders of recordings, in one command:\n"
            "spectrograms, then retrain with settings that suit the data, then a model folder\n"
            "(model_audio.tflite, tfjs/ for the browser, labels.txt, report.md with per-class\n"
            "accuracy, confusion.png).\n"
            + HELP_GROUPS.help(fv, full=full))


def main(argv: Sequence[str]) -> int:
    fv = make_flags()
    try:
        parse_flags(fv, argv, PROG, lambda: _usage(fv), full_usage=lambda: _usage(fv, full=True))
    except CommandLineExit as done:
        return done.code
    settings = settings_from_flags(fv)
    problems = settings.problems()
    if problems:
        error(PROG, problems[0])
        return 2
    try:
        result = train(settings, log=lambda line: print(line, flush=True))
    except Cancelled as err:
        error(PROG, f"{err or 'cancelled'}; {os.path.abspath(settings.output_dir)} was left as it was")
        return 130
    except FlowError as err:
        error(PROG, err)
        return 1
    except OSError as err:
        error(PROG, f"{err.filename}: {err.strerror or err}" if err.filename else err)
        return 1
    except Exception as err:  # noqa: BLE001 - retrain's and TensorFlow's errors, one line each
        from retrain.errors import RetrainError
        from soundretrain.backbones.registry import ModuleError

        if not isinstance(err, (RetrainError, ModuleError, ValueError)):
            raise
        error(PROG, err)
        return 1
    acc = result.accuracy
    how = result.evaluation.get("method")
    print(f"Done in {result.seconds:.0f} s: {result.output_dir}"
          + (f" ({how} accuracy {acc * 100:.1f} %)" if acc is not None else "")
          + f"; report: {result.report_path}", flush=True)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv))
