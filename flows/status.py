"""Progress for a supervising process, and cancellation by signal.

:class:`StatusFile` keeps one JSON object at ``--status_file``, replaced atomically at each
change (a reader never sees half of it)::

    {"state": "running"|"done"|"failed"|"cancelled",
     "stage": "spectrograms"|"bottlenecks"|"evaluating"|"training"|"export",
     "step": int, "total_steps": int, "progress": 0..1, "accuracy": float|null,
     "curve": [[step, train_accuracy, validation_accuracy|null], ...],
     "message": str, "output_dir": str, "report": path|null}

``progress`` runs over the whole flow (each stage has its share of it), so a bar that reads
it only moves forward. :func:`cancel_on_signals` turns SIGTERM (and SIGINT) into
:class:`Cancelled` in the main thread, so a flow stops where it is and cleans up.
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from typing import Iterator, Optional

from soundretrain import atomic_files

STATES = ("running", "done", "failed", "cancelled")
#: Each stage's share of the whole flow's progress, in order (measured on small sets: the
#: bottlenecks and the k-fold heads take most of the time; TensorFlow's start is in "bottlenecks").
STAGE_SHARES = {"spectrograms": 0.10, "bottlenecks": 0.30, "evaluating": 0.25, "training": 0.20,
                "export": 0.15}
MIN_INTERVAL_S = 0.25  # at most this often for progress-only changes (a stage change always writes)
MAX_CURVE_POINTS = 200


class Cancelled(KeyboardInterrupt):
    """SIGTERM or SIGINT: the flow stops, leaving its output as it was."""


class StatusFile:
    """The status object, written to ``path`` (nothing when ``path`` is None)."""

    def __init__(self, path: Optional[str], output_dir: str) -> None:
        self.path = path
        self.data = {"state": "running", "stage": "spectrograms", "step": 0, "total_steps": 0,
                     "progress": 0.0, "accuracy": None, "curve": [], "message": "starting",
                     "output_dir": output_dir, "report": None}
        self._last_write = 0.0
        self.write(force=True)

    def _base(self, stage: str) -> float:
        total = 0.0
        for name, share in STAGE_SHARES.items():
            if name == stage:
                return total
            total += share
        return total

    def stage(self, stage: str, message: str, total_steps: int = 0) -> None:
        self.data.update(stage=stage, message=message, step=0, total_steps=int(total_steps),
                         progress=max(self.data["progress"], round(self._base(stage), 4)))
        self.write(force=True)

    def advance(self, step: int, total_steps: int, message: Optional[str] = None) -> None:
        stage = self.data["stage"]
        fraction = min(1.0, step / total_steps) if total_steps > 0 else 0.0
        progress = self._base(stage) + STAGE_SHARES.get(stage, 0.0) * fraction
        self.data.update(step=int(step), total_steps=int(total_steps),
                         progress=round(max(self.data["progress"], min(progress, 1.0)), 4))
        if message:
            self.data["message"] = message
        self.write()

    def point(self, step: int, train_accuracy: float, validation_accuracy: Optional[float]) -> None:
        curve = self.data["curve"]
        curve.append([int(step), round(float(train_accuracy), 4),
                      None if validation_accuracy is None else round(float(validation_accuracy), 4)])
        if len(curve) > MAX_CURVE_POINTS:  # keep the file small: every other point, the last kept
            self.data["curve"] = curve[:-1][::2] + [curve[-1]]

    def finish(self, state: str, message: str, accuracy: Optional[float] = None,
               report: Optional[str] = None) -> None:
        assert state in STATES
        self.data.update(state=state, message=message)
        if accuracy is not None:
            self.data["accuracy"] = accuracy
        if report is not None:
            self.data["report"] = report
        if state == "done":
            self.data["progress"] = 1.0
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        if not self.path:
            return
        now = time.monotonic()
        if not force and now - self._last_write < MIN_INTERVAL_S:
            return
        self._last_write = now
        atomic_files.write_text(self.path, json.dumps(self.data, allow_nan=False) + "\n",
                                durable=False)


class Signals:
    """What :func:`cancel_on_signals` caught: the stage that was interrupted may wrap the
    :class:`Cancelled` in its own KeyboardInterrupt, so the signal is kept here too."""

    def __init__(self) -> None:
        self.caught: Optional[str] = None

    def reason(self, default: str = "interrupted") -> str:
        return f"cancelled by {self.caught}" if self.caught else default

    def check(self) -> None:
        """Raise :class:`Cancelled` again if a signal came: the handler's exception is lost
        when the signal lands inside a ``__del__`` (Python only prints "Exception ignored")."""
        if self.caught:
            raise Cancelled(self.reason())


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[Signals]:
    """Within the block, SIGTERM and SIGINT raise :class:`Cancelled` in the main thread
    (the previous handlers come back after it). Outside the main thread: no change."""
    caught = Signals()
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):  # noqa: ARG001 - signal's signature
        caught.caught = signal.Signals(signum).name
        raise Cancelled(caught.reason())

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
