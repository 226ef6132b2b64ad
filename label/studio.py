"""The studio: ``label_image --serve --project_dir DIR``, the page and API that collect clips,
train a model on them and use it (Teachable Machine for real sounds).

:class:`Studio` joins the project folder (:mod:`label.project`), the training worker
(:mod:`label.training_worker`) and the model in use, which it swaps when training ends (the
labelling requests in flight finish with the old one). :func:`add_routes` adds the API:

=================================  ==========================================================
``GET /v1/dataset``                the classes with their clips
``PUT /v1/dataset/{class}``        create a class
``PATCH /v1/dataset/{class}``      rename it: ``{"name": "new"}``
``DELETE /v1/dataset/{class}``     delete it with its clips
``POST /v1/dataset/{class}``       add a clip: the audio as the body, or a multipart form
``GET /v1/dataset/{class}/{clip}`` the clip's audio
``PATCH /v1/dataset/{class}/{clip}``  move it to another class: ``{"class": "other"}``
``DELETE /v1/dataset/{class}/{clip}``  delete it
``POST /v1/train``                 start training (202)
``GET /v1/train``                  its state, step, accuracy curve, message
``DELETE /v1/train``               cancel it (202)
``GET /v1/train/report``           the last model's report (per-class accuracy, confusion matrix)
``GET /v1/train/log``              the train command's output (the end of it)
``GET /v1/export``                 what can be downloaded
``GET /v1/export/model/{file}``    one file of the model folder (``model_audio.tflite``, ...)
``GET /v1/export/model.zip``       the model folder
``GET /v1/export/project.zip``     the project: its clips in class folders, and the model
``GET /v1/export/web.zip``         the in-browser page with the model's TF.js version (a static
                                   site: ``label_image --export_web``), when the model has one
=================================  ==========================================================
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import threading
from typing import Callable, Optional

from label.project import (DuplicateClip, Project, ProjectError, Validated, check_class_name, class_label,
                           extension_of, media_type)
from label.serve import (ClientGone, LabelService, ServeSettings, UploadError, decode_file, log_disconnect,
                         read_body, read_upload, upload_error)
from label.training_worker import TrainingWorker, read_json
from label.mic import trigger_parameters
from soundretrain.tfjs_export import MODEL_JSON as TFJS_MODEL_JSON

log = logging.getLogger("label.serve")

# What the model folder's files are called (the train command's layout, docs/train.md), best first.
MODEL_FILES = ("model_audio.tflite", "model.tflite")
REPORT = "report.json"
LOG_TAIL_BYTES = 64 * 1024


def find_model(model_dir: str) -> Optional[str]:
    """The artifact to serve in a model folder: the audio-in TFLite, else the image TFLite,
    else any ``.tflite`` or SavedModel the report names (None: no model)."""
    if not os.path.isdir(model_dir):
        return None
    for name in MODEL_FILES:
        if os.path.isfile(os.path.join(model_dir, name)):
            return os.path.join(model_dir, name)
    report = read_json(os.path.join(model_dir, REPORT)) or {}
    for key in ("output_audio_tflite", "output_tflite", "audio_saved_model_dir", "saved_model_dir"):
        name = (report.get("files") or {}).get(key)
        if name and os.path.exists(os.path.join(model_dir, name)):
            return os.path.join(model_dir, name)
    return None


class Studio:
    """A project, its training worker and the model in use (None until one is trained)."""

    def __init__(self, project: Project, load_service: Callable[[str], LabelService],
                 settings: ServeSettings, default_spectrogram, train_flagfile: Optional[str] = None,
                 train_module: str = "flows.train", log_line: Callable[[str], None] = log.info) -> None:
        self.project = project
        self.settings = settings
        self.default_spectrogram = default_spectrogram  # a SpectrogramSettings: the window before any model
        self._load_service = load_service
        self._swap = threading.Lock()
        self.service: Optional[LabelService] = None
        self.model_path: Optional[str] = None
        self.worker = TrainingWorker(project, self.load_model, module=train_module, flagfile=train_flagfile,
                                     log=log_line)

    def start(self) -> None:
        """Load the project's model (if any), and resume a training a kill interrupted."""
        if find_model(self.project.model_dir) and not self.worker.running:
            self.load_model(self.project.model_dir)
        self.worker.resume()

    def load_model(self, model_dir: str) -> None:
        """Load the model folder's artifact and make it the one ``/v1/label`` uses."""
        path = find_model(model_dir)
        if path is None:
            raise FileNotFoundError(f"no model in {model_dir}")
        service = self._load_service(path)
        service.warm_up()
        with self._swap:
            self.service, self.model_path = service, path

    def model_info(self) -> dict:
        """``GET /v1/model``: the model's, or with none yet what the page needs to collect clips."""
        service = self.service
        if service is not None:
            info = service.model_info()
        else:
            spectrogram = self.default_spectrogram
            explicit = self.settings.record_seconds
            record = float(spectrogram.duration if explicit is None else explicit)
            info = {"model": None, "format": None, "labels": [], "sample_rate": int(spectrogram.sample_rate),
                    "sample_rates": [int(spectrogram.sample_rate)], "window_seconds": float(spectrogram.duration),
                    "hop_seconds": float(spectrogram.hop_seconds), "test_accuracy": None, "module": None,
                    "input_kind": None, "image_size": int(spectrogram.image_size), "top_k": self.settings.top_k,
                    "pool_size": 0, "limits": {"max_upload_bytes": self.settings.max_upload_bytes,
                                               "max_seconds": self.settings.max_seconds},
                    "record_seconds": record,
                    "trigger": trigger_parameters(dataclasses.replace(self.settings.trigger, record_seconds=record))}
        report = read_json(os.path.join(self.project.model_dir, REPORT)) if service else None
        info["project"] = {"name": os.path.basename(self.project.root), "trained": service is not None,
                           "accuracy": (report or {}).get("accuracy"),
                           "evaluation": ((report or {}).get("evaluation") or {}).get("method")}
        return info

    @property
    def rates(self) -> list[int]:
        service = self.service
        return list(service.rates) if service else [int(self.default_spectrogram.sample_rate)]

    def check_clip(self, path: str, name: str) -> Validated:
        """Refuse what ``/v1/label`` refuses (decoded as the model decodes); a format with no
        name of its own is stored as WAV."""
        rates = self.rates
        ys = decode_file(path, name, rates, self.settings.max_seconds)
        y = ys[rates[0]]
        seconds = round(len(y) / rates[0], 3)
        extension = extension_of(path, name)
        if extension is not None:
            return Validated(seconds, extension)
        import soundfile as sf

        converted = path + ".wav"
        sf.write(converted, y, rates[0], subtype="FLOAT")
        return Validated(seconds, ".wav", converted)

    def dataset(self) -> dict:
        data = self.project.dataset()
        labels = set(self.service.labeler.labels) if self.service else set()
        for c in data["classes"]:
            c["in_model"] = c["label"] in labels
        data.update(min_clips=self.worker.min_clips, training=self.worker.running)
        return data

    def downloads(self) -> dict:
        folder = self.project.model_dir
        files = []
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if name.startswith("."):
                    continue
                if os.path.isfile(path):
                    files.append({"name": name, "bytes": os.path.getsize(path), "url": f"/v1/export/model/{name}"})
                elif os.path.isdir(path):
                    files.append({"name": name + ".zip", "folder": True, "url": f"/v1/export/model/{name}.zip"})
                    if os.path.isfile(os.path.join(path, TFJS_MODEL_JSON)):
                        files[-1]["kind"] = "tfjs"
        tfjs = self.tfjs_folder()
        return {"model": files, "model_zip": "/v1/export/model.zip" if files else None,
                "project_zip": "/v1/export/project.zip", "serving": os.path.basename(self.model_path or "") or None,
                "tfjs": f"/v1/export/model/{os.path.basename(tfjs)}.zip" if tfjs else None,
                "web_zip": "/v1/export/web.zip" if tfjs and self.web_problem() is None else None}

    def tfjs_folder(self) -> Optional[str]:
        """The model folder's TF.js graph model (the train command's ``tfjs/``: a subfolder
        holding model.json), or None."""
        folder = self.project.model_dir
        if not os.path.isdir(folder):
            return None
        for name in sorted(os.listdir(folder)):
            if not name.startswith(".") and os.path.isfile(os.path.join(folder, name, TFJS_MODEL_JSON)):
                return os.path.join(folder, name)
        return None

    @staticmethod
    def web_problem() -> Optional[str]:
        """Why no in-browser page can be built here (TF.js not vendored), or None."""
        from label.web_vendor import VendorError, check_vendored

        try:
            check_vendored()
        except VendorError as e:
            return str(e)
        return None

    def web_zip(self, tfjs: str) -> str:
        """``label_image --export_web`` of ``tfjs`` with this server's settings, zipped as
        ``<project>-web/...`` into a temp file (the caller deletes it). Raises
        :class:`label.web_export.WebExportError` with one line."""
        import shutil

        from label.web_export import WebExportError, WebExportSettings, export_web

        top = f"{os.path.basename(self.project.root) or 'project'}-web"
        work = tempfile.mkdtemp(prefix="soundretrain-web-")
        try:
            site = os.path.join(work, top)
            try:
                export_web(tfjs, site, WebExportSettings(
                    top_k=self.settings.top_k, max_upload_bytes=self.settings.max_upload_bytes,
                    max_seconds=self.settings.max_seconds, trigger=self.settings.trigger))
            except OSError as e:  # the model folder swapped by a training meanwhile
                raise WebExportError(f"the model changed while the page was built ({e.strerror}); "
                                     "try again") from None
            entries = [(os.path.join(folder, name), os.path.relpath(os.path.join(folder, name), work))
                       for folder, dirs, names in os.walk(site) for name in sorted(names)]
            return _zip_entries(entries)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def model_entries(self, subfolder: Optional[str] = None):
        """``(path, name in a zip)`` of the model folder's files (or one subfolder's)."""
        root = self.project.model_dir
        base = os.path.join(root, subfolder) if subfolder else root
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    path = os.path.join(folder, name)
                    yield path, os.path.join("model", os.path.relpath(path, root))

    def shutdown(self) -> None:
        self.worker.shutdown()


def add_routes(app, studio: Studio) -> None:
    """The dataset, training and export endpoints (the labelling ones are serve.py's)."""
    from fastapi import Request
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool

    def error(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status)

    def refused(e):
        if isinstance(e, DuplicateClip):  # the page skips it when adding many
            return JSONResponse({"error": e.message, "duplicate_of": {"class": e.class_name, "id": e.clip}},
                                status_code=e.status)
        return error(e.status, e.message)

    async def json_body(request: Request) -> dict:
        try:  # within --upload_timeout, as every body
            raw = await read_body(request, 64 * 1024, "the JSON body is too large", studio.settings.upload_timeout)
        except (UploadError, ClientGone) as e:
            raise ProjectError(getattr(e, "status", 400), getattr(e, "message", "the client disconnected")) from None
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise ProjectError(400, "the body must be JSON, e.g. {\"name\": \"dog bark\"}") from None
        if not isinstance(data, dict):
            raise ProjectError(400, "the body must be a JSON object")
        return data

    def attachment(path: str, name: str, media: str, cleanup: Optional[str] = None):
        return FileResponse(path, media_type=media, filename=name, headers={"Cache-Control": "no-store"},
                            background=BackgroundTask(os.unlink, cleanup) if cleanup else None)

    @app.get("/v1/dataset")
    async def dataset():
        return await run_in_threadpool(studio.dataset)

    @app.put("/v1/dataset/{cls}")
    async def create_class(cls: str):
        try:
            name, created = studio.project.add_class(cls)
        except ProjectError as e:
            return refused(e)
        return JSONResponse({"name": name, "label": class_label(name), "created": created},
                            status_code=201 if created else 200)

    @app.patch("/v1/dataset/{cls}")
    async def rename_class(cls: str, request: Request):
        try:
            body = await json_body(request)
            if not isinstance(body.get("name"), str):
                raise ProjectError(400, "give the new name: {\"name\": \"new name\"}")
            name = studio.project.rename_class(cls, body["name"])
        except ProjectError as e:
            return refused(e)
        return {"name": name, "label": class_label(name)}

    @app.delete("/v1/dataset/{cls}")
    async def delete_class(cls: str):
        try:
            count = await run_in_threadpool(studio.project.delete_class, cls)
        except ProjectError as e:
            return refused(e)
        return {"deleted": check_class_name(cls), "clips": count}

    @app.post("/v1/dataset/{cls}")
    async def add_clip(cls: str, request: Request, filename: Optional[str] = None):
        try:
            check_class_name(cls)
            data, form_name = await read_upload(request, studio.settings)
            if not data:
                raise UploadError(400, "empty upload: send the audio file's bytes as the request body")
            stored = await run_in_threadpool(studio.project.add_clip, cls, data, filename or form_name,
                                             studio.check_clip)
        except ClientGone as e:
            log_disconnect(request, e)
            return error(400, "the client disconnected")
        except UploadError as e:
            return upload_error(e)
        except ProjectError as e:
            return refused(e)
        return JSONResponse(stored, status_code=201)

    @app.get("/v1/dataset/{cls}/{clip}")
    async def get_clip(cls: str, clip: str):
        try:
            path = studio.project.clip_path(cls, clip)
        except ProjectError as e:
            return refused(e)
        return FileResponse(path, media_type=media_type(clip), headers={"Cache-Control": "no-cache"})

    @app.patch("/v1/dataset/{cls}/{clip}")
    async def move_clip(cls: str, clip: str, request: Request):
        try:
            body = await json_body(request)
            if not isinstance(body.get("class"), str):
                raise ProjectError(400, "give the class to move it to: {\"class\": \"other class\"}")
            moved = studio.project.move_clip(cls, clip, body["class"])
        except ProjectError as e:
            return refused(e)
        return moved

    @app.delete("/v1/dataset/{cls}/{clip}")
    async def delete_clip(cls: str, clip: str):
        try:
            studio.project.delete_clip(cls, clip)
        except ProjectError as e:
            return refused(e)
        return {"deleted": clip, "class": cls}

    @app.post("/v1/train")
    async def train():
        try:
            started = await run_in_threadpool(studio.worker.start)
        except ProjectError as e:
            return refused(e)
        return JSONResponse(started, status_code=202)

    @app.get("/v1/train")
    async def train_status():
        return studio.worker.status()

    @app.delete("/v1/train")
    async def cancel_training():
        try:
            return JSONResponse(studio.worker.cancel(), status_code=202)
        except ProjectError as e:
            return refused(e)

    @app.get("/v1/train/report")
    async def report():
        data = read_json(os.path.join(studio.project.model_dir, REPORT))
        if data is None:
            return error(404, "no report: no model has been trained in this project")
        return data

    @app.get("/v1/train/log")
    async def train_log():
        path = studio.worker.log_path
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        return PlainTextResponse(text)

    @app.get("/v1/export")
    async def exports():
        return studio.downloads()

    @app.get("/v1/export/model.zip")
    async def model_zip():
        if not any(True for _ in studio.model_entries()):
            return error(404, "no model yet: train one first")
        target = await run_in_threadpool(_zip_entries, list(studio.model_entries()))
        return attachment(target, f"{os.path.basename(studio.project.root)}-model.zip", "application/zip", target)

    @app.get("/v1/export/project.zip")
    async def project_zip():
        def build() -> str:
            fd, target = tempfile.mkstemp(prefix="soundretrain-project-", suffix=".zip")
            os.close(fd)
            try:
                studio.project.write_zip(target, studio.model_entries())
            except BaseException:
                os.unlink(target)
                raise
            return target

        target = await run_in_threadpool(build)
        return attachment(target, f"{os.path.basename(studio.project.root)}.zip", "application/zip", target)

    @app.get("/v1/export/web.zip")
    async def web_zip():
        from label.web_export import WebExportError

        tfjs = studio.tfjs_folder()
        if tfjs is None:
            return error(404, "no TF.js model yet: the train command writes one (tfjs/) when the "
                         "tensorflowjs converter is installed (make install installs it)")
        problem = studio.web_problem()
        if problem:
            return error(503, problem)
        try:
            target = await run_in_threadpool(studio.web_zip, tfjs)
        except WebExportError as e:
            return error(409, str(e))
        return attachment(target, f"{os.path.basename(studio.project.root)}-web.zip", "application/zip", target)

    @app.get("/v1/export/model/{name}")
    async def model_file(name: str):
        folder = studio.project.model_dir
        if name.endswith(".zip") and os.path.isdir(os.path.join(folder, name[:-4])) and not name.startswith("."):
            target = await run_in_threadpool(_zip_entries, list(studio.model_entries(name[:-4])))
            return attachment(target, name, "application/zip", target)
        path = os.path.join(folder, name)
        if os.path.basename(name) != name or name.startswith(".") or not os.path.isfile(path):
            return error(404, f"no file {name!r} in the model folder")
        return attachment(path, name, "application/octet-stream")


def _zip_entries(entries) -> str:
    import zipfile

    fd, target = tempfile.mkstemp(prefix="soundretrain-model-", suffix=".zip")
    os.close(fd)
    try:
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
            for path, arcname in entries:
                with contextlib.suppress(FileNotFoundError):
                    z.write(path, arcname)
    except BaseException:
        os.unlink(target)
        raise
    return target
