"""A backbone cut in two for fine-tuning: a frozen trunk and a trainable tail.

Fine-tuning the last K blocks of an image network does not need the whole network at
every training step: the trunk (everything before those blocks) stays frozen, so its
output, an activation map ``[h, w, channels]``, can be computed once per image and
cached like a bottleneck. Training then runs only the tail (the K blocks, the final
convolution and the pooling) and the head, on cached maps, which is cheap on a CPU
when the tail runs at low resolution (7x7 and 14x14 for EfficientNet-Lite0).

A backbone that can be cut offers :meth:`Backbone.split`
(see :mod:`soundretrain.backbones.registry`); after training,
:class:`FineTunedBackbone` joins the trunk and the trained tail again into one image
module whose ``tf_callable`` is what the exported graph, SavedModel and TFLite hold.

The maps keep the input's layout: for an image network rows are frequency (low at the
bottom) and columns are time, so time shifts and masks can be applied to them as to the
image; a waveform network's maps say which axis is time (``time_axis``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from soundretrain.backbones.registry import Backbone, InputSpec

ALL_BLOCKS = "all"


class BackboneSplit:
    """``backbone = tail(trunk(images))``, cut before the last ``blocks`` blocks.

    * ``trunk``: TF ops ``images [N, H, W, 3] in [0, 1] -> activations [N, h, w, c]``
      over frozen weights, or ``None`` when the tail starts at the image itself
      (full fine-tuning).
    * ``tail``: a ``tf.Module`` whose ``trainable_variables`` are the weights to tune;
      ``tail(activations)`` gives the backbone's features ``[N, feature_size]`` with
      plain TF ops, so a model holding it freezes into one constant graph.
    * ``cut``: a short stable name of where the cut is (part of the cache folder's name,
      so maps of different cuts never mix).
    * ``time_axis``: the maps' time axis, 2 (columns, as in a spectrogram image) or 1
      (rows); map augmentation shifts and masks time along it.
    * ``input_shape``: one input's shape (``[H, W, 3]`` images or ``[samples]``
      waveforms), what the trunk is traced for.
    """

    def __init__(self, backbone: Backbone, blocks: int, cut: str,
                 activation_shape: Sequence[int], trunk: Optional[Callable[[Any], Any]],
                 tail: Any, time_axis: int = 2,
                 input_shape: Optional[Sequence[int]] = None) -> None:
        self.backbone = backbone
        self.blocks = int(blocks)
        self.cut = cut
        self.activation_shape = tuple(int(d) for d in activation_shape)
        self.trunk = trunk
        self.tail = tail
        if time_axis not in (1, 2):
            raise ValueError(f"time_axis must be 1 or 2, not {time_axis}")
        self.time_axis = time_axis
        if input_shape is None:
            spec = backbone.input_spec
            input_shape = (spec.height, spec.width, 3)
        self.input_shape = tuple(int(d) for d in input_shape)
        self._trunk_fn = None

    @property
    def cached(self) -> bool:
        """Whether the tail's input is worth caching (a trunk runs before it); full
        fine-tuning reads the images themselves."""
        return self.trunk is not None

    @property
    def cache_name(self) -> str:
        """The activation cache's folder name: the module and the cut."""
        return f"{self.backbone.name}.{self.cut}"

    def compute_trunk(self, inputs: np.ndarray) -> np.ndarray:
        """Activations ``[N, h, w, c]`` float32 for a numpy batch of inputs."""
        if self.trunk is None:
            return np.asarray(inputs, np.float32)
        import tensorflow as tf

        if self._trunk_fn is None:
            self._trunk_fn = tf.function(self.trunk, input_signature=[
                tf.TensorSpec((None,) + self.input_shape, tf.float32)])
        if len(inputs) == 0:
            return np.zeros((0,) + self.activation_shape, np.float32)
        return self._trunk_fn(tf.convert_to_tensor(inputs, tf.float32)).numpy()

    def fine_tuned(self) -> "FineTunedBackbone":
        """The backbone with the tail as it is now (trained or not)."""
        return FineTunedBackbone(self)


class FineTunedBackbone(Backbone):
    """The trunk and a (trained) tail as one image module: what is exported.

    Its ``name`` ends with a fingerprint of the tail's weights when it is made, so
    features cached under it (augmented copies) never outlive the weights that made them.
    No registry name gives these weights again (``reloadable`` False): a head-only
    export carries the network itself.
    """

    reloadable = False

    def __init__(self, split: BackboneSplit) -> None:
        import hashlib

        import tensorflow as tf

        self.split = split
        self.base = split.backbone
        digest = hashlib.sha1()
        for v in split.tail.trainable_variables:
            digest.update(np.ascontiguousarray(v.numpy()).tobytes())
        self.name = f"{self.base.name}+fine_tuned_{split.blocks}-{digest.hexdigest()[:12]}"
        self.weights_digest = self.base.weights_digest  # the trunk's (the tail's is in the name)
        self.input_spec: InputSpec = self.base.input_spec
        if self.input_spec.kind == "waveform":  # tuned on windows of one length
            self.input_spec = dataclasses.replace(self.input_spec, num_samples=split.input_shape[0])
        self.feature_size = int(self.base.feature_size)
        spec = self.input_spec
        shape = [None, spec.height, spec.width, 3] if spec.kind == "image" else [None, spec.num_samples]
        self._fn = tf.function(self.tf_callable(), input_signature=[
            tf.TensorSpec(shape, tf.float32)])

    def tf_callable(self) -> Callable[[Any], Any]:
        trunk, tail = self.split.trunk, self.split.tail
        if trunk is None:
            return lambda images: tail(images)
        return lambda images: tail(trunk(images))

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        if len(inputs) == 0:
            return np.zeros((0, self.feature_size), np.float32)
        return self._fn(tf.convert_to_tensor(inputs, tf.float32)).numpy()

    def description(self) -> dict:
        desc = dict(self.base.description())
        desc["fine_tuned_blocks"] = self.split.blocks
        desc["fine_tuned_from"] = desc.get("name", self.base.name)
        desc["fine_tune_cut"] = self.split.cut
        return desc


def parse_blocks(value: str | int | dict | None) -> int | str | dict:
    """``--fine_tune_blocks``: 0 (off), a positive number of blocks, ``all``, or per
    module of a concatenation ``NAME:K[,NAME:K]`` (for example
    ``efficientnet_lite0:5,aisfx:1``; a dict ``{name: K}``)."""
    if value is None or value == "":
        return 0
    if isinstance(value, dict):
        return {str(k): _one_count(v, f"{k}:{v}") for k, v in value.items()} or 0
    if isinstance(value, int):
        return _one_count(value, value)
    text = str(value).strip()
    if ":" not in text:
        return _one_count(text, value)
    counts: dict = {}
    for item in text.split(","):
        name, sep, count = item.strip().rpartition(":")
        if not sep or not name.strip():
            raise ValueError(f"--fine_tune_blocks takes K, 'all' or NAME:K[,NAME:K] "
                             f"(e.g. efficientnet_lite0:5,aisfx:1), not {value!r}")
        if name.strip() in counts:
            raise ValueError(f"--fine_tune_blocks names {name.strip()} twice")
        counts[name.strip()] = _one_count(count, item.strip())
    counts = {k: v for k, v in counts.items() if v != 0}
    return counts or 0


def _one_count(value, shown) -> int | str:
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"--fine_tune_blocks must be >= 0 or 'all', not {shown}")
        return value
    text = str(value).strip().lower()
    if text == ALL_BLOCKS:
        return ALL_BLOCKS
    try:
        blocks = int(text)
    except ValueError:
        raise ValueError(f"--fine_tune_blocks takes a number of blocks or 'all', not {shown!r}") from None
    if blocks < 0:
        raise ValueError(f"--fine_tune_blocks must be >= 0 or 'all', not {shown}")
    return blocks


def format_blocks(blocks: int | str | dict) -> str:
    """The flag's text for a parsed value (the inverse of :func:`parse_blocks`)."""
    if isinstance(blocks, dict):
        return ",".join(f"{k}:{v}" for k, v in blocks.items())
    return str(blocks)
