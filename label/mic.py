"""Listen for sound events: a pluggable capture source and an energy trigger.

The trigger works on the RMS level of short blocks (50 ms) in dBFS against an
adaptive noise floor, an exponential moving average of the level that follows the
room while nothing happens. A block louder than ``floor + trigger_db`` starts a
recording of ``record_seconds`` (plus a short pre-roll, so the onset is not cut).
After a recording the trigger re-arms only once the level has fallen back below the
threshold, so one long sound gives one event, not a stream of them.

webrtcvad is not used as the trigger: it detects speech, and the sounds we label
(sirens, dogs, drills) are mostly not speech.

Sources share one interface: ``sample_rate`` and ``blocks(frames)``, an iterator of
float32 mono blocks; :class:`FileSource` streams a WAV file through exactly the code
path :class:`SoundDeviceSource` (PortAudio) uses.
"""
from __future__ import annotations

import collections
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator, Optional

import numpy as np

SILENCE_DB = -120.0  # level reported for digital silence
SILENCE_RMS = 1e-6  # an RMS below this is digital silence
LOUD_SLOWDOWN = 10.0  # the noise floor moves this much slower during an event


class NoInputDeviceError(RuntimeError):
    """No audio input can be opened; the message is one line."""


class FileSource:
    """Streams an audio file in blocks, as a microphone would (optionally in real time).

    The file is checked as ``--audio`` checks one (``soundretrain.audio``): a truncated
    file or NaN/infinite samples are refused before listening starts, in one streamed pass.
    """

    def __init__(self, path: str, realtime: bool = False) -> None:
        from soundretrain.audio import AudioReadError, open_audio, read_blocks, refuse_truncated

        if not os.path.isfile(path):  # libsndfile says only "System error"
            raise NoInputDeviceError(f"cannot open {path} as an input: "
                                     f"{'it is a folder' if os.path.isdir(path) else 'no such file'}")
        try:
            with open_audio(path) as f:  # an MP3 to its last frame, whatever its header says
                refuse_truncated(f)
                self.sample_rate = int(f.samplerate)
                frames = 0
                for block in read_blocks(f, 1 << 16):
                    frames += len(block)
                    if not np.all(np.isfinite(block)):
                        raise AudioReadError(path, "audio contains NaN or infinite samples")
        except AudioReadError as e:
            raise NoInputDeviceError(f"cannot use {path} as an input: {e.reason}") from None
        except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
            raise NoInputDeviceError(f"cannot open {path} as an input: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if frames == 0:
            raise NoInputDeviceError(f"cannot use {path} as an input: no audio samples (zero-length clip)")
        self.path = path
        self.realtime = realtime

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        from soundretrain.audio import open_audio, read_blocks, to_mono  # to_mono: opposite phases do not cancel

        start = time.monotonic()
        done = 0
        with open_audio(self.path, warn=False) as f:  # __init__ warned
            for block in read_blocks(f, frames):
                if self.realtime:
                    wait = start + done / self.sample_rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                done += len(block)
                yield to_mono(block, self.sample_rate)


class SoundDeviceSource:
    """The default (or a named) input device through sounddevice/PortAudio."""

    def __init__(self, device=None) -> None:
        try:
            import sounddevice as sd
        except OSError:
            raise NoInputDeviceError(
                "no audio input: the PortAudio library is not installed (apt-get install libportaudio2)"
            ) from None
        except ImportError:
            raise NoInputDeviceError("no audio input: the sounddevice package is not installed (pip install sounddevice)") from None
        self._sd = sd
        try:
            info = sd.query_devices(device, kind="input")
        except Exception as e:  # ValueError or PortAudioError when there is none
            what = f"input device {device!r}" if device is not None else "default input device"
            raise NoInputDeviceError(f"no audio input: {what} not found ({str(e).splitlines()[0] if str(e) else 'none'})") from None
        self.device = device
        self.name = info.get("name", "input")
        self.sample_rate = int(info.get("default_samplerate") or 44100)

    def prefer_sample_rate(self, sample_rate: int) -> None:
        """Record at ``sample_rate`` (the model's) when the device allows, saving a resample."""
        try:
            self._sd.check_input_settings(device=self.device, samplerate=sample_rate, channels=1, dtype="float32")
            self.sample_rate = int(sample_rate)
        except Exception:
            pass  # keep the device's default rate; labelling resamples

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        try:
            stream = self._sd.InputStream(
                samplerate=self.sample_rate, blocksize=frames, device=self.device, channels=1, dtype="float32"
            )
        except Exception as e:
            raise NoInputDeviceError(f"cannot open input device {self.name!r}: {str(e).splitlines()[0]}") from None
        with stream:
            while True:
                data, _overflowed = stream.read(frames)
                yield np.asarray(data[:, 0], dtype=np.float32).copy()


def level_db(block: np.ndarray) -> float:
    """RMS level of ``block`` in dBFS (``SILENCE_DB`` for digital silence)."""
    rms = math.sqrt(float(np.mean(np.square(block, dtype=np.float64)))) if block.size else 0.0
    return 20.0 * math.log10(rms) if rms > SILENCE_RMS else SILENCE_DB


@dataclass(frozen=True)
class TriggerSettings:
    record_seconds: float = 3.0
    trigger_db: float = 12.0  # a block this far above the noise floor starts an event
    block_seconds: float = 0.05
    preroll_seconds: float = 0.25
    adapt_seconds: float = 2.0  # time constant of the noise floor
    min_floor_db: float = -70.0  # the floor never drops below: digital silence is not a room

    def problems(self) -> list[str]:
        p = []
        if not self.record_seconds > 0:
            p.append(f"--record_seconds must be positive, not {self.record_seconds}")
        if not self.trigger_db > 0:
            p.append(f"--trigger_db must be positive, not {self.trigger_db}")
        return p


def trigger_parameters(settings: TriggerSettings) -> dict:
    """Every number the trigger uses, for a re-implementation to follow (the web page's
    ``label/web/trigger.js`` reads them from ``GET /v1/model``)."""
    from dataclasses import asdict

    return {**asdict(settings), "silence_db": SILENCE_DB, "silence_rms": SILENCE_RMS,
            "loud_slowdown": LOUD_SLOWDOWN}


class EnergyTrigger:
    """Decides per block whether a sound event starts, tracking the noise floor."""

    def __init__(self, settings: TriggerSettings) -> None:
        self.settings = settings
        self.floor_db: Optional[float] = None
        self._alpha = min(1.0, settings.block_seconds / settings.adapt_seconds)

    @property
    def threshold_db(self) -> float:
        return (self.floor_db if self.floor_db is not None else self.settings.min_floor_db) + self.settings.trigger_db

    def is_loud(self, level: float) -> bool:
        return self.floor_db is not None and level > self.threshold_db

    def update(self, level: float) -> None:
        """Move the floor toward ``level``; events (loud blocks) move it 10x slower,
        so a long event hardly raises it but a lasting change of room is learned."""
        if self.floor_db is None:
            self.floor_db = max(level, self.settings.min_floor_db)
            return
        alpha = self._alpha / LOUD_SLOWDOWN if self.is_loud(level) else self._alpha
        self.floor_db = max(self.settings.min_floor_db, self.floor_db + alpha * (level - self.floor_db))


@dataclass
class SoundEvent:
    """A recording that the trigger started."""

    start_seconds: float  # offset of the trigger block in the stream
    wall_time: datetime
    y: np.ndarray
    sr: int
    level_db: float  # level of the trigger block
    floor_db: float  # noise floor when it triggered


def detect_events(source, settings: TriggerSettings,
                  stop: Optional[Callable[[], None]] = None) -> Iterator[SoundEvent]:
    """Yield one :class:`SoundEvent` per triggered recording until the source ends.

    A recording cut short by the end of the source is still yielded (labelling pads
    it to the training duration). ``stop()`` is called before each block; it raises to
    end the loop (Ctrl-C's flag, see ``soundretrain.command_line.InterruptWatch``).
    """
    sr = int(source.sample_rate)
    frames = max(1, int(round(settings.block_seconds * sr)))
    preroll = collections.deque(maxlen=max(1, int(round(settings.preroll_seconds / settings.block_seconds))))
    need = int(round(settings.record_seconds * sr))
    trigger = EnergyTrigger(settings)
    armed = True
    recording: Optional[list] = None
    event: Optional[SoundEvent] = None
    recorded = 0
    position = 0  # samples read so far
    for block in source.blocks(frames):
        if stop is not None:
            stop()
        level = level_db(block)
        if recording is not None:
            recording.append(block)
            recorded += len(block)
            if recorded >= need:
                event.y = np.concatenate(recording)
                yield event
                recording = None
        else:
            loud = trigger.is_loud(level)
            if loud and armed:
                event = SoundEvent(position / sr, datetime.now(), None, sr, level, float(trigger.floor_db))
                recording = list(preroll) + [block]
                recorded = len(block)
                armed = False
                preroll.clear()
            else:
                armed = armed or not loud
                preroll.append(block)
        trigger.update(level)
        position += len(block)
    if recording is not None:
        event.y = np.concatenate(recording)
        yield event
