"""aiSFX (CC BY 4.0) in TensorFlow: a licence-clean audio module, 512-d embeddings.

aiSFX (A. B. Ma and A. Lerch, "Representation Learning for the Automatic Indexing of
Sound Effects Libraries", ISMIR 2022; github.com/alisonbma/aisfx) is an 8-layer 2-D CNN
(four blocks of two 3x3 convolutions with batch norm and ReLU, 2x2 max pooling after the
first three; 64-128-256-512 channels) trained on sound-effects libraries. Its embedding
is the mean over frequency, then the maximum over time, of the last block's 512 maps.

The weights ship in the PyPI package ``aisfx`` 0.1.2 (``aisfx/models/checkpoint.pth``,
a zip PyTorch checkpoint of ``(state_dict, datasets)``), which
:mod:`soundretrain.backbones.torch_checkpoint` reads without PyTorch. Its pinned
dependencies (librosa 0.9.2, numpy 1.23.0) cannot be installed beside this toolkit, and
none of its code is used here, so it is installed without them:
``pip install --no-deps aisfx==0.1.2`` (the Makefile does this).

Front-end, as TensorFlow ops matching the package's librosa path
(``aisfx.spectrogram.spectrogram_librosa.compute_spectrogram`` run with the librosa this
toolkit installs, then ``spectrogram_normalize(spec_norm="original")``): mono 44.1 kHz,
scaled to a peak of 1, STFT with a 2048-sample periodic Hann window and hop 1024 (frames
centred, zero padding), power, 96 HTK mel bands 0-22050 Hz each summing to 1,
``log10(1e4 * mel + 1) / 9.4578`` (the package's normalisation constant, its maximum over
the training data). Frames are the network's time axis and mel bands its frequency axis
(the package's librosa helper returns the transpose, mel x time, and feeds that to the
network; its original Essentia front-end, which the paper used, is time x mel, as here).

Windowing: the network is fully convolutional over time, so a clip is embedded in one
pass over all its frames (a clip shorter than the package's 100-frame block, 2.3 s, is
zero-padded to one block as the package's ``blocking`` does). See docs/backbones.md for
why one pass rather than the package's overlapping 100-frame blocks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from soundretrain.backbones import cache_root
from soundretrain.backbones.converted_cache import (
    Conversion, as_variables, load_or_convert, packaged_weights_file)
from soundretrain.backbones.registry import Backbone, InputSpec, ModuleError
from soundretrain.backbones.split import ALL_BLOCKS, BackboneSplit
from soundretrain.backbones.torch_checkpoint import CheckpointError, read_checkpoint

NAME = "aisfx"
PACKAGE = "aisfx"
PACKAGE_VERSION = "0.1.2"
PIP_COMMAND = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
CHECKPOINT_RELPATH = "models/checkpoint.pth"
LICENSE = "CC BY 4.0"
ATTRIBUTION = ("aiSFX pre-trained model (c) 2022 A. B. Ma and A. Lerch, CC BY 4.0 "
               "(https://creativecommons.org/licenses/by/4.0/); github.com/alisonbma/aisfx")

SAMPLE_RATE = 44100
N_FFT = 2048
HOP_LENGTH = 1024
N_MELS = 96
FMIN, FMAX = 0.0, 22050.0
LOG_SCALE = 1e4  # log10(LOG_SCALE * mel + 1): Essentia's "shift_scale_log"
SPEC_MAX = 9.457798957824707  # spectrogram_normalize(spec_norm="original")
BLOCK_FRAMES = 100  # the package's EMB_BLOCK_LENGTH (about 2.3 s)
BLOCK_HOP = 50  # its default emb_hop_size 0.5
FEATURE_SIZE = 512
BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d
CHANNELS = (64, 128, 256, 512)
WINDOWINGS = ("clip", "blocks")

# 1: a SavedModel (loading it ran the cache's own graph); 2: verified arrays only.
CACHE_FORMAT = 2
CACHE_FOLDER = f"{NAME}-v{CACHE_FORMAT}"
#: Digests (converted_cache.weights_digest) of this module's conversion of the published
#: weights; a cache or checkpoint that converts to anything else is not trusted as them.
KNOWN_WEIGHTS = {
    "eae574f3bebc288627db9f168df415a78e2f19046441f5fcbd7e2758d70b4e36":
        f"{PACKAGE} {PACKAGE_VERSION} aisfx/models/checkpoint.pth (X-Sequential-CE)",
}


def checkpoint_path() -> Path:
    """``aisfx/models/checkpoint.pth`` of the installed package (not imported: it needs torch)."""
    return packaged_weights_file(PACKAGE, CHECKPOINT_RELPATH, NAME, PIP_COMMAND)


# ---------------------------------------------------------------------------
# Weights: the PyTorch state dict -> TF layout, batch norm folded into the convolutions.
# ---------------------------------------------------------------------------

def expected_weight_shapes() -> Dict[str, tuple]:
    """The converted network's weights (the front-end's mel filters and window are made by
    :func:`mel_matrix` and :func:`hann_window`, not converted)."""
    shapes: Dict[str, tuple] = {}
    channels_in = 1
    for b, channels in enumerate(CHANNELS, start=1):
        for c in (1, 2):
            shapes[f"block{b}_conv{c}_kernel"] = (3, 3, channels_in, channels)
            shapes[f"block{b}_conv{c}_bias"] = (channels,)
            channels_in = channels
    return shapes


def convert_state_dict(state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The embedding network's weights (the per-dataset classifiers are dropped)."""
    out: Dict[str, np.ndarray] = {}
    try:
        for b in range(1, len(CHANNELS) + 1):
            for c in (1, 2):
                prefix = f"embedding_net.conv_block{b}"
                weight = np.asarray(state[f"{prefix}.conv{c}.weight"], np.float64)  # OIHW
                bn = f"{prefix}.bn{c}"
                scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + BN_EPSILON)
                out[f"block{b}_conv{c}_kernel"] = (np.transpose(weight, (2, 3, 1, 0))
                                                   * scale).astype(np.float32)
                out[f"block{b}_conv{c}_bias"] = (state[f"{bn}.bias"] - state[f"{bn}.running_mean"]
                                                 * scale).astype(np.float32)
    except (KeyError, TypeError) as err:
        raise ModuleError(f"the aiSFX checkpoint lacks parameter {err}; reinstall it: "
                          f"{PIP_COMMAND.replace('pip install', 'pip install --force-reinstall', 1)}") from None
    wrong = [k for k, s in expected_weight_shapes().items() if out[k].shape != s]
    if wrong:
        raise ModuleError(f"the aiSFX checkpoint has unexpected shapes for {wrong[:3]}")
    return out


def mel_matrix() -> np.ndarray:
    """``[1025, 96]``: HTK mel filters, each normalised to sum 1, as the package's
    ``librosa.feature.melspectrogram(htk=True, norm=1)`` call builds them: librosa's
    ``filters.mel`` step for step in numpy (a test checks it against librosa), so loading
    the module does not import librosa (about 2 s)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    fftfreqs = np.fft.rfftfreq(n=N_FFT, d=1.0 / SAMPLE_RATE)
    mels = np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), N_MELS + 2)
    mel_f = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((N_MELS, len(fftfreqs)), np.float32)
    for i in range(N_MELS):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    length = np.sum(np.abs(weights).astype(np.float64), axis=-1, keepdims=True)  # util.normalize
    length[length < np.finfo(np.float32).tiny] = 1.0
    return np.ascontiguousarray((weights / length).astype(np.float32).T)


def hann_window() -> np.ndarray:
    """The periodic Hann window librosa uses (``scipy.signal.get_window("hann", n)``)."""
    n = np.arange(N_FFT, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)


# ---------------------------------------------------------------------------
# The front-end and the network as TensorFlow ops.
# ---------------------------------------------------------------------------

def _log_mel(weights: Mapping, y):
    """``[N, samples]`` at 44.1 kHz -> normalised log-mel ``[N, frames, 96]``.

    With a known number of samples (an exported graph) the frames are static slices and
    every constant is kept exact under TFLite's quantisers (``render_tf.exact``), so the
    front-end converts to TFLite builtins that XNNPACK takes; the values are the same as
    ``tf.signal.frame``'s (the bottleneck stage, any length)."""
    import tensorflow as tf

    from soundretrain.render_tf import exact, frame_static

    y = tf.cast(y, tf.float32)
    peak = tf.reduce_max(tf.abs(y), axis=1, keepdims=True)
    y = y / tf.where(peak > 0, peak, exact(1.0, y))
    y = tf.pad(y, [[0, 0], [N_FFT // 2, N_FFT // 2]])  # centred frames, zero padding
    length = y.shape[1]
    if length is None:
        frames = tf.signal.frame(y, N_FFT, HOP_LENGTH)
    else:
        frames = frame_static(y, N_FFT, HOP_LENGTH, 1 + (int(length) - N_FFT) // HOP_LENGTH)
    # tf.signal.stft's steps: frames times the window, then rfft
    stft = tf.signal.rfft(frames * exact(_array(weights["window"]), y), fft_length=[N_FFT])
    power = tf.math.square(tf.math.real(stft)) + tf.math.square(tf.math.imag(stft))
    mel = tf.linalg.matmul(power, exact(_array(weights["mel_matrix"]), y))  # [N, T, F] x [F, 96]
    return tf.math.log(exact(LOG_SCALE, y) * mel + exact(1.0, y)) / exact(np.log(10.0) * SPEC_MAX, y)


def _array(value) -> np.ndarray:
    """A weight's values, read eagerly even while a ``tf.function`` is traced."""
    if isinstance(value, np.ndarray):
        return value
    import tensorflow as tf

    with tf.init_scope():
        return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _run_blocks(weights: Mapping, x, blocks: Sequence[int]):
    """Conv blocks ``blocks`` (1-based, in order) on maps ``[N, frames, mels, c]``; each
    but the last block of the network ends with 2x2 max pooling."""
    import tensorflow as tf

    for b in blocks:
        for c in (1, 2):
            x = tf.nn.conv2d(x, weights[f"block{b}_conv{c}_kernel"], strides=1, padding="SAME")
            x = tf.nn.relu(tf.nn.bias_add(x, weights[f"block{b}_conv{c}_bias"]))
        if b < len(CHANNELS):
            x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
    return x


def _pool(x):
    """The embedding: mean over frequency, then maximum over time."""
    import tensorflow as tf

    return tf.reduce_max(tf.reduce_mean(x, axis=2), axis=1)


def _embed(weights: Mapping, spec):
    """Normalised log-mel ``[N, frames, 96]`` (at least 8 frames) -> ``[N, 512]``."""
    import tensorflow as tf

    return _pool(_run_blocks(weights, tf.expand_dims(spec, -1), range(1, len(CHANNELS) + 1)))


def _pad_frames(spec, frames: int):
    """Zero-pad the time axis to at least ``frames`` (the package's ``blocking`` pads a
    short spectrogram with zeros to one block)."""
    import tensorflow as tf

    have = spec.shape[1]
    if have is not None:  # known when exported: no shape arithmetic in the graph
        return spec if int(have) >= frames else tf.pad(spec, [[0, 0], [0, frames - int(have)], [0, 0]])
    missing = tf.maximum(frames - tf.shape(spec)[1], 0)
    return tf.pad(spec, [[0, 0], [0, missing], [0, 0]])


def block_starts(frames, block: int = BLOCK_FRAMES, hop: int = BLOCK_HOP):
    """Start frames of the blocks of a spectrogram of ``frames`` frames (a tensor): every
    ``hop`` frames, plus one aligned to the end so the tail is covered."""
    import tensorflow as tf

    last = tf.maximum(frames - block, 0)
    starts = tf.range(0, last + 1, hop)
    return tf.cond(starts[-1] < last, lambda: tf.concat([starts, [last]], 0), lambda: starts)


def _features(weights: Mapping, y, windowing: str = "clip"):
    """``[N, samples]`` at 44.1 kHz -> ``[N, 512]`` (TF ops only)."""
    import tensorflow as tf

    spec = _pad_frames(_log_mel(weights, y), BLOCK_FRAMES)
    if windowing == "clip":
        return _embed(weights, spec)
    n = tf.shape(spec)[0]
    starts = block_starts(tf.shape(spec)[1])
    index = starts[:, None] + tf.range(BLOCK_FRAMES)[None, :]
    blocks = tf.gather(spec, index, axis=1)  # [N, blocks, 100, 96]
    embedded = _embed(weights, tf.reshape(blocks, [-1, BLOCK_FRAMES, N_MELS]))
    return tf.reduce_mean(tf.reshape(embedded, [n, -1, FEATURE_SIZE]), axis=1)


def cached_model_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    return cache_root(cache_dir) / CACHE_FOLDER


def conversion(checkpoint: Optional[str | os.PathLike] = None) -> Conversion:
    """How the weights are converted (from ``checkpoint``, else the packaged file) and checked."""
    def convert() -> Dict[str, np.ndarray]:
        source = Path(checkpoint) if checkpoint is not None else checkpoint_path()
        try:
            loaded = read_checkpoint(source)
        except CheckpointError as err:
            raise ModuleError(f"cannot read the aiSFX weights: {err}") from None
        state = loaded[0] if isinstance(loaded, tuple) and loaded else loaded
        if not isinstance(state, Mapping):
            raise ModuleError(f"{source} does not hold a state dict; reinstall it: {PIP_COMMAND}")
        return convert_state_dict(state)

    return Conversion(NAME, CACHE_FORMAT, expected_weight_shapes(), KNOWN_WEIGHTS, convert,
                      {"license": LICENSE, "attribution": ATTRIBUTION, "feature_size": FEATURE_SIZE,
                       "input": f"float32 [N, samples] mono at {SAMPLE_RATE} Hz in [-1, 1]"},
                      "the packaged aiSFX weights (CC BY 4.0)")


# ---------------------------------------------------------------------------
# The backbone.
# ---------------------------------------------------------------------------

class Aisfx(Backbone):
    """aiSFX embeddings: ``[N, samples]`` mono float32 at 44.1 kHz -> ``[N, 512]``."""

    input_spec = InputSpec(kind="waveform", sample_rate=SAMPLE_RATE)
    feature_size = FEATURE_SIZE

    def __init__(self, weights: Mapping, weights_digest: Optional[str] = None,
                 windowing: str = "clip"):
        import tensorflow as tf

        if windowing not in WINDOWINGS:
            raise ModuleError(f"aisfx windowing must be one of {WINDOWINGS}, not {windowing!r}")
        self._weights = as_variables({**weights, "mel_matrix": mel_matrix(), "window": hann_window()})
        self.weights_digest = weights_digest
        self.windowing = windowing
        self.name = NAME if windowing == "clip" else f"{NAME}_{windowing}"
        wave = tf.TensorSpec([None, None], tf.float32)
        self._features = tf.function(lambda y: _features(self._weights, y, windowing),
                                     input_signature=[wave])
        self._log_mel = tf.function(lambda y: _log_mel(self._weights, y), input_signature=[wave])
        self._embed = tf.function(lambda s: _embed(self._weights, s),
                                  input_signature=[tf.TensorSpec([None, None, N_MELS], tf.float32)])

    def _check(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 2 or y.shape[1] < N_FFT // 2 + 1:
            raise ValueError(f"{NAME} expects float32 [N, samples] mono audio at {SAMPLE_RATE} Hz "
                             f"(at least {N_FFT // 2 + 1} samples), got shape {y.shape}")
        return y

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        y = self._check(inputs)
        if len(y) == 0:
            return np.zeros((0, FEATURE_SIZE), np.float32)
        return self._features(y).numpy()

    def log_mel(self, inputs: np.ndarray) -> np.ndarray:
        """The normalised log-mel spectrogram ``[N, frames, 96]`` the network sees."""
        return self._log_mel(self._check(inputs)).numpy()

    def embed_spectrogram(self, spec: np.ndarray) -> np.ndarray:
        """The network alone: normalised log-mel ``[N, frames >= 8, 96]`` -> ``[N, 512]``."""
        return self._embed(np.asarray(spec, np.float32)).numpy()

    def tf_callable(self) -> Callable:
        """Front-end and network as plain TF ops over the weight variables, so a caller's
        ``tf.function`` can be frozen (``convert_variables_to_constants_v2``) or converted
        to TFLite."""
        weights, windowing = self._weights, self.windowing
        return lambda y: _features(weights, y, windowing)

    fine_tunable_blocks = len(CHANNELS)

    def split(self, blocks: int | str, num_samples: Optional[int] = None) -> BackboneSplit:
        """Frozen trunk (front-end and the first conv blocks) + trainable tail (the last
        ``blocks`` conv blocks and the pooling; ``"all"``: the four blocks, from the
        log-mel spectrogram) for windows of ``num_samples`` samples (fixed, so the maps
        have one shape). Maps are ``[frames, mels, channels]``: time is axis 1. The
        tail's weights are copies, so the backbone itself never changes."""
        total = len(CHANNELS)
        if self.windowing != "clip":
            raise ModuleError(f"module {self.name} cannot be fine-tuned (its overlapping blocks "
                              f"are averaged); use {NAME}")
        count = total if blocks == ALL_BLOCKS else blocks
        if not (isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= total):
            raise ModuleError(f"{self.name} has {total} blocks to fine-tune: --fine_tune_blocks "
                              f"takes 1 to {total} or 'all', not {blocks!r}")
        if not num_samples or num_samples < N_FFT // 2 + 1:
            raise ModuleError(f"{self.name} is cut for windows of a fixed length: give "
                              f"num_samples (at least {N_FFT // 2 + 1}), not {num_samples!r}")
        import tensorflow as tf

        first = total - count + 1
        frozen = self._weights
        trunk_blocks = list(range(1, first))

        def trunk(y):
            spec = _pad_frames(_log_mel(frozen, y), BLOCK_FRAMES)
            return _run_blocks(frozen, tf.expand_dims(spec, -1), trunk_blocks)

        tail = _Tail({k: np.asarray(v) for k, v in frozen.items()
                      if k.startswith(tuple(f"block{b}_" for b in range(first, total + 1)))},
                     list(range(first, total + 1)))
        frames, mels = max(1 + int(num_samples) // HOP_LENGTH, BLOCK_FRAMES), N_MELS
        for _ in trunk_blocks:  # each block of the trunk ends with 2x2 pooling
            frames, mels = frames // 2, mels // 2
        channels = CHANNELS[first - 2] if first > 1 else 1
        return BackboneSplit(self, count, f"block{first}", (frames, mels, channels), trunk, tail,
                             time_axis=1, input_shape=(int(num_samples),))

    def description(self) -> dict:
        desc = super().description()
        desc.update({
            "license": LICENSE, "attribution": ATTRIBUTION,
            "weights": f"{PACKAGE} {PACKAGE_VERSION} aisfx/models/checkpoint.pth "
                       "(X-Sequential-CE, ISMIR 2022)",
            "weights_sha256": self.weights_digest,
            "front_end": (f"peak-normalised, STFT n_fft {N_FFT} hann hop {HOP_LENGTH} centred, "
                          f"{N_MELS} HTK mel bands {FMIN:g}-{FMAX:g} Hz (unit sum), "
                          f"log10({LOG_SCALE:g} * mel + 1) / {SPEC_MAX}"),
            "windowing": self.windowing,
        })
        return desc


def _Tail(arrays: Mapping[str, np.ndarray], blocks: Sequence[int]):
    """The trainable end of the network: copies of its blocks' weights as variables;
    calling it runs plain TF ops (freezable with the head into one graph)."""
    import tensorflow as tf

    class AisfxTail(tf.Module):
        def __init__(self):
            super().__init__(name="fine_tuned_tail")
            self.weights = {k: tf.Variable(v, trainable=True, name=k) for k, v in arrays.items()}
            self.blocks = list(blocks)

        def __call__(self, x):
            return _pool(_run_blocks(self.weights, x, self.blocks))

    return AisfxTail()


def load(cache_dir: Optional[str | os.PathLike] = None, windowing: str = "clip",
         checkpoint: Optional[str | os.PathLike] = None) -> Aisfx:
    """The aiSFX backbone; converts the packaged weights on first use and keeps them in
    ``cache_root(cache_dir)`` (converted again when the cache fails its check).
    ``checkpoint``: convert ``checkpoint.pth`` from there (for example unpacked from a
    downloaded wheel) instead of the installed package's."""
    converted = load_or_convert(conversion(checkpoint), cached_model_dir(cache_dir),
                                from_source=checkpoint is not None)
    return Aisfx(converted.arrays, weights_digest=converted.digest, windowing=windowing)
