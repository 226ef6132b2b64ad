"""The one exception type every retrain stage raises for bad input."""
from __future__ import annotations


class RetrainError(ValueError):
    """Bad input to the retrain stage; the message is one line saying what and how to fix."""


class RetrainInterrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying what the interrupted step leaves behind."""
