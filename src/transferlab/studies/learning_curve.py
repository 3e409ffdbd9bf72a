"""learning-curve: 16 to 5000 labelled examples x head, LoRA, full, and SetFit where data is few.

The expected result: feature extraction dominates at 50 examples, fine-tuning catches up by 1000. SetFit's
contrastive pairs (Tunstall et al. 2022) run up to 256 examples (128 per class on a binary task), where they
find the crossover with the head that the decision framework's few-shot rule rests on. Every size is tested on
the same held-out examples (the split takes the test set first). A size larger than the dataset allows is
recorded as skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from transferlab.errors import UserError
from transferlab.studies.base import Budget, Outcome, Point, Study, StudyContext, register_study, score

STRATEGIES = ("head", "lora", "full")
FEW_SHOT = "setfit"
FEW_SHOT_UP_TO = 256  # SetFit's pairs grow with the data: past a few hundred examples it is full fine-tuning's cost x 40
CAUGHT_UP = 0.005  # fine-tuning within half a point of the head, or ahead


@register_study
class LearningCurve(Study):
    name = "learning-curve"
    summary = "head, LoRA and full fine-tuning on 50 to 5000 labelled examples; SetFit on 16 to 256"
    expected_result = "feature extraction wins at 50 examples; fine-tuning catches up by 1000"
    x_label = "labelled examples (validation included)"
    log_x = True
    full = Budget(n_train=5000, n_test=1000)
    quick = Budget(n_train=1000, n_test=500, epochs=2, seeds=1)

    def sizes(self, quick: bool) -> list[int]:
        return [50, 200, 1000] if quick else [50, 200, 1000, 5000]

    def few_shot_sizes(self, quick: bool) -> list[int]:
        return [16, 64] if quick else [16, 32, 64, 128, 256]

    def points(self, quick: bool) -> list[Point]:
        classic = [Point(f"{s} n={n}", n, s, series=s, run={"n_train": n}) for n in self.sizes(quick) for s in STRATEGIES]
        few = [Point(f"{s} n={n}", n, s, series=s, run={"n_train": n}) for n in self.few_shot_sizes(quick) for s in ("head", FEW_SHOT)]
        return classic + few

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
        sizes = sorted(n for n, row in table.items() if all(row.get(s, float("nan")) == row.get(s) for s in STRATEGIES))
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
            f"({'caught up' if caught_up else 'behind'})" + _few_shot_crossover(table)
        )


def _few_shot_crossover(table: dict[int, dict[str, float]]) -> str:
    """Where SetFit leads the head on frozen features, and the largest size at which it still does."""
    gaps_by_size = {n: row[FEW_SHOT] - row["head"] for n, row in sorted(table.items()) if FEW_SHOT in row}
    pairs = {n: gap for n, gap in gaps_by_size.items() if gap == gap}  # NaN: a point that failed or was skipped
    if not pairs:
        return ""
    leads = [n for n, gap in pairs.items() if gap > 0]
    gaps = ", ".join(f"n={n} {gap:+.3f}" for n, gap in pairs.items())
    return (
        f". SetFit against the head: {gaps}; it leads up to n={max(leads)}"
        if leads
        else f". SetFit against the head: {gaps}; it never leads"
    )
