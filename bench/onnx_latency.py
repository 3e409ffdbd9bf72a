"""CPU latency and throughput of an exported model: PyTorch eager against onnxruntime fp32 and int8, in one run.

Trains the head on minilm-l6 (rt-polarity, 500 sentences) and a full fine-tuning of mobilenet-v2 (fashion-mnist,
500 images, 96 px), exports each with `transferlab export` (onnx and onnx-int8), then times batch 1 (median over
single inputs) and batch 32 (inputs per second) for the three runtimes, interleaved, on the same preprocessed
inputs. For text it also reports how often int8's label equals fp32's on 1,000 test sentences and both accuracies.

    python bench/onnx_latency.py [--out runs/bench/onnx_latency.json] [--singles 200] [--rounds 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import transferlab  # noqa: E402
from transferlab.deploy import ONNX_FILE  # noqa: E402
from transferlab.recipes.export import export_model  # noqa: E402
from transferlab.recipes.loading import load_model  # noqa: E402


def _runtimes(model_dir: Path, work: Path) -> dict:
    """name -> callable(batch of preprocessed numpy inputs) -> probabilities."""
    import onnxruntime

    loaded = load_model(model_dir)
    model = loaded.model.cpu().eval()

    def eager(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits, -1).numpy()

    out = {"pytorch eager": eager}
    for fmt in ("onnx", "onnx-int8"):
        graph = export_model(model_dir, fmt, work / fmt) / ONNX_FILE
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        out[f"onnxruntime {fmt.removeprefix('onnx').lstrip('-') or 'fp32'}"] = lambda feeds, s=session: s.run(None, feeds)[0]
        out[f"size {fmt}"] = graph.stat().st_size
    out["size safetensors"] = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return out, loaded


def _feeds(loaded, inputs: list) -> dict[str, np.ndarray]:
    batch = loaded.preprocessor.collate(loaded.preprocessor.encode(inputs))
    return {k: v.numpy() for k, v in batch.items() if k != "labels"}


def _time(runtimes: dict, singles: list[dict], batches: list[dict], rounds: int) -> dict:
    timings = {name: {"single": [], "batch": []} for name, fn in runtimes.items() if callable(fn)}
    for _ in range(rounds):
        for name in timings:
            fn = runtimes[name]
            for feeds in singles:
                started = time.perf_counter()
                fn(feeds)
                timings[name]["single"].append(time.perf_counter() - started)
            started = time.perf_counter()
            for feeds in batches:
                fn(feeds)
            timings[name]["batch"].append(sum(len(next(iter(f.values()))) for f in batches) / (time.perf_counter() - started))
    return {
        name: {"batch1_median_ms": 1000 * statistics.median(t["single"]), "batch32_per_second": statistics.median(t["batch"])}
        for name, t in timings.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/onnx_latency.json"))
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = args.out.parent / "onnx_latency"
    report: dict = {"torch_threads": torch.get_num_threads()}
    cases = {
        "minilm-l6 head (rt-polarity)": dict(backbone="minilm-l6", dataset="rt-polarity", strategy="head", n_train=500, n_test=1000),
        "mobilenet-v2 full (fashion-mnist)": dict(
            backbone="mobilenet-v2", dataset="fashion-mnist", strategy="full", n_train=500, n_test=200, image_size=96,
            training={"epochs": 1},
        ),
    }  # fmt: skip
    for case, options in cases.items():
        run = work / case.split()[0]
        transferlab.train(out=run, cv=1, label_issues=False, **options)
        runtimes, loaded = _runtimes(run / "model", run)
        data = transferlab_data(options)
        test = data["inputs"]
        singles = [_feeds(loaded, [x]) for x in test[: args.singles]]
        batches = [_feeds(loaded, test[i : i + 32]) for i in range(0, len(test), 32)]
        entry = {"timings": _time(runtimes, singles, batches, args.rounds)}
        entry["size_mb"] = {k.removeprefix("size "): v / 1e6 for k, v in runtimes.items() if k.startswith("size")}
        fp32 = np.concatenate([runtimes["onnxruntime fp32"](f) for f in batches])
        int8 = np.concatenate([runtimes["onnxruntime int8"](f) for f in batches])
        labels = np.asarray(data["labels"])
        entry["int8_label_agreement"] = float((fp32.argmax(1) == int8.argmax(1)).mean())
        entry["accuracy"] = {"fp32": float((fp32.argmax(1) == labels).mean()), "int8": float((int8.argmax(1) == labels).mean())}
        entry["test_inputs"] = len(test)
        report[case] = entry
        print(case, json.dumps(entry, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def transferlab_data(options: dict) -> dict:
    """The run's own test examples (results.json does not keep them): the same stratified split, rebuilt."""
    from transferlab.config import load_run_config
    from transferlab.recipes.experiment import prepare

    config = load_run_config(
        None, backbone=options["backbone"], dataset=options["dataset"], n_train=options["n_train"], n_test=options["n_test"],
        cv=1, strategies=[options["strategy"]], label_issues=False, near_duplicate_cosine=None,
        **({"image_size": options["image_size"]} if "image_size" in options else {}),
    )  # fmt: skip
    experiment = prepare(config, log=lambda _: None)
    test = experiment.split.test
    return {"inputs": [experiment.data.inputs[i] for i in test], "labels": experiment.data.labels[test]}


if __name__ == "__main__":
    main()
