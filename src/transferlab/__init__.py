"""transferlab: every adaptation strategy tried on your data, compared honestly.

The same runs as the command line, from Python (a notebook, a script)::

    import transferlab

    results = transferlab.compare(dataset="reviews.csv", text_column="review", label_column="stars",
                                  strategies=["head", "lora"], out="runs/reviews")
    results.to_pandas()                       # one row per strategy, mean and std of every metric
    trained = transferlab.train(dataset="reviews.csv", text_column="review", label_column="stars",
                                strategy="lora", out="runs/reviews-lora")
    model = transferlab.load("runs/reviews-lora/model")
    model.predict_proba(["a lovely, quiet film"])

Options are `RunConfig`'s fields (config.py) by name; `training={...}` and `forgetting={...}` take those
sections' fields. Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

import importlib.metadata
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transferlab.recipes.loading import LoadedModel
    from transferlab.results import Results

__version__ = importlib.metadata.version("transferlab")
__all__ = ["__version__", "compare", "load", "train"]


def compare(
    strategies: list[str] | None = None, out: str | Path | None = None, config: str | Path | None = None, quiet: bool = True, **options: Any
) -> Results:
    """Every chosen strategy on the same splits (the `compare` command); returns the run's results."""
    from transferlab.recipes.compare import compare as run_compare

    target = _out(out, "compare")
    record = run_compare(_config(config, strategies, options), target, log=_log(quiet))
    return _results(record, target)


def train(strategy: str = "lora", out: str | Path | None = None, config: str | Path | None = None, quiet: bool = True, **options: Any):
    """One strategy trained and exported to OUT/model (the `train` command); returns the run's results."""
    from transferlab.recipes.train import train as run_train

    keep_adapter = options.pop("keep_adapter", False)
    target = _out(out, "train")
    _, record = run_train(_config(config, [strategy], options), target, keep_adapter=keep_adapter, log=_log(quiet))
    return _results(record, target)


def load(model_dir: str | Path) -> LoadedModel:
    """A model `train` exported: `predict_proba(texts or images)` and `label_names`."""
    from transferlab.recipes.loading import load_model

    return load_model(Path(model_dir))


def _config(path: str | Path | None, strategies: list[str] | None, options: dict[str, Any]):
    from transferlab.config import load_run_config

    return load_run_config(Path(path) if path else None, strategies=strategies, **options)


def _out(out: str | Path | None, command: str) -> Path:
    return Path(out) if out else Path(f"runs/{command}-{datetime.now():%Y%m%d-%H%M%S}")


def _log(quiet: bool):
    return (lambda message: None) if quiet else print


def _results(record: dict[str, Any], folder: Path) -> Results:
    from transferlab.results import Results

    return Results(record, folder)
