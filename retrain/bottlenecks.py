"""Bottlenecks: each example's feature vector from the frozen backbone, cached on disk.

The cache is content-addressed: ``<bottleneck_dir>/<module>/<key[:2]>/<key>.npy`` where
``key`` is the SHA-1 of the image file's bytes (image modules) or of the source audio's
path, size, mtime and window (waveform modules), mixed with the digest of the module's
weights where it has one (:func:`part_key`), so a changed image is recomputed, two
folders with the same images share entries, and the cache never goes stale. Each file
is written atomically (temp name, then ``os.replace``) as soon as its batch is done, so a
killed run resumes where it stopped. Each entry is a one-record ``.npy`` holding the vector,
its key and a SHA-256 of both: an unreadable, wrong-shaped, zeroed or swapped entry fails
its check and is recomputed (with a warning), never trusted.

A batch of one input is computed as a pair: oneDNN runs a batch of one through other
kernels than any larger batch, and the features then differ in the sixth decimal, so a run
resumed with a single image left would not repeat an uninterrupted one bit for bit.

Work is batched (retrain.py ran the network once per image) and inputs for the next
batch are decoded in a background thread while the network runs.
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from retrain.errors import RetrainError
from retrain.images import ImageRecord
from soundretrain import filesystems
from soundretrain.image_resize import resize_uint8
from soundretrain.backbones.registry import Backbone, ConcatBackbone

DEFAULT_BATCH_SIZE = 32
DECODE_THREADS = 2


# ----------------------------------------------------------------------------- inputs

def read_image(path: str) -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]``; one-line error when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RetrainError(f"cannot read image {path!r} ({reason}); re-render it or remove "
                           "it from the image folder") from None


def image_to_input(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[h, w, 3]`` -> float32 ``[height, width, 3]`` in [0, 1] (TF Hub convention),
    resized bilinearly when the sizes differ."""
    if image.shape[:2] != (height, width):
        # The taps label_image and the audio-in export use, whatever Pillow's version.
        image = resize_uint8(image, height, width)
    return image.astype(np.float32) / 255.0


class AudioSegments:
    """The audio window behind a manifest row, at a module's sample rate, fitted to the
    spectrogram duration with the same functions ``spectrograms`` used.

    ``model_rate``: the backbone's one rate (:mod:`soundretrain.module_inputs`). The clip
    is decoded and cut at that rate, then the window resampled to the module's rate by the
    shared polyphase filter, exactly as ``label_image`` and the audio-in model do."""

    def __init__(self, sample_rate: int, settings, model_rate: Optional[int] = None) -> None:
        self.sample_rate = sample_rate
        self.model_rate = int(model_rate or sample_rate)
        self.settings = settings
        self._recent: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()  # inputs are decoded in several threads

    def _audio(self, source: str) -> np.ndarray:
        from soundretrain.audio import AudioReadError, load_audio

        with self._lock:
            if source in self._recent:
                self._recent.move_to_end(source)
                return self._recent[source]
        try:
            with filesystems.local_file(source) as path:
                y = load_audio(path, self.model_rate)
        except (AudioReadError, OSError) as err:  # OSError: a remote source that cannot be fetched
            reason = err.reason if isinstance(err, AudioReadError) else " ".join(str(err).split())
            raise RetrainError(f"cannot read source audio {source!r} ({reason}); a "
                               "waveform module needs the audio listed in manifest.csv") from None
        with self._lock:
            self._recent[source] = y
            if len(self._recent) > 8:  # windows of one recording come one after another
                self._recent.popitem(last=False)
        return y

    def segment(self, record: ImageRecord) -> np.ndarray:
        """The record's window at the model rate (:meth:`resampled` makes it the module's)."""
        from soundretrain.audio import fit_duration

        if not record.source:
            raise RetrainError(f"{record.relpath}: a waveform module needs the source audio, "
                               "but there is no manifest.csv with a source column; render the "
                               "images with spectrograms or use an image module")
        sr, duration = self.model_rate, self.settings.duration
        y = self._audio(record.source)
        start = int(round(record.start * sr))
        return fit_duration(y[start:start + int(round(duration * sr))], sr, duration, self.settings.pad_mode)

    def resampled(self, window: np.ndarray) -> np.ndarray:
        """A window at the model rate as the module hears it."""
        if self.model_rate == self.sample_rate:
            return window
        from soundretrain.resample import resample

        return resample(window, self.model_rate, self.sample_rate)

    def key(self, record: ImageRecord) -> str:
        try:
            st = filesystems.info(record.source or "")
        except OSError:
            st = None
        if st is None:
            raise RetrainError(f"{record.relpath}: source audio {record.source!r} not found; "
                               "a waveform module needs the audio listed in manifest.csv") from None
        s = self.settings
        text = (f"wav|{filesystems.abspath(record.source)}|{st.size}|{st.mtime_ns}|"
                f"{record.start:.6f}|{self.sample_rate}|{s.duration}|{s.pad_mode}")
        if self.model_rate != self.sample_rate:  # decoded at another rate, then resampled
            from soundretrain.resample import RESAMPLER

            text += f"|from {self.model_rate}|{RESAMPLER}"
        return hashlib.sha1(text.encode()).hexdigest()


def part_key(part: Backbone, key: str) -> str:
    """The cache key of ``part``'s vector for an input whose own key is ``key``: with the
    digest of the part's weights when it has one, so vectors computed with other weights
    (a cache of wrong weights, another version of a package) are never reused."""
    digest = getattr(part, "weights_digest", None)
    if not digest:
        return key
    return hashlib.sha1(f"{key}|weights={digest}".encode()).hexdigest()


def file_sha1(path: str) -> str:
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise RetrainError(f"cannot read image {path!r} ({err.strerror or err})") from None
    return digest.hexdigest()


# ----------------------------------------------------------------------------- store

class BottleneckStore:
    """One module's folder of cached feature vectors, one ``.npy`` per key.

    An entry is a one-record structured array (``np.load`` reads it): ``key`` (the cache key,
    the image's SHA-1), ``sha256`` (of the key and the vector's bytes) and ``vector``. What
    fails the check is not used: :attr:`damaged` counts entries that were there but wrong.
    """

    def __init__(self, bottleneck_dir: str, module_name: str, feature_size: int,
                 shape: Optional[tuple] = None, dtype=np.float32) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", module_name)
        if len(safe) > 100:
            safe = safe[:80] + "-" + hashlib.sha1(module_name.encode()).hexdigest()[:12]
        self.root = filesystems.join(filesystems.abspath(bottleneck_dir), safe)  # or a gs:// URL
        self.feature_size = feature_size
        self.shape = tuple(shape) if shape is not None else (feature_size,)
        self.dtype = np.dtype(dtype)
        self.record = np.dtype([("key", "S64"), ("sha256", "S64"), ("vector", self.dtype, self.shape)])
        self.damaged = 0

    def path(self, key: str) -> str:
        return filesystems.join(self.root, key[:2], key + ".npy")

    @staticmethod
    def checksum(key: str, vector: np.ndarray) -> bytes:
        digest = hashlib.sha256(key.encode("ascii"))
        digest.update(np.ascontiguousarray(vector).tobytes())
        return digest.hexdigest().encode("ascii")

    def get(self, key: str) -> Optional[np.ndarray]:
        """The cached vector, or None when missing or unusable (then it is recomputed)."""
        try:
            data = filesystems.read_bytes(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            self.damaged += 1
            return None
        return self.decode(key, data)

    def decode(self, key: str, data: bytes) -> Optional[np.ndarray]:
        """The vector in an entry's bytes, or None when they fail the check."""
        header = self._header
        if len(data) != len(header) + self.record.itemsize or not data.startswith(header):
            # Not this layout: an older toolkit's bare vector (recomputed quietly), or damage.
            if not self._is_old_layout(data):
                self.damaged += 1
            return None
        entry = np.frombuffer(data, self.record, count=1, offset=len(header))[0]
        vec = entry["vector"]
        if entry["key"] != key.encode("ascii") or entry["sha256"] != self.checksum(key, vec) \
                or (vec.dtype.kind == "f" and not np.all(np.isfinite(vec))):
            self.damaged += 1  # zeroed, edited, or another entry's file under this name
            return None
        return np.array(vec)

    @property
    def _header(self) -> bytes:
        """The exact ``.npy`` header :meth:`put` writes (compared, not parsed: 3x faster)."""
        if getattr(self, "_header_bytes", None) is None:
            buf = io.BytesIO()
            np.save(buf, np.zeros((), self.record), allow_pickle=False)
            self._header_bytes = buf.getvalue()[:-self.record.itemsize]
        return self._header_bytes

    def _is_old_layout(self, data: bytes) -> bool:
        try:
            old = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception:  # noqa: BLE001 - garbage
            return False
        return old.dtype == self.dtype and old.shape == self.shape

    def encode(self, key: str, vec: np.ndarray) -> bytes:
        """An entry's bytes: the one-record ``.npy`` of the vector, its key and checksum."""
        entry = np.zeros((), self.record)
        entry["vector"] = np.asarray(vec, dtype=self.dtype)
        entry["key"] = key.encode("ascii")
        entry["sha256"] = self.checksum(key, entry["vector"])
        buf = io.BytesIO()
        np.save(buf, entry, allow_pickle=False)
        return buf.getvalue()

    def put(self, key: str, vec: np.ndarray) -> None:
        # Thousands of small entries: no fsync each; a torn entry fails its check and is recomputed.
        filesystems.write_bytes(self.path(key), self.encode(key, vec), durable=False)


# ----------------------------------------------------------------------------- jobs

@dataclass(frozen=True)
class Job:
    """One vector to get: from the cache under ``key``, else by running ``make()``
    (which returns one backbone input) through the network."""

    key: str
    make: Callable[[], np.ndarray]


def run_jobs(backbone: Backbone, store: BottleneckStore, jobs: Sequence[Job],
             batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
             desc: str = "bottlenecks",
             on_batch: Optional[Callable[[int, int], None]] = None) -> tuple[np.ndarray, int]:
    """Vectors for all ``jobs`` ``[len(jobs), feature_size]``, and how many were computed.
    ``on_batch(done, total)`` after each computed batch (a supervising process's progress)."""
    from tqdm import tqdm

    features = np.zeros((len(jobs),) + store.shape, store.dtype)
    missing = []
    for i, job in enumerate(jobs):
        vec = store.get(job.key)
        if vec is None:
            missing.append(i)
        else:
            features[i] = vec
    if store.damaged:
        print(f"retrain: warning: {store.damaged} cached bottleneck(s) in {store.root} failed their "
              "check (damaged, zeroed or swapped) and are recomputed", file=sys.stderr)
        store.damaged = 0
    if not missing:
        return features, 0
    batches = [missing[s:s + batch_size] for s in range(0, len(missing), batch_size)]

    decoders = ThreadPoolExecutor(max_workers=DECODE_THREADS)

    def build(batch: list[int]) -> np.ndarray:
        # PIL and soundfile release the GIL while decoding: a few threads overlap them.
        return np.stack(list(decoders.map(lambda i: jobs[i].make(), batch)))

    with decoders, ThreadPoolExecutor(max_workers=1) as pool, \
            tqdm(total=len(missing), desc=desc, unit="input", disable=None if progress else True,
                 leave=False) as bar:
        pending = pool.submit(build, batches[0])
        for b, batch in enumerate(batches):
            inputs = pending.result()
            if b + 1 < len(batches):  # decode the next batch while the network runs
                pending = pool.submit(build, batches[b + 1])
            out = compute_batch(backbone, inputs)
            if out.shape != (len(batch),) + store.shape:
                raise RetrainError(f"module {backbone.name} returned features of shape "
                                   f"{out.shape}, expected {(len(batch),) + store.shape}")
            for i, vec in zip(batch, out):
                store.put(jobs[i].key, vec)
                features[i] = vec
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(bar.n, len(missing))
    return features, len(missing)


def compute_batch(backbone: Backbone, inputs: np.ndarray) -> np.ndarray:
    """``backbone.compute(inputs)``, a lone input computed as a pair (see the module's
    docstring: EfficientNet-Lite0's features of one image alone differ from the same image's
    in any larger batch by up to 1.4e-6; batches of 2 to 32 agree bit for bit)."""
    if len(inputs) == 1:
        return backbone.compute(np.concatenate([inputs, inputs]))[:1]
    return backbone.compute(inputs)


class InputMaker:
    """Builds backbone inputs and cache keys for records, for one backbone part."""

    def __init__(self, part: Backbone, spectrogram_settings=None, parts: Optional[Sequence[Backbone]] = None) -> None:
        """``parts``: every module of the backbone ``part`` belongs to (its one sample rate
        depends on all of them); ``part`` alone when None."""
        self.part = part
        self.spec = part.input_spec
        self._image_keys: dict[str, str] = {}
        if self.spec.kind == "waveform":
            if spectrogram_settings is None:
                from soundretrain.spectrogram_settings import SpectrogramSettings
                spectrogram_settings = SpectrogramSettings()
            from soundretrain.module_inputs import model_rate

            self.audio = AudioSegments(int(self.spec.sample_rate), spectrogram_settings,
                                       model_rate(list(parts or [part]), spectrogram_settings))

    def key(self, record: ImageRecord) -> str:
        if self.spec.kind == "waveform":
            return part_key(self.part, self.audio.key(record))
        if record.path not in self._image_keys:
            self._image_keys[record.path] = part_key(self.part, file_sha1(record.path))
        return self._image_keys[record.path]

    def raw(self, record: ImageRecord) -> np.ndarray:
        """uint8 image at its own size, or the float32 waveform window at the model rate."""
        if self.spec.kind == "waveform":
            return self.audio.segment(record)
        return read_image(record.path)

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """Raw example -> the backbone's input (a window resampled to the module's rate)."""
        if self.spec.kind == "waveform":
            return self.audio.resampled(raw.astype(np.float32))
        return image_to_input(raw, int(self.spec.height), int(self.spec.width))


def backbone_parts(backbone: Backbone) -> list[Backbone]:
    """A concatenation is cached part by part (each part has its own input and cache)."""
    return list(backbone.parts) if isinstance(backbone, ConcatBackbone) else [backbone]


def compute_bottlenecks(backbone: Backbone, records: Sequence[ImageRecord], bottleneck_dir: str,
                        spectrogram_settings=None, batch_size: int = DEFAULT_BATCH_SIZE,
                        progress: bool = True,
                        on_batch: Optional[Callable[[int, int], None]] = None) -> tuple[np.ndarray, int]:
    """Feature vectors ``[len(records), backbone.feature_size]`` for ``records``, from the
    cache where possible; returns them and the number of vectors computed."""
    blocks, computed = [], 0
    parts = backbone_parts(backbone)
    for part in parts:
        maker = InputMaker(part, spectrogram_settings, parts)
        store = BottleneckStore(bottleneck_dir, part.name, part.feature_size)
        jobs = [Job(maker.key(r), lambda r=r: maker.finish(maker.raw(r))) for r in records]
        feats, n = run_jobs(part, store, jobs, batch_size, progress, desc=f"bottlenecks {part.name}",
                            on_batch=on_batch)
        blocks.append(feats)
        computed += n
    return np.concatenate(blocks, axis=1), computed


def compute_augmented_bottlenecks(backbone: Backbone, records: Sequence[ImageRecord], plan,
                                  augment_settings, bottleneck_dir: str,
                                  spectrogram_settings=None,
                                  batch_size: int = DEFAULT_BATCH_SIZE,
                                  progress: bool = True) -> tuple[np.ndarray, int]:
    """Feature vectors of the augmented copies in ``plan`` (see :mod:`retrain.augment`)."""
    from retrain.augment import augment_image, augment_waveform, copy_key

    if not plan:
        return np.zeros((0, backbone.feature_size), np.float32), 0
    blocks, computed = [], 0
    parts = backbone_parts(backbone)
    for part in parts:
        maker = InputMaker(part, spectrogram_settings, parts)
        store = BottleneckStore(bottleneck_dir, part.name, part.feature_size)
        augment = augment_waveform if part.input_spec.kind == "waveform" else augment_image
        extra, fill = {}, None
        if part.input_spec.kind != "waveform" and spectrogram_settings is not None \
                and not spectrogram_settings.coloured:
            from soundretrain.render import silence_pixel

            fill = silence_pixel(spectrogram_settings)  # three channels: silence is not the darkest
            extra = {"fill": fill}

        def make(c) -> np.ndarray:
            partner = None if c.partner is None else maker.raw(records[c.partner])
            return maker.finish(augment(maker.raw(records[c.index]), partner, c.seed,
                                        augment_settings, **extra))

        jobs = []
        for c in plan:
            partner_key = None if c.partner is None else maker.key(records[c.partner])
            key = copy_key(maker.key(records[c.index]), partner_key, c, augment_settings, fill)
            jobs.append(Job(key, lambda c=c: make(c)))
        feats, n = run_jobs(part, store, jobs, batch_size, progress,
                            desc=f"augmented bottlenecks {part.name}")
        blocks.append(feats)
        computed += n
    return np.concatenate(blocks, axis=1), computed
