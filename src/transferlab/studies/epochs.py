"""epochs: full fine-tuning for 1, 3 and 10 epochs.

The expected result: fine-tuning saturates fast, and 10 epochs overfit small data. Early stopping is off so
each run trains its full length; the Trainer still restores the best validation checkpoint (as a user's
run would), so overfitting shows in the validation loss rising after its minimum, which is recorded.
"""

from __future__ import annotations

from typing import Any

from transferlab.evaluation.stats import mean_curve
from transferlab.studies.base import Budget, Point, Study, register_study, rise_after_minimum, score, score_text

SATURATED = 0.01  # 10 epochs gain at most a point over 3
OVERFIT = 0.10  # validation loss ends 10% above its minimum


@register_study
class Epochs(Study):
    name = "epochs"
    summary = "full fine-tuning for 1, 3 and 10 epochs (no early stopping)"
    expected_result = "fine-tuning saturates fast; 10 epochs likely overfit small data"
    x_label = "epochs"
    panel = "validation-loss"
    full = Budget(n_train=500, n_test=1000)
    quick = Budget(n_train=250, n_test=500, seeds=1)

    def points(self, quick: bool) -> list[Point]:
        # No floor of optimizer steps: it would lengthen the short runs to the same step count, and the study compares lengths.
        return [Point(f"epochs={e}", e, "full", training={"epochs": e, "patience": 10_000, "min_steps": 0}) for e in (1, 3, 10)]

    def expectation(self, results: dict[str, Any]) -> tuple[bool | None, str]:
        one, three, ten = ([e for e in results["study"]["points"] if e["x"] == n] for n in (1, 3, 10))
        if not (one and three and ten):
            return None, "the 1-, 3- and 10-epoch runs are not all there"
        gain = score(results, ten[0]["label"]) - score(results, three[0]["label"])
        shape = rise_after_minimum(mean_curve(ten[0]["curves"]))
        if shape is None or gain != gain:
            return None, "the 10-epoch run left too few validation points"
        _, low, low_step, _ = shape
        curve = mean_curve(ten[0]["curves"])
        low_epoch = next(epoch for step, epoch, _ in curve if step == low_step)
        final = curve[-1][2]
        rise = final / low - 1
        saturated, overfit = gain <= SATURATED, rise >= OVERFIT
        return saturated and overfit, (
            f"test {results['primary_metric']}: 1 epoch {score_text(results, one[0]['label'])}, 3 epochs "
            f"{score_text(results, three[0]['label'])}, 10 epochs {score_text(results, ten[0]['label'])} "
            f"(10 vs 3: {gain:+.3f}, {'saturated' if saturated else 'still gaining'}); in the 10-epoch run validation loss "
            f"was lowest ({low:.3f}) at epoch {low_epoch:.1f} and ended at {final:.3f} ({rise:+.0%}: "
            f"{'overfitting' if overfit else 'no clear overfitting'}; the best checkpoint is what gets tested)"
        )
