"""layer-probe: a linear probe on the pooled output of every layer, from one forward pass.

The frozen backbone runs once over the training, validation and test examples with every hidden state
pooled (`pooled_hidden_states`: the embeddings, then layers 1..L). Each layer's features get the head
strategy's probe: logistic regression on standardised features, its strength chosen by 5-fold
cross-validation over training and validation examples, then tested; the probes are independent and
fit side by side on the machine's cores. The expected result: the best layer is L-1 or L-2 rather than the last.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from transferlab.backbones import build_classifier
from transferlab.evaluation.calibration import probabilities
from transferlab.evaluation.metrics import classification_metrics, per_class_report
from transferlab.evaluation.probe import fit_probes
from transferlab.strategies import count_parameters
from transferlab.strategies.head import FeatureExtraction
from transferlab.studies.base import Budget, Outcome, Point, Study, StudyContext, register_study, score, score_text
from transferlab.training.inference import default_device, map_batches
from transferlab.training.memory import PeakMemory

LAYERS_OF = {"minilm-l6": 6, "mpnet-base": 12}  # for the point list before the model is loaded; others: read at run time


@register_study
class LayerProbe(Study):
    name = "layer-probe"
    summary = "a linear probe on every layer's pooled output, all from one forward pass"
    expected_result = "probe accuracy peaks at layer L-1 or L-2, not at the last layer"
    x_label = "layer (0 = embeddings)"
    full = Budget(n_train=2000, n_test=1000, max_length=128)
    quick = Budget(n_train=1000, n_test=500, seeds=1)

    def points(self, quick: bool, layers: int = 6) -> list[Point]:
        return [Point(f"layer {i}", i, "head", series="probe") for i in range(layers + 1)]

    def run_points(self, context: StudyContext, points: list[Point], log) -> Iterator[Outcome]:
        experiment = context.experiment(points[0])
        config, pre = experiment.config, experiment.preprocessor
        model = build_classifier(experiment.backbone, experiment.label_names, config.pooling).to(default_device())
        split = experiment.split
        order = np.concatenate([split.train, split.val, split.test])
        started = time.perf_counter()
        with PeakMemory() as memory:
            states = map_batches(
                model,
                experiment.features(order),
                pre.collate,
                lambda m, b: torch.stack(m.pooled_hidden_states(**b), 1),
                pre.length_of,
                config.training.eval_batch_size,
            )
        forward = time.perf_counter() - started
        log(f"one forward pass over {len(order)} examples, {states.shape[1]} hidden states, in {forward:.1f}s")
        labels = experiment.data.labels
        fit_rows, test_rows = slice(0, len(split.train) + len(split.val)), slice(len(split.train) + len(split.val), None)
        y, y_test = labels[order[fit_rows]], labels[order[test_rows]]
        groups = experiment.groups[order[fit_rows]]  # copies of one example share a fold of the probe's search
        k = len(experiment.label_names)
        total = count_parameters(model)[1]
        if len(points) != states.shape[1]:  # a backbone whose depth the point list did not know
            points = self.points(False, states.shape[1] - 1)
        # every (layer, seed) probe is independent: fitted side by side on the machine's cores
        probe = FeatureExtraction()
        jobs = [(int(point.x), seed) for point in points for seed in experiment.seeds()]
        started = time.perf_counter()
        fits = fit_probes(
            [(states[fit_rows, layer], y, k, probe.probe_settings(config.training_for_seed(seed)), groups) for layer, seed in jobs]
        )
        seconds_each = (time.perf_counter() - started) / len(jobs) + forward / len(points)
        fitted = dict(zip(jobs, fits))
        for point in points:
            layer = int(point.x)
            results, histories = [], []
            for seed in experiment.seeds():
                fit = fitted[layer, seed]
                # multi-label: the probe is one regression per label, so a sigmoid per label (as the head's classifier)
                probs = probabilities(states[test_rows, layer] @ fit.coef.T + fit.intercept, multi_label=y.ndim == 2)
                trainable = int(fit.coef.size + fit.intercept.size)
                results.append(
                    {
                        "status": "ok",
                        "fold": 0,
                        "seed": seed,
                        "metrics": classification_metrics(y_test, probs, k),
                        "trainable_params": trainable,
                        "trainable_params_without_head": 0,
                        "total_params": total,
                        "trainable_percent": 100.0 * trainable / total,
                        "train_seconds": seconds_each,
                        "peak_memory_mb": memory.peak_mb,
                        "settings": {"layer": layer, "features": "pooled hidden state"},
                        **per_class_report(y_test, probs, experiment.label_names),
                    }
                )
                histories.append(fit.log_entries(config.training.headline_metric))
            yield point, results, histories

    def deciding_pair(self, results: dict[str, Any]) -> tuple[str, str] | None:
        """The better of L-1 and L-2 against the last layer; when a layer further down peaks, that layer against the
        better of L-1 and L-2 (the gap the expectation failed by)."""
        layers = {int(e["x"]): e["label"] for e in results["study"]["points"]}
        last = max(layers)
        if last < 2:
            return None
        near_top = max([layers[last - 1], layers[last - 2]], key=lambda label: score(results, label))
        peak = max(layers, key=lambda i: score(results, layers[i]))
        return (layers[peak], near_top) if peak < last - 2 else (near_top, layers[last])

    def expectation(self, results: dict[str, Any]) -> tuple[bool | None, str]:
        entries = results["study"]["points"]
        scores = {int(e["x"]): score(results, e["label"]) for e in entries}
        if len(scores) < 3:
            return None, "fewer than three layers were probed"
        last = max(scores)
        best = max(scores, key=lambda i: scores[i])
        held = best in (last - 1, last - 2)
        return held, (
            f"test {results['primary_metric']} peaks at layer {best} of {last} ({score_text(results, f'layer {best}')}); "
            f"last layer {scores[last]:.3f}, L-1 {scores[last - 1]:.3f}, L-2 {scores[last - 2]:.3f}, embeddings {scores[0]:.3f}"
        )
