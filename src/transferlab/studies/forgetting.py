"""forgetting (catastrophic forgetting): the forgetting meter for LoRA and full fine-tuning at three learning rates.

The expected result: the further fine-tuning moves the pretrained weights, the more the model forgets, so drift
grows with the learning rate and is larger for full fine-tuning than for LoRA, which leaves the
pretrained weights untouched. The meter is the forgetting command's (`forgetting.meter: auto`): the
relative rise of general-text perplexity on a backbone with its LM head (smollm2-135m), else
1 - mean linear CKA between the pretrained and the fitted layers' pooled states. The head strategy
is left out: its backbone is frozen, so its drift is 0 by construction.
"""

from __future__ import annotations

from typing import Any

from transferlab.config import RunConfig
from transferlab.studies.base import Budget, Point, Study, register_study, score_text

STRATEGIES = ("lora", "full")
RATES = (1e-5, 1e-4, 1e-3)
TOLERANCE = 1e-4  # drift differences smaller than this count as equal (CKA, relative perplexity)


def drift_of(results: dict[str, Any], label: str) -> float | None:
    summary = results["strategies"].get(label, {})
    reading = summary.get("forgetting") if summary.get("status") == "ok" else None
    return reading["drift"]["mean"] if reading else None


@register_study
class Forgetting(Study):
    name = "forgetting"
    summary = "LoRA and full fine-tuning at learning rates 1e-5, 1e-4, 1e-3: the forgetting meter against the task score"
    expected_result = "forgetting (perplexity rise or representation drift) grows with the learning rate and with full fine-tuning"
    x_label = "learning rate"
    log_x = True
    panel = "forgetting"
    full = Budget(n_train=1000, n_test=1000, epochs=3)
    quick = Budget(n_train=400, n_test=500, epochs=2, seeds=1)

    def configure(self, config: RunConfig) -> None:
        config.forgetting.meter = "auto"

    def points(self, quick: bool) -> list[Point]:
        # The rate goes into the training settings too: a --config file's training.lr would otherwise override it.
        return [Point(f"{s} lr={lr:g}", lr, s, {"lr": lr}, series=s, training={"lr": lr}) for s in STRATEGIES for lr in RATES]

    def expectation(self, results: dict[str, Any]) -> tuple[bool | None, str]:
        table: dict[str, dict[float, float]] = {}
        labels: dict[tuple[str, float], str] = {}
        for e in results["study"]["points"]:
            value = drift_of(results, e["label"])
            if value is not None:
                table.setdefault(e["strategy"], {})[float(e["x"])] = value
                labels[e["strategy"], float(e["x"])] = e["label"]
        if any(len(table.get(s, {})) < 2 for s in STRATEGIES):
            return None, "fewer than two learning rates finished for LoRA or full fine-tuning"
        grows = {
            s: all(b >= a - TOLERANCE for a, b in _pairs(table[s])) and _last(table[s]) > _first(table[s]) + TOLERANCE for s in STRATEGIES
        }
        shared = sorted(set(table["lora"]) & set(table["full"]))
        full_more = all(table["full"][lr] >= table["lora"][lr] - TOLERANCE for lr in shared)
        rows = "; ".join(
            f"{s}: "
            + ", ".join(f"lr {lr:g} drift {d:.4f} (test {score_text(results, labels[s, lr])})" for lr, d in sorted(table[s].items()))
            for s in STRATEGIES
        )
        meter = next(s["forgetting"]["meter"] for s in results["strategies"].values() if s.get("forgetting"))
        return grows["lora"] and grows["full"] and full_more, (
            f"meter {meter}. {rows}. Drift grows with the learning rate for "
            + (" and ".join(s for s in STRATEGIES if grows[s]) or "neither strategy")
            + f"; full fine-tuning drifts {'at least as much as' if full_more else 'less than'} LoRA at every shared rate"
        )


def _pairs(by_rate: dict[float, float]) -> list[tuple[float, float]]:
    values = [by_rate[lr] for lr in sorted(by_rate)]
    return list(zip(values, values[1:]))


def _first(by_rate: dict[float, float]) -> float:
    return by_rate[min(by_rate)]


def _last(by_rate: dict[float, float]) -> float:
    return by_rate[max(by_rate)]
