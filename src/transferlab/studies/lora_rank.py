"""lora-rank (LoRA, Hu et al. 2021): LoRA with r in {1, 4, 8, 16, 64}, alpha 16 throughout.

The expected result: returns diminish after r of about 8, and r = 1 is surprisingly competitive.
"""

from __future__ import annotations

from typing import Any

from transferlab.studies.base import Budget, Point, Study, register_study, score, score_text

FLAT = 0.01  # r = 64 gains at most a point over r = 8
COMPETITIVE = 0.02  # r = 1 within 2 points of the best rank


@register_study
class LoraRank(Study):
    name = "lora-rank"
    summary = "LoRA with rank r in 1, 4, 8, 16, 64 (alpha 16)"
    expected_result = "diminishing returns after r of about 8; r = 1 is surprisingly competitive (Hu et al. 2021)"
    x_label = "LoRA rank r"
    log_x = True
    full = Budget(n_train=1000, n_test=1000)
    quick = Budget(n_train=400, n_test=500, epochs=2, seeds=1)

    def points(self, quick: bool) -> list[Point]:
        return [Point(f"r={r}", r, "lora", {"r": r}) for r in (1, 4, 8, 16, 64)]

    def expectation(self, results: dict[str, Any]) -> tuple[bool | None, str]:
        ranks = {e["x"]: e["label"] for e in results["study"]["points"]}
        if not {1, 8, 64} <= set(ranks):
            return None, "ranks 1, 8 and 64 are not all there"
        scores = {r: score(results, label) for r, label in ranks.items()}
        failed = [f"r={r}" for r in (1, 8, 64) if scores[r] != scores[r]]  # NaN: the rank's runs failed
        if failed:
            return None, f"{', '.join(failed)} did not finish"
        best = max((r for r in scores if scores[r] == scores[r]), key=lambda r: scores[r])
        after = scores[64] - scores[8]
        behind = scores[best] - scores[1]
        held = after <= FLAT and behind <= COMPETITIVE
        return held, (
            f"test {results['primary_metric']} by rank: "
            + ", ".join(f"r={r} {score_text(results, ranks[r])}" for r in sorted(ranks))
            + f"; r=64 vs r=8 {after:+.3f} ({'diminishing' if after <= FLAT else 'still gaining'}), "
            f"r=1 is {behind:.3f} behind the best (r={best})"
        )
