"""torch.compile (inductor) of the training step against eager mode, compile time included.

Each (strategy, mode) run is a fresh process with its own empty inductor cache, so the compiled runs pay their
compilation as a first-time user would. The Trainer compiles the model when `TrainingArguments(torch_compile=True)`;
the script sets that in `training/loop.py` for the compiled runs, with inductor's `fallback_random` (dropout draws
eager's random numbers, so both runs can train the same model), and changes nothing else. Reported: wall time of the
whole run (preparation excluded, as in `bench/run.py`), test accuracy, and the largest difference in any test metric.

    python bench/compile_step.py [--strategies full,lora] [--n-train 2000] [--n-test 1000] [--epochs 2] [--max-length 64]
                                 [--backbone minilm-l6] [--out runs/bench/compile_step.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path


def _one_run(strategy: str, compiled: bool, args: dict) -> dict:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # nothing compiled before
    from run import bench_config
    from transformers import TrainingArguments

    from transferlab.recipes.experiment import prepare, run_strategy
    from transferlab.training import loop

    if compiled:
        import torch._inductor.config

        # eager's random numbers for dropout (inductor draws its own otherwise): the same training, so the metrics can match
        torch._inductor.config.fallback_random = True
        loop.TrainingArguments = functools.partial(TrainingArguments, torch_compile=True)
    config = bench_config([strategy], args["n_train"], args["n_test"], args["epochs"], args["max_length"], backbone=args["backbone"])
    experiment = prepare(config, log=lambda _: None)
    started = time.perf_counter()
    run = run_strategy(experiment, strategy)
    return {"seconds": time.perf_counter() - started, "metrics": run.result["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="full,lora")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/compile_step.json"))
    args = parser.parse_args()
    settings = {k: getattr(args, k) for k in ("n_train", "n_test", "epochs", "max_length", "backbone")}
    context = multiprocessing.get_context("spawn")
    results = {}
    for strategy in args.strategies.split(","):
        runs = {}
        for compiled in (False, True):
            with context.Pool(1) as pool:
                runs["compiled" if compiled else "eager"] = pool.apply(_one_run, (strategy, compiled, settings))
        eager, compiled_run = runs["eager"], runs["compiled"]
        shared = [k for k, v in eager["metrics"].items() if isinstance(v, float) and isinstance(compiled_run["metrics"].get(k), float)]
        differs = max(abs(eager["metrics"][k] - compiled_run["metrics"][k]) for k in shared)
        results[strategy] = runs | {"ratio": compiled_run["seconds"] / eager["seconds"], "largest_metric_difference": differs}
        print(
            f"{strategy}: eager {eager['seconds']:.1f} s, compiled {compiled_run['seconds']:.1f} s = {results[strategy]['ratio']:.2f} x; "
            f"accuracy {eager['metrics']['accuracy']:.4f} / {compiled_run['metrics']['accuracy']:.4f}; largest metric difference {differs:.2e}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
