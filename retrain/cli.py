"""``retrain``: train a new classification head on spectrogram images, after TensorFlow's
``retrain.py`` (same flag names and defaults where they still make sense).

    retrain --image_dir=spec --output_graph=/tmp/sounds.pb --output_labels=/tmp/sounds.txt
    retrain --preset=urbansound8k --image_dir=spec --test_folds=10
    retrain --preset=urbansound8k --image_dir=spec --cross_validate

Flags become a :class:`retrain.core.RetrainSettings`; the work is done in
:mod:`retrain.core` and :mod:`retrain.cross_validation`.
"""
from __future__ import annotations

import os
import sys

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) is noise on a console;
# set before anything imports TensorFlow. An explicit user setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from typing import Optional, Sequence

from absl import flags

from retrain.augment import AugmentSettings
from soundretrain.beam_runner import (BeamError, check_paths_for_runner, configure_filesystems,
                                      define_runner_flags, runner_settings)
from soundretrain.command_line import (CommandLineExit, FlagGroup, FlagGroups, audio_warnings_as_lines, error,
                                       import_tensorflow_quietly, non_finite_float_flags, parse_flags)
from retrain.errors import RetrainError
from soundretrain.presets import define_preset_flag, set_by_preset
from soundretrain.backbones.registry import ModuleError, registry_names
from retrain.settings import (CLASS_WEIGHTS, ENSEMBLES, EVALUATIONS, FINE_TUNE_HEADS, HEAD_KINDS,
                              OPTIMIZERS, SPLITS, FineTuneSettings, HeadSettings, RetrainSettings)
from soundretrain.backbones.split import parse_blocks

PROG = "retrain"
VERBOSITIES = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")


HELP_GROUPS = FlagGroups(
    FlagGroup("presets", "Presets: a data set's flag file by name"),
    FlagGroup("retrain.py", "retrain.py's flags (same names, meanings and defaults)"),
    FlagGroup("splits", "Splits: which recordings train, validate and test"),
    FlagGroup("head", "The head: what is trained on the bottlenecks"),
    FlagGroup("augmentation", "Augmentation (cached copies of the training images)"),
    FlagGroup("fine_tuning", "Fine-tuning: the module's last blocks, trained with the head"),
    FlagGroup("export", "Export: the trained model and its labels"),
    FlagGroup("run", "Module cache, logs and progress"),
    FlagGroup("beam", "Bottlenecks only, or computed by an Apache Beam pipeline (docs/scale.md)"),
    FlagGroup("compatibility", "Accepted for retrain.py compatibility, ignored", brief=False),
)


def make_flags() -> flags.FlagValues:
    """This CLI's flags, on their own FlagValues (never absl's global FLAGS). Every flag names
    its --help group (HELP_GROUPS)."""
    fv = flags.FlagValues()
    define = HELP_GROUPS.definer(fv)

    define_preset_flag(fv, PROG)  # configs/retrain_<name>.cfg by name
    HELP_GROUPS.assign(fv, "presets", "preset")
    # retrain.py's flags: same names and defaults.
    define("string", "image_dir", "", "Folder of images to train on. What spectrograms wrote "
           "(with manifest.csv), or retrain.py-style <label>/<image> class folders.",
           group="retrain.py")
    define("string", "output_graph", "/tmp/output_graph.pb",
           "Where to save the trained frozen graph (.pb); empty to skip.", group="export")
    define("string", "intermediate_output_graphs_dir", "/tmp/intermediate_graph/",
           "Where to save the intermediate graphs.", group="export")
    define("integer", "intermediate_store_frequency", 0,
           "How many steps between intermediate graphs; 0 stores none.", group="export")
    define("string", "output_labels", "/tmp/output_labels.txt",
           "Where to save the labels, one per line in class-index order.", group="export")
    define("string", "summaries_dir", "training_summaries",
           "TensorBoard logs; each run gets its own <time>-<tag> subfolder. Empty: none.",
           group="retrain.py")
    define("integer", "how_many_training_steps", 4000, "How many training steps to run.",
           group="retrain.py")
    define("float", "learning_rate", 0.01, "Learning rate of the head's optimizer.",
           group="retrain.py")
    define("integer", "testing_percentage", 10, "With --split=stratified or hash: percentage of "
           "recordings used as the test set (stratified: of each class, at least one). 0: no "
           "evaluation, every recording trains.", group="splits")
    define("integer", "validation_percentage", 10, "Percentage of recordings used for "
           "validation, kept only when something reads it (--early_stopping, --autotune) or when "
           "this flag is given; otherwise they train the head. With --split=folds and no "
           "--validation_folds: of the training folds.", group="splits")
    define("integer", "eval_step_interval", 10, "How often to evaluate the training results.",
           group="retrain.py")
    define("integer", "train_batch_size", 100, "How many images to train on at a time.",
           group="retrain.py")
    define("integer", "test_batch_size", -1, "How many test images to evaluate at the end; "
           "-1 uses the entire test set.", group="retrain.py")
    define("integer", "validation_batch_size", 100, "How many images in an evaluation batch; "
           "-1 uses the entire validation set.", group="retrain.py")
    define("boolean", "print_misclassified_test_images", False,
           "Print every misclassified test image.", group="retrain.py")
    define("string", "bottleneck_dir", "/tmp/bottleneck", "Cache of bottleneck values. "
           "Content-addressed per module, so several image folders can share it.",
           group="retrain.py")
    define("string", "final_tensor_name", "final_result", "Name of the output node of the graph.",
           group="export")
    define("boolean", "flip_left_right", False, "Accepted for retrain.py compatibility; on a "
           "spectrogram it reverses time, so it is ignored (see --augmentation_copies).",
           group="compatibility")
    define("integer", "random_crop", 0, "Accepted for retrain.py compatibility and ignored: "
           "use --augmentation_copies.", group="compatibility")
    define("integer", "random_scale", 0, "Accepted for retrain.py compatibility and ignored: "
           "use --augmentation_copies.", group="compatibility")
    define("integer", "random_brightness", 0, "Accepted for retrain.py compatibility and "
           "ignored: use --augmentation_copies.", group="compatibility")
    define("string", "tfhub_module", "efficientnet_lite0",
           "The frozen pretrained module; efficientnet_lite0 works offline; auto chooses among "
           "the licence-clean networks and their concatenations by grouped inner CV on the "
           "training images (the presets' default). One of "
           f"{', '.join(registry_names())}, a TF2 SavedModel / TF Hub module folder, a TF Hub "
           "handle or URL, or several of these joined by commas (features concatenated).",
           group="retrain.py")
    define("string", "saved_model_dir", "", "Where to save the exported SavedModel; empty: none.",
           group="export")
    define("enum", "logging_verbosity", "INFO", "How much to print.",
           enum_values=list(VERBOSITIES), group="retrain.py")
    define("string", "checkpoint_path", None,
           "Where to save the head's checkpoint (a tf.train.Checkpoint prefix); empty: none. "
           "Default: checkpoint/head in the run's TensorBoard folder, so every run has its own "
           "(retrain.py's shared /tmp/_retrain_checkpoint let concurrent runs clash). Runs given "
           "the same path write it one after another.", group="export")
    # New flags.
    define("enum", "split", "stratified", "stratified: by recording, per class (retrain.py's "
           "hash order with quotas), so every class keeps training recordings; a set too small "
           "for a held-out test is evaluated by grouped k-fold (--evaluation). hash: retrain.py's "
           "stable SHA-1 split computed per recording (group); folds: the manifest's folds "
           "(--test_folds, --validation_folds).", enum_values=list(SPLITS), group="splits")
    define("enum", "evaluation", "auto", "With --split=stratified: holdout (a test slice), "
           "kfold (grouped k-fold cross-validation, then the exported model trains on every "
           "recording) or auto: k-fold when the smallest class would have fewer than 5 test "
           "recordings.", enum_values=list(EVALUATIONS), group="splits")
    define("integer", "kfold", 0, "k of the k-fold evaluation; 0: the smallest class's "
           "recordings, at most 5.", lower_bound=0, group="splits")
    define("list", "test_folds", [], "With --split=folds: the test fold(s), e.g. 10.",
           group="splits")
    define("list", "validation_folds", [], "With --split=folds: the validation fold(s); default a "
           "--validation_percentage slice of the training folds' recordings.", group="splits")
    define("boolean", "cross_validate", False, "The official protocol: one run per fold as the "
           "test fold; per-fold and mean ± std accuracy, CSV + JSON report. Exports nothing.",
           group="splits")
    define("list", "cross_validation_folds", [], "With --cross_validate: only these test folds.",
           group="splits")
    define("integer", "augmentation_copies", 0, "Cache this many augmented copies of every "
           "training image. Each: time shift, time/frequency masks, mixing within a class.",
           group="augmentation")
    define("integer", "random_seed", None, lower_bound=0, help_text="Seed for the head's "
           "initialisation, batches and augmentation; the same seed repeats a run exactly. "
           "Default: drawn and printed.", group="head")
    define("enum", "head", "auto", "logistic: a logistic regression whose L2 strength grouped "
           "inner cross-validation on the training images chooses (fitted to convergence; no "
           "steps or learning rate). sgd: retrain.py's softmax layer trained for "
           "--how_many_training_steps. auto: logistic, unless a flag only the SGD head has is "
           "set (--learning_rate, --hidden_units, --early_stopping, ...) or there are over "
           "4000 training images.", enum_values=list(HEAD_KINDS), group="head")
    define("float", "logistic_c", 0.0, "The logistic head's C (inverse L2 strength; larger: "
           "weaker). 0: chosen by inner CV among 0.001-10.", group="head")
    define("enum", "class_weights", "none", "The logistic head's loss: none weighs every image "
           "alike; balanced weighs every class alike.", enum_values=list(CLASS_WEIGHTS),
           group="head")
    define("enum", "ensemble", "auto", "With a backbone of several parts (a,b): none trains one "
           "logistic head on all features; parts averages one head per part (one layer all the "
           "same); auto keeps parts only where inner CV scores it higher.",
           enum_values=list(ENSEMBLES), group="head")
    define("integer", "hidden_units", 0, "Add a hidden ReLU layer of this size; 0: "
           "retrain.py's single softmax layer.", group="head")
    define("float", "dropout", 0.0, "Dropout rate before the final layer during training.",
           group="head")
    define("float", "label_smoothing", 0.0, "Label smoothing of the cross-entropy loss.",
           group="head")
    define("enum", "optimizer", "sgd", "sgd (retrain.py's gradient descent) or adam "
           "(try --learning_rate=0.001).", enum_values=list(OPTIMIZERS), group="head")
    define("float", "l2", 0.0, "L2 weight penalty.", group="head")
    define("boolean", "balanced_batches", False, "Draw every class equally often in a batch.",
           group="head")
    define("boolean", "standardize", True, "Standardise every feature with the training "
           "images' mean and std. Never from validation or test images; the exported model "
           "carries them. --nostandardize: raw features, as retrain.py.", group="head")
    define("boolean", "early_stopping", False, "Keep the head's weights from the best "
           "validation evaluation. The whole validation set is scored every "
           "--eval_step_interval steps (accuracy, ties: cross-entropy). Off by default: with a "
           "10 % validation slice it chose worse steps (docs/retrain.md); the last step's "
           "weights, as retrain.py.", group="head")
    define("integer", "early_stopping_patience", 0, "Stop after this many steps without a "
           "better validation score. 0 runs all --how_many_training_steps (the best weights are "
           "still kept).", lower_bound=0, group="head")
    define("boolean", "autotune", False, "Search head settings first: the one the flags give, "
           "retrain.py's SGD head and --autotune_trials SGD settings of learning rate, L2, hidden "
           "units and dropout, scored on the validation images (with early stopping) when there "
           "are 400 or more, else by grouped inner CV on the training and validation images; "
           "the winner is printed, logged to TensorBoard (HPARAMS) and trained. Reproducible "
           "with --random_seed.", group="head")
    define("integer", "autotune_trials", 20, "How many head settings --autotune tries. The "
           "first is the one the flags give.", lower_bound=1, group="head")
    define("string", "module_cache_dir", None, "Cache folder for converted and downloaded "
           "modules. Default: $XDG_CACHE_HOME/soundretrain, and TF Hub's own cache.", group="run")
    define("string", "output_tflite", "", "Also save a TFLite flatbuffer here; empty: none.",
           group="export")
    define("enum", "tflite_quantization", "none", "TFLite quantization (--output_tflite and "
           "--output_audio_tflite).", enum_values=["none", "float16", "dynamic"], group="export")
    define("string", "audio_saved_model_dir", "", "Also save a SavedModel that takes sound: "
           "signature waveform (mono float32 windows at the training rate) -> probabilities, "
           "the spectrogram front-end inside. Empty: none.", group="export")
    define("string", "output_audio_tflite", "", "Also save a TFLite model that takes sound "
           "(as --audio_saved_model_dir). Empty: none.", group="export")
    define("string", "output_tfjs", "", "Also save the model that takes sound as a TensorFlow.js "
           "graph model in this folder, for the browser (label_image --export_web makes a page of "
           "it). Empty: none.", group="export")
    define("float", "open_set_reject_rate", 0.05, "The \"unknown\" threshold stored in the "
           "model's sidecar: calibrated so that this share of held-out recordings of the known "
           "classes would be called unknown (label_image then says unknown for sounds unlike any "
           "class). 0: no threshold.", group="export")
    define("integer", "bottleneck_batch_size", 32, "Images per forward pass of the module.",
           group="run")
    # Fine-tuning the module's last blocks (retrain.fine_tune).
    define("string", "fine_tune_blocks", "0", "Also train the module's last K blocks with a "
           "fresh head, from cached activations (the recipe below, chosen by inner "
           "cross-validation). efficientnet_lite0: 1-16; K=5 costs about 0.4 CPU-s a step, "
           "some 2-3 CPU-minutes for 1,000 clips on a laptop CPU, K=8 twice that; 'all': the "
           "whole network from the images (for a GPU). A concatenation (the presets) tunes its "
           "image network; NAME:K[,NAME:K] names the modules, e.g. efficientnet_lite0:5,aisfx:1 "
           "(aisfx: 1-4 blocks, about 4x the cost of efficientnet_lite0:5). 0: the head only.",
           group="fine_tuning")
    define("enum", "fine_tune_head", FineTuneSettings.head, "fresh: a new head trained with "
           "the blocks from the first step; trained: go on from the head trained on the frozen "
           "features (it has memorised the training set, so the blocks learn little).",
           enum_values=list(FINE_TUNE_HEADS), group="fine_tuning")
    define("float", "fine_tune_epochs", FineTuneSettings.epochs, "Passes over the training "
           "set while fine-tuning (unless --fine_tune_steps is given).", group="fine_tuning")
    define("integer", "fine_tune_steps", FineTuneSettings.steps, "Fine-tuning steps, each on "
           "--fine_tune_batch_size cached maps; 0: --fine_tune_epochs decides.",
           group="fine_tuning")
    define("float", "fine_tune_learning_rate", FineTuneSettings.learning_rate,
           "Peak Adam learning rate of fine-tuning. Linear warm-up, then cosine decay.",
           group="fine_tuning")
    define("integer", "fine_tune_batch_size", FineTuneSettings.batch_size,
           "Activation maps per fine-tuning step.", group="fine_tuning")
    define("integer", "fine_tune_warmup_steps", FineTuneSettings.warmup_steps,
           "Steps of linear learning-rate warm-up.", group="fine_tuning")
    define("float", "fine_tune_weight_decay", FineTuneSettings.weight_decay,
           "Decoupled weight decay of the tuned blocks.", group="fine_tuning")
    define("boolean", "fine_tune_augmentation", FineTuneSettings.augment, "Augment the cached "
           "maps while fine-tuning. Time shift, time/frequency masks, mixing within a class.",
           group="fine_tuning")
    define("boolean", "fine_tune_keep_best", FineTuneSettings.keep_best, "Keep the tail and "
           "head of the best validation evaluation, or the model before fine-tuning when no "
           "tuned step beats it; default: the last step.", group="fine_tuning")
    define("float", "fine_tune_mixup", FineTuneSettings.mixup, "mixup across classes while "
           "fine-tuning: the alpha of its Beta distribution (the maps and labels of two clips "
           "blended, the example keeping the larger share); 0: off.", group="fine_tuning")
    define("float", "fine_tune_mask_fraction", FineTuneSettings.mask_fraction, "The widest "
           "time or frequency band masked in a map while fine-tuning, as a fraction of its "
           "side (two of each per map).", group="fine_tuning")
    define("string", "run_tag", "", "Short tag in the TensorBoard run folder's name "
           "(default: module and split).", group="run")
    define("boolean", "progress", True, "Show progress bars.", group="run")
    define("boolean", "bottlenecks_only", False, "Fill the bottleneck cache for --image_dir and "
           "stop: no split, no training, no export. With --runner, on Apache Beam.", group="beam")
    define_runner_flags(define, group="beam")
    return fv


def _folds(values: Optional[Sequence[str]], name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in (values or []))
    except ValueError:
        raise RetrainError(f"--{name} takes whole numbers, not {','.join(values)}") from None


def _blank(value: Optional[str]) -> Optional[str]:
    return value or None


def settings_from_flags(fv: flags.FlagValues) -> RetrainSettings:
    seed = fv.random_seed
    head = HeadSettings(learning_rate=fv.learning_rate, train_batch_size=fv.train_batch_size,
                        hidden_units=fv.hidden_units, dropout=fv.dropout,
                        label_smoothing=fv.label_smoothing, optimizer=fv.optimizer, l2=fv.l2,
                        balanced_batches=fv.balanced_batches, standardize=fv.standardize,
                        early_stopping=fv.early_stopping,
                        early_stopping_patience=fv.early_stopping_patience, seed=seed or 0,
                        kind=fv.head, logistic_c=fv.logistic_c, class_weights=fv.class_weights,
                        ensemble=fv.ensemble)
    augment = AugmentSettings(copies=fv.augmentation_copies, seed=seed or 0)
    try:
        blocks = parse_blocks(fv.fine_tune_blocks)
    except ValueError as err:
        raise RetrainError(str(err)) from None
    fine_tune = FineTuneSettings(blocks=blocks, head=fv.fine_tune_head,
                                 epochs=fv.fine_tune_epochs, steps=fv.fine_tune_steps,
                                 learning_rate=fv.fine_tune_learning_rate,
                                 batch_size=fv.fine_tune_batch_size,
                                 warmup_steps=fv.fine_tune_warmup_steps,
                                 weight_decay=fv.fine_tune_weight_decay,
                                 augment=fv.fine_tune_augmentation, mixup=fv.fine_tune_mixup,
                                 mask_fraction=fv.fine_tune_mask_fraction,
                                 keep_best=fv.fine_tune_keep_best)
    return RetrainSettings(
        image_dir=fv.image_dir, tfhub_module=fv.tfhub_module,
        module_cache_dir=_blank(fv.module_cache_dir), bottleneck_dir=fv.bottleneck_dir,
        bottleneck_batch_size=fv.bottleneck_batch_size, split=fv.split,
        testing_percentage=fv.testing_percentage, validation_percentage=fv.validation_percentage,
        evaluation=fv.evaluation, kfold=fv.kfold, open_set_reject_rate=fv.open_set_reject_rate,
        keep_validation=bool(fv.validation_folds) or (
            fv["validation_percentage"].present > 0 and not set_by_preset(fv, PROG, "validation_percentage")),
        test_folds=_folds(fv.test_folds, "test_folds"),
        validation_folds=_folds(fv.validation_folds, "validation_folds"),
        how_many_training_steps=fv.how_many_training_steps,
        eval_step_interval=fv.eval_step_interval,
        validation_batch_size=fv.validation_batch_size, test_batch_size=fv.test_batch_size,
        head=head, augment=augment, autotune=fv.autotune, autotune_trials=fv.autotune_trials,
        fine_tune=fine_tune, summaries_dir=_blank(fv.summaries_dir), run_tag=fv.run_tag,
        output_graph=_blank(fv.output_graph), output_graph_explicit=fv["output_graph"].present > 0,
        output_labels=_blank(fv.output_labels),
        saved_model_dir=_blank(fv.saved_model_dir), output_tflite=_blank(fv.output_tflite),
        tflite_quantization=fv.tflite_quantization,
        audio_saved_model_dir=_blank(fv.audio_saved_model_dir),
        output_audio_tflite=_blank(fv.output_audio_tflite),
        output_tfjs=_blank(fv.output_tfjs),
        intermediate_output_graphs_dir=_blank(fv.intermediate_output_graphs_dir),
        intermediate_store_frequency=fv.intermediate_store_frequency,
        final_tensor_name=fv.final_tensor_name or "final_result",
        checkpoint_path=_blank(fv.checkpoint_path), checkpoint_in_run_dir=fv.checkpoint_path is None,
        print_misclassified_test_images=fv.print_misclassified_test_images,
        progress=fv.progress, flags_text=_flags_text(fv))


def _flags_text(fv: flags.FlagValues) -> str:
    """The run's flags as a flag file (shown in TensorBoard's text tab)."""
    lines = []
    for name in sorted(fv):
        flag = fv[name]
        if name in ("flagfile", "undefok", "helpfull", "help", "helpshort", "helpxml"):
            continue
        lines.append(flag.serialize() or f"--{name}=")
    return "\n".join(lines)


def fail(message: object, prog: str = PROG) -> None:
    error(prog, message)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def compatibility_warnings(fv: flags.FlagValues) -> list[str]:
    """retrain.py's distortion flags, accepted but not applied to spectrograms."""
    out = []
    if fv.flip_left_right:
        out.append("--flip_left_right is ignored: flipping a spectrogram reverses time, which "
                   "makes sounds that do not exist; use --augmentation_copies")
    for name in ("random_crop", "random_scale", "random_brightness"):
        if fv[name].value:
            out.append(f"--{name} is ignored: distortions at every step would switch the "
                       "bottleneck cache off; use --augmentation_copies=K, which caches K "
                       "augmented copies of every training image")
    return out


EXPORT_FLAGS = ("output_graph", "output_labels", "saved_model_dir", "output_tflite",
                "audio_saved_model_dir", "output_audio_tflite", "output_tfjs",
                "intermediate_store_frequency", "checkpoint_path")


def cross_validation_warnings(fv: flags.FlagValues) -> list[str]:
    """--cross_validate trains one head per fold and exports none of them: say so when
    export flags were given (on the command line or in a flag file; a --preset's own export
    paths are its defaults, not the user's request)."""
    if not fv.cross_validate:
        return []
    given = [f"--{name}" for name in EXPORT_FLAGS if fv[name].present and fv[name].value
             and not set_by_preset(fv, PROG, name)]
    if not given:
        return []
    return [f"--cross_validate exports no model, so {', '.join(given)} "
            f"{'is' if len(given) == 1 else 'are'} ignored; train once with --split=folds "
            "--test_folds=N to export one"]


def _usage(fv: flags.FlagValues, full: bool = False) -> str:
    return (
        f"usage: {PROG} --image_dir=DIR [--tfhub_module=efficientnet_lite0] [flags]\n"
        f"       {PROG} --preset=urbansound8k|esc50 --image_dir=DIR "
        "[--test_folds=10 | --cross_validate]\n\n"
        "Trains a new classification head on spectrogram images with a frozen pretrained\n"
        "module, after TensorFlow's retrain.py, and exports graph + labels.\n\n"
        + HELP_GROUPS.help(fv, full=full)
    )


@audio_warnings_as_lines(PROG)
def main(argv: Sequence[str]) -> int:
    """Run the stage; returns the exit status (0 ok, 1 failure, 2 bad flags)."""
    fv = make_flags()
    try:
        parse_flags(fv, argv, PROG, lambda: _usage(fv), full_usage=lambda: _usage(fv, full=True),
                    presets=PROG)
    except CommandLineExit as done:
        return done.code
    if not fv.image_dir:
        fail("--image_dir is required (see --help)", PROG)
        return 2
    try:
        settings = settings_from_flags(fv)
        cv_folds = _folds(fv.cross_validation_folds, "cross_validation_folds")
        runner = runner_settings(fv.runner, fv.beam_pipeline_args)
        check_beam_flags(fv, runner)
    except (RetrainError, ValueError, BeamError) as err:
        fail(err, PROG)
        return 2
    if fv.bottlenecks_only:  # nothing is trained: only the cache's flags matter
        problems = [p for p in settings.problems() if "--bottleneck_batch_size" in p]
    else:
        problems = non_finite_float_flags(fv) + [p for p in settings.problems()
                                                 if not (fv.cross_validate and "--test_folds" in p)]
    if problems:
        fail(problems[0], PROG)
        return 2
    for message in compatibility_warnings(fv) + cross_validation_warnings(fv):
        _warn(message)
    quiet = fv.logging_verbosity not in ("DEBUG", "INFO")

    def log(line: str) -> None:
        if not quiet or "Final test accuracy" in line or "Cross-validation accuracy" in line:
            print(line, flush=True)

    images = plan = None
    if runner is None and not fv.bottlenecks_only and not fv.cross_validate:
        try:  # the per-class table, and any refusal, before TensorFlow's start-up
            from retrain.split_plan import plan_run
            images, plan = plan_run(settings, log)
        except RetrainError as err:
            fail(err, PROG)
            return 1
    if fv.logging_verbosity != "DEBUG":
        import_tensorflow_quietly()
    try:
        if runner is not None:
            if not fv.bottlenecks_only:  # what the training would refuse, refused before the pipeline
                check_training(settings, fv.cross_validate, cv_folds)
            code = beam_bottlenecks(settings, runner, log, fv.bottlenecks_only)
            if code is not None:
                return code
        elif fv.bottlenecks_only:
            from retrain.core import prepare
            prepare(settings, log)
            return 0
        if fv.cross_validate:
            from retrain.cross_validation import cross_validate
            cross_validate(settings, fv.random_seed, cv_folds or None, log=log)
        else:
            from retrain.core import retrain
            retrain(settings, fv.random_seed, log=log, images=images, plan=plan)
    except (RetrainError, ModuleError, BeamError) as err:
        fail(err, PROG)
        return 1
    except OSError as err:
        fail(f"{err.filename or ''}: {err.strerror or err}" if err.filename else err, PROG)
        return 1
    except KeyboardInterrupt as err:  # RetrainInterrupted says what the interrupted step left
        fail(str(err) or "interrupted; bottlenecks computed so far are cached, run again to resume", PROG)
        return 130
    return 0


def check_beam_flags(fv: flags.FlagValues, runner) -> None:
    """--bottlenecks_only and --runner against the other flags (ValueError, one line)."""
    from soundretrain.filesystems import is_remote

    if fv.bottlenecks_only and fv.cross_validate:
        raise ValueError("--bottlenecks_only fills the cache and trains nothing; drop --cross_validate")
    if runner is not None:
        check_paths_for_runner(runner, {"image_dir": fv.image_dir, "bottleneck_dir": fv.bottleneck_dir})
        configure_filesystems(runner)
    remote = [f"--{name} {fv[name].value}" for name in ("image_dir", "bottleneck_dir") if is_remote(fv[name].value)]
    if remote and not (runner is not None and fv.bottlenecks_only):
        raise ValueError(f"{', '.join(remote)}: training reads local files; with a URL, fill the cache "
                         "with --runner=... --bottlenecks_only (docs/scale.md)")


MAX_LISTED = 50  # failed images listed one per line before "... and N more"


def check_training(settings: RetrainSettings, cross_validate: bool, cv_folds) -> None:
    """The checks a training run makes before its bottlenecks (images, labels, split, export
    targets), for a run whose bottlenecks a pipeline computes first: a bad fold or path fails
    in a second, not after the pipeline."""
    from retrain.core import check_labels, check_output_targets, checked_split
    from retrain.images import list_images

    images = list_images(settings.image_dir)
    check_labels(images.labels)
    if cross_validate:
        from retrain.cross_validation import _check_folds
        _check_folds(settings, images, cv_folds or None)
    else:
        check_output_targets(settings)
        checked_split(settings, images)


def beam_bottlenecks(settings: RetrainSettings, runner, log, bottlenecks_only: bool) -> Optional[int]:
    """The bottleneck cache filled on Apache Beam; the exit status when the command ends here
    (--bottlenecks_only, nothing computed, interrupted), None to go on and train."""
    from retrain.beam_bottlenecks import compute_bottlenecks_beam

    summary = compute_bottlenecks_beam(
        settings.image_dir, settings.tfhub_module, settings.bottleneck_dir, runner,
        settings.module_cache_dir, settings.bottleneck_batch_size, settings.progress, log)
    if summary.damaged:
        _warn(f"{summary.damaged} cached bottleneck(s) in {settings.bottleneck_dir} failed their check "
              "(damaged, zeroed or swapped) and were recomputed")
    for image, reason in summary.failed[:MAX_LISTED]:
        print(f"{PROG}: failed: {image}: {reason}", file=sys.stderr)
    if len(summary.failed) > MAX_LISTED:
        print(f"{PROG}: failed: ... and {len(summary.failed) - MAX_LISTED} more", file=sys.stderr)
    log(summary.line(settings.tfhub_module, settings.bottleneck_dir)
        + (f"; failures listed in {summary.failures_path}" if summary.failed else ""))
    if summary.interrupted:
        fail("interrupted; the vectors computed so far are cached, run again to resume", PROG)
        return 130
    if summary.failed and summary.computed + summary.cached == 0:
        fail("no bottleneck could be computed", PROG)
        return 1
    return 0 if bottlenecks_only else None


def run() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv))
