"""Fine-tuning that keeps the cache: ``--fine_tune_blocks K``.

The backbone is cut before its last K blocks (:meth:`Backbone.split`). The frozen trunk
runs once per image and its activation map is cached on disk like a bottleneck
(content-addressed by the image's SHA-1, written atomically, so a killed run resumes;
float16, which changes the features by about 1e-4). Training then runs only the tail
(the K blocks, the last convolution and the pooling) and the head, on the cached maps:

1. the head is trained on the pooled features as always (the pretrained tail's output),
   so the tail's first gradients come from a sensible classifier, not a random one
   (linear probing, then fine-tuning, as Kumar et al. 2022 advise);
2. tail and head are trained together with Adam on batches of cached maps, augmented
   on the fly: the maps keep the image's layout (rows: frequency, columns: time), so
   they are rolled along time, masked in time and frequency bands (filled with the
   trunk's response to a silent image), and blended with another clip of the same class;
3. the tuned tail gives every image new features, on which the head (trained with it)
   is evaluated. The exported model's backbone is the trunk plus the tuned tail
   (:class:`FineTunedBackbone`), so the ``.pb``, SavedModel and TFLite all hold the
   tuned blocks. (A fresh head trained on the tuned features afterwards scored about 4
   points lower on validation: the tuned features of the training clips separate too
   easily, and the head trained with the tail on augmented maps generalises better.)

``--fine_tune_blocks all`` tunes the whole network from the images (no cache: the images
are the tail's input), for users with a GPU.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import numpy as np

from retrain.augment import AugmentSettings
from retrain.bottlenecks import BottleneckStore, InputMaker, Job, read_image, run_jobs
from retrain.errors import RetrainError
from retrain.images import ImageRecord
from retrain.settings import FineTuneSettings, HeadSettings
from soundretrain.backbones.registry import ModuleError
from soundretrain.backbones.split import BackboneSplit

ACTIVATION_DTYPE = np.float16  # 2 bytes a value; features move by ~1e-4 (docs/retrain.md)
PREDICT_BATCH = 64


# ------------------------------------------------------------------ activations

class _Trunk:
    """The frozen trunk as the bottleneck stage sees a module: ``name`` and ``compute``."""

    def __init__(self, split: BackboneSplit) -> None:
        self.split = split
        self.name = split.cache_name

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        maps = self.split.compute_trunk(inputs)
        if not np.all(np.abs(maps) < np.finfo(ACTIVATION_DTYPE).max):
            raise RetrainError(f"{self.name}: activations overflow {np.dtype(ACTIVATION_DTYPE).name}; "
                               "fine-tune more blocks or fewer")
        return maps


def compute_activations(split: BackboneSplit, records: Sequence[ImageRecord], bottleneck_dir: str,
                        batch_size: int = 32, progress: bool = True) -> tuple[np.ndarray, int]:
    """The tail's input for every record: cached trunk activations ``[N, h, w, c]``
    (float16), or for full fine-tuning the images themselves (uint8, not cached: the
    image files are their own cache). Returns them and how many were computed."""
    maker = InputMaker(split.backbone)
    spec = split.backbone.input_spec
    if not split.cached:
        images = np.zeros((len(records),) + split.activation_shape, np.uint8)
        for i, r in enumerate(records):
            raw = read_image(r.path)
            if raw.shape[:2] != (spec.height, spec.width):
                raw = np.rint(maker.finish(raw) * 255).astype(np.uint8)
            images[i] = raw
        return images, 0
    store = BottleneckStore(bottleneck_dir, split.cache_name, split.backbone.feature_size,
                            shape=split.activation_shape, dtype=ACTIVATION_DTYPE)
    jobs = [Job(maker.key(r), lambda r=r: maker.finish(maker.raw(r))) for r in records]
    return run_jobs(_Trunk(split), store, jobs, batch_size, progress,
                    desc=f"activations {split.cache_name}")


def silence_colour(records: Sequence[ImageRecord], limit: int = 8,
                   spectrogram_settings=None) -> np.ndarray:
    """The quietest colour of the spectrograms (the colormap's bottom): the darkest pixel
    of a few images, as the image augmentation paints its masks. Three-channel images
    (``spectrograms --channels``) take the settings' colour of silence instead: there a
    derivative's silence is mid-grey, not the darkest value."""
    if spectrogram_settings is not None and not spectrogram_settings.coloured:
        from soundretrain.render import silence_pixel

        return silence_pixel(spectrogram_settings)
    best, best_sum = np.zeros(3, np.uint8), None
    for r in records[:limit]:
        flat = read_image(r.path).reshape(-1, 3)
        k = int(np.argmin(flat.astype(np.int32).sum(axis=1)))
        if best_sum is None or int(flat[k].astype(np.int32).sum()) < best_sum:
            best, best_sum = flat[k], int(flat[k].astype(np.int32).sum())
    return best


def silence_activation(split: BackboneSplit, colour: np.ndarray) -> np.ndarray:
    """The tail's input for a silent image (every pixel the quietest colour): what a
    masked band of a map is filled with, as masked image bands are painted silent."""
    spec = split.backbone.input_spec
    image = np.broadcast_to(np.asarray(colour, np.float32) / 255.0,
                            (1, spec.height, spec.width, 3)).copy()
    if not split.cached:
        return np.asarray(colour, np.float32)[None, None, :] / 255.0 * np.ones(
            split.activation_shape, np.float32)
    return split.compute_trunk(image)[0].astype(np.float32)


# ------------------------------------------------------------------ augmentation on maps

def augment_maps(x, partners, seed, settings: AugmentSettings, silence):
    """Augment a batch of maps ``[B, h, w, c]`` (float32; columns are time) in TF:
    blend with the same-class ``partners`` (half of the time, by default), roll along
    time, then time and frequency masks filled with ``silence`` ``[h, w, c]``. The
    recipe of :mod:`retrain.augment`, on activations instead of pixels."""
    import tensorflow as tf

    b = tf.shape(x)[0]
    h, w = int(x.shape[1]), int(x.shape[2])

    def uniform(k, shape, lo=0.0, hi=1.0):
        return tf.random.stateless_uniform(shape, seed + k, lo, hi)

    def integers(k, lo, hi):  # [lo, hi) per example; hi may be a tensor
        return tf.cast(tf.floor(uniform(k, [b]) * tf.cast(hi - lo, tf.float32)), tf.int32) + lo

    if settings.mix_probability > 0:
        mix = tf.cast(uniform(1, [b]) < settings.mix_probability, tf.float32)
        weight = mix * uniform(2, [b], 0.1, settings.max_mix_weight)
        weight = weight[:, None, None, None]
        x = (1.0 - weight) * x + weight * partners
    if settings.time_shift:
        shift = integers(3, 0, w)
        columns = tf.math.floormod(tf.range(w)[None, :] - shift[:, None], w)
        x = tf.gather(x, columns, axis=2, batch_dims=1)

    def band_mask(k, count, length):
        mask = tf.zeros([b, length], tf.bool)
        most = max(1, int(length * settings.max_mask_fraction))
        positions = tf.range(length)[None, :]
        for m in range(count):
            size = integers(k + 2 * m, 0, most + 1)
            start = integers(k + 2 * m + 1, 0, length - size + 1)
            mask |= (positions >= start[:, None]) & (positions < (start + size)[:, None])
        return mask

    if settings.time_masks or settings.freq_masks:
        masked = tf.zeros([b, h, w], tf.bool)
        if settings.time_masks:
            masked |= band_mask(10, settings.time_masks, w)[:, None, :]
        if settings.freq_masks:
            masked |= band_mask(30, settings.freq_masks, h)[:, :, None]
        x = tf.where(masked[..., None], tf.cast(silence, x.dtype)[None], x)
    return x


# ------------------------------------------------------------------ training

class FineTuner:
    """Trains ``split.tail`` and ``head`` together on in-memory maps ``x`` (float16
    activations or uint8 images) with labels ``y``; Adam with decoupled weight decay."""

    def __init__(self, split: BackboneSplit, head, x: np.ndarray, y: Sequence[int],
                 settings: FineTuneSettings, head_settings: HeadSettings,
                 augment: Optional[AugmentSettings], silence: np.ndarray) -> None:
        import tensorflow as tf

        self.split, self.head, self.settings = split, head, settings
        self.head_settings = head_settings
        self.augment = augment
        self.images = np.asarray(x).dtype == np.uint8
        # float16 is for the disk and the memory of all maps; TF computes in float32
        # (oneDNN has no half-precision kernels on most CPUs).
        x = x if self.images else np.asarray(x, np.float32)
        y = np.asarray(y, np.int32)
        counts = np.bincount(y, minlength=head.num_classes)
        self._x = tf.constant(x)
        self._y = tf.constant(y)
        self._order = tf.constant(np.argsort(y, kind="stable").astype(np.int32))
        self._counts = tf.constant(counts.astype(np.int32))
        self._offsets = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32))
        self._silence = tf.constant(silence.astype(np.float32))
        self.variables = list(split.tail.trainable_variables) + list(head.trainable_variables)
        self._tail_count = len(split.tail.trainable_variables)
        self._m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self._v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._train_step = tf.function(self._step)
        # One trace for every batch size (the last batch of a set is smaller).
        signature = [tf.TensorSpec((None,) + tuple(np.asarray(x).shape[1:]), self._x.dtype)]
        self._predict = tf.function(self._probabilities, input_signature=signature)
        self._features = tf.function(lambda m: split.tail(self._as_float(m)),
                                     input_signature=signature)

    def _as_float(self, x):
        import tensorflow as tf

        return tf.cast(x, tf.float32) / 255.0 if self.images else x

    def _batches(self, x: np.ndarray):
        import tensorflow as tf

        for s in range(0, len(x), PREDICT_BATCH):
            batch = x[s:s + PREDICT_BATCH]
            yield tf.constant(batch if self.images else batch.astype(np.float32))

    def _step(self):
        import tensorflow as tf

        s, hs = self.settings, self.head_settings
        step = self.step.assign_add(1)
        seed = tf.stack([tf.cast(hs.seed, tf.int64), step])
        n = tf.shape(self._x)[0]
        idx = tf.random.stateless_uniform([s.batch_size], seed, 0, n, dtype=tf.int32)
        yb = tf.gather(self._y, idx)
        xb = self._as_float(tf.gather(self._x, idx))
        if self.augment is not None:
            # A partner of the same class for every example (used when it is mixed).
            u = tf.random.stateless_uniform([s.batch_size], seed + 101)
            count = tf.gather(self._counts, yb)
            pos = tf.minimum(tf.cast(u * tf.cast(count, tf.float32), tf.int32), count - 1)
            partners = tf.gather(self._order, tf.gather(self._offsets, yb) + pos)
            xb = augment_maps(xb, self._as_float(tf.gather(self._x, partners)), seed + 7,
                              self.augment, self._silence)
        targets = tf.one_hot(yb, self.head.num_classes)
        if s.mixup > 0:
            # mixup (Zhang et al. 2018) across classes, the labels mixed alike; the
            # example keeps the larger share, so its label stays the argmax.
            g1 = tf.random.stateless_gamma([s.batch_size], seed + 201, s.mixup)
            g2 = tf.random.stateless_gamma([s.batch_size], seed + 202, s.mixup)
            lam = g1 / tf.maximum(g1 + g2, 1e-12)
            lam = tf.maximum(lam, 1.0 - lam)
            perm = tf.argsort(tf.random.stateless_uniform([s.batch_size], seed + 203))
            xb = lam[:, None, None, None] * xb + (1.0 - lam[:, None, None, None]) * tf.gather(xb, perm)
            targets = lam[:, None] * targets + (1.0 - lam[:, None]) * tf.gather(targets, perm)
        if hs.label_smoothing:
            targets = targets * (1 - hs.label_smoothing) + hs.label_smoothing / self.head.num_classes
        with tf.GradientTape() as tape:
            features = self.split.tail(xb)
            logits = self.head.logits(features, training=True,
                                      dropout_seed=tf.stack([step, tf.cast(hs.seed, tf.int64) + 7]))
            xent = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
        grads = tape.gradient(xent, self.variables)
        self._adam(grads, tf.cast(step, tf.float32))
        accuracy = tf.reduce_mean(tf.cast(
            tf.equal(tf.argmax(logits, 1, output_type=tf.int32), yb), tf.float32))
        return accuracy, xent

    def learning_rate(self, t):
        """Linear warm-up over the first steps, then cosine decay to zero: large early
        updates on pretrained blocks with a cold optimizer state destroy features."""
        import tensorflow as tf

        s = self.settings
        t = tf.cast(t, tf.float32)
        warm = tf.minimum(1.0, t / float(max(1, s.warmup_steps)))
        progress = tf.minimum(1.0, t / float(max(1, s.steps)))
        return s.learning_rate * warm * 0.5 * (1.0 + tf.cos(np.pi * progress))

    def _adam(self, grads, t) -> None:
        import tensorflow as tf

        s = self.settings
        b1, b2, eps = 0.9, 0.999, 1e-7
        lr = self.learning_rate(t)
        corrected = lr * tf.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for k, (v, g, m, w) in enumerate(zip(self.variables, grads, self._m, self._v)):
            if g is None:
                continue
            m.assign(b1 * m + (1 - b1) * g)
            w.assign(b2 * w + (1 - b2) * tf.square(g))
            update = corrected * m / (tf.sqrt(w) + eps)
            if s.weight_decay and k < self._tail_count:
                update += lr * s.weight_decay * v
            v.assign_sub(update)

    def finite(self, cross_entropy: float) -> bool:
        return bool(np.isfinite(cross_entropy)) and all(
            np.all(np.isfinite(v.numpy())) for v in self.variables)

    def train(self, steps: int) -> tuple[float, float]:
        acc = xent = float("nan")
        for _ in range(int(steps)):
            acc, xent = self._train_step()
        return float(acc), float(xent)

    def _probabilities(self, x):
        return self.head(self.split.tail(self._as_float(x)))

    def features(self, x: np.ndarray) -> np.ndarray:
        """The tail's features for a numpy array of maps (or images)."""
        out = [self._features(batch).numpy() for batch in self._batches(x)]
        return np.concatenate(out) if out else np.zeros((0, self.head.feature_size), np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.head.num_classes), np.float32)
        return np.concatenate([self._predict(batch).numpy() for batch in self._batches(x)])


@dataclasses.dataclass
class FineTuneOutcome:
    backbone: object  # FineTunedBackbone
    features: np.ndarray  # every image's features through the tuned tail
    validation_accuracy: Optional[float]
    seconds: float
    activations_computed: int


def fine_tune(settings, prepared, split, head, seed: int, log: Callable[[str], None] = print,
              summaries=None) -> FineTuneOutcome:
    """Cut the backbone, cache the trunk's maps, and train the tail together with
    ``head`` (trained already on the pretrained features, on ``split.train``; it goes on
    training here). Returns the tuned backbone and every image's new features."""
    from retrain.head import accuracy_and_xent

    ft = settings.fine_tune
    start = time.perf_counter()
    try:
        cut = prepared.backbone.split(ft.blocks)
    except ModuleError as err:
        raise RetrainError(str(err)) from None
    records = prepared.images.records
    maps, computed = compute_activations(cut, records, settings.bottleneck_dir,
                                         settings.bottleneck_batch_size, settings.progress)
    log(f"Fine-tuning {cut.blocks} block(s) of {prepared.backbone.name} from "
        f"{'cached activations' if cut.cached else 'the images'} {list(cut.activation_shape)} "
        f"({computed} computed, {maps.nbytes / 1e6:.0f} MB in memory)")
    train = list(split.train)
    validation = np.asarray(split.validation, int)
    augment = dataclasses.replace(settings.augment, copies=0, seed=seed) if ft.augment else None
    silence = silence_activation(cut, silence_colour([records[i] for i in train],
                                                     spectrogram_settings=prepared.spectrogram_settings))
    tuner = FineTuner(cut, head, maps[train], prepared.class_ids[train], ft,
                      dataclasses.replace(settings.head, seed=seed), augment, silence)
    val_acc = None
    done = 0
    # --fine_tune_keep_best: as --early_stopping for the head, the tail and head of the best
    # validation score are kept, the head alone before any fine-tuning included.
    stopper = None
    if ft.keep_best and len(validation):
        from retrain.head import EarlyStopping

        stopper = EarlyStopping(tuner.variables, patience=0)
        stopper.update(0, *accuracy_and_xent(tuner.predict(maps[validation]),
                                             prepared.class_ids[validation]))
    from tqdm import tqdm

    with tqdm(total=ft.steps, desc="fine-tuning", unit="step", disable=not settings.progress,
              leave=False) as bar:
        while done < ft.steps:
            n = min(ft.eval_interval, ft.steps - done)
            train_acc, xent = tuner.train(n)
            done += n
            bar.update(n)
            if not tuner.finite(xent):  # every later step, and the export, would be NaN too
                raise RetrainError(
                    f"fine-tuning diverged at step {done}: the cross entropy is {xent} and the "
                    f"weights are no longer finite (--fine_tune_learning_rate {ft.learning_rate:g} "
                    "is too high?); nothing was exported")
            line = (f"Fine-tuning step {done}/{ft.steps}: train accuracy = {train_acc * 100:.1f}%, "
                    f"cross entropy = {xent:.3f}")
            val_xent = None
            if len(validation):
                val_acc, val_xent = accuracy_and_xent(tuner.predict(maps[validation]),
                                                      prepared.class_ids[validation])
                line += f", validation accuracy = {val_acc * 100:.1f}% (N={len(validation)})"
                if stopper is not None:
                    stopper.update(done, val_acc, val_xent)
            log(f"{_stamp()}: {line}")
            if summaries is not None:
                _write_scalars(summaries, done, train_acc, xent, float(tuner.learning_rate(done)),
                               val_acc if len(validation) else None, val_xent)
    if stopper is not None and stopper.restore():
        val_acc = stopper.best_accuracy
        log(f"{_stamp()}: Fine-tuning: kept the tail and head of step {stopper.best_step} "
            f"(validation accuracy = {val_acc * 100:.1f}%, cross entropy = "
            f"{stopper.best_cross_entropy:f}){'; fine-tuning did not help' if stopper.best_step == 0 else ''}")
    features = tuner.features(maps)  # every image through the tuned tail
    seconds = time.perf_counter() - start
    log(f"Fine-tuned in {seconds:.0f} s")
    return FineTuneOutcome(cut.fine_tuned(), features, val_acc, seconds, computed)


def _write_scalars(summaries, step, train_acc, xent, learning_rate, val_acc, val_xent) -> None:
    """Fine-tuning's curves in the run's TensorBoard folder, beside the head's."""
    import tensorflow as tf

    with summaries.train.as_default(step=step):
        tf.summary.scalar("fine_tune/accuracy", train_acc)
        tf.summary.scalar("fine_tune/cross_entropy", xent)
        tf.summary.scalar("fine_tune/learning_rate", learning_rate)
    if val_acc is not None:
        with summaries.validation.as_default(step=step):
            tf.summary.scalar("fine_tune/accuracy", val_acc)
            tf.summary.scalar("fine_tune/cross_entropy", val_xent)


def _stamp() -> str:
    import datetime

    return str(datetime.datetime.now())
