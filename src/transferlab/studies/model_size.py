"""model-size: minilm-l6 (22.7M parameters, 6 layers) against mpnet-base (109.5M, 12 layers).

DistilBERT (Sanh et al. 2019) against BERT-base is the classic case: the smaller model is much faster
for a small accuracy drop (40% smaller, 60% faster, under 3 points). Both are fully fine-tuned on the same split; time is
training time per run. mpnet-base is a large asset (`make assets-large`).
"""

from __future__ import annotations

from typing import Any

from transferlab.backbones import resolve_backbone
from transferlab.config import RunConfig
from transferlab.errors import MissingAssetError, UserError
from transferlab.studies.base import Budget, Point, Study, register_study, score

SMALL, LARGE = "minilm-l6", "mpnet-base"
FASTER = 1.5  # the large model's training takes at least 1.5x as long
DROP = 0.03  # and the small one loses at most 3 points


@register_study
class ModelSize(Study):
    name = "model-size"
    summary = "minilm-l6 against mpnet-base, fully fine-tuned: accuracy, time, parameters"
    expected_result = "the smaller model is much faster (DistilBERT: 60%, Sanh et al. 2019) for a small accuracy drop (under 3 points)"
    x_label = "backbone"
    full = Budget(n_train=1000, n_test=1000, epochs=2)
    quick = Budget(n_train=300, n_test=300, epochs=2, seeds=1)
    fixed_backbone = True

    def check(self, config: RunConfig) -> None:
        try:
            resolve_backbone(LARGE)
        except MissingAssetError as err:
            raise UserError(f"model-size needs the large asset {LARGE}: run 'make assets-large' ({err})") from None

    def points(self, quick: bool) -> list[Point]:
        return [Point(name, name, "full", run={"backbone": name}) for name in (SMALL, LARGE)]

    def expectation(self, results: dict[str, Any]) -> tuple[bool | None, str]:
        small, large = results["strategies"].get(SMALL, {}), results["strategies"].get(LARGE, {})
        if small.get("status") != "ok" or large.get("status") != "ok":
            return None, "one of the two backbones did not finish"
        speed = large["train_seconds"] / small["train_seconds"]
        drop = score(results, LARGE) - score(results, SMALL)
        size = small["total_params"] / large["total_params"]
        held = speed >= FASTER and drop <= DROP
        return held, (
            f"{SMALL} has {size:.0%} of {LARGE}'s parameters ({small['total_params'] / 1e6:.1f}M vs {large['total_params'] / 1e6:.1f}M), "
            f"trains {speed:.1f}x faster ({small['train_seconds']:.0f}s vs {large['train_seconds']:.0f}s per run) and scores "
            f"{drop:.3f} lower in test {results['primary_metric']} ({score(results, SMALL):.3f} vs {score(results, LARGE):.3f})"
        )
