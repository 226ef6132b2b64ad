"""``label_image --serve``: a local web page and HTTP API for a trained model.

The page (``label/web/``, plain HTML/CSS/JS served from here, nothing from a CDN)
records from the microphone, takes uploads, or listens continuously with the energy
trigger of :mod:`label.mic`; it shows what the model says about each clip. It uses
the same HTTP API a script would:

* ``POST /v1/label``: the body is an audio file's bytes (or a multipart form with one
  file); the answer is ``label_image --json``'s result for it (``top``, ``windows``),
  plus the clip's duration and, with ``?display=1``, what the page draws: each
  window's spectrogram as the model saw it (``render_clip``) and a waveform envelope.
* ``GET /v1/model``: labels, sample rate, window length, test accuracy, the limits and
  the trigger's parameters.

Labelling goes through :mod:`label.labeling` (``decode_audio`` then ``label_windows``),
exactly as ``label_image --audio`` does. Each loaded copy of the model serves one request
at a time (a TFLite interpreter must not run on two threads): one copy serialises the model
calls, ``--pool_size`` copies run that many in parallel. Decoding runs outside the pool.

Safe by default: loopback only unless ``--host`` says otherwise (and then a warning),
``Host`` headers checked on loopback (so a web page elsewhere cannot reach the server
through DNS rebinding), upload size and duration limits, and a bounded queue. Every
bad upload is a 4xx JSON ``{"error": "..."}``.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations,
# and Request is imported inside create_app (fastapi loads only when serving).
import asyncio
import base64
import contextlib
import dataclasses
import io
import ipaddress
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from label.labeling import (AUDIO_EXTENSIONS, AudioInput, LabelInputError, audio_rates, audio_windows,
                            decode_audio, label_windows, result_dict)
from label.mic import TriggerSettings, trigger_parameters
from label.models import Labeler, ModelRunError

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WAVEFORM_POINTS = 1000  # min/max pairs sent for drawing the waveform
MAX_DISPLAY_WINDOWS = 500  # spectrograms sent with ?display=1; later windows get none

log = logging.getLogger("label.serve")


@dataclass(frozen=True)
class ServeSettings:
    """How the server listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 25 * 2**20
    max_seconds: float = 300.0  # longest clip accepted
    top_k: int = 5
    batch_size: int = 32
    max_waiting: int = 32  # requests waiting for the model before 503
    upload_timeout: float = 60.0  # seconds a request may take to arrive whole (headers, then body)
    record_seconds: Optional[float] = None  # the page's recordings; None: the model's window
    pool_size: int = 1  # copies of the model labelling in parallel
    trigger: TriggerSettings = field(default_factory=TriggerSettings)
    ssl_certfile: Optional[str] = None  # https: browsers allow the microphone off localhost
    ssl_keyfile: Optional[str] = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_certfile else "http"

    def problems(self) -> list[str]:
        p = []
        if not 0 <= self.port <= 65535:
            p.append(f"--port must be between 0 and 65535, not {self.port}")
        if not self.max_upload_bytes > 0:
            p.append("--max_upload_mb must be positive")
        if not self.max_seconds > 0:
            p.append(f"--max_seconds must be positive, not {self.max_seconds}")
        if self.pool_size < 1:
            p.append(f"--pool_size must be at least 1, not {self.pool_size}")
        if not self.upload_timeout > 0:
            p.append(f"--upload_timeout must be positive, not {self.upload_timeout}")
        if self.ssl_keyfile and not self.ssl_certfile:
            p.append("--ssl_keyfile goes with --ssl_certfile")
        return p + self.trigger.problems()

    def check_certificate(self) -> None:
        """Load the certificate and key once, so a bad file is one line before the
        model loads (uvicorn would fail later with a traceback)."""
        if not self.ssl_certfile:
            return
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        except FileNotFoundError as e:
            raise OSError(f"cannot use the certificate: {e.filename or self.ssl_certfile}: no such file") from None
        except (ssl.SSLError, OSError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise OSError(f"cannot use --ssl_certfile {self.ssl_certfile}"
                          f"{' / --ssl_keyfile ' + self.ssl_keyfile if self.ssl_keyfile else ''}: {reason} "
                          "(a PEM certificate and its private key)") from None


def too_big_message(limit: int) -> str:
    return f"upload too large: the limit is {limit / 2**20:g} MB (--max_upload_mb)"


class UploadError(Exception):
    """A request we refuse: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """``Host`` header -> host name without the port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _display_name(filename: Optional[str]) -> str:
    name = os.path.basename((filename or "").replace("\\", "/")).strip()
    return "".join(c for c in name if c.isprintable())[:200] or "upload"


def spectrogram_png_data_url(y: np.ndarray, sr: int, settings) -> str:
    """``render_clip``'s pixels as a PNG data URL. One coloured channel goes as a palette PNG
    (``render_clip_indices`` + the colormap: the same pixels at a third of an RGB PNG's
    size); three channels (red, green, blue) as an RGB PNG."""
    from PIL import Image

    from soundretrain.render import colormap_lut, render_clip, render_clip_indices

    if settings.coloured:
        image = Image.fromarray(render_clip_indices(y, sr, settings), mode="P")
        image.putpalette(colormap_lut(settings.colormap).astype(np.uint8).ravel().tolist())
    else:
        image = Image.fromarray(render_clip(y, sr, settings), mode="RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def waveform_envelope(y: np.ndarray, points: int = WAVEFORM_POINTS) -> dict:
    """``{"min": [...], "max": [...]}``: ``points`` buckets of ``y`` (fewer for a short clip)."""
    n = int(y.shape[0])
    points = max(1, min(points, n))
    edges = np.linspace(0, n, points + 1).astype(np.int64)
    lo = np.minimum.reduceat(y, edges[:-1])
    hi = np.maximum.reduceat(y, edges[:-1])
    return {"min": [round(float(v), 4) for v in lo], "max": [round(float(v), 4) for v in hi]}


class LabelService:
    """Labels uploaded audio bytes with a pool of loaded copies of one model.

    Each copy serves one request at a time (a TFLite interpreter must not run on two
    threads); with one copy, model calls are serialised. More copies let requests use
    more cores (TFLite runs on one thread unless ``--num_threads`` says otherwise), at
    the cost of one model's memory each.
    """

    def __init__(self, labelers: Union[Labeler, Sequence[Labeler]], audio_input: AudioInput,
                 settings: ServeSettings) -> None:
        labelers = [labelers] if isinstance(labelers, Labeler) else list(labelers)
        self.labeler = labelers[0]  # what all copies share: labels, sidecar, input kind
        self.audio_input = audio_input
        self.settings = settings
        self.rates = audio_rates(self.labeler, audio_input)
        self.pool: "queue.Queue[Labeler]" = queue.Queue()
        for labeler in labelers:
            self.pool.put(labeler)
        self.pool_size = len(labelers)
        self.waiting = 0  # requests admitted and not yet answered (event-loop thread only)

    @contextlib.contextmanager
    def model(self):
        """A copy of the model for this thread alone, returned to the pool afterwards."""
        labeler = self.pool.get()
        try:
            yield labeler
        finally:
            self.pool.put(labeler)

    def warm_up(self) -> None:
        """Label one window of quiet noise, so the first visitor does not wait for the
        lazy imports and the interpreter's first call (seconds on a laptop)."""
        from soundretrain.audio import to_sample_rate

        seconds = self.audio_input.settings.duration
        y = (0.01 * np.random.default_rng(0).standard_normal(int(self.rates[0] * seconds))).astype(np.float32)
        ys = {rate: to_sample_rate(y, self.rates[0], rate) for rate in self.rates}
        copies = [self.pool.get() for _ in range(self.pool_size)]
        try:
            for labeler in copies:
                label_windows(labeler, ys, self.audio_input, self.settings.batch_size)
        finally:
            for labeler in copies:
                self.pool.put(labeler)
        self._add_display({"windows": [{}]}, ys)

    def model_info(self) -> dict:
        """What ``GET /v1/model`` answers."""
        side = self.labeler.sidecar or {}
        spectrogram = self.audio_input.settings
        hop = self.audio_input.hop_seconds
        module = side.get("module") or {}
        return {
            "model": os.path.basename(os.path.normpath(self.labeler.path)),
            "format": self.labeler.format,
            "labels": list(self.labeler.labels),
            "sample_rate": int(spectrogram.sample_rate),
            "sample_rates": list(self.rates),
            "window_seconds": float(spectrogram.duration),
            "hop_seconds": float(hop if hop is not None else spectrogram.hop_seconds),
            "test_accuracy": side.get("test_accuracy"),
            "module": module.get("name"),
            "input_kind": self.labeler.input_kind,
            "image_size": int(spectrogram.image_size),
            "top_k": self.settings.top_k,
            "pool_size": self.pool_size,
            "limits": {"max_upload_bytes": self.settings.max_upload_bytes,
                       "max_seconds": self.settings.max_seconds},
            "record_seconds": self.record_seconds,
            "trigger": trigger_parameters(dataclasses.replace(self.settings.trigger,
                                                              record_seconds=self.record_seconds)),
        }

    @property
    def record_seconds(self) -> float:
        """What the page records (and the trigger after an event): ``--record_seconds``, else
        the model's window (a 3 s recording padded to a 4 s window looped in its spectrogram)."""
        explicit = self.settings.record_seconds
        return float(self.audio_input.settings.duration if explicit is None else explicit)

    def label_bytes(self, data: bytes, filename: Optional[str] = None, top_k: Optional[int] = None,
                    display: bool = False) -> dict:
        """Label one uploaded file; raises :class:`UploadError` for anything we refuse."""
        started = time.perf_counter()
        name = _display_name(filename)
        if not data:
            raise UploadError(400, "empty upload: send the audio file's bytes as the request body")
        if len(data) > self.settings.max_upload_bytes:
            raise UploadError(413, self._too_big())
        k = self.settings.top_k if top_k is None else top_k
        if k < 1:
            raise UploadError(400, f"top_k must be at least 1, not {k}")
        k = min(k, len(self.labeler.labels))
        ys = self._decode(data, name)
        with self.model() as labeler:
            result = label_windows(labeler, ys, self.audio_input, self.settings.batch_size, source=name)
        answer = result_dict(result, self.labeler.labels, k, self.labeler.open_set)  # label: "unknown" too
        reference = ys[self.rates[0]]
        answer.update(duration=round(reference.shape[0] / self.rates[0], 3),
                      window_seconds=float(self.audio_input.settings.duration))
        for w in answer["windows"]:  # a short clip's window ends where the clip does (padded to the window)
            w["end"] = round(min(w["start"] + answer["window_seconds"], answer["duration"]), 3)
        if display:
            self._add_display(answer, ys)
        answer["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return answer

    def _too_big(self) -> str:
        return too_big_message(self.settings.max_upload_bytes)

    def _decode(self, data: bytes, name: str) -> dict:
        ext = os.path.splitext(name)[1].lower()
        suffix = ext if ext in AUDIO_EXTENSIONS else ""
        with tempfile.TemporaryDirectory(prefix="soundretrain-serve-") as tmp:
            path = os.path.join(tmp, "upload" + suffix)
            with open(path, "wb") as f:
                f.write(data)
            return decode_file(path, name, self.rates, self.settings.max_seconds)

    def _add_display(self, answer: dict, ys: dict) -> None:
        """Each window's spectrogram as the model saw it, and the waveform envelope."""
        settings = self.audio_input.settings
        rate = int(settings.sample_rate)
        if rate not in ys:  # a waveform model: render the display at the spectrogram rate
            from soundretrain.audio import to_sample_rate

            ys = {rate: to_sample_rate(ys[self.rates[0]], self.rates[0], rate), **ys}
        _, _, windows = audio_windows({rate: ys[rate]}, self.audio_input)
        for entry, (_, y) in zip(answer["windows"][:MAX_DISPLAY_WINDOWS], windows[rate]):
            entry["spectrogram"] = spectrogram_png_data_url(y, rate, settings)
        # An audio-in model renders inside, with render_clip's TensorFlow twin: the same picture.
        answer["spectrogram_as_model_input"] = self.labeler.input_kind == "image" or bool(
            getattr(self.labeler, "audio_in", False))
        answer["waveform"] = waveform_envelope(ys[self.rates[0]])
        answer["clip_spectrogram"] = clip_spectrogram(ys[rate], rate, settings)
        answer["pad_mode"] = settings.pad_mode


def _too_long(name: str, seconds: float, max_seconds: float) -> str:
    return f"{name}: {seconds:.1f} s of audio is longer than the limit of {max_seconds:g} s (--max_seconds)"


def decode_file(path: str, name: str, rates: Sequence[int], max_seconds: float) -> dict:
    """``{rate: y}`` of an uploaded file, or :class:`UploadError`: 413 longer than
    ``max_seconds`` (from the header before decoding, when libsndfile can say), 422 what
    ``label_image`` refuses (not audio, truncated, silent, NaN), named ``name``."""
    from soundretrain.audio import audio_header  # an MP3's frames, not a header that lies

    try:
        frames, samplerate, _ = audio_header(path)
        seconds = frames / samplerate if samplerate > 0 else 0.0
    except Exception:  # not readable by libsndfile: decode_audio gives the reason
        seconds = 0.0
    if seconds > max_seconds:
        raise UploadError(413, _too_long(name, seconds, max_seconds))
    try:
        ys = decode_audio(path, rates)
    except LabelInputError as e:
        raise UploadError(422, str(e).replace(path, name)) from None
    seconds = ys[rates[0]].shape[0] / rates[0]
    if seconds > max_seconds:  # a format we could not measure before decoding
        raise UploadError(413, _too_long(name, seconds, max_seconds))
    return ys


def clip_spectrogram(y: np.ndarray, sr: int, settings, max_columns: int = 1500) -> dict:
    """The whole clip's log-mel spectrogram for display under its waveform (not the square
    model input): the model's mel bands, ``frames`` columns ``hop_seconds`` apart (neighbours
    max-pooled past ``max_columns``), as a palette PNG with the frequency of each band, so
    the page can draw time and frequency axes lined up with the waveform."""
    import librosa
    from PIL import Image

    from soundretrain.audio import to_sample_rate
    from soundretrain.render import colormap_lut, log_mel

    rate = int(settings.sample_rate)
    y = to_sample_rate(np.asarray(y, np.float32), sr, rate)
    S = log_mel(y, rate, settings)  # [n_mels, frames], dB below the clip's loudest bin
    step = max(1, -(-S.shape[1] // max_columns))
    if step > 1:
        width = -(-S.shape[1] // step) * step
        S = np.pad(S, ((0, 0), (0, width - S.shape[1])), constant_values=-settings.top_db)
        S = S.reshape(S.shape[0], -1, step).max(axis=2)
    indices = np.clip((S[::-1] + settings.top_db) * (255.0 / settings.top_db) + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    colormap = settings.colormap if settings.coloured else "viridis"
    image.putpalette(colormap_lut(colormap).astype(np.uint8).ravel().tolist())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    fmax = float(settings.fmax or rate / 2)
    centres = librosa.mel_frequencies(settings.n_mels + 2, fmin=float(settings.fmin), fmax=fmax)[1:-1]
    return {"image": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
            "seconds": round(len(y) / rate, 4), "column_seconds": step * settings.hop_length / rate,
            "fmin": float(settings.fmin), "fmax": fmax, "band_hz": [round(float(f), 1) for f in centres],
            "top_db": float(settings.top_db)}


# --- the web application ----------------------------------------------------------


def create_app(service: Optional[LabelService], loopback_only: bool = True, studio=None):
    """The FastAPI application: the page, ``/static``, ``/v1/model`` and ``/v1/label``; with a
    :class:`label.studio.Studio`, its project's API too, and the model it has trained (none at first)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="soundretrain label_image --serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    settings = studio.settings if studio is not None else service.settings

    def error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.middleware("http")
    async def check_host(request: Request, call_next):
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example.
        if loopback_only and not is_loopback(_host_name(request.headers.get("host", "localhost"))):
            return error(400, "this server answers only to localhost addresses (start it with --host to serve others)")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            message = f"not found: {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return error(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error(400, f"bad parameter {where}: {first.get('msg', 'invalid')}".strip())

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.exception("error while answering %s %s", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(os.path.join(WEB_DIR, "index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(os.path.join(WEB_DIR, "favicon.svg"), media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    def current() -> Optional[LabelService]:
        return studio.service if studio is not None else service

    @app.get("/v1/model")
    async def model():
        return studio.model_info() if studio is not None else service.model_info()

    @app.post("/v1/label")
    async def label(request: Request, filename: Optional[str] = None, top_k: Optional[int] = None,
                    display: bool = False):
        # Only a request whose body has fully arrived waits for the model: a slow or stalled
        # upload holds a connection until its deadline, never a place in the queue.
        try:
            data, form_name = await read_upload(request, settings)
        except UploadError as e:
            return upload_error(e)
        except ClientGone as e:
            log_disconnect(request, e)
            return error(400, "the client disconnected")
        service = current()
        if service is None:
            return error(409, "no model yet: add clips of at least 2 classes and train (POST /v1/train)")
        if service.waiting >= service.settings.max_waiting:
            return error(503, f"busy: {service.waiting} requests are waiting for the model; retry shortly",
                         {"Retry-After": "1"})
        service.waiting += 1
        try:
            answer = await run_in_threadpool(service.label_bytes, data, filename or form_name, top_k, display)
            return answer
        except UploadError as e:
            return error(e.status, e.message)
        except ModelRunError as e:
            log.error("model failed: %s", e)
            return error(500, f"the model failed on this input: {e}")
        finally:
            service.waiting -= 1

    if studio is not None:
        from label.studio import add_routes

        add_routes(app, studio)
    return app


def upload_error(e: "UploadError"):
    """The JSON answer to a refused upload; a body we stopped reading (too large, too slow)
    closes the connection, since the rest of it would otherwise arrive as the next request."""
    from fastapi.responses import JSONResponse

    headers = {"Connection": "close"} if e.status in (408, 413) else None
    return JSONResponse({"error": e.message}, status_code=e.status, headers=headers)


class ClientGone(Exception):
    """The client closed the connection while its request body was arriving."""

    def __init__(self, received: int) -> None:
        super().__init__(f"disconnected after {received} bytes")
        self.received = received


def log_disconnect(request, gone: ClientGone) -> None:
    """One line for an aborted upload (it is the client's choice, not a server error)."""
    client = request.client
    who = f"{client.host}:{client.port}" if client else "a client"
    log.info("%s %s: %s disconnected after sending %d bytes of its body", request.method, request.url.path,
             who, gone.received)


async def read_body(request, limit: int, too_big: str, timeout: float) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, and (408) when it
    has not arrived whole within ``timeout`` seconds: an overall deadline, so a client sending
    one byte now and then cannot hold the request open."""
    from starlette.requests import ClientDisconnect

    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise UploadError(413, too_big)
        except ValueError:
            raise UploadError(400, f"bad Content-Length: {length[:40]!r}") from None
    chunks, size = [], 0

    async def receive_all() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise UploadError(413, too_big)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive_all(), timeout)
    except asyncio.TimeoutError:
        raise UploadError(408, f"upload too slow: {size} bytes arrived in {timeout:g} s, and the whole "
                               "request must arrive within that (--upload_timeout)") from None
    except ClientDisconnect:
        raise ClientGone(size) from None
    return b"".join(chunks)


async def read_upload(request, settings: ServeSettings) -> tuple[bytes, Optional[str]]:
    """Audio bytes from a raw body, or from the one file of a multipart form
    (``curl -F file=@clip.wav``); with the file name the form gave."""
    from starlette.requests import Request

    limit = settings.max_upload_bytes
    too_big = too_big_message(limit)
    # Any body but a multipart form is the audio itself, whatever its Content-Type: `curl
    # --data-binary @clip.wav` labels it application/x-www-form-urlencoded.
    body = await read_body(request, limit + 64 * 1024 if _is_form(request) else limit, too_big,
                            settings.upload_timeout)
    if not _is_form(request):
        return body, None
    replayed = False

    async def receive():  # feed the bytes already read to Starlette's form parser
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=16, max_part_size=limit)
    except Exception as e:  # MultiPartException, malformed boundaries, too many files
        raise UploadError(400, f"cannot read the multipart form: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        files = [v for v in form.values() if hasattr(v, "read") and hasattr(v, "filename")]
        if not files:
            raise UploadError(400, "the form has no file: send one with -F file=@clip.wav (or the raw bytes)")
        data = await files[0].read()
        if len(data) > limit:
            raise UploadError(413, too_big)
        return data, files[0].filename
    finally:
        await form.close()


def _is_form(request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port`` 0: any free port); ``OSError`` with a
    clear message when it cannot be had (port in use, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {host}:{port}: unknown host ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets' connections,
    # and without it every keep-alive answer waited ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = " (pass another --port)" if e.errno in (98, 48) else ""
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
    sock.set_inheritable(True)
    return sock


def url_for(sock: socket.socket, host: str, scheme: str = "http") -> str:
    """The URL to open on this machine: an unspecified address (``0.0.0.0``, ``::``) is not
    one a browser can open, so it is shown as loopback of the same family."""
    port = sock.getsockname()[1]
    shown = host.strip("[]")
    if shown in ("", "0.0.0.0"):
        shown = "127.0.0.1"
    elif _is_unspecified(shown):
        shown = "::1"
    shown = f"[{shown}]" if ":" in shown else shown
    return f"{scheme}://{shown}:{port}/"


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""


def network_urls(sock: socket.socket, host: str, scheme: str = "http") -> list[str]:
    """URLs other machines can use when listening on every address (``0.0.0.0``, ``::``): this
    machine's address on the interface of its default route, per family (no packet is sent;
    an offline machine has none)."""
    if not _is_unspecified(host):
        return [] if is_loopback(host) else [url_for(sock, host, scheme)]
    port = sock.getsockname()[1]
    families = [(socket.AF_INET, "192.0.2.1")]
    if sock.family == socket.AF_INET6:
        families.append((socket.AF_INET6, "2001:db8::1"))
    urls = []
    for family, probe in families:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                address = s.getsockname()[0]
        except OSError:
            continue
        if not ipaddress.ip_address(address).is_loopback:
            urls.append(f"{scheme}://{f'[{address}]' if ':' in address else address}:{port}/")
    return urls


def _protocol_class(header_timeout: float):
    """uvicorn's h11 protocol with a deadline for a request's headers: from the connection
    (or the previous answer) until the request line and headers have arrived. uvicorn has
    none, so a client sending a header byte now and then held its connection for ever, and
    enough of them filled ``limit_concurrency``. The body has its own deadline (the app's)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        header_timer = None

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self.header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _cancel_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers arrived
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._arm_header_timer()  # before: a pipelined request may start inside
            super().on_response_complete()

    return DeadlineH11Protocol


def _server(service: Optional[LabelService], host: str, access_log: bool, studio=None):
    import uvicorn

    settings = studio.settings if studio is not None else service.settings
    app = create_app(service, loopback_only=is_loopback(host), studio=studio)
    # Connections, not requests waiting for the model: a request holds one only until its
    # deadlines (headers, then the body), so the limit is generous.
    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            timeout_keep_alive=5, limit_concurrency=max(256, 4 * settings.max_waiting),
                            http=_protocol_class(settings.upload_timeout),
                            server_header=False, ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile)
    return uvicorn.Server(config)


def log_like_uvicorn(level: int = logging.INFO) -> None:
    """This module's lines in uvicorn's format (``INFO:     ...``) on stderr, beside its own."""
    if log.handlers:
        return
    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def serve(service: Optional[LabelService], sock: socket.socket, access_log: bool = True, studio=None) -> None:
    """Run the server on ``sock`` until Ctrl-C (uvicorn handles the signal)."""
    log_like_uvicorn()
    settings = studio.settings if studio is not None else service.settings
    server = _server(service, settings.host, access_log, studio)
    asyncio.run(server.serve(sockets=[sock]))


class BackgroundServer:
    """The server on a thread of this process, for tests and benchmarks:
    ``with BackgroundServer(service) as url: ...``; stops on exit."""

    def __init__(self, service: Optional[LabelService], host: str = "127.0.0.1", port: int = 0, studio=None) -> None:
        self.sock = bind_socket(host, port)
        settings = studio.settings if studio is not None else service.settings
        self.url = url_for(self.sock, host, settings.scheme)
        self.server = _server(service, host, access_log=False, studio=studio)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
                                       name="label-serve", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
