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

The maps keep the image's layout: rows are frequency (low at the bottom), columns are
time, so time shifts and masks can be applied to them as to the image.
"""
from __future__ import annotations

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
    """

    def __init__(self, backbone: Backbone, blocks: int, cut: str,
                 activation_shape: Sequence[int], trunk: Optional[Callable[[Any], Any]],
                 tail: Any) -> None:
        self.backbone = backbone
        self.blocks = int(blocks)
        self.cut = cut
        self.activation_shape = tuple(int(d) for d in activation_shape)
        self.trunk = trunk
        self.tail = tail
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

    def compute_trunk(self, images: np.ndarray) -> np.ndarray:
        """Activations ``[N, h, w, c]`` float32 for a numpy batch of images."""
        if self.trunk is None:
            return np.asarray(images, np.float32)
        import tensorflow as tf

        if self._trunk_fn is None:
            spec = self.backbone.input_spec
            self._trunk_fn = tf.function(self.trunk, input_signature=[
                tf.TensorSpec([None, spec.height, spec.width, 3], tf.float32)])
        if len(images) == 0:
            return np.zeros((0,) + self.activation_shape, np.float32)
        return self._trunk_fn(tf.convert_to_tensor(images, tf.float32)).numpy()

    def fine_tuned(self) -> "FineTunedBackbone":
        """The backbone with the tail as it is now (trained or not)."""
        return FineTunedBackbone(self)


class FineTunedBackbone(Backbone):
    """The trunk and a (trained) tail as one image module: what is exported.

    Its ``name`` ends with a fingerprint of the tail's weights when it is made, so
    features cached under it (augmented copies) never outlive the weights that made them.
    """

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
        self.feature_size = int(self.base.feature_size)
        spec = self.input_spec
        self._fn = tf.function(self.tf_callable(), input_signature=[
            tf.TensorSpec([None, spec.height, spec.width, 3], tf.float32)])

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


def parse_blocks(value: str | int | None) -> int | str:
    """``--fine_tune_blocks``: 0 (off), a positive number of blocks, or ``all``."""
    if value is None or value == "":
        return 0
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"--fine_tune_blocks must be >= 0 or 'all', not {value}")
        return value
    text = str(value).strip().lower()
    if text == ALL_BLOCKS:
        return ALL_BLOCKS
    try:
        blocks = int(text)
    except ValueError:
        raise ValueError(f"--fine_tune_blocks takes a number of blocks or 'all', not {value!r}") from None
    if blocks < 0:
        raise ValueError(f"--fine_tune_blocks must be >= 0 or 'all', not {blocks}")
    return blocks
