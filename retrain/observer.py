"""What a supervising caller hears of a retrain run (the ``train`` flow's status file, the
studio's worker): stages, progress within a stage, and each evaluation of the head. Every
method is a no-op here; a caller overrides what it needs."""
from __future__ import annotations

from typing import Optional


class RunObserver:
    def stage(self, name: str, total: int = 0) -> None:
        """A stage starts: ``bottlenecks``, ``evaluating`` (k-fold runs), ``training``, ``export``;
        ``total``: its units (inputs, folds, steps), 0 when unknown."""

    def advance(self, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current stage are finished."""

    def evaluation(self, step: int, total: int, train_accuracy: float,
                   validation_accuracy: Optional[float]) -> None:
        """The head was evaluated after 0-based ``step`` of ``total``."""
