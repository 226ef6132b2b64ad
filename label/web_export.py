"""``label_image --export_web DIR --graph MODEL``: the labelling page as a static folder that
runs the model in the browser (no server: any static host serves it; nothing leaves the device).

DIR holds the ``--serve`` page (``label/web/``: one page, two back-ends) switched to its
in-browser back-end, and::

    backend.json        what GET /v1/model answers that the model does not say (top_k, limits,
                        the microphone trigger's parameters), and where the model is
    model/              the TF.js graph model (model.json + weight shards)
    vendor/             TF.js, vendored from npm at build time (label.web_vendor)
    soundretrain.json   the model's sidecar

MODEL is a folder written by ``retrain --output_tfjs`` or an audio-in SavedModel
(``--audio_saved_model_dir``), converted on the way. DIR is replaced whole, and only when it
is missing, empty or an earlier export.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from label.mic import TriggerSettings, trigger_parameters
from label.web_vendor import VENDOR_DIR, VENDOR_FILES, VERSIONS_FILE, check_vendored
from soundretrain import atomic_files
from soundretrain.sidecar import SAVED_MODEL_SIDECAR, write_sidecar

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
PAGE_EXTENSIONS = (".html", ".js", ".css", ".svg")  # the page: every such file of label/web/ (not vendor/)
MODEL_FOLDER = "model"
CONFIG_FILE = "backend.json"


class WebExportError(ValueError):
    """The page cannot be exported as asked; the message is one line."""


@dataclass(frozen=True)
class WebExportSettings:
    top_k: int = 5
    max_upload_bytes: int = 25 * 2**20
    max_seconds: float = 300.0
    trigger: TriggerSettings = TriggerSettings()


def export_web(graph: str, output_dir: str, settings: WebExportSettings = WebExportSettings()) -> str:
    """Write the static page for ``graph`` into ``output_dir``; returns ``output_dir``."""
    from label.web_vendor import VendorError

    try:
        check_vendored()
    except VendorError as e:
        raise WebExportError(str(e)) from None
    graph = os.path.normpath(graph)
    if not os.path.isdir(graph):
        raise WebExportError(
            f"--export_web needs a model that takes sound in the browser: a folder written by retrain "
            f"--output_tfjs (or an audio-in SavedModel folder); {graph} is not a folder")
    output_dir = os.path.abspath(output_dir)
    if os.path.abspath(graph) == output_dir or output_dir.startswith(os.path.abspath(graph) + os.sep):
        raise WebExportError(f"--export_web {output_dir} would replace the model it exports; choose another folder")
    try:
        with atomic_files.replacing_folder(output_dir) as tmp:
            model_dir = os.path.join(tmp, MODEL_FOLDER)
            sidecar = _model_into(graph, model_dir)
            for name in page_files():
                shutil.copyfile(os.path.join(WEB_DIR, name), os.path.join(tmp, name))
            _make_static(os.path.join(tmp, "index.html"))
            os.makedirs(os.path.join(tmp, "vendor"))
            for name in (*VENDOR_FILES, VERSIONS_FILE):
                if os.path.isfile(os.path.join(VENDOR_DIR, name)):
                    shutil.copyfile(os.path.join(VENDOR_DIR, name), os.path.join(tmp, "vendor", name))
            config = {
                "model": f"{MODEL_FOLDER}/model.json",
                "model_name": os.path.basename(graph),
                "vendor": "vendor/",
                "top_k": min(int(settings.top_k), len(sidecar.get("labels") or [None])),
                "limits": {"max_upload_bytes": int(settings.max_upload_bytes), "max_seconds": float(settings.max_seconds)},
                "trigger": trigger_parameters(settings.trigger),
            }
            atomic_files.write_text(os.path.join(tmp, CONFIG_FILE), json.dumps(config, indent=1, sort_keys=True) + "\n")
            write_sidecar(tmp, sidecar)  # also marks the folder as an export that may be replaced
    except FileExistsError as e:
        raise WebExportError(f"{e.filename}: {e.strerror}") from None
    return output_dir


def page_files() -> list[str]:
    """The page's own files in label/web/ (HTML, JavaScript modules, CSS, icon)."""
    return sorted(name for name in os.listdir(WEB_DIR)
                  if name.endswith(PAGE_EXTENSIONS) and os.path.isfile(os.path.join(WEB_DIR, name)))


def _model_into(graph: str, model_dir: str) -> dict:
    """Copy (a TF.js folder) or convert (an audio-in SavedModel) ``graph`` into ``model_dir``."""
    from soundretrain.audio_export import AudioExportError
    from soundretrain.tfjs_export import METADATA_KEY, MODEL_JSON, convert_audio_saved_model

    model_json = os.path.join(graph, MODEL_JSON)
    if os.path.isfile(model_json):
        try:
            with open(model_json, encoding="utf-8") as f:
                sidecar = (json.load(f).get("userDefinedMetadata") or {}).get(METADATA_KEY)
        except (OSError, ValueError) as e:
            raise WebExportError(f"{model_json}: not a TF.js model ({e})") from None
        if not isinstance(sidecar, dict) or sidecar.get("model_input") != "waveform":
            raise WebExportError(f"{graph} is a TF.js model without soundretrain's description of its input "
                                 "(export it with retrain --output_tfjs)")
        shutil.copytree(graph, model_dir)
        return sidecar
    if os.path.isfile(os.path.join(graph, "saved_model.pb")):
        try:
            return convert_audio_saved_model(graph, model_dir)
        except AudioExportError as e:
            raise WebExportError(str(e)) from None
    raise WebExportError(f"{graph} holds neither a TF.js model ({MODEL_JSON}) nor a SavedModel: export one with "
                         "retrain --output_tfjs")


def _make_static(index_html: str) -> None:
    """The page served by ``--serve`` -> the same page on its in-browser back-end, with
    relative links (a static host may serve it from any sub-folder)."""
    with open(index_html, encoding="utf-8") as f:
        html = f.read()
    server_meta = '<meta name="soundretrain-backend" content="server">'
    if server_meta not in html:
        raise WebExportError(f"{index_html}: the page has no back-end switch ({server_meta})")
    html = html.replace(server_meta, server_meta.replace("server", "browser"))
    html = html.replace('"/static/', '"')
    atomic_files.write_text(index_html, html)


__all__ = ["export_web", "WebExportSettings", "WebExportError", "page_files", "CONFIG_FILE", "SAVED_MODEL_SIDECAR"]
