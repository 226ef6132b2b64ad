"""The retrain stage's settings: plain frozen dataclasses, no TensorFlow import, so the
CLI parses flags and reports bad ones in a fraction of a second."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from retrain.augment import AugmentSettings

OPTIMIZERS = ("sgd", "adam")
#: ``--head``: ``logistic`` (L2-regularised logistic regression, C by grouped inner CV on the
#: training images), ``sgd`` (retrain.py's softmax layer trained by SGD/Adam for
#: --how_many_training_steps), ``auto`` (logistic unless a knob only the SGD head has is set).
HEAD_KINDS = ("auto", "logistic", "sgd")
CLASS_WEIGHTS = ("none", "balanced")
ENSEMBLES = ("auto", "none", "parts")


@dataclass(frozen=True)
class HeadSettings:
    learning_rate: float = 0.01
    train_batch_size: int = 100
    hidden_units: int = 0
    dropout: float = 0.0
    label_smoothing: float = 0.0
    optimizer: str = "sgd"
    l2: float = 0.0
    balanced_batches: bool = False
    standardize: bool = True  # the training split's mean / std, folded into the head
    early_stopping: bool = False  # keep the weights of the best validation score (opt-in)
    early_stopping_patience: int = 0  # stop after this many steps without one; 0: run all
    seed: int = 0
    kind: str = "auto"  # HEAD_KINDS
    logistic_c: float = 0.0  # the logistic head's C; 0: chosen by grouped inner CV
    class_weights: str = "none"  # the logistic head's loss: every example, or every class, alike
    ensemble: str = "auto"  # the logistic head: one on all features, or one per backbone part

    def sgd_knobs(self) -> list[str]:
        """The flags set away from their defaults that only the SGD head has."""
        base = HeadSettings()
        names = ("learning_rate", "train_batch_size", "hidden_units", "dropout",
                 "label_smoothing", "optimizer", "l2", "balanced_batches", "early_stopping",
                 "early_stopping_patience", "standardize")
        return [f"--{'no' if n == 'standardize' else ''}{n}" for n in names
                if getattr(self, n) != getattr(base, n)]

    def problems(self) -> list[str]:
        p = []
        if self.learning_rate <= 0:
            p.append(f"--learning_rate must be positive, not {self.learning_rate}")
        if self.train_batch_size <= 0:
            p.append(f"--train_batch_size must be positive, not {self.train_batch_size}")
        if self.hidden_units < 0:
            p.append(f"--hidden_units must be >= 0, not {self.hidden_units}")
        if not 0 <= self.dropout < 1:
            p.append(f"--dropout must be in [0, 1), not {self.dropout}")
        if not 0 <= self.label_smoothing < 1:
            p.append(f"--label_smoothing must be in [0, 1), not {self.label_smoothing}")
        if self.optimizer not in OPTIMIZERS:
            p.append(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.l2 < 0:
            p.append(f"--l2 must be >= 0, not {self.l2}")
        if self.early_stopping_patience < 0:
            p.append(f"--early_stopping_patience must be >= 0, not {self.early_stopping_patience}")
        if self.kind not in HEAD_KINDS:
            p.append(f"--head must be one of {', '.join(HEAD_KINDS)}, not {self.kind!r}")
        if self.logistic_c < 0:
            p.append(f"--logistic_c must be > 0 (or 0: chosen by inner CV), not {self.logistic_c}")
        if self.class_weights not in CLASS_WEIGHTS:
            p.append(f"--class_weights must be one of {', '.join(CLASS_WEIGHTS)}, not {self.class_weights!r}")
        if self.ensemble not in ENSEMBLES:
            p.append(f"--ensemble must be one of {', '.join(ENSEMBLES)}, not {self.ensemble!r}")
        if self.kind == "logistic" and self.sgd_knobs():
            p.append(f"{', '.join(self.sgd_knobs())} set the SGD head's training; the logistic "
                     "head has none of them: drop them or use --head=sgd")
        if self.kind == "sgd" and (self.logistic_c or self.class_weights != "none"
                                   or self.ensemble == "parts"):
            p.append("--logistic_c, --class_weights and --ensemble=parts set the logistic head; "
                     "drop them or use --head=logistic (or auto)")
        return p


FINE_TUNE_HEADS = ("fresh", "trained")


@dataclass(frozen=True)
class FineTuneSettings:
    """``--fine_tune_blocks``: train the backbone's last blocks with the head (see
    :mod:`retrain.fine_tune`). ``blocks`` 0 is off; ``"all"`` tunes the whole network;
    ``{name: K}`` the named parts of a concatenation. The other defaults are the recipe
    chosen by inner cross-validation (docs/retrain.md)."""

    blocks: object = 0  # int, "all" or {module name: int or "all"}
    head: str = "fresh"  # "fresh": a new head trained with the blocks; "trained": the head's
    epochs: float = 8.0  # passes over the training set (unless steps is given)
    steps: int = 0  # 0: from epochs
    learning_rate: float = 2e-4
    batch_size: int = 32
    warmup_steps: int = 50  # at most a quarter of the steps
    weight_decay: float = 1e-4
    augment: bool = True
    mask_fraction: float = 0.1  # the longest time or frequency band masked, of the map's side
    mixup: float = 0.3  # alpha of mixup across classes; 0: off
    keep_best: bool = False  # keep the best validation step's tail and head, not the last
    eval_interval: int = 100

    @property
    def enabled(self) -> bool:
        return self.blocks not in (0, {})

    def problems(self) -> list[str]:
        p = []
        counts = list(self.blocks.values()) if isinstance(self.blocks, dict) else [self.blocks]
        if not all(c == "all" or (isinstance(c, int) and c >= 0) for c in counts):
            p.append(f"--fine_tune_blocks takes a number of blocks or 'all', not {self.blocks!r}")
        if not self.enabled:
            return p
        if self.head not in FINE_TUNE_HEADS:
            p.append(f"--fine_tune_head must be one of {', '.join(FINE_TUNE_HEADS)}, not {self.head!r}")
        for name in ("batch_size", "eval_interval"):
            if getattr(self, name) <= 0:
                p.append(f"--fine_tune_{name} must be positive, not {getattr(self, name)}")
        if self.steps < 0:
            p.append(f"--fine_tune_steps must be >= 0 (0: from --fine_tune_epochs), not {self.steps}")
        if not self.epochs > 0:
            p.append(f"--fine_tune_epochs must be positive, not {self.epochs}")
        if self.learning_rate <= 0:
            p.append(f"--fine_tune_learning_rate must be positive, not {self.learning_rate}")
        if self.mixup < 0:
            p.append(f"--fine_tune_mixup must be >= 0, not {self.mixup}")
        if not 0 <= self.mask_fraction <= 1:
            p.append(f"--fine_tune_mask_fraction must be in [0, 1], not {self.mask_fraction}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            p.append("--fine_tune_warmup_steps and --fine_tune_weight_decay must be >= 0")
        return p


SPLITS = ("stratified", "hash", "folds")
EVALUATIONS = ("auto", "holdout", "kfold")


@dataclass(frozen=True)
class RetrainSettings:
    """Everything one retrain run needs (the CLI fills it from flags)."""

    image_dir: str
    tfhub_module: str = "efficientnet_lite0"
    module_cache_dir: Optional[str] = None
    bottleneck_dir: str = "/tmp/bottleneck"
    bottleneck_batch_size: int = 32
    split: str = "stratified"
    testing_percentage: float = 10.0
    validation_percentage: float = 10.0
    evaluation: str = "auto"  # stratified split: held-out test or grouped k-fold (split_plan)
    kfold: int = 0  # k of the k-fold evaluation; 0: from the smallest class
    keep_validation: bool = False  # keep the validation slice even when nothing reads it
    open_set_reject_rate: float = 0.05  # soundretrain.open_set; 0: no unknown threshold
    test_folds: tuple[int, ...] = ()
    validation_folds: tuple[int, ...] = ()
    how_many_training_steps: int = 4000
    eval_step_interval: int = 10
    validation_batch_size: int = 100
    test_batch_size: int = -1
    head: HeadSettings = field(default_factory=HeadSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    autotune: bool = False  # search the head's settings on the validation split first
    autotune_trials: int = 20
    fine_tune: FineTuneSettings = field(default_factory=FineTuneSettings)
    summaries_dir: Optional[str] = "training_summaries"
    run_tag: str = ""
    output_graph: Optional[str] = None
    output_graph_explicit: bool = True  # False: retrain.py's default path, skipped if impossible
    output_labels: Optional[str] = None
    saved_model_dir: Optional[str] = None
    output_tflite: Optional[str] = None
    tflite_quantization: Optional[str] = None
    audio_saved_model_dir: Optional[str] = None  # audio-in models (soundretrain.audio_export)
    output_audio_tflite: Optional[str] = None
    output_tfjs: Optional[str] = None  # the audio-in model for the browser (soundretrain.tfjs_export)
    # A module that cannot take sound: no audio-in model, and this TFLite (image or features
    # in) is written instead. None: such a module is refused (as an explicit request is).
    audio_export_fallback: Optional[str] = None
    # Outputs sharing a folder replace it whole (soundretrain.model_folder); False when the
    # caller stages the folder itself (the train flow).
    whole_folder_export: bool = True
    intermediate_output_graphs_dir: Optional[str] = None
    intermediate_store_frequency: int = 0
    final_tensor_name: str = "final_result"
    checkpoint_path: Optional[str] = None
    checkpoint_in_run_dir: bool = False  # no explicit path: checkpoint/head in the run's folder
    print_misclassified_test_images: bool = False
    progress: bool = True
    flags_text: str = ""

    def problems(self) -> list[str]:
        p = list(self.head.problems()) + self.fine_tune.problems()
        if self.split not in SPLITS:
            p.append(f"--split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if self.evaluation not in EVALUATIONS:
            p.append(f"--evaluation must be one of {', '.join(EVALUATIONS)}, not {self.evaluation!r}")
        if self.kfold < 0 or self.kfold == 1:
            p.append(f"--kfold must be 0 (from the smallest class) or >= 2, not {self.kfold}")
        if not 0 <= self.open_set_reject_rate < 1:
            p.append(f"--open_set_reject_rate must be in [0, 1), not {self.open_set_reject_rate}")
        if self.how_many_training_steps <= 0:
            p.append(f"--how_many_training_steps must be positive, not {self.how_many_training_steps}")
        if self.eval_step_interval <= 0:
            p.append(f"--eval_step_interval must be positive, not {self.eval_step_interval}")
        if self.autotune_trials < 1:
            p.append(f"--autotune_trials must be >= 1, not {self.autotune_trials}")
        if self.augment.copies < 0:
            p.append(f"--augmentation_copies must be >= 0, not {self.augment.copies}")
        if self.bottleneck_batch_size <= 0:
            p.append(f"--bottleneck_batch_size must be positive, not {self.bottleneck_batch_size}")
        if self.split == "folds" and not self.test_folds:
            p.append("--split folds needs --test_folds (for example --test_folds 10)")
        testing = self.testing_percentage if self.split == "hash" else 0
        if not 0 <= self.validation_percentage <= 100 or not 0 <= testing <= 100 \
                or self.validation_percentage + testing >= 100:
            p.append(f"--validation_percentage {self.validation_percentage:g} and "
                     f"--testing_percentage {self.testing_percentage:g} must be in [0, 100] "
                     "and leave some images for training")
        if set(self.test_folds) & set(self.validation_folds):
            p.append(f"folds {sorted(set(self.test_folds) & set(self.validation_folds))} are given "
                     "as both --test_folds and --validation_folds")
        if self.tflite_quantization not in (None, "none") and not (self.output_tflite
                                                                   or self.output_audio_tflite):
            p.append(f"--tflite_quantization={self.tflite_quantization} goes with --output_tflite "
                     "or --output_audio_tflite (no TFLite file is written without one)")
        for name in ("validation_batch_size", "test_batch_size"):
            value = getattr(self, name)
            if value == 0 or value < -1:
                p.append(f"--{name} must be positive, or -1 for the whole set; not {value}")
        if self.intermediate_store_frequency < 0:
            p.append(f"--intermediate_store_frequency must be >= 0 (0: none), not "
                     f"{self.intermediate_store_frequency}")
        from soundretrain.export import tensor_name_problem  # no TensorFlow import

        name_problem = tensor_name_problem(self.final_tensor_name)
        if name_problem:
            p.append(name_problem)
        p += self.artifact_path_problems()
        # NaN slips through every "<= 0" check above; no knob means anything with NaN or inf.
        for owner in (self, self.head, self.augment, self.fine_tune):
            prefix = "fine_tune_" if owner is self.fine_tune else ""
            for f in dataclasses.fields(owner):
                value = getattr(owner, f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    p.insert(0, f"--{prefix}{f.name} must be a finite number, not {value}")
        return p

    def artifact_paths(self) -> dict[str, str]:
        """Every file or folder the export writes, by the flag that names it (sidecars too)."""
        out = {}
        for flag, path in (("--output_graph", self.output_graph), ("--output_labels", self.output_labels),
                           ("--output_tflite", self.output_tflite), ("--saved_model_dir", self.saved_model_dir),
                           ("--output_audio_tflite", self.output_audio_tflite),
                           ("--audio_saved_model_dir", self.audio_saved_model_dir),
                           ("--output_tfjs", self.output_tfjs),
                           ("--checkpoint_path", self.checkpoint_path)):
            if path:
                out[flag] = os.path.abspath(os.path.expanduser(path))
        for flag in ("--output_graph", "--output_tflite", "--output_audio_tflite"):
            if flag in out:
                out[f"{flag}'s sidecar"] = out[flag] + ".json"
        if "--checkpoint_path" in out:  # tf.train.Checkpoint writes <prefix>.index and .data-*
            out["--checkpoint_path's index"] = out.pop("--checkpoint_path") + ".index"
        return out

    def artifact_path_problems(self) -> list[str]:
        """Two artifacts at one path would leave only the last one written (it printed
        "Wrote" for each); an artifact inside --saved_model_dir is deleted by its swap."""
        paths = self.artifact_paths()
        seen: dict[str, str] = {}
        for flag, path in paths.items():
            if path in seen:
                return [f"{seen[path]} and {flag} are the same path ({path}); give each artifact its own"]
            seen[path] = flag
        for folder_flag in ("--saved_model_dir", "--audio_saved_model_dir", "--output_tfjs"):
            folder = paths.get(folder_flag)
            for flag, path in paths.items():
                if folder and flag != folder_flag and path.startswith(folder + os.sep):
                    return [f"{flag} {path} is inside {folder_flag} {folder}, which is replaced as a "
                            "whole; put it elsewhere"]
        return []
