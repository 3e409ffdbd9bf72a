"""lr-sweep: full fine-tuning from 1e-6 to 1e-3, validation loss per step.

The expected result: too high a rate (1e-3, 100x the usual) destroys the pretrained features, so validation loss
may fall at first and then spike. Early stopping is off and the loss is evaluated 8 times per epoch,
so each curve shows the whole run.
"""

from __future__ import annotations

from typing import Any

from transferlab.evaluation.stats import mean_curve
from transferlab.studies.base import Budget, Point, Study, register_study, rise_after_minimum, score, score_text

RATES = (1e-6, 1e-5, 1e-4, 1e-3)
SPIKE = 0.10  # a rise of 10% above the run's lowest validation loss counts as a spike
COLLAPSE = 0.05  # or a test metric 5 points below the best rate's


@register_study
class LrSweep(Study):
    name = "lr-sweep"
    summary = "full fine-tuning at learning rates 1e-6 ... 1e-3, validation loss per step"
    expected_result = (
        "too high a learning rate (1e-3) destroys pretrained features: validation loss falls, then spikes (catastrophic forgetting)"
    )
    x_label = "learning rate"
    panel = "validation-loss"
    log_x = True
    full = Budget(n_train=1000, n_test=1000, epochs=3)
    quick = Budget(n_train=400, n_test=500, epochs=2, seeds=1)

    def points(self, quick: bool) -> list[Point]:
        """One rate per decade: the full run differs from the quick one in seeds and data, not in rates."""
        # The rate goes into the training settings too: a --config file's training.lr would otherwise override it.
        return [Point(f"lr={lr:g}", lr, "full", {"lr": lr}, training={"lr": lr, "evals_per_epoch": 8, "patience": 10_000}) for lr in RATES]

    def expectation(self, results: dict[str, Any]) -> tuple[bool | None, str]:
        entries = results["study"]["points"]
        top = max(entries, key=lambda e: e["x"])
        summary = results["strategies"].get(top["label"], {})
        if summary.get("status") == "diverged":  # the divergence guard stopped it: the features were destroyed
            return True, f"at {top['label']} training diverged and was stopped ({summary.get('reason', '')})"
        others = [e for e in entries if e is not top and score(results, e["label"]) == score(results, e["label"])]
        shape = rise_after_minimum(mean_curve(top["curves"]))
        if shape is None or not others:
            return None, f"{top['label']}: too few validation points or rates to judge"
        first, low, low_step, after = shape
        best = max(others, key=lambda e: score(results, e["label"]))
        gap = score(results, best["label"]) - score(results, top["label"])
        rise = after / low - 1
        spiked = low < first and rise >= SPIKE
        held = spiked or gap >= COLLAPSE
        return held, (
            f"at {top['label']} validation loss went from {first:.3f} to a low of {low:.3f} (step {low_step:g}) "
            f"and reached {after:.3f} after it ({rise:+.0%}); "
            f"test {results['primary_metric']} {score_text(results, top['label'])} against {score_text(results, best['label'])} "
            f"at {best['label']}, the best lower rate ({-gap:+.3f})"
        )
