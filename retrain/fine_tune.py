"""Fine-tuning that keeps the cache: ``--fine_tune_blocks K``.

The backbone is cut before its last K blocks (:meth:`Backbone.split`). The frozen trunk
runs once per input and its activation map is cached on disk like a bottleneck
(content-addressed like the bottlenecks, written atomically, so a killed run resumes;
float16, which changes the features by about 1e-4). Training then runs only the tail
(the K blocks, the last convolution and the pooling) and the head, on the cached maps.

The recipe (chosen by grouped cross-validation inside the training fold, docs/retrain.md):

1. a fresh head, trained together with the tail from the first step. The head trained on
   the frozen features before (4000 steps) has memorised the training set: its loss is
   near zero, so the tail it would teach gets almost no gradient. A fresh head starts
   with tiny weights, so the tail's first gradients are tiny too and the head leads
   while the blocks adapt (``--fine_tune_head trained`` keeps the old start);
2. Adam, a few epochs of the training set (``--fine_tune_epochs``), linear warm-up then
   cosine decay, decoupled weight decay on the tail;
3. the cached maps augmented on the fly: they keep the input's layout (for an image
   network rows are frequency and columns time), so they are rolled along time, masked
   in time and frequency bands (filled with the trunk's response to silence), and
   blended with another clip of the same class;
4. every input's features through the tuned tail, on which the head (trained with it)
   is evaluated. The exported model's backbone is the trunk plus the tuned tail
   (:class:`FineTunedBackbone`), an ordinary backbone, so every export holds the tuned
   blocks.

A concatenation (the presets' ``aisfx,soundnet,efficientnet_lite0``) tunes the parts
named (a bare K: its image networks) and keeps the others' cached features: the head sees
the concatenation, the frozen parts' features as they are and the tuned parts' through
their tails, and the exported backbone is the same concatenation with the tuned parts
swapped in.

``--fine_tune_blocks all`` tunes the whole network from the images (no cache: the images
are the tail's input), for users with a GPU.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional, Sequence

import numpy as np

from retrain.augment import AugmentSettings
from retrain.bottlenecks import (BottleneckStore, InputMaker, Job, backbone_parts, read_image,
                                 run_jobs)
from retrain.errors import RetrainError
from retrain.images import ImageRecord
from retrain.settings import FineTuneSettings, HeadSettings
from soundretrain.backbones.registry import Backbone, ConcatBackbone, ModuleError
from soundretrain.backbones.split import BackboneSplit

ACTIVATION_DTYPE = np.float16  # 2 bytes a value; features move by ~1e-4 (docs/retrain.md)
PREDICT_BATCH = 64


# ------------------------------------------------------------------ where to cut

def plan_cuts(backbone: Backbone, blocks, spectrogram_settings=None) -> list[tuple[int, BackboneSplit]]:
    """``(part index, split)`` for every part of ``backbone`` to fine-tune. ``blocks``: a
    count or ``all`` (the module itself, or a concatenation's image networks), or
    ``{name: count}`` naming parts of a concatenation."""
    parts = backbone_parts(backbone)
    names = [p.name for p in parts]
    if isinstance(blocks, dict):
        unknown = [n for n in blocks if n not in names]
        if unknown:
            raise RetrainError(f"--fine_tune_blocks names {unknown[0]}, which is not a module of "
                               f"{backbone.name} (its modules: {', '.join(names)})")
        wanted = [(i, blocks[p.name]) for i, p in enumerate(parts) if p.name in blocks]
    elif len(parts) == 1:
        wanted = [(0, blocks)]
    else:
        wanted = [(i, blocks) for i, p in enumerate(parts)
                  if p.input_spec.kind == "image" and p.fine_tunable_blocks]
        if not wanted:
            raise RetrainError(f"modules {backbone.name} cannot be fine-tuned with a bare block "
                               "count: none is an image network that can be cut; name the module "
                               f"and its blocks, e.g. --fine_tune_blocks {names[0]}:1")
    cuts = []
    for i, count in wanted:
        part = parts[i]
        try:
            if part.input_spec.kind == "waveform":
                cuts.append((i, part.split(count, num_samples=_num_samples(part, spectrogram_settings))))
            else:
                cuts.append((i, part.split(count)))
        except ModuleError as err:
            raise RetrainError(str(err)) from None
    return cuts


def _num_samples(part: Backbone, spectrogram_settings) -> int:
    """A waveform part's window (the spectrograms' duration at its rate): fixed, so its
    maps have one shape and can be cached."""
    from soundretrain.spectrogram_settings import SpectrogramSettings

    settings = spectrogram_settings or SpectrogramSettings()
    return int(round(settings.duration * int(part.input_spec.sample_rate)))


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
                        batch_size: int = 32, progress: bool = True,
                        spectrogram_settings=None) -> tuple[np.ndarray, int]:
    """The tail's input for every record: cached trunk activations ``[N, h, w, c]``
    (float16), or for full fine-tuning the images themselves (uint8, not cached: the
    image files are their own cache). Returns them and how many were computed."""
    maker = InputMaker(split.backbone, spectrogram_settings)
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


def silence_activation(split: BackboneSplit, colour: Optional[np.ndarray] = None) -> np.ndarray:
    """The tail's input for silence: what a masked band of a map is filled with, as
    masked image bands are painted silent. An image network sees an image of the
    quietest ``colour``; a waveform network a window of zeros."""
    if split.backbone.input_spec.kind == "waveform":
        return split.compute_trunk(np.zeros((1,) + split.input_shape, np.float32))[0]
    spec = split.backbone.input_spec
    image = np.broadcast_to(np.asarray(colour, np.float32) / 255.0,
                            (1, spec.height, spec.width, 3)).copy()
    if not split.cached:
        return np.asarray(colour, np.float32)[None, None, :] / 255.0 * np.ones(
            split.activation_shape, np.float32)
    return split.compute_trunk(image)[0].astype(np.float32)


# ------------------------------------------------------------------ augmentation on maps

def augment_maps(x, partners, seed, settings: AugmentSettings, silence, time_axis: int = 2):
    """Augment a batch of maps ``[B, h, w, c]`` (float32) in TF: blend with the
    same-class ``partners`` (half of the time, by default), roll along time, then time
    and frequency masks filled with ``silence`` ``[h, w, c]``. Time runs along
    ``time_axis`` (2: columns, as in a spectrogram image; 1: rows). The recipe of
    :mod:`retrain.augment`, on activations instead of pixels."""
    import tensorflow as tf

    if time_axis == 1:  # work with time in the columns, then turn back
        swap = [0, 2, 1, 3]
        out = augment_maps(tf.transpose(x, swap), tf.transpose(partners, swap), seed, settings,
                           tf.transpose(silence, [1, 0, 2]), 2)
        return tf.transpose(out, swap)
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

@dataclasses.dataclass
class Segment:
    """One part of the head's input: a tuned part's tail over its maps (``split`` set),
    or a frozen part's cached features. ``data`` holds every record's row."""

    data: np.ndarray  # maps (float16), images (uint8) or features (float32)
    split: Optional[BackboneSplit] = None
    silence: Optional[np.ndarray] = None

    @property
    def tuned(self) -> bool:
        return self.split is not None


def fine_tune_steps(settings: FineTuneSettings, train_count: int) -> int:
    """``--fine_tune_steps``, or ``--fine_tune_epochs`` passes over the training set."""
    if settings.steps > 0:
        return int(settings.steps)
    return max(1, math.ceil(settings.epochs * train_count / settings.batch_size))


class FineTuner:
    """Trains the tuned segments' tails and ``head`` together on in-memory ``segments``
    (rows: every record) with labels ``class_ids``, sampling batches from ``train``; Adam
    with decoupled weight decay on the tails."""

    def __init__(self, segments: Sequence[Segment], head, class_ids: Sequence[int],
                 train: Sequence[int], settings: FineTuneSettings, head_settings: HeadSettings,
                 augment: Optional[AugmentSettings]) -> None:
        import tensorflow as tf

        self.segments = list(segments)
        self.head, self.settings, self.head_settings = head, settings, head_settings
        self.augment = augment
        # float16 is for the disk and the memory of all maps; TF computes in float32
        # (oneDNN has no half-precision kernels on most CPUs), one batch at a time.
        self._data = [tf.constant(seg.data) for seg in self.segments]
        self._silence = [None if seg.silence is None else tf.constant(seg.silence.astype(np.float32))
                         for seg in self.segments]
        y = np.asarray(class_ids, np.int32)
        train = np.asarray(train, np.int32)
        counts = np.bincount(y[train], minlength=head.num_classes)
        self.train_count = len(train)
        self.total_steps = fine_tune_steps(settings, len(train))
        self._y = tf.constant(y)
        self._train = tf.constant(train)
        self._order = tf.constant(train[np.argsort(y[train], kind="stable")].astype(np.int32))
        self._counts = tf.constant(counts.astype(np.int32))
        self._offsets = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32))
        tails = [v for seg in self.segments if seg.tuned for v in seg.split.tail.trainable_variables]
        self.variables = tails + list(head.trainable_variables)
        self._tail_count = len(tails)
        self._m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self._v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._train_step = tf.function(self._step)
        # One trace for every batch of indices (the last batch of a set is smaller).
        signature = [tf.TensorSpec([None], tf.int32)]
        self._predict = tf.function(lambda idx: self.head(self._features_of(idx)),
                                    input_signature=signature)
        self._features = tf.function(self._features_of, input_signature=signature)

    def _rows(self, k: int, idx):
        """Segment ``k``'s rows ``idx`` as float32 (images scaled to [0, 1])."""
        import tensorflow as tf

        rows = tf.gather(self._data[k], idx)
        if rows.dtype == tf.uint8:
            return tf.cast(rows, tf.float32) / 255.0
        return tf.cast(rows, tf.float32)

    def _combine(self, inputs):
        import tensorflow as tf

        outs = [seg.split.tail(x) if seg.tuned else x for seg, x in zip(self.segments, inputs)]
        return outs[0] if len(outs) == 1 else tf.concat(outs, axis=1)

    def _features_of(self, idx):
        return self._combine([self._rows(k, idx) for k in range(len(self.segments))])

    def _step(self):
        import tensorflow as tf

        s, hs = self.settings, self.head_settings
        step = self.step.assign_add(1)
        seed = tf.stack([tf.cast(hs.seed, tf.int64), step])
        picks = tf.random.stateless_uniform([s.batch_size], seed, 0, tf.shape(self._train)[0],
                                            dtype=tf.int32)
        idx = tf.gather(self._train, picks)
        yb = tf.gather(self._y, idx)
        inputs = [self._rows(k, idx) for k in range(len(self.segments))]
        if self.augment is not None:
            # A partner of the same class for every example (used when it is mixed).
            u = tf.random.stateless_uniform([s.batch_size], seed + 101)
            count = tf.gather(self._counts, yb)
            pos = tf.minimum(tf.cast(u * tf.cast(count, tf.float32), tf.int32), count - 1)
            partners = tf.gather(self._order, tf.gather(self._offsets, yb) + pos)
            inputs = [augment_maps(x, self._rows(k, partners), seed + 7 + 1000 * k, self.augment,
                                   self._silence[k], seg.split.time_axis) if seg.tuned else x
                      for k, (seg, x) in enumerate(zip(self.segments, inputs))]
        targets = tf.one_hot(yb, self.head.num_classes)
        if s.mixup > 0:
            # mixup (Zhang et al. 2018) across classes, every input and the labels mixed
            # alike; the example keeps the larger share, so its label stays the argmax.
            g1 = tf.random.stateless_gamma([s.batch_size], seed + 201, s.mixup)
            g2 = tf.random.stateless_gamma([s.batch_size], seed + 202, s.mixup)
            lam = g1 / tf.maximum(g1 + g2, 1e-12)
            lam = tf.maximum(lam, 1.0 - lam)
            perm = tf.argsort(tf.random.stateless_uniform([s.batch_size], seed + 203))

            def mix(x):
                w = tf.reshape(lam, [-1] + [1] * (len(x.shape) - 1))
                return w * x + (1.0 - w) * tf.gather(x, perm)

            inputs = [mix(x) for x in inputs]
            targets = mix(targets)
        if hs.label_smoothing:
            targets = targets * (1 - hs.label_smoothing) + hs.label_smoothing / self.head.num_classes
        with tf.GradientTape() as tape:
            features = self._combine(inputs)
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
        warm = tf.minimum(1.0, t / float(max(1, min(s.warmup_steps, self.total_steps // 4))))
        progress = tf.minimum(1.0, t / float(max(1, self.total_steps)))
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

    def _batches(self, indices: Sequence[int]):
        import tensorflow as tf

        indices = np.asarray(indices, np.int32)
        for s in range(0, len(indices), PREDICT_BATCH):
            yield tf.constant(indices[s:s + PREDICT_BATCH])

    def features(self, indices: Sequence[int]) -> np.ndarray:
        """The head's input (tuned parts through their tails) for records ``indices``."""
        out = [self._features(batch).numpy() for batch in self._batches(indices)]
        return np.concatenate(out) if out else np.zeros((0, self.head.feature_size), np.float32)

    def predict(self, indices: Sequence[int]) -> np.ndarray:
        out = [self._predict(batch).numpy() for batch in self._batches(indices)]
        return np.concatenate(out) if out else np.zeros((0, self.head.num_classes), np.float32)


@dataclasses.dataclass
class FineTuneOutcome:
    backbone: Backbone  # the tuned backbone (or the untuned one, when keep_best kept that)
    head: object  # the head trained with it
    features: np.ndarray  # every record's features through ``backbone``
    validation_accuracy: Optional[float]
    seconds: float
    activations_computed: int


def segments_for(prepared, cuts: Sequence[tuple[int, BackboneSplit]], settings, train: Sequence[int],
                 log: Callable[[str], None]) -> tuple[list[Segment], int]:
    """The head's input, part by part: tuned parts' maps (computed or read from the
    cache) with their silence, frozen parts' cached features. Returns them and how many
    maps were computed."""
    parts = backbone_parts(prepared.backbone)
    records = prepared.images.records
    tuned = dict(cuts)
    segments, computed, offset = [], 0, 0
    for i, part in enumerate(parts):
        width = int(part.feature_size)
        if i not in tuned:
            segments.append(Segment(prepared.features[:, offset:offset + width]))
        else:
            cut = tuned[i]
            maps, n = compute_activations(cut, records, settings.bottleneck_dir,
                                          settings.bottleneck_batch_size, settings.progress,
                                          prepared.spectrogram_settings)
            computed += n
            log(f"Fine-tuning {cut.blocks} block(s) of {part.name} from "
                f"{'cached activations' if cut.cached else 'the images'} {list(cut.activation_shape)} "
                f"({n} computed, {maps.nbytes / 1e6:.0f} MB in memory)")
            colour = None
            if part.input_spec.kind == "image":
                colour = silence_colour([records[j] for j in train],
                                        spectrogram_settings=prepared.spectrogram_settings)
            segments.append(Segment(maps, cut, silence_activation(cut, colour)))
        offset += width
    return segments, computed


def tuned_backbone(backbone: Backbone, cuts: Sequence[tuple[int, BackboneSplit]]) -> Backbone:
    """``backbone`` with its tuned parts swapped in: an ordinary backbone (a
    :class:`FineTunedBackbone`, or a concatenation holding them)."""
    tuned = {i: cut.fine_tuned() for i, cut in cuts}
    if not isinstance(backbone, ConcatBackbone):
        return tuned[0]
    return ConcatBackbone([tuned.get(i, p) for i, p in enumerate(backbone.parts)])


def fine_tune(settings, prepared, split, head, seed: int, log: Callable[[str], None] = print,
              summaries=None) -> FineTuneOutcome:
    """Cut the backbone, cache the trunk's maps, and train the tail together with a
    fresh head (``--fine_tune_head fresh``) or with ``head``, trained already on the
    pretrained features of ``split.train``. Returns the tuned backbone, its head and
    every image's new features."""
    from retrain.head import ClassificationHead, accuracy_and_xent, feature_statistics

    ft = settings.fine_tune
    start = time.perf_counter()
    cuts = plan_cuts(prepared.backbone, ft.blocks, prepared.spectrogram_settings)
    train = list(split.train)
    validation = np.asarray(split.validation, int)
    segments, computed = segments_for(prepared, cuts, settings, train, log)
    head_settings = dataclasses.replace(settings.head, seed=seed)
    trained_head = head
    head = ClassificationHead(prepared.backbone.feature_size, head.num_classes,
                              head_settings.hidden_units, head_settings.dropout, seed=seed)
    if ft.head == "fresh":
        if head_settings.standardize:
            head.set_standardization(*feature_statistics(prepared.features[train]))
    else:  # a copy, so the trained head itself stays as it was (--fine_tune_keep_best)
        for mine, theirs in zip(head.variables, trained_head.variables):
            mine.assign(theirs)
    augment = dataclasses.replace(settings.augment, copies=0, seed=seed,
                                  max_mask_fraction=ft.mask_fraction) if ft.augment else None
    tuner = FineTuner(segments, head, prepared.class_ids, train, ft, head_settings, augment)
    steps = tuner.total_steps
    log(f"Fine-tuning with {'a fresh head' if ft.head == 'fresh' else 'the trained head'}: "
        f"{steps} steps of {ft.batch_size} ({steps * ft.batch_size / max(1, len(train)):.1f} "
        f"epochs of {len(train)} training examples), learning rate {ft.learning_rate:g}")
    y_val = prepared.class_ids[validation]
    # The model before fine-tuning, for --fine_tune_keep_best: the trained head on the
    # pretrained features.
    before = None
    if ft.keep_best and len(validation):
        before = accuracy_and_xent(trained_head.predict(prepared.features[validation]), y_val)
    stopper = None
    if ft.keep_best and len(validation):
        from retrain.head import EarlyStopping

        stopper = EarlyStopping(tuner.variables, patience=0)
    val_acc = None
    done = 0
    from tqdm import tqdm

    with tqdm(total=steps, desc="fine-tuning", unit="step", disable=not settings.progress,
              leave=False) as bar:
        while done < steps:
            n = min(ft.eval_interval, steps - done)
            train_acc, xent = tuner.train(n)
            done += n
            bar.update(n)
            if not tuner.finite(xent):  # every later step, and the export, would be NaN too
                raise RetrainError(
                    f"fine-tuning diverged at step {done}: the cross entropy is {xent} and the "
                    f"weights are no longer finite (--fine_tune_learning_rate {ft.learning_rate:g} "
                    "is too high?); nothing was exported")
            line = (f"Fine-tuning step {done}/{steps}: train accuracy = {train_acc * 100:.1f}%, "
                    f"cross entropy = {xent:.3f}")
            val_xent = None
            if len(validation):
                val_acc, val_xent = accuracy_and_xent(tuner.predict(validation), y_val)
                line += f", validation accuracy = {val_acc * 100:.1f}% (N={len(validation)})"
                if stopper is not None:
                    stopper.update(done, val_acc, val_xent)
            log(f"{_stamp()}: {line}")
            if summaries is not None:
                _write_scalars(summaries, done, train_acc, xent, float(tuner.learning_rate(done)),
                               val_acc if len(validation) else None, val_xent)
    if stopper is not None:
        if not stopper.is_better(*before):
            stopper.restore()
            val_acc = stopper.best_accuracy
            log(f"{_stamp()}: Fine-tuning: kept the tail and head of step {stopper.best_step} "
                f"(validation accuracy = {val_acc * 100:.1f}%, cross entropy = "
                f"{stopper.best_cross_entropy:f})")
        else:
            seconds = time.perf_counter() - start
            log(f"{_stamp()}: Fine-tuning: kept the tail and head of step 0, before fine-tuning "
                f"(validation accuracy = {before[0] * 100:.1f}%, cross entropy = {before[1]:f}; "
                f"no tuned step scored better); fine-tuning did not help")
            return FineTuneOutcome(prepared.backbone, trained_head, prepared.features, before[0],
                                   seconds, computed)
    features = tuner.features(np.arange(len(prepared.class_ids)))  # every input, tuned
    seconds = time.perf_counter() - start
    log(f"Fine-tuned in {seconds:.0f} s")
    return FineTuneOutcome(tuned_backbone(prepared.backbone, cuts), head, features, val_acc,
                           seconds, computed)


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
