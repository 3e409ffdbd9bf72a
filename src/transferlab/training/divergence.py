"""Stopping a run whose loss runs away, before it wastes the rest of its budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from transferlab.errors import TrainingDiverged


@dataclass
class DivergenceGuard:
    """Stops a run whose training loss is not finite, or above `factor` x its first step's loss (taken
    before any update) and above `floor` for `patience` steps in a row: a learning rate too high destroys the
    pretrained features (catastrophic forgetting), and every further step is wasted time.

    `floor`, a uniform guess's loss, keeps a run that starts near zero loss (fine-tuning after a linear probe, a run
    resumed from a checkpoint) from being stopped for batches that are only a few times harder than its first."""

    factor: float = 4.0
    patience: int = 5
    floor: float = 0.0
    start: float | None = None
    above: int = 0

    def check(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss} at step {step}")
        if self.start is None:
            self.start = loss
            return
        self.above = self.above + 1 if loss > max(self.factor * max(self.start, 1e-3), self.floor) else 0
        if self.above >= self.patience:
            guess = f" and a uniform guess's {self.floor:.3f}" if self.floor > self.factor * self.start else ""
            raise TrainingDiverged(
                f"the training loss stayed above {self.factor:g}x its start ({self.start:.3f}){guess} for {self.patience} steps "
                f"(at {loss:.3g} by step {step}): the learning rate is too high"
            )
