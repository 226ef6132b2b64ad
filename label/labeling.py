"""Turn images and audio into the model's input and its probabilities into results.

Audio is rendered with :func:`soundretrain.render.render_clip`, the same function the
``spectrograms`` writer used for the training images, with the settings recorded in
the model's sidecar. A file longer than the training duration is cut into windows
(:func:`soundretrain.audio.split_windows`), each window is labelled, and the file's
summary is the mean of its non-silent windows' probabilities.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from soundretrain import atomic_files
from soundretrain.image_resize import resize_uint8
from label.models import Labeler

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".m4a")
DEFAULT_IMAGE_SIZE = 224  # efficientnet_lite0, the default module


class LabelInputError(ValueError):
    """An input cannot be labelled (unreadable image, silent or corrupt audio); one line."""


class LabelSettingsError(LabelInputError):
    """A setting the model makes impossible or absurd (a bad flag, for the command); one line."""


#: At most this many windows overlap any instant: a hop below 1/100 of the window labels
#: nearly the same audio again and again (a window every sample was 573k windows for a
#: 30 s file, minutes of work with nothing shown).
MAX_WINDOWS_PER_WINDOW = 100


@dataclass(frozen=True)
class ImageInput:
    """How an image becomes model input: resized to ``height`` x ``width`` (bilinear),
    then ``(pixel - mean) / std`` in float32 (label_image's scaling)."""

    height: int
    width: int
    mean: float = 0.0
    std: float = 255.0


def resolve_image_input(
    labeler: Labeler,
    height: Optional[int] = None,
    width: Optional[int] = None,
    mean: Optional[float] = None,
    std: Optional[float] = None,
) -> ImageInput:
    """Explicit values win (``0`` included), then the sidecar, then the model's input
    shape, then retrain.py's conventions (mean 0, std 255)."""
    side = (labeler.sidecar or {}).get("input") or {}
    model_h, model_w = labeler.input_size

    def first(*values):
        return next((v for v in values if v is not None), None)

    h = first(height, side.get("height"), model_h, DEFAULT_IMAGE_SIZE)
    w = first(width, side.get("width"), model_w, DEFAULT_IMAGE_SIZE)
    m = float(first(mean, side.get("input_mean"), 0.0))
    s = float(first(std, side.get("input_std"), 255.0))
    if s == 0:
        raise LabelInputError("--input_std must not be 0 (pixels are divided by it)")
    if int(h) <= 0 or int(w) <= 0:
        raise LabelInputError(f"input size must be positive, not {h}x{w}")
    if (model_h and int(h) != model_h) or (model_w and int(w) != model_w):
        raise LabelInputError(
            f"the model takes {model_h}x{model_w} images, not {h}x{w} (drop --input_height/--input_width)"
        )
    return ImageInput(int(h), int(w), m, s)


def spectrogram_settings_for(labeler: Labeler):
    """The :class:`SpectrogramSettings` the model was trained with (sidecar), else the
    defaults (a graph without a sidecar, such as one retrain.py wrote)."""
    from soundretrain.spectrogram_settings import SpectrogramSettings

    d = (labeler.sidecar or {}).get("spectrogram")
    try:
        return SpectrogramSettings.from_dict(d) if d else SpectrogramSettings()
    except (TypeError, ValueError) as e:
        raise LabelInputError(f"the sidecar's spectrogram settings are invalid: {e}") from None


# --- images -----------------------------------------------------------------------


def load_image(path: str) -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]`` (PNG, JPEG, ... via Pillow)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise LabelInputError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise LabelInputError(f"{path}: not an image file (PNG, JPEG, ... expected)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise LabelInputError(f"{path}: cannot decode image: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def prepare_image(rgb: np.ndarray, image_input: ImageInput) -> np.ndarray:
    """uint8 RGB -> float32 ``[height, width, 3]``: resize if needed, then scale."""
    if rgb.shape[:2] != (image_input.height, image_input.width):
        # Not Pillow's resize: its pass order changed in Pillow 13; the exported audio-in
        # graph runs these same taps.
        rgb = resize_uint8(rgb, image_input.height, image_input.width)
    return (rgb.astype(np.float32) - np.float32(image_input.mean)) / np.float32(image_input.std)


# --- audio ------------------------------------------------------------------------


@dataclass
class WindowResult:
    start: float  # seconds into the source
    probabilities: np.ndarray
    silent: bool = False


@dataclass
class LabelResult:
    """The labels of one input: a summary and, for audio, one entry per window."""

    source: str
    kind: str  # "image" | "audio"
    probabilities: np.ndarray
    windows: list = field(default_factory=list)
    duration: Optional[float] = None  # seconds of audio (audio inputs)


@dataclass(frozen=True)
class AudioInput:
    """How audio becomes model input."""

    settings: object  # SpectrogramSettings
    hop_seconds: Optional[float] = None  # None: the settings' window hop (or duration)
    image_input: Optional[ImageInput] = None  # None for a waveform model

    def __post_init__(self) -> None:
        problem = hop_problem(float(self.settings.duration), self.hop_seconds, int(self.settings.sample_rate))
        if problem:
            raise LabelSettingsError(problem)


def hop_problem(window_seconds: float, hop_seconds: Optional[float], sample_rate: int) -> Optional[str]:
    """Why ``hop_seconds`` between windows of ``window_seconds`` is refused, or None: more
    than :data:`MAX_WINDOWS_PER_WINDOW` windows would overlap (a hop is at least a sample)."""
    if hop_seconds is None:
        return None
    hop = max(float(hop_seconds), 1.0 / sample_rate)
    if window_seconds / hop <= MAX_WINDOWS_PER_WINDOW * (1 + 1e-9):
        return None
    smallest = window_seconds / MAX_WINDOWS_PER_WINDOW
    return (f"--hop_seconds {hop_seconds:g} would cut {1 / hop:,.0f} windows per second of audio "
            f"({3600 / hop:,.0f} an hour), {window_seconds / hop:,.0f} overlapping at any moment of the model's "
            f"{window_seconds:g} s windows; give --hop_seconds {smallest:g} or more (at most "
            f"{MAX_WINDOWS_PER_WINDOW} overlap)")


def audio_rates(labeler: Labeler, audio_input: AudioInput) -> list[int]:
    """The sample rates audio is needed at: the spectrogram's for image models (and
    image parts of a backbone), each waveform module's own rate. The first one is the
    reference for windows and silence."""
    if labeler.audio_in or labeler.module_rates is not None:  # one rate, resampled per module inside
        return [int(labeler.sample_rate)]
    rates = []
    for part in labeler.backbone_parts or [None]:
        if part is not None and part.input_spec.kind == "waveform":
            rate = int(part.input_spec.sample_rate)
        else:
            rate = int(audio_input.settings.sample_rate)
        if rate not in rates:
            rates.append(rate)
    return rates


def audio_windows(ys: dict, audio_input: AudioInput) -> tuple[list[float], list[bool], dict]:
    """Cut the audio into windows: their starts (seconds), which are silent, and
    ``{rate: [(start, y_window), ...]}`` (views into ``ys``, no copies)."""
    from soundretrain.audio import is_silent, split_windows

    settings = audio_input.settings
    hop = audio_input.hop_seconds if audio_input.hop_seconds is not None else settings.hop_seconds
    windows = {sr: split_windows(y, sr, settings.duration, hop, settings.pad_mode) for sr, y in ys.items()}
    reference = windows[next(iter(ys))]
    starts = [float(start) for start, _ in reference]
    silent = [bool(is_silent(w)) for _, w in reference]
    return starts, silent, windows


def window_model_inputs(windows: dict, labeler: Labeler, audio_input: AudioInput,
                        first: int = 0, stop: Optional[int] = None) -> np.ndarray:
    """What the model takes for windows ``first:stop`` of :func:`audio_windows`: images
    for an image model, backbone features for a head-only model."""
    from soundretrain.render import render_clip

    settings = audio_input.settings
    count = len(next(iter(windows.values())))
    stop = count if stop is None else min(stop, count)

    def images(sr: int, image_input: ImageInput) -> np.ndarray:
        wins = windows[sr][first:stop]  # rounding may give one window more at another rate
        return np.stack([prepare_image(render_clip(w, sr, settings), image_input) for _, w in wins])

    if labeler.audio_in:  # the model renders the spectrogram itself
        wins = windows[int(labeler.sample_rate)][first:stop]
        return np.stack([w for _, w in wins]).astype(np.float32)
    if not labeler.head_only:
        return images(int(settings.sample_rate), audio_input.image_input)
    features = []
    for part in labeler.backbone_parts:
        spec = part.input_spec
        if spec.kind == "waveform":
            rate = int(spec.sample_rate)
            if rate in windows:
                x = np.stack([w for _, w in windows[rate][first:stop]]).astype(np.float32)
            else:  # windows at the model's one rate, resampled as the bottleneck stage did
                from soundretrain.resample import resample

                source = next(iter(windows))
                x = resample(np.stack([w for _, w in windows[source][first:stop]]), source, rate)
        else:  # image part: [0, 1] input as in the bottleneck stage
            x = images(int(settings.sample_rate), ImageInput(int(spec.height), int(spec.width), 0.0, 255.0))
        features.append(np.asarray(part.compute(x), dtype=np.float32))
    return np.concatenate(features, axis=1)


def audio_model_inputs(
    ys: dict, labeler: Labeler, audio_input: AudioInput
) -> tuple[list[float], list[bool], np.ndarray]:
    """Cut the audio into windows and build what the model takes.

    ``ys`` maps each rate of :func:`audio_rates` to the audio at that rate. Returns the
    window starts (seconds), which windows are silent, and the batch: images for an
    image model, backbone features for a head-only model. Holds every window's input at
    once: for long audio use :func:`label_windows`.
    """
    starts, silent, windows = audio_windows(ys, audio_input)
    return starts, silent, window_model_inputs(windows, labeler, audio_input, 0, len(starts))


def label_windows(labeler: Labeler, ys: dict, audio_input: AudioInput, batch_size: int = 32,
                  source: str = "", progress: Optional[bool] = False) -> "LabelResult":
    """Label audio window by window, ``batch_size`` windows per model call, so memory
    stays flat however long the recording (an hour at a 4 s hop is 900 images).
    ``progress``: a bar in seconds of audio when there is more than one batch (None: only
    on a terminal)."""
    starts, silent, windows = audio_windows(ys, audio_input)
    first = next(iter(ys))
    duration = len(ys[first]) / first
    probs = []
    with _seconds_bar(duration, source, progress if len(starts) > batch_size else False) as bar:
        for i in range(0, len(starts), batch_size):
            probs.append(predict_inputs(labeler, window_model_inputs(windows, labeler, audio_input, i, i + batch_size)))
            last = starts[min(i + batch_size, len(starts)) - 1]
            bar.update(min(bar.total, last + audio_input.settings.duration) - bar.n)
    summary, results = summarise(starts, silent, np.concatenate(probs))
    return LabelResult(source, "audio", summary, results, duration)


def _seconds_bar(seconds: float, source: str, progress: Optional[bool]):
    """A tqdm bar over ``seconds`` of audio; ``progress`` None: only on a terminal."""
    from tqdm import tqdm

    name = os.path.basename(source) if source else "audio"
    return tqdm(total=round(seconds, 1), unit="s", desc=name[:30], disable=None if progress is None else not progress,
                leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")


#: Recordings longer than this are decoded block by block (:func:`label_long_recording`).
STREAM_SECONDS = 120.0


def recording_seconds(path: str) -> Optional[float]:
    """The length of an audio file from its header (an MP3's from its frames), or None when
    libsndfile cannot tell."""
    from soundretrain.audio import audio_header

    try:
        frames, samplerate, _ = audio_header(path)
    except Exception:  # not for libsndfile: decoded whole, as always
        return None
    return frames / samplerate if samplerate > 0 and frames > 0 else None


def label_long_recording(labeler: Labeler, path: str, audio_input: AudioInput, batch_size: int = 32,
                         progress: Optional[bool] = None) -> LabelResult:
    """:func:`label_windows` of a file, decoded and labelled block by block: memory holds a
    block, a batch of windows and the per-window probabilities, never the recording
    (an hour at 48 kHz would be 690 MB). Same windows and probabilities as decoding whole.
    ``progress``: a bar in seconds of audio (None: only on a terminal)."""
    from soundretrain.audio import AudioReadError, is_silent
    from soundretrain.audio_stream import AudioStream, stream_windows

    settings = audio_input.settings
    hop = audio_input.hop_seconds if audio_input.hop_seconds is not None else settings.hop_seconds
    rates = audio_rates(labeler, audio_input)
    try:
        streams = {sr: AudioStream(path, sr) for sr in rates}
        reference = streams[rates[0]]
        starts, silent, probs = [], [], []
        batch: dict = {sr: [] for sr in rates}

        def flush():
            if batch[rates[0]]:
                probs.append(predict_inputs(labeler, window_model_inputs(batch, labeler, audio_input)))
                for sr in rates:
                    batch[sr] = []

        with _seconds_bar(reference.duration, path, progress) as bar:
            windows = zip(*(stream_windows(streams[sr], settings.duration, hop, settings.pad_mode) for sr in rates))
            for per_rate in windows:
                start, y = per_rate[0]
                starts.append(float(start))
                silent.append(bool(is_silent(y)))
                for sr, item in zip(rates, per_rate):
                    batch[sr].append(item)
                if len(batch[rates[0]]) >= batch_size:
                    flush()
                    bar.update(min(bar.total, start + settings.duration) - bar.n)
            flush()
            bar.update(bar.total - bar.n)
    except AudioReadError as e:
        raise LabelInputError(f"{e.path}: {e.reason}") from None
    if not starts:
        raise LabelInputError(f"{path}: no audio samples (zero-length clip)")
    if all(silent):
        raise LabelInputError(f"{path}: the audio is silent (nothing to label)")
    summary, results = summarise(starts, silent, np.concatenate(probs))
    return LabelResult(path, "audio", summary, results, reference.duration)


def predict_inputs(labeler: Labeler, batch: np.ndarray) -> np.ndarray:
    """Probabilities for a batch from :func:`audio_model_inputs` or of images."""
    return labeler.predict_features(batch) if labeler.head_only else labeler.predict(batch)


def decode_audio(path: str, rates: Sequence[int]) -> dict:
    """``{rate: y}`` via ``load_audio``, errors as :class:`LabelInputError`; refuses silence."""
    from soundretrain.audio import AudioReadError, is_silent, load_audio

    ys = {}
    for sr in rates:
        try:
            ys[sr] = load_audio(path, sr)
        except AudioReadError as e:
            raise LabelInputError(f"{e.path}: {e.reason}") from None
        if is_silent(ys[sr]):
            raise LabelInputError(f"{path}: the audio is silent (nothing to label)")
    return ys


def summarise(starts: Sequence[float], silent: Sequence[bool], probabilities: np.ndarray) -> tuple[np.ndarray, list]:
    """Mean of the non-silent windows' probabilities (all windows when all are silent)."""
    windows = [WindowResult(s, p, q) for s, q, p in zip(starts, silent, probabilities)]
    keep = [i for i, q in enumerate(silent) if not q] or list(range(len(windows)))
    return probabilities[keep].mean(axis=0), windows


def label_waveform(labeler: Labeler, y: np.ndarray, sr: int, audio_input: AudioInput, source: str = "") -> LabelResult:
    """Label audio already in memory (the microphone's recordings)."""
    from soundretrain.audio import to_sample_rate

    y = np.asarray(y, dtype=np.float32)
    ys = {}
    for rate in audio_rates(labeler, audio_input):
        if rate == sr:
            ys[rate] = y
        else:
            ys[rate] = to_sample_rate(y, sr, rate)
    return label_windows(labeler, ys, audio_input, source=source)


# --- many files in batches ----------------------------------------------------------


@dataclass
class _Pending:
    source: str
    kind: str
    starts: list
    silent: list
    count: int
    duration: Optional[float] = None


def label_files(
    labeler: Labeler,
    paths: Sequence[str],
    kind: str,
    *,
    image_input: Optional[ImageInput] = None,
    audio_input: Optional[AudioInput] = None,
    batch_size: int = 32,
    progress: bool = False,
    stream_seconds: float = STREAM_SECONDS,
) -> Iterator[tuple[str, Optional[LabelResult], Optional[str]]]:
    """Label ``paths`` (all ``"image"`` or all ``"audio"``), ``batch_size`` model inputs
    per call. Yields ``(path, result, None)`` or ``(path, None, error_line)`` in order."""
    from tqdm import tqdm

    rates = audio_rates(labeler, audio_input) if kind == "audio" else None
    pending: list = []  # _Pending or (path, error)
    inputs: list = []

    def flush():
        nonlocal pending, inputs
        predict = labeler.predict if kind == "image" else (lambda b: predict_inputs(labeler, b))
        probs = predict(np.concatenate(inputs)) if inputs else None
        offset = 0
        for item in pending:
            if isinstance(item, tuple):
                yield item[0], None, item[1]
                continue
            p = probs[offset: offset + item.count]
            offset += item.count
            if item.kind == "image":
                yield item.source, LabelResult(item.source, "image", p[0]), None
            else:
                summary, windows = summarise(item.starts, item.silent, p)
                yield item.source, LabelResult(item.source, "audio", summary, windows, item.duration), None
        pending, inputs = [], []

    queued = 0
    for path in tqdm(paths, desc=f"labelling {kind}", unit="file", disable=None if progress else True,
                     leave=False):  # None: no bar when stderr is not a terminal
        try:
            if kind == "image":
                batch = prepare_image(load_image(path), image_input)[None]
                pending.append(_Pending(path, "image", [0.0], [False], 1))
            else:
                seconds = recording_seconds(path)
                if seconds is not None and seconds > stream_seconds:  # bounded memory, on its own
                    yield from flush()
                    queued = 0
                    yield path, label_long_recording(labeler, path, audio_input, batch_size,
                                                     True if progress else None), None
                    continue
                ys = decode_audio(path, rates)
                starts, silent, windows = audio_windows(ys, audio_input)
                if len(starts) > batch_size:  # a long recording: on its own, in chunks
                    yield from flush()
                    queued = 0
                    yield path, label_windows(labeler, ys, audio_input, batch_size, path,
                                              True if progress else None), None
                    continue
                batch = window_model_inputs(windows, labeler, audio_input)
                first = next(iter(ys))
                pending.append(_Pending(path, "audio", starts, silent, len(starts), len(ys[first]) / first))
            inputs.append(batch)
            queued += len(batch)
        except LabelInputError as e:
            pending.append((path, str(e)))
        if queued >= batch_size:
            yield from flush()
            queued = 0
    yield from flush()


def find_files(folder: str, extensions: Iterable[str]) -> list[str]:
    """Files under ``folder`` (recursively) with one of ``extensions``, sorted."""
    exts = tuple(e.lower() for e in extensions)
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in files if f.lower().endswith(exts) and not f.startswith("."))
    return sorted(found)


# --- output ---------------------------------------------------------------------


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable ``(label, score)`` pairs, best first."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [(labels[i], float(probabilities[i])) for i in order]


def decision(probabilities: np.ndarray, labels: Sequence[str], open_set=None) -> tuple[str, float]:
    """The answer for one input: the best class, or ``unknown`` when the model's open-set
    threshold says no class fits (or its ``_background_`` class wins); ``open_set``: a
    :class:`soundretrain.open_set.OpenSet` (None: the best class, always)."""
    if open_set is None:
        (label, score), = top_k(probabilities, labels, 1)
        return label, score
    return open_set.label(probabilities, labels)


def result_dict(result: LabelResult, labels: Sequence[str], k: int, open_set=None) -> dict:
    """A JSON-ready view of ``result``: ``label``/``score`` is the :func:`decision` (for the
    whole input and each window), ``top`` the ``k`` most probable classes."""
    label, score = decision(result.probabilities, labels, open_set)
    d = {
        "source": result.source,
        "kind": result.kind,
        "label": label,
        "score": round(score, 6),
        "top": [{"label": label, "score": round(score, 6)} for label, score in top_k(result.probabilities, labels, k)],
    }
    if result.kind == "audio":
        d["windows"] = [
            {
                "start": round(w.start, 3),
                "silent": w.silent,
                "label": decision(w.probabilities, labels, open_set)[0],
                "top": [{"label": label, "score": round(score, 6)} for label, score in top_k(w.probabilities, labels, k)],
            }
            for w in result.windows
        ]
    return d


def write_csv(path: str, rows: Sequence[LabelResult], labels: Sequence[str], open_set=None) -> None:
    """One row per input: ``path,windows,label,score`` (the :func:`decision`) then one column
    per class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "windows", "label", "score", *labels])
    for r in rows:
        label, score = decision(r.probabilities, labels, open_set)
        writer.writerow(
            [r.source, max(1, len(r.windows)), label, f"{score:.6f}",
             *(f"{p:.6f}" for p in r.probabilities)]
        )
    atomic_files.write_text(path, buf.getvalue())
