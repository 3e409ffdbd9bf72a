"""discriminative-lr (discriminative fine-tuning, ULMFiT): eta = 0.95 per layer against one flat rate, same base rate.

The expected result: discriminative rates may gain 0.5-1 point on tasks with a moderate domain gap. The gain is
paired run by run (same split and seed), and compare's paired t-test says whether it is noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transferlab.studies.base import Budget, Point, Study, register_study

GAIN = 0.005  # half a point


@register_study
class DiscriminativeLr(Study):
    name = "discriminative-lr"
    summary = "full fine-tuning with lr * 0.95^(L - l) per layer against one flat rate"
    expected_result = "discriminative learning rates (ULMFiT, Howard & Ruder 2018; eta 0.95) may gain 0.5-1 point of accuracy"
    x_label = "learning rates"
    full = Budget(n_train=1000, n_test=1000)
    quick = Budget(n_train=500, n_test=500, epochs=2, seeds=1)

    def points(self, quick: bool) -> list[Point]:
        return [Point("flat", "flat", "full"), Point("eta=0.95", "eta 0.95", "discriminative", {"layer_decay": 0.95})]

    def deciding_pair(self, results: dict[str, Any]) -> tuple[str, str] | None:
        return "eta=0.95", "flat"

    def expectation(self, results: dict[str, Any]) -> tuple[bool | None, str]:
        metric = results["primary_metric"]
        flat, layered = results["strategies"].get("flat", {}), results["strategies"].get("eta=0.95", {})
        if flat.get("status") != "ok" or layered.get("status") != "ok":
            return None, "one of the two runs did not finish"
        gains = np.subtract(layered["metrics"][metric]["values"], flat["metrics"][metric]["values"])
        verdict = results.get("comparison", {}).get("others", {})
        other = next(iter(verdict.values()), {})
        noise = f"; paired t-test p = {other['p_value']:.2f}" if other.get("p_value") is not None else "; one run each: noise not measured"
        spread = f" ± {gains.std(ddof=1):.3f}" if len(gains) > 1 else ""
        return bool(gains.mean() >= GAIN), (
            f"eta 0.95 minus flat: {gains.mean():+.3f}{spread} test {metric} over {len(gains)} paired run(s) "
            f"({layered['metrics'][metric]['mean']:.3f} vs {flat['metrics'][metric]['mean']:.3f}){noise}"
        )
