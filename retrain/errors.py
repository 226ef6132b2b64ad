"""The one exception type every retrain stage raises for bad input."""
from __future__ import annotations


class RetrainError(ValueError):
    """Bad input to the retrain stage; the message is one line saying what and how to fix."""
