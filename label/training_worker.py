"""The studio's training worker: the ``train`` command in a child process, supervised.

``POST /v1/train`` snapshots the project's clips (hard links: clips added or deleted while it
trains change nothing under it) and runs ``python -m flows.train --audio_dir SNAPSHOT
--output_dir .studio/model --status_file ...`` (the label package never imports the flows
package, which sits above it). The child writes its progress to the status file, which
``GET /v1/train`` reads; SIGTERM cancels it; it replaces the model folder whole only when it
succeeds, so a failed or cancelled run leaves the old model. The server then loads the new one.

The worker's own record (``.studio/train.json``, replaced atomically) says what was asked
and how it ended. A server killed while training (``kill -9`` included: the child gets SIGTERM
when its parent dies, Linux's ``PR_SET_PDEATHSIG``) finds the record still ``running`` when it
starts again, and trains again ("resumed"), unless the child had finished.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from label.project import BACKGROUND_CLASS, Project, ProjectError
from soundretrain import atomic_files

RECORD = "train.json"
STATUS = "status.json"
LOG = "train.log"
SNAPSHOT = "snapshot"
WORK = "work"
MIN_CLIPS = 2  # per class: fewer cannot be split into training and evaluation
KILL_AFTER_S = 60.0  # a cancelled child still running after this is killed

# Run the command with PR_SET_PDEATHSIG = SIGTERM (kept across exec), so the child stops
# cleanly (the train command's cancel: old model kept) if the server dies, even by kill -9.
# prctl in the child itself, not in preexec_fn (not safe in a threaded parent).
_LAUNCHER = (
    "import ctypes, os, runpy, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the server stopped before training started')\n"
    "module = sys.argv[2]\n"
    "sys.argv = [module] + sys.argv[3:]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_json(path: str) -> Optional[dict]:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


class TrainingWorker:
    """One training at a time for a project; ``on_model(model_dir)`` loads what it made."""

    def __init__(self, project: Project, on_model: Callable[[str], None],
                 module: str = "flows.train", flagfile: Optional[str] = None,
                 extra_args: Sequence[str] = (), min_clips: int = MIN_CLIPS,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.project = project
        self.on_model = on_model
        self.module = module
        self.flagfile = flagfile
        self.extra_args = list(extra_args)
        self.min_clips = min_clips
        self.log = log
        studio = project.studio
        self.record_path = os.path.join(studio, RECORD)
        self.status_path = os.path.join(studio, STATUS)
        self.log_path = os.path.join(studio, LOG)
        self.snapshot_dir = os.path.join(studio, SNAPSHOT)
        self.work_dir = os.path.join(studio, WORK)
        self.model_dir = project.model_dir
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None
        self._cancelled = False
        self._stopping = False
        self.record = read_json(self.record_path) or {"state": "idle"}

    # --- state -----------------------------------------------------------------------

    def _save(self) -> None:
        atomic_files.write_text(self.record_path, json.dumps(self.record, indent=1) + "\n")

    @property
    def running(self) -> bool:
        return self.record.get("state") == "running"

    def status(self) -> dict:
        """``GET /v1/train``: the record, with the child's live progress while it runs."""
        with self._lock:
            record = dict(self.record)
        out = {"state": record.get("state", "idle"), "step": 0, "total_steps": 0, "progress": 0.0,
               "accuracy": None, "curve": [], "stage": None, "message": record.get("message", "")}
        for key in ("id", "started", "finished", "classes", "resumed"):
            if key in record:
                out[key] = record[key]
        child = self._child_status(record)
        if child:
            for key in ("stage", "step", "total_steps", "progress", "accuracy", "curve"):
                if key in child:
                    out[key] = child[key]
            if out["state"] == "running" and child.get("message"):
                out["message"] = child["message"]
        if record.get("started"):
            end = record.get("finished_at") or time.time()
            out["elapsed_s"] = round(end - record.get("started_at", end), 1)
        if out["state"] == "done":
            out["progress"] = 1.0
        return out

    def _child_status(self, record: dict) -> Optional[dict]:
        if not record.get("started_at"):
            return None
        try:
            if os.path.getmtime(self.status_path) < record["started_at"] - 1:
                return None  # an earlier run's
        except OSError:
            return None
        return read_json(self.status_path)

    # --- starting --------------------------------------------------------------------

    def check_data(self) -> dict[str, int]:
        """Clips per class to train on, or :class:`ProjectError` (400) saying what is missing."""
        counts = self.project.counts()
        classes = {name: n for name, n in counts.items() if n > 0 and name != BACKGROUND_CLASS}
        if len(classes) < 2:
            have = f"only {next(iter(classes))!r} has clips" if classes else "no class has clips yet"
            raise ProjectError(400, f"training needs clips of at least 2 classes ({have}): record, upload "
                                    "or drop some")
        short = sorted(name for name, n in counts.items() if 0 < n < self.min_clips)
        if short:
            raise ProjectError(400, f"class {short[0]!r} has {counts[short[0]]} clip; each class needs at least "
                                    f"{self.min_clips} (5 or more train a better model)")
        return counts

    def command(self) -> list[str]:
        args = ["--audio_dir", self.snapshot_dir, "--output_dir", self.model_dir, "--status_file",
                self.status_path, "--work_dir", self.work_dir, "--noprogress"]
        if self.flagfile:
            args += ["--flagfile", self.flagfile]
        return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), self.module, *args, *self.extra_args]

    def start(self, resumed: bool = False) -> dict:
        """Start training (``POST /v1/train``); :class:`ProjectError` 409 while one runs."""
        with self._lock:
            if self.running and self._thread is not None and self._thread.is_alive():
                raise ProjectError(409, "training is running already (DELETE /v1/train cancels it)")
            counts = self.check_data()
            snapshot = self.project.snapshot(self.snapshot_dir, min_clips=1)
            os.makedirs(self.work_dir, exist_ok=True)
            started = time.time()
            self.record = {"state": "running", "id": time.strftime("%Y%m%d-%H%M%S"), "started": _now(),
                           "started_at": started, "classes": {n: c for n, c in counts.items() if n in snapshot},
                           "message": "starting", "resumed": resumed}
            self._cancelled = False
            self._save()
            ready = threading.Event()
            self._thread = threading.Thread(target=self._supervise, args=(self.command(), ready),
                                            name="studio-training", daemon=True)
            self._thread.start()
        ready.wait(60)
        self.log(f"training started on {sum(snapshot.values())} clips of {len(snapshot)} classes"
                 f"{' (resumed after a restart)' if resumed else ''}")
        return self.status()

    def _environment(self) -> dict:
        env = dict(os.environ)
        # The flows package beside the label package (a source checkout) even when the
        # installed distribution predates it.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.isdir(os.path.join(root, self.module.split(".")[0])):
            env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return env

    def _supervise(self, command: list[str], ready: threading.Event) -> None:
        """Runs on its own thread for the child's whole life (the parent-death signal is tied
        to the thread that started the child)."""
        try:
            with open(self.log_path, "wb") as log_file:
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                        env=self._environment(), close_fds=True)
        except OSError as e:
            self._finish("failed", f"cannot start the train command: {e.strerror or e}")
            ready.set()
            return
        with self._lock:
            self._proc = proc
            self.record["pid"] = proc.pid
            self._save()
        ready.set()
        code = proc.wait()
        with self._lock:
            self._proc = None
        child = self._child_status(self.record) or {}
        if self._stopping:  # the server is stopping: the record stays "running", to resume
            return
        if self._cancelled:
            self._finish("cancelled", "cancelled; the previous model (if any) is kept")
        elif code == 0 and child.get("state") == "done":
            self._load_model(child)
        else:
            message = child.get("message") if child.get("state") == "failed" else ""
            message = message or _last_line(self.log_path) or f"the train command exited with status {code}"
            self._finish("failed", message)

    def _load_model(self, child: dict) -> None:
        try:
            self.on_model(self.model_dir)
        except Exception as e:  # noqa: BLE001 - said in the status, the old model stays in use
            self._finish("failed", f"trained, but the new model cannot be loaded: {str(e).splitlines()[0] if str(e) else e}")
            return
        accuracy = child.get("accuracy")
        self._finish("done", child.get("message") or "done", accuracy)

    def _finish(self, state: str, message: str, accuracy: Optional[float] = None) -> None:
        with self._lock:
            self.record.update(state=state, message=message, finished=_now(), finished_at=time.time())
            self.record.pop("pid", None)
            if accuracy is not None:
                self.record["accuracy"] = accuracy
            self._save()
        self.log(f"training {state}: {message}")

    # --- stopping --------------------------------------------------------------------

    def cancel(self) -> dict:
        """``DELETE /v1/train``: SIGTERM to the child (it exits leaving the old model)."""
        with self._lock:
            proc = self._proc
            if not self.running or proc is None:
                raise ProjectError(409, "no training is running")
            self._cancelled = True
            proc.send_signal(signal.SIGTERM)
        threading.Thread(target=self._kill_later, args=(proc,), daemon=True).start()
        return self.status()

    @staticmethod
    def _kill_later(proc: subprocess.Popen) -> None:
        try:
            proc.wait(KILL_AFTER_S)
        except subprocess.TimeoutExpired:
            proc.kill()

    def shutdown(self, timeout: float = 30.0) -> None:
        """The server is stopping: stop the child (its record stays ``running``, so the next
        start trains again)."""
        with self._lock:
            proc = self._proc
            self._stopping = True
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def resume(self) -> None:
        """At start-up: a training the last server did not see end runs again (a child that
        finished meanwhile is taken as it ended)."""
        if not self.running:
            return
        self._stop_orphan(self.record.get("pid"))
        child = self._child_status(self.record) or {}
        if child.get("state") == "done" and os.path.isdir(self.model_dir):
            self._load_model(child)
            return
        try:
            self.start(resumed=True)
        except ProjectError as e:
            self._finish("failed", f"could not resume after a restart: {e.message}")

    def _stop_orphan(self, pid: Optional[int]) -> None:
        """A child of the last server still running (no parent-death signal outside Linux)."""
        if not pid:
            return
        try:
            with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
                if self.status_path.encode() not in f.read():
                    return  # another process has that pid now
        except OSError:
            return
        try:
            os.kill(int(pid), signal.SIGTERM)
        except OSError:
            return
        deadline = time.monotonic() + KILL_AFTER_S
        while time.monotonic() < deadline and os.path.exists(f"/proc/{int(pid)}"):
            time.sleep(0.2)
