"""The retrain story, start to end:

list images -> plan the split (a table, before TensorFlow) -> load module -> cache
bottlenecks -> (augment) -> (k-fold evaluation of a small set) -> train the head -> evaluate
-> export.

Every step is a plain function of a :class:`RetrainSettings`; the CLI only builds the
settings. Console lines follow retrain.py (``Step N: Train accuracy = x%``, ...).
"""
from __future__ import annotations

import dataclasses
import datetime
import errno
import os
import random
import shutil
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from retrain.augment import plan_copies
from retrain.bottlenecks import compute_augmented_bottlenecks, compute_bottlenecks
from retrain.errors import RetrainError, RetrainInterrupted
from retrain.fine_tune import fine_tune
from retrain.head import (ClassificationHead, EarlyStopping, Evaluation, HeadTrainer,
                          accuracy_and_xent, eval_steps, fit)
from retrain import module_choice
from retrain.head_choice import LogisticTrainer, feature_blocks, resolve_kind
from retrain.images import ImageSet, list_images
from retrain.observer import RunObserver
from retrain.split_plan import (SplitPlan, check_labels, found_line, plan_run,  # noqa: F401
                                plan_split, split_table)
from soundretrain.backbones.registry import Backbone, ModuleError, load_module
from retrain.splits import Split, fold_split, hash_split, missing_classes, stratified_split

from retrain.settings import SPLITS, RetrainSettings  # noqa: F401 - re-exported

INPUT_TENSOR_NAME = "Placeholder"  # retrain.py's input node, what label_image expects


def draw_seed() -> int:
    """A seed for a run without --random_seed (printed, so the run can be repeated)."""
    return random.SystemRandom().randrange(2 ** 31)


# ------------------------------------------------------------------ data and bottlenecks

@dataclass
class Prepared:
    """The images, the module and every image's bottleneck, computed once."""

    images: ImageSet
    backbone: Backbone
    spectrogram_settings: object  # SpectrogramSettings or None
    features: np.ndarray  # [num_images, feature_size]
    class_ids: np.ndarray  # [num_images]
    # --tfhub_module auto: the candidates ``backbone`` (their parts' union) serves, chosen
    # among by each training split (retrain.module_choice); empty once chosen.
    module_candidates: tuple[str, ...] = ()


def load_spectrogram_settings(images: ImageSet):
    """The settings the images were rendered with, when spectrograms wrote them."""
    path = images.spectrogram_config_path()
    if path is None:
        return None
    from soundretrain.spectrogram_settings import SpectrogramSettings

    try:
        return SpectrogramSettings.load_json(path)
    except (OSError, ValueError, TypeError) as err:
        raise RetrainError(f"cannot read {path!r} ({err}); re-run spectrograms") from None


def prepare(settings: RetrainSettings, log: Callable[[str], None] = print,
            check: Optional[Callable[[ImageSet], object]] = None,
            check_backbone: Optional[Callable[[Backbone, object], object]] = None,
            images: Optional[ImageSet] = None,
            observer: Optional[RunObserver] = None) -> Prepared:
    """List the images (unless ``images`` were listed already), load the module, compute
    the bottlenecks. ``check(images)`` runs before the module loads (the split), so a bad
    fold or percentage fails in a second, not after minutes of bottlenecks;
    ``check_backbone(backbone, spectrogram_settings)`` runs before the bottlenecks (an
    export the module cannot make)."""
    if images is None:
        images = list_images(settings.image_dir)
        log(found_line(images))
    check_labels(images.labels)
    if check is not None:
        check(images)
    spectrogram_settings = load_spectrogram_settings(images)
    backbone = load_module(settings.tfhub_module, settings.module_cache_dir)
    candidates: tuple[str, ...] = ()
    if module_choice.is_auto(settings.tfhub_module):  # every candidate's parts, once
        check = None if check_backbone is None else \
            (lambda b: check_backbone(b, spectrogram_settings))
        candidates = tuple(module_choice.feasible_candidates(backbone, check, log))
        backbone = module_choice.backbone_of(backbone, module_choice.union_of(candidates))
        log(f"Module auto: chosen on the training images among {', '.join(candidates)}")
    kinds = " + ".join(dict.fromkeys(p.input_spec.kind for p in getattr(backbone, "parts", [backbone])))
    log(f"Module {backbone.name}: {kinds} input, {backbone.feature_size} features")
    if check_backbone is not None and not candidates:
        check_backbone(backbone, spectrogram_settings)
    observer = observer or RunObserver()
    observer.stage("bottlenecks", len(images.records))
    features, computed = compute_bottlenecks(
        backbone, images.records, settings.bottleneck_dir, spectrogram_settings,
        settings.bottleneck_batch_size, settings.progress, on_batch=observer.advance)
    log(f"Bottlenecks: {computed} computed, {len(images.records) * _parts(backbone) - computed} "
        f"from the cache in {os.path.abspath(settings.bottleneck_dir)}")
    return Prepared(images, backbone, spectrogram_settings, features,
                    np.asarray(images.class_ids(), np.int32), candidates)


def _parts(backbone: Backbone) -> int:
    return len(getattr(backbone, "parts", [backbone]))


def make_split(settings: RetrainSettings, images: ImageSet) -> Split:
    """The split as asked, validation slice included (what the head levers' benchmarks
    and tests use); a run goes by :func:`checked_split`'s plan."""
    if settings.split == "folds":
        return fold_split(images.records, settings.test_folds, settings.validation_folds,
                          settings.validation_percentage)
    if settings.split == "stratified":
        return stratified_split(images.records, images.class_ids(), settings.validation_percentage,
                                settings.testing_percentage)
    return hash_split(images.records, settings.validation_percentage, settings.testing_percentage)


def checked_split(settings: RetrainSettings, images: ImageSet) -> SplitPlan:
    """The run's :class:`SplitPlan`, refused (one line naming the class, its recordings and
    the flags that would work) when a class cannot be trained and evaluated."""
    return plan_split(settings, images)


def split_partition(settings: RetrainSettings, prepared: Prepared) -> Callable[[int], object]:
    """What a mixing partner must share with the example (see retrain.augment): its fold
    when there are folds, so augmented copies stay valid for every fold split."""
    records = prepared.images.records
    if any(r.fold is not None for r in records):
        return lambda i: records[i].fold
    return lambda i: "all"  # hash split: only training indices are ever planned


def training_data(settings: RetrainSettings, prepared: Prepared, train: Sequence[int],
                  partition: Callable[[int], object],
                  log: Callable[[str], None] = print, with_sources: bool = False) -> tuple:
    """The training bottlenecks plus, with --augmentation_copies, their augmented copies:
    ``(x, y)``, and with ``with_sources`` each row's image index (a copy's original)."""
    x = prepared.features[list(train)]
    y = prepared.class_ids[list(train)]
    if settings.augment.copies <= 0:
        return (x, y, np.asarray(train, int)) if with_sources else (x, y)
    records = prepared.images.records
    plan = plan_copies(records, list(train), settings.augment, prepared.class_ids, partition)
    feats, computed = compute_augmented_bottlenecks(
        prepared.backbone, records, plan, settings.augment, settings.bottleneck_dir,
        prepared.spectrogram_settings, settings.bottleneck_batch_size, settings.progress)
    log(f"Augmented bottlenecks: {len(plan)} ({computed} computed)")
    y_aug = prepared.class_ids[[c.index for c in plan]]
    if with_sources:
        return (np.concatenate([x, feats]), np.concatenate([y, y_aug]),
                np.concatenate([np.asarray(train, int), [c.index for c in plan]]).astype(int))
    return np.concatenate([x, feats]), np.concatenate([y, y_aug])


# ------------------------------------------------------------------ training

@dataclass
class TrainOutcome:
    head: ClassificationHead
    test_accuracy: float
    test_count: int
    test_indices: list[int]
    test_predictions: np.ndarray
    run_dir: Optional[str]
    validation_accuracy: Optional[float]
    backbone: Optional[Backbone] = None  # with --fine_tune_blocks: the tuned backbone
    features: Optional[np.ndarray] = None  # every image's features through ``backbone``
    test_probabilities: Optional[np.ndarray] = None  # [len(test_indices), classes]
    head_report: Optional[dict] = None  # the logistic head: what inner CV chose (HeadReport)
    module_report: Optional[dict] = None  # --tfhub_module auto: what inner CV chose (ModuleChoice)


def _stamp() -> str:
    return str(datetime.datetime.now())


def stop_if_diverged(step: int, cross_entropy: float, head: ClassificationHead,
                     settings: RetrainSettings) -> None:
    """A NaN or infinite loss (or weights) means training diverged: every later step and the
    exported model would be NaN too. Stop with one line, before anything is exported."""
    finite = np.isfinite(cross_entropy) and all(
        np.all(np.isfinite(v.numpy())) for v in head.trainable_variables)
    if not finite:
        h = settings.head
        raise RetrainError(
            f"training diverged at step {step}: the cross entropy is {cross_entropy} and the head's "
            f"weights are no longer finite (--learning_rate {h.learning_rate:g} with --optimizer "
            f"{h.optimizer} is too high for these features?); nothing was exported")


def event_steps(total: int, eval_interval: int, store_frequency: int) -> list[int]:
    """retrain.py's 0-based step indices after which something happens: evaluations
    (every ``eval_interval`` and the last) and intermediate graphs."""
    extra = range(store_frequency, total, store_frequency) if store_frequency > 0 else ()
    return eval_steps(total, eval_interval, extra)


def train_and_evaluate(settings: RetrainSettings, prepared: Prepared, split: Split, seed: int,
                       tag: str, partition: Callable[[int], object],
                       log: Callable[[str], None] = print,
                       on_intermediate: Optional[Callable[[int, ClassificationHead], None]] = None,
                       run_dir: Optional[str] = None,
                       held_out: Optional["HeldOut"] = None,
                       observer: Optional[RunObserver] = None) -> TrainOutcome:
    """Train a fresh head on ``split.train`` and report retrain.py's console lines.
    ``held_out``: a k-fold evaluation's out-of-fold predictions, reported (console,
    TensorBoard's test run) in place of a test set the split does not have."""
    from retrain.summaries import RunSummaries, confusion_matrix

    if not split.train:
        raise RetrainError("no training images after the split; lower --testing_percentage / "
                           "--validation_percentage or choose other folds")
    labels = prepared.images.labels
    module_report = None
    if prepared.module_candidates:  # --tfhub_module auto: chosen on this split's training images
        prepared, choice = module_choice.select(prepared, split.train, seed,
                                                settings.head.class_weights, log)
        module_report = choice.to_dict()
    x, y, sources = training_data(settings, prepared, split.train, partition, log=log,
                                  with_sources=True)
    missing = sorted(set(range(len(labels))) - set(np.unique(y).tolist()))
    if missing:
        log(f"Warning: no training images for class(es) {', '.join(labels[k] for k in missing)}")
    head_settings = dataclasses.replace(settings.head, seed=seed)
    val_idx = np.asarray(split.validation, int)
    x_val, y_val = prepared.features[val_idx], prepared.class_ids[val_idx]
    summaries = None
    if settings.summaries_dir:
        summaries = RunSummaries(settings.summaries_dir, tag, settings.flags_text, run_dir)
        log(f"TensorBoard summaries: {summaries.run_dir} "
            f"(watch with: tensorboard --logdir {settings.summaries_dir})")
    total = settings.how_many_training_steps
    try:
        if settings.autotune:
            from retrain.autotune import autotune

            records = prepared.images.records
            try:
                tuned = autotune(x, y, x_val, y_val, len(labels), head_settings, total,
                                 settings.eval_step_interval, settings.autotune_trials, log,
                                 os.path.join(summaries.run_dir, "autotune") if summaries else None,
                                 groups=[records[i].group for i in sources],
                                 validation_groups=[records[i].group for i in val_idx],
                                 blocks=feature_blocks(prepared.backbone))
            except ValueError as err:
                raise RetrainError(no_validation_for_autotune(settings, prepared, split)
                                   if not len(val_idx) else str(err)) from None
            head_settings = tuned.settings
        head = ClassificationHead(prepared.backbone.feature_size, len(labels),
                                  head_settings.hidden_units, head_settings.dropout, seed=seed)
        kind, why = resolve_kind(head_settings, len(x))
        if kind == "logistic":
            # Fitted to convergence in one go (one "step"), its strength chosen by inner CV.
            records = prepared.images.records
            trainer = LogisticTrainer(head, x, y, [records[i].group for i in sources],
                                      head_settings, feature_blocks(prepared.backbone), why, log)
            total = 1
            log(f"Head: logistic regression ({why}; --head=sgd for retrain.py's SGD softmax "
                "layer), its L2 strength chosen by grouped inner cross-validation on the "
                "training images")
        else:
            trainer = HeadTrainer(head, x, y, head_settings)
            if head_settings.kind == "auto":
                log(f"Head: retrain.py's softmax layer trained by {head_settings.optimizer.upper()} "
                    f"({why})")
        if head_settings.standardize:
            log(f"Features standardised with the mean and std of the {len(x)} training examples")
        stopper = None
        if head_settings.early_stopping and len(val_idx):
            stopper = EarlyStopping(head.trainable_variables, head_settings.early_stopping_patience)
        elif head_settings.early_stopping:
            log("No validation images: no early stopping, the last step's weights are kept")
        rng = np.random.default_rng(seed)
        hist_every = max(settings.eval_step_interval, total // 20)
        last_val_acc: list[Optional[float]] = [None]

        def on_step(i: int, evaluation: Evaluation) -> None:
            stop_if_diverged(i, evaluation.train_cross_entropy, head, settings)
            if evaluation.is_evaluation:
                log(f"{_stamp()}: Step {i}: Train accuracy = {evaluation.train_accuracy * 100:.1f}%")
                log(f"{_stamp()}: Step {i}: Cross entropy = {evaluation.train_cross_entropy:f}")
                val_acc = val_xent = None
                if evaluation.validation_accuracy is not None:  # early stopping: the whole set
                    val_acc, val_xent = evaluation.validation_accuracy, evaluation.validation_cross_entropy
                    log(f"{_stamp()}: Step {i}: Validation accuracy = {val_acc * 100:.1f}% "
                        f"(N={len(val_idx)})")
                elif len(val_idx):
                    # retrain.py samples with replacement; a small set is used whole.
                    size = settings.validation_batch_size
                    batch = val_idx if size < 0 or size >= len(val_idx) else rng.choice(val_idx, size)
                    val_acc, val_xent = accuracy_and_xent(
                        head.predict(prepared.features[batch]), prepared.class_ids[batch])
                    log(f"{_stamp()}: Step {i}: Validation accuracy = {val_acc * 100:.1f}% "
                        f"(N={len(batch)})")
                last_val_acc[0] = val_acc
                if observer is not None:
                    observer.evaluation(i, total, evaluation.train_accuracy, val_acc)
                if summaries:
                    summaries.scalars(i, evaluation.train_accuracy, evaluation.train_cross_entropy,
                                      trainer.learning_rate, val_acc, val_xent)
                    if i % hist_every == 0 or i == total - 1:
                        summaries.histograms(i, head, x[:256])
            if on_intermediate and settings.intermediate_store_frequency > 0 and i > 0 \
                    and i % settings.intermediate_store_frequency == 0:
                on_intermediate(i, head)

        fitted = fit(trainer, total, settings.eval_step_interval, x_val, y_val, stopper,
                     event_steps(total, settings.eval_step_interval,
                                 settings.intermediate_store_frequency), on_step)
        val_acc = last_val_acc[0]
        head_report = None
        if isinstance(trainer, LogisticTrainer) and trainer.report is not None:
            head_report = trainer.report.to_dict()
            log(f"{_stamp()}: Logistic head: {trainer.report.summary()}")
            if summaries:
                summaries.text("head/inner_cv", trainer.report.table())
        if summaries and module_report:
            summaries.text("module/inner_cv", choice.table())
        if fitted.best_step is not None:
            val_acc = fitted.best_validation_accuracy
            why = (f"stopped at step {fitted.steps_run - 1}, {head_settings.early_stopping_patience} "
                   "steps without a better validation score; " if fitted.stopped_early else "")
            log(f"{_stamp()}: Early stopping: {why}kept the weights of step {fitted.best_step} "
                f"(validation accuracy = {fitted.best_validation_accuracy * 100:.1f}%, cross "
                f"entropy = {fitted.best_validation_cross_entropy:f})")

        if settings.fine_tune.enabled:
            # The backbone's last blocks, trained together with a head (a fresh one by
            # default); from here on the tuned backbone's features are evaluated with that
            # head, and both are what gets exported.
            tuned = fine_tune(settings, prepared, split, head, seed, log, summaries)
            prepared = dataclasses.replace(prepared, backbone=tuned.backbone,
                                           features=tuned.features)
            head = tuned.head
            val_acc = tuned.validation_accuracy
        test_idx = list(split.test)
        if 0 <= settings.test_batch_size < len(test_idx):
            test_idx = rng.choice(test_idx, settings.test_batch_size, replace=False).tolist()
        probs = np.zeros((0, len(labels)), np.float32)
        if test_idx:
            probs = head.predict(prepared.features[test_idx])
            predictions = np.argmax(probs, 1)
            test_acc, test_xent = accuracy_and_xent(probs, prepared.class_ids[test_idx])
            log(f"{_stamp()}: Final test accuracy = {test_acc * 100:.1f}% (N={len(test_idx)})")
        elif held_out is not None:  # a k-fold evaluation stands in for the test set
            test_idx, probs = list(held_out.indices), held_out.probabilities
            predictions = np.argmax(probs, 1)
            test_acc, test_xent = accuracy_and_xent(probs, prepared.class_ids[test_idx])
            log(f"{_stamp()}: {held_out.line(test_acc)}")
        else:
            predictions, test_acc = np.zeros(0, int), float("nan")
            log("No test images: final test accuracy not measured")
        if test_idx and summaries:
            cm = confusion_matrix(prepared.class_ids[test_idx], predictions, len(labels))
            summaries.final(total - 1, cm, labels, test_acc, test_xent)
        if settings.print_misclassified_test_images and test_idx:
            log("=== MISCLASSIFIED TEST IMAGES ===")
            records = prepared.images.records
            for k, i in enumerate(test_idx):
                if predictions[k] != prepared.class_ids[i]:
                    log("%70s  %s" % (records[i].relpath, labels[predictions[k]]))
    finally:
        if summaries:
            summaries.close()
    return TrainOutcome(head, test_acc, len(test_idx), test_idx, predictions,
                        summaries.run_dir if summaries else None, val_acc, prepared.backbone,
                        prepared.features, probs, head_report, module_report)


def quiet_tensorflow_retracing() -> None:
    """A fresh head per fold retraces its tf.functions, which is expected here: TensorFlow's
    "triggered tf.function retracing" warning would bury the fold lines."""
    import logging

    import tensorflow as tf

    class NoRetracing(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "retracing" not in record.getMessage()

    logger = tf.get_logger()
    if not any(isinstance(f, NoRetracing) for f in logger.filters):
        logger.addFilter(NoRetracing())


@dataclass
class HeldOut:
    """Out-of-fold predictions of a k-fold evaluation: every image scored by the head of
    the fold that left its recording out."""

    indices: np.ndarray
    probabilities: np.ndarray
    fold_accuracies: list
    k: int
    recordings: int

    def line(self, accuracy: float) -> str:
        spread = (f"; folds {min(self.fold_accuracies) * 100:.0f}-{max(self.fold_accuracies) * 100:.0f}%"
                  if self.fold_accuracies else "")
        return (f"Cross-validation accuracy = {accuracy * 100:.1f}% (N={len(self.indices)} of "
                f"{self.recordings} recordings, grouped {self.k}-fold: each tested once by a head "
                f"that never heard it{spread})")


def kfold_evaluation(settings: RetrainSettings, prepared: Prepared, plan: SplitPlan, seed: int,
                     partition: Callable[[int], object], log: Callable[[str], None] = print,
                     observer: Optional[RunObserver] = None) -> HeldOut:
    """One head per fold of ``plan``, trained as the exported one will be (same settings and
    seed) but without TensorBoard runs or exports; their predictions on the left-out
    recordings."""
    observer = observer or RunObserver()
    quiet = dataclasses.replace(settings, summaries_dir=None, print_misclassified_test_images=False,
                                intermediate_store_frequency=0, test_batch_size=-1)
    quiet_tensorflow_retracing()

    def fold_log(line: str) -> None:  # a fold's step lines would bury the story
        if ": Step " not in line and "Final test accuracy" not in line \
                and not line.startswith("Features standardised"):
            log(line)

    indices, probabilities, accuracies = [], [], []
    observer.stage("evaluating", plan.k)
    for j, split in enumerate(plan.folds):
        outcome = train_and_evaluate(quiet, prepared, split, seed, f"fold{j + 1}", partition, fold_log)
        log(f"{_stamp()}: Fold {j + 1}/{plan.k}: accuracy = {outcome.test_accuracy * 100:.1f}% "
            f"(N={outcome.test_count}, {split.describe()})")
        indices.append(np.asarray(outcome.test_indices, int))
        probabilities.append(outcome.test_probabilities)
        accuracies.append(outcome.test_accuracy)
        observer.advance(j + 1, plan.k)
    recordings = len({r.group for r in prepared.images.records})
    return HeldOut(np.concatenate(indices), np.concatenate(probabilities), accuracies, plan.k,
                   recordings)


# ------------------------------------------------------------------ export

def sidecar_for(prepared: Prepared, test_accuracy: float, final_tensor_name: str,
                extra: Optional[dict] = None) -> dict:
    """The exported model's sidecar; ``extra``: keys a run adds (``evaluation``: how
    ``test_accuracy`` was measured; ``head``: what the logistic head's inner CV chose;
    ``module_choice``: what ``--tfhub_module auto`` chose)."""
    spec = prepared.backbone.input_spec
    sidecar = {
        "spectrogram": prepared.spectrogram_settings.to_dict()
        if prepared.spectrogram_settings is not None else None,
        "module": prepared.backbone.description(),
        "test_accuracy": None if np.isnan(test_accuracy) else float(test_accuracy),
        "input_tensor_name": INPUT_TENSOR_NAME,
        "final_tensor_name": final_tensor_name,
    }
    if spec.kind == "image":
        sidecar["input"] = {"height": spec.height, "width": spec.width,
                            "input_mean": 0.0, "input_std": 255.0}
    sidecar.update(extra or {})
    return sidecar


def export(settings: RetrainSettings, prepared: Prepared, head: ClassificationHead,
           test_accuracy: float, output_graph: Optional[str] = None,
           with_other_outputs: bool = True, extra_sidecar: Optional[dict] = None) -> dict[str, str]:
    """Write the requested artifacts with ``soundretrain.export.export_model``."""
    try:
        from soundretrain.export import ExportError, export_model
    except ImportError as err:  # the label package is missing: keep at least the labels
        if settings.output_labels and with_other_outputs:
            _write_text(settings.output_labels, "".join(f"{l}\n" for l in prepared.images.labels))
            return {"output_labels": settings.output_labels}
        raise RetrainError(f"cannot export the model: soundretrain.export is unavailable ({err})") from None
    for path in (output_graph, settings.output_labels if with_other_outputs else None,
                 settings.output_tflite if with_other_outputs else None,
                 settings.output_audio_tflite if with_other_outputs else None):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        return export_model(
            prepared.backbone, head, list(prepared.images.labels),
            sidecar_for(prepared, test_accuracy, settings.final_tensor_name, extra_sidecar),
            output_graph=output_graph,
            output_labels=settings.output_labels if with_other_outputs else None,
            saved_model_dir=settings.saved_model_dir if with_other_outputs else None,
            output_tflite=settings.output_tflite if with_other_outputs else None,
            tflite_quantization=settings.tflite_quantization,
            audio_saved_model_dir=settings.audio_saved_model_dir if with_other_outputs else None,
            output_audio_tflite=settings.output_audio_tflite if with_other_outputs else None,
            output_tfjs=settings.output_tfjs if with_other_outputs else None,
            input_tensor_name=INPUT_TENSOR_NAME,
            final_tensor_name=settings.final_tensor_name,
            # An intermediate graph joins the others in their folder; the final export's
            # outputs, when they share a folder, replace it whole (one consistent set).
            whole_folder=with_other_outputs and settings.whole_folder_export)
    except ExportError as err:
        raise RetrainError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - TensorFlow reports a full disk as an OpError
        from retrain.summaries import os_error_of

        os_error = None if isinstance(err, OSError) else os_error_of(err)
        if os_error is None:
            raise
        # TF names its staging file (".sm.1a2b3c4d.tmp/variables/..."): name the artifact.
        failing = os_error.filename or ""
        targets = [output_graph, settings.saved_model_dir, settings.output_tflite, settings.output_labels]
        targets += [os.path.dirname(os.path.abspath(t)) for t in targets if t]  # a model folder's staging
        target = next((t for t in targets if t and f"{os.sep}.{os.path.basename(t)}." in failing), failing)
        raise OSError(os_error.errno, f"{os_error.strerror} (exporting the model)", target) from None


def check_output_targets(settings: RetrainSettings) -> None:
    """Refuse, before any work, outputs that could only fail at the end (a folder named as
    the graph) or that would destroy something (a --saved_model_dir that is not one)."""
    try:
        from soundretrain.atomic_files import check_file_target, check_folder_target
    except ImportError:
        return
    for path in (settings.output_graph, settings.output_labels, settings.output_tflite,
                 settings.output_audio_tflite):
        if path:
            check_file_target(path)
    for folder in (settings.saved_model_dir, settings.audio_saved_model_dir, settings.output_tfjs):
        if folder:
            check_folder_target(folder)
    run_folder = os.path.join(settings.summaries_dir, "run") if settings.summaries_dir else None
    for path in (settings.output_graph, settings.output_labels, settings.output_tflite,
                 settings.saved_model_dir, settings.checkpoint_path,
                 settings.output_audio_tflite, settings.audio_saved_model_dir, settings.output_tfjs,
                 run_folder):
        if path:  # the nearest existing folder above it must be a folder, not a file
            parent = os.path.dirname(os.path.abspath(path))
            while not os.path.lexists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent):
                raise NotADirectoryError(errno.ENOTDIR, "is a file, so nothing can be written "
                                         f"under it ({path})", parent)
            check_writable(parent, path)


def check_writable(folder: str, target: str) -> None:
    """Create and remove a temp file in ``folder``: a read-only folder or filesystem fails
    here, in a second, not after the training."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=f".{os.path.basename(target) or 'probe'}.", suffix=".tmp",
                                     dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OSError(err.errno, f"{err.strerror}: cannot write {target} there (checked before "
                      "training)", folder) from None


def _write_text(path: str, text: str) -> None:
    from soundretrain import atomic_files

    atomic_files.write_text(path, text)


def save_checkpoint(path: str, head: ClassificationHead, backbone: Optional[Backbone] = None) -> None:
    """Write the head's ``tf.train.Checkpoint`` at ``path`` (a prefix), with the tuned blocks
    of a fine-tuned ``backbone``. Runs sharing one path
    write one after another (a lock on its folder): TF's writer stages both into the same
    ``<path>_temp`` folder, so two at once failed in ``MergeV2Checkpoints``."""
    import tensorflow as tf

    from retrain.summaries import os_error_of
    from soundretrain import atomic_files

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tail = getattr(getattr(backbone, "split", None), "tail", None)  # fine-tuned blocks
    parts = {"head": head} if tail is None else {"head": head, "fine_tuned_tail": tail}
    with atomic_files.exclusive_folders(folder):
        staging = os.path.abspath(path) + "_temp"  # a killed writer's leftover
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
        try:
            tf.train.Checkpoint(**parts).write(path)
        except tf.errors.OpError as err:
            shutil.rmtree(staging, ignore_errors=True)
            os_error = os_error_of(err)
            if os_error is None:
                raise
            raise OSError(os_error.errno, f"{os_error.strerror} (writing the checkpoint)",
                          os_error.filename or path) from None


def check_exports(settings: RetrainSettings, backbone: Backbone, spectrogram_settings) -> None:
    """Refuse, before the bottlenecks are computed, what this module cannot do: fine-tune
    (--fine_tune_blocks, when it cannot be cut there); export an --output_graph asked for
    (not retrain.py's default path) or intermediate graphs when it cannot be frozen into one
    graph; --audio_saved_model_dir / --output_audio_tflite when it cannot take sound inside
    one graph."""
    check_fine_tune(settings, backbone, spectrogram_settings)
    if not can_freeze(backbone):
        if settings.output_graph and settings.output_graph_explicit:
            raise RetrainError(f"module {backbone.name} cannot be frozen into one graph "
                               "(--output_graph); use --saved_model_dir or --output_tflite")
        if settings.intermediate_store_frequency > 0:
            raise RetrainError(f"module {backbone.name} cannot be frozen into one graph, so "
                               "--intermediate_store_frequency has nothing to write; drop it")
    if settings.audio_saved_model_dir or settings.output_audio_tflite:
        from soundretrain.audio_export import AudioExportError, check_audio_export

        quantization = settings.tflite_quantization if settings.output_audio_tflite else "none"
        spectrogram = spectrogram_settings.to_dict() if spectrogram_settings is not None else None
        try:
            check_audio_export(backbone, {"spectrogram": spectrogram}, quantization or "none")
        except AudioExportError as err:
            raise RetrainError(str(err)) from None
    if settings.output_tfjs:
        from soundretrain.audio_export import AudioExportError
        from soundretrain.tfjs_export import check_tfjs_export

        spectrogram = spectrogram_settings.to_dict() if spectrogram_settings is not None else None
        try:
            check_tfjs_export(backbone, {"spectrogram": spectrogram})
        except AudioExportError as err:
            raise RetrainError(f"--output_tfjs: {err}") from None


def no_validation_for_autotune(settings: RetrainSettings, prepared: Prepared, split: Split) -> str:
    """Why --autotune has no validation images although it asked for some, and what works."""
    records = prepared.images.records
    recordings = len({records[i].group for i in split.train})
    if settings.validation_folds:
        asked = f"--validation_folds {','.join(map(str, settings.validation_folds))} hold no images"
    else:
        asked = (f"--validation_percentage {settings.validation_percentage:g} picked none of the "
                 f"{recordings} training recording(s) (whole recordings go to one side, chosen by a "
                 "hash of their names")
        asked += f"; each is about {100 / recordings:.0f} %)" if recordings else ")"
    return (f"--autotune scores head settings on validation images, or by grouped inner CV "
            f"when every class has two training recordings, but this split has neither: "
            f"{asked}; add recordings, raise --validation_percentage, name --validation_folds, "
            "or drop --autotune")


def check_fine_tune(settings: RetrainSettings, backbone: Backbone,
                    spectrogram_settings=None) -> None:
    """Refuse --fine_tune_blocks for a module that cannot be cut there, before the
    bottlenecks and the TensorBoard run (it used to come after both)."""
    if settings.fine_tune.enabled:
        from retrain.fine_tune import plan_cuts

        # the same cuts the fine-tuning makes after the head (cheap: no activations yet)
        plan_cuts(backbone, settings.fine_tune.blocks, spectrogram_settings)


def can_freeze(backbone: Backbone) -> bool:
    """Whether backbone + head fit in one frozen image-in graph."""
    return backbone.input_spec.kind == "image" and backbone.tf_callable() is not None


def node_names_line(prepared: Prepared, final_tensor_name: str) -> str:
    spec = prepared.backbone.input_spec
    if can_freeze(prepared.backbone):
        what = (f"float32 [None, {spec.height}, {spec.width}, 3], RGB scaled to [0, 1]: "
                "label_image --input_mean 0 --input_std 255")
    else:
        what = f"float32 [None, {prepared.backbone.feature_size}] features of {prepared.backbone.name}"
    return f"Input node: {INPUT_TENSOR_NAME} ({what}); output node: {final_tensor_name}"


# ------------------------------------------------------------------ the whole run

@dataclass
class RetrainResult:
    test_accuracy: float  # held-out test, or the k-fold evaluation's out-of-fold accuracy
    test_count: int
    run_dir: Optional[str]
    written: dict
    labels: tuple[str, ...]
    seed: int
    plan: Optional[SplitPlan] = None
    evaluation: Optional[dict] = None  # what the sidecar says: method, reason, k, accuracy
    evaluated_indices: Optional[np.ndarray] = None  # images behind test_accuracy
    evaluated_probabilities: Optional[np.ndarray] = None  # their predictions
    images: Optional[ImageSet] = None
    open_set: Optional[dict] = None  # the sidecar's open-set threshold block


INTERRUPTED = {
    "bottlenecks": "interrupted; bottlenecks computed so far are cached, run again to resume",
    "training": "interrupted during training; nothing was exported (the bottlenecks are cached, "
                "so a new run starts training at once)",
    "export": "interrupted during the export: each artifact is either the old or the new one, "
              "never half-written, but the set may mix two runs (label_image refuses such a "
              "mix); run again to export a consistent set",
    "checkpoint": "interrupted while writing the checkpoint; the model was exported",
}


def retrain(settings: RetrainSettings, seed: Optional[int] = None,
            log: Callable[[str], None] = print, images: Optional[ImageSet] = None,
            plan: Optional[SplitPlan] = None,
            observer: Optional[RunObserver] = None) -> RetrainResult:
    """One training run: the linear story of this module's docstring. ``images`` and
    ``plan``: listed and planned (and their table printed) by the caller already."""
    problems = settings.problems()
    if problems:
        raise RetrainError(problems[0])
    check_output_targets(settings)
    if images is None or plan is None:
        images, plan = plan_run(settings, log, images)
    if seed is None:
        seed = draw_seed()
        log(f"Random seed: {seed} (pass --random_seed={seed} to repeat this run)")
    # One seed for everything random, the augmented copies included (as for the head,
    # which takes ``seed`` below), so the printed seed repeats the run exactly.
    settings = dataclasses.replace(settings, augment=dataclasses.replace(settings.augment, seed=seed))
    observer = observer or RunObserver()
    phase = "bottlenecks"
    try:
        def check_backbone(backbone: Backbone, spectrogram) -> None:
            nonlocal settings
            try:
                check_exports(settings, backbone, spectrogram)
            except RetrainError as err:
                if not settings.audio_export_fallback or not (settings.output_audio_tflite
                                                               or settings.audio_saved_model_dir):
                    raise
                log(f"Note: no audio-in model ({err}); writing {settings.audio_export_fallback}, "
                    "which label_image feeds with the module's features"
                    + (" (and no TF.js model: it takes sound too)" if settings.output_tfjs else ""))
                settings = dataclasses.replace(settings, output_audio_tflite=None,
                                               audio_saved_model_dir=None, output_tfjs=None,
                                               output_tflite=settings.audio_export_fallback)
                check_exports(settings, backbone, spectrogram)

        prepared = prepare(settings, log, images=images, observer=observer,
                           check_backbone=check_backbone)
        if settings.output_graph and not can_freeze(prepared.backbone):
            log(f"Note: no frozen graph for module {prepared.backbone.name} (it is not an image "
                "network in TensorFlow); export with --saved_model_dir or --output_tflite")
            settings = dataclasses.replace(settings, output_graph=None)
        tag = settings.run_tag or _default_tag(settings, prepared)
        partition = split_partition(settings, prepared)

        def store_intermediate(step: int, head: ClassificationHead) -> None:
            folder = settings.intermediate_output_graphs_dir or "/tmp/intermediate_graph/"
            path = os.path.join(folder, f"intermediate_{step}.pb")
            log(f"Save intermediate result to : {path}")
            export(settings, prepared, head, float("nan"), output_graph=path, with_other_outputs=False)

        phase = "training"
        held_out = None
        if plan.method == "kfold":
            log(f"Evaluating by {plan.reason}")
            held_out = kfold_evaluation(settings, prepared, plan, seed, partition, log, observer)
            log(f"Training the exported model on every recording ({plan.final.describe()})")
        observer.stage("training", settings.how_many_training_steps)
        outcome = train_and_evaluate(settings, prepared, plan.final, seed, tag, partition, log,
                                     store_intermediate if settings.intermediate_store_frequency > 0 else None,
                                     held_out=held_out, observer=observer)
        evaluation = evaluation_summary(plan, outcome)
        from retrain.calibration import calibrate

        # Still the frozen network: calibration's inner runs fine-tune as the final run did.
        open_set = calibrate(settings, prepared, plan, outcome, held_out, seed, partition, log)
        # The module trained: tuned (--fine_tune_blocks) or chosen (--tfhub_module auto).
        prepared = dataclasses.replace(prepared, backbone=outcome.backbone, features=outcome.features,
                                       module_candidates=())
        phase = "export"
        observer.stage("export")
        extra = {"evaluation": evaluation}
        if open_set is not None:
            extra["open_set"] = open_set
        if outcome.head_report:
            extra["head"] = outcome.head_report
        if outcome.module_report:
            extra["module_choice"] = outcome.module_report
        written = export(settings, prepared, outcome.head, outcome.test_accuracy,
                         output_graph=settings.output_graph, extra_sidecar=extra)
        for key, path in written.items():
            if not key.endswith("_sidecar"):
                log(f"Wrote {key}: {path}")
        log(node_names_line(prepared, settings.final_tensor_name))
        phase = "checkpoint"
        checkpoint = checkpoint_path(settings, outcome.run_dir)
        if checkpoint:  # after the export: a checkpoint that cannot be written costs no model
            save_checkpoint(checkpoint, outcome.head, prepared.backbone)
            log(f"Wrote checkpoint: {checkpoint}")
    except KeyboardInterrupt as err:
        if isinstance(err, RetrainInterrupted):
            raise
        raise RetrainInterrupted(INTERRUPTED[phase]) from None
    return RetrainResult(outcome.test_accuracy, outcome.test_count, outcome.run_dir, written,
                         prepared.images.labels, seed, plan, evaluation,
                         np.asarray(outcome.test_indices, int), outcome.test_probabilities,
                         prepared.images, open_set)


def evaluation_summary(plan: SplitPlan, outcome: TrainOutcome) -> dict:
    """How the model was evaluated, for the sidecar and reports."""
    accuracy = None if np.isnan(outcome.test_accuracy) else float(outcome.test_accuracy)
    summary = {"method": plan.method, "reason": plan.reason, "accuracy": accuracy,
               "count": int(outcome.test_count), "split": plan.split_name}
    if plan.method == "kfold":
        summary["k"] = plan.k
    return summary


def checkpoint_path(settings: RetrainSettings, run_dir: Optional[str]) -> Optional[str]:
    """The explicit --checkpoint_path, else (by default) ``checkpoint/head`` in this run's
    TensorBoard folder: retrain.py's shared /tmp/_retrain_checkpoint made concurrent runs
    overwrite each other's checkpoint."""
    if settings.checkpoint_path:
        return settings.checkpoint_path
    if settings.checkpoint_in_run_dir and run_dir:
        return os.path.join(run_dir, "checkpoint", "head")
    return None


def _default_tag(settings: RetrainSettings, prepared: Prepared) -> str:
    # Every module: "aisfx" stood for aisfx,soundnet,efficientnet_lite0 and for aisfx alone.
    module = "+".join(part.strip()[:32] for part in prepared.backbone.name.split(","))
    if settings.split == "folds":
        where = "test" + "-".join(str(f) for f in settings.test_folds)
    else:
        where = settings.split
    return f"{module}-{where}"


__all__ = ["RetrainSettings", "retrain", "prepare", "train_and_evaluate", "RetrainError",
           "ModuleError"]
