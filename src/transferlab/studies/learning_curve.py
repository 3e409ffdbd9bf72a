"""learning-curve: 50, 200, 1000, 5000 labelled examples x head, LoRA, full.

The expected result: feature extraction dominates at 50 examples, fine-tuning catches up by 1000. Every size is
tested on the same held-out examples (the split takes the test set first). A size larger than the
dataset allows is recorded as skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from transferlab.errors import UserError
from transferlab.studies.base import Budget, Outcome, Point, Study, StudyContext, register_study, score

STRATEGIES = ("head", "lora", "full")
CAUGHT_UP = 0.005  # fine-tuning within half a point of the head, or ahead


@register_study
class LearningCurve(Study):
    name = "learning-curve"
    summary = "head, LoRA and full fine-tuning on 50, 200, 1000 and 5000 labelled examples"
    expected_result = "feature extraction wins at 50 examples; fine-tuning catches up by 1000"
    x_label = "labelled examples (validation included)"
    log_x = True
    full = Budget(n_train=5000, n_test=1000)
    quick = Budget(n_train=1000, n_test=500, epochs=2, seeds=1)

    def sizes(self, quick: bool) -> list[int]:
        return [50, 200, 1000] if quick else [50, 200, 1000, 5000]

    def points(self, quick: bool) -> list[Point]:
        return [Point(f"{s} n={n}", n, s, series=s, run={"n_train": n}) for n in self.sizes(quick) for s in STRATEGIES]

    def run_points(self, context: StudyContext, points: list[Point], log) -> Iterator[Outcome]:
        for point in points:
            try:
                context.experiment(point)
            except UserError as err:  # more examples than the dataset has
                log(f"{point.label}: skipped: {err}")
                yield point, [{"status": "skipped", "reason": str(err)}], [[]]
                continue
            yield from super().run_points(context, [point], log)

    def expectation(self, results: dict[str, Any]) -> tuple[bool | None, str]:
        table: dict[int, dict[str, float]] = {}
        for e in results["study"]["points"]:
            table.setdefault(int(e["x"]), {})[e["strategy"]] = score(results, e["label"])
        sizes = sorted(n for n, row in table.items() if all(row.get(s) == row.get(s) for s in STRATEGIES))
        if len(sizes) < 2:
            return None, "fewer than two data sizes finished"
        small, large = sizes[0], max([n for n in sizes if n <= 1000] or sizes[-1:])
        head_wins = table[small]["head"] >= max(table[small]["lora"], table[small]["full"])
        tuned = max(table[large]["lora"], table[large]["full"])
        caught_up = tuned >= table[large]["head"] - CAUGHT_UP
        rows = "; ".join(f"n={n}: " + ", ".join(f"{s} {table[n][s]:.3f}" for s in STRATEGIES) for n in sizes)
        return head_wins and caught_up, (
            f"test {results['primary_metric']} {rows}. At n={small} the head {'wins' if head_wins else 'does not win'}; "
            f"at n={large} fine-tuning is {tuned - table[large]['head']:+.3f} against the head "
            f"({'caught up' if caught_up else 'behind'})"
        )
