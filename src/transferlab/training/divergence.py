"""Stopping a run whose loss runs away, before it wastes the rest of its budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from transferlab.errors import TrainingDiverged


@dataclass
class DivergenceGuard:
    """Stops a run whose training loss is not finite, or above `factor` x its first step's loss (taken
    before any update) for `patience` steps in a row: a learning rate too high destroys the
    pretrained features (catastrophic forgetting), and every further step is wasted time."""

    factor: float = 4.0
    patience: int = 5
    start: float | None = None
    above: int = 0

    def check(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss} at step {step}")
        if self.start is None:
            self.start = loss
            return
        self.above = self.above + 1 if loss > self.factor * max(self.start, 1e-3) else 0
        if self.above >= self.patience:
            raise TrainingDiverged(
                f"the training loss stayed above {self.factor:g}x its start ({self.start:.3f}) for {self.patience} steps "
                f"(at {loss:.3g} by step {step}): the learning rate is too high"
            )
