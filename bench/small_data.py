"""Small data: transferlab's strategies beside the SetFit library itself, on the same samples and test texts.

For each data set a fixed stratified test set (1,000 texts, or what the data allow) is drawn once; for each seed,
k training examples per class are drawn from the rest. Every system sees exactly those examples and is scored on
exactly that test set: macro-F1, accuracy, and the seconds its fit took (loading the model included).

`setfit-library` is SetFit 1.2.0 with its paper's settings (20 pair iterations, 1 epoch, batch 16, its logistic
head); every other name is a transferlab strategy run through `transferlab.estimator.TransferClassifier`. Both
read minilm-l6 at 256 tokens (the sentence-transformer's own limit), or both at `--max-length` (the data set is then
named "DATA (N tokens)"). SetFit is a bench-only dependency:
`pip install setfit==1.2.0`.

    .venv/bin/python bench/small_data.py [--datasets rt-polarity,bbc-news,trec-questions,election-tweets-2016]
        [--per-class 8,16,64] [--seeds 5] [--max-length 256] [--systems setfit-library,setfit,head,lora,full] [--min-steps 100]
        [--precision auto|fp32|bf16] [--class-weights none|balanced] [--tag @bf16] [--out runs/bench/small_data.jsonl]

Each row records the precision the system's training steps computed in (`training_precision`; SetFit trains in fp32
on a CPU). Rows written before that field existed were all fp32.

Images the same way, with a CNN and the estimator's augmentations (SetFit reads text only; the paired gap is then
to the first system listed):

    .venv/bin/python bench/small_data.py --backbone mobilenet-v2 --datasets fashion-mnist --per-class 8,16,32,64 \
        --systems full [--augment flip,mixup --tag +mixup]

Results are appended one line per run to --out, and runs already there are skipped, so an interrupted bench
resumes; the summary table (mean +- std over seeds, and each system's paired difference from SetFit) is printed
from the whole file.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the gauntlet's loaders live in tests/gauntlet.py

DEFAULT_BACKBONE = "minilm-l6"
MAX_LENGTH = 256
TEST_SIZE = 1000
REFERENCE = "setfit-library"
NATURAL_FLOOR = 2


def load_examples(name: str) -> tuple[list, np.ndarray]:
    """(texts or images, integer labels) of a catalog data set or a gauntlet one, duplicates kept once."""
    from transferlab.data.catalog import DATASETS, load_dataset

    if name in DATASETS:
        data = load_dataset(name, modality=DATASETS[name].modality)
        labels = np.asarray(data.labels)
        if data.modality == "image":  # pixel arrays: a copy is the same bytes
            digests = [hashlib.sha256(np.ascontiguousarray(x).tobytes()).digest() for x in data.inputs]
            first = dict(zip(reversed(digests), reversed(range(len(digests)))))
            keep = sorted(first.values())
            return [data.inputs[i] for i in keep], labels[keep]
        texts = [str(t) for t in data.inputs]
    else:
        from tests.gauntlet import GAUNTLET, load

        frame = load(name)
        dataset = GAUNTLET[name]
        texts = frame[dataset.text_column].astype(str).tolist()
        _, labels = np.unique(frame[dataset.label_column].astype(str).to_numpy(), return_inverse=True)
    seen: set[str] = set()
    keep = [i for i, t in enumerate(texts) if t.strip() and not (t in seen or seen.add(t))]
    return [texts[i] for i in keep], labels[keep]


def draw(labels: np.ndarray, per_class: int, seed: int, natural: bool = False, test_size: int = TEST_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions: a stratified test set fixed for the data set, then `per_class` of each class from the
    rest or, with `natural`, `per_class` x classes examples in the data set's own class proportions, at least
    NATURAL_FLOOR of each class (a contrastive pair needs two of a class)."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(labels))
    size = min(test_size, len(labels) // 2)
    pool, test = train_test_split(everything, test_size=size, stratify=labels, random_state=1234)
    rng = np.random.default_rng(seed)
    classes, available = np.unique(labels[pool], return_counts=True)
    counts = np.full(len(classes), per_class)
    if natural:
        counts = np.maximum(NATURAL_FLOOR, np.round(per_class * len(classes) * available / available.sum()).astype(int))
        counts[counts.argmax()] -= counts.sum() - per_class * len(classes)  # the largest class absorbs the rounding
    short = np.flatnonzero(counts > available)
    if len(short):
        c = short[0]
        raise ValueError(
            f"{per_class} per class: class {classes[c]} has {available[c]} examples outside the test set, {counts[c]} asked for"
        )
    train = np.concatenate([rng.choice(pool[labels[pool] == c], n, replace=False) for c, n in zip(classes, counts)])
    return rng.permutation(train), np.sort(test)


def run_setfit_library(
    texts: list[str], labels: np.ndarray, test_texts: list[str], seed: int, backbone: str, max_length: int, predict: bool = True
):
    """SetFit's predictions of `test_texts` or, with `predict=False`, its fitted model."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from transferlab.backbones import resolve_backbone

    model = SetFitModel.from_pretrained(resolve_backbone(backbone).path)
    model.model_body.max_seq_length = max_length
    # its checkpoints go to a temporary folder, not the working directory
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="setfit-"), batch_size=16, num_iterations=20, num_epochs=1, seed=seed)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels.tolist()}))
    trainer.train()
    return np.asarray(model.predict(test_texts)) if predict else model


def run_transferlab(strategy: str, inputs: list, labels: np.ndarray, test_inputs: list, seed: int, args: argparse.Namespace):
    """The strategy's predictions of `test_inputs`, and the precision its training steps computed in."""
    from transferlab.estimator import TransferClassifier
    from transferlab.settings import MIN_STEPS

    min_steps = MIN_STEPS if args.min_steps is None else args.min_steps
    model = TransferClassifier(
        backbone=args.backbone, strategy=strategy, max_length=args.max_length, augment=args.augment, min_steps=min_steps,
        precision=args.precision, class_weights=args.class_weights, seed=seed,
    )  # fmt: skip
    return model.fit(inputs, labels).predict(test_inputs), model.training_precision_


def score(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"macro_f1": float(f1_score(truth, predicted, average="macro")), "accuracy": float(accuracy_score(truth, predicted))}


def summarize(rows: list[dict]) -> str:
    """Markdown: per data set and size, mean +- std of macro-F1 and seconds per system; paired gap to SetFit (or, where
    SetFit did not run, to the first system)."""
    lines = ["| data set | per class | system | macro-F1 | accuracy | seconds | vs reference (paired) |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["per_class"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for dataset, k in keys:
        group = [r for r in rows if r["dataset"] == dataset and r["per_class"] == k]
        systems = list(dict.fromkeys(r["system"] for r in group))
        first = REFERENCE if REFERENCE in systems else systems[0]
        reference = {r["seed"]: r["macro_f1"] for r in group if r["system"] == first}
        for system in systems:
            runs = sorted((r for r in group if r["system"] == system), key=lambda r: r["seed"])
            f1 = [r["macro_f1"] for r in runs]
            gaps = [r["macro_f1"] - reference[r["seed"]] for r in runs if r["seed"] in reference]
            gap = "" if system == first or not gaps else f"{statistics.mean(gaps):+.3f} over {len(gaps)}"
            lines.append(
                f"| {dataset} | {k} | {system} | {_mean_std(f1)} | {_mean_std([r['accuracy'] for r in runs])} | "
                f"{statistics.mean(r['seconds'] for r in runs):.1f} | {gap} |"
            )
    for (dataset, k, seed), group in _by_run(rows).items():
        shared: dict[str, list[str]] = {}
        for r in group:
            if "predictions_sha256" in r:
                shared.setdefault(r["predictions_sha256"], []).append(r["system"])
        lines += [
            f"identical predictions on {dataset} k={k} seed={seed}: {', '.join(names)}" for names in shared.values() if len(names) > 1
        ]
    return "\n".join(lines)


def _by_run(rows: list[dict]) -> dict[tuple, list[dict]]:
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["dataset"], r["per_class"], r["seed"]), []).append(r)
    return runs


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f} (n={len(values)})"


def add_sample_arguments(parser: argparse.ArgumentParser, datasets: str, per_class: str) -> None:
    """The options that choose the runs: the backbone, the data sets, the examples per class and the seeds."""
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--datasets", default=datasets)
    parser.add_argument("--per-class", default=per_class)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help="tokens every system reads of a text")
    parser.add_argument(
        "--natural", action="store_true",
        help="draw per-class x classes examples in the data set's own class proportions (named 'DATA (natural)' in the results)",
    )  # fmt: skip


def samples(args: argparse.Namespace) -> Iterator[tuple[str, int, int, list, np.ndarray, np.ndarray, np.ndarray]]:
    """(data set, per class, seed, inputs, labels, training rows, test rows) for every run the options ask for."""
    for dataset in args.datasets.split(","):
        inputs, labels = load_examples(dataset)
        qualifiers = ["natural"] * args.natural + [f"{args.max_length} tokens"] * (args.max_length != MAX_LENGTH)
        name = f"{dataset} ({', '.join(qualifiers)})" if qualifiers else dataset
        for k in (int(v) for v in args.per_class.split(",")):
            for seed in range(args.seeds):
                try:
                    train, test = draw(labels, k, seed, args.natural)
                except ValueError as err:
                    raise SystemExit(f"{name}: {err}") from None
                yield name, k, seed, inputs, labels, train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser, "rt-polarity,bbc-news,trec-questions,election-tweets-2016", "8,16,64")
    parser.add_argument("--systems", default=f"{REFERENCE},setfit,head,lora,full")
    parser.add_argument("--min-steps", type=int, default=None, help="transferlab's optimizer-step floor (default: its own)")
    parser.add_argument("--augment", default=None, help="the estimator's augmentations, as --augment [default: the backbone's own]")
    parser.add_argument("--precision", default="auto", help="transferlab's training precision, as --precision (default: auto)")
    parser.add_argument("--class-weights", default="none", help="transferlab's loss weights, as --class-weights (default: none)")
    parser.add_argument("--tag", default="", help="appended to transferlab systems' names in the results")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "small_data.jsonl")
    args = parser.parse_args()
    if REFERENCE in args.systems.split(","):
        import sentence_transformers  # noqa: F401  (imported before any clock starts: both systems load these)
        import setfit  # noqa: F401

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["dataset"], r["per_class"], r["seed"], r["system"]) for r in rows}
    for dataset, k, seed, inputs, labels, train, test in samples(args):
        train_inputs, test_inputs = [inputs[i] for i in train], [inputs[i] for i in test]
        for system in args.systems.split(","):
            name = system if system == REFERENCE else system + args.tag
            if (dataset, k, seed, name) in done:
                continue
            started = time.perf_counter()
            if system == REFERENCE:  # SetFit trains in fp32 on a CPU
                predicted = run_setfit_library(train_inputs, labels[train], test_inputs, seed, args.backbone, args.max_length)
                precision = "fp32"
            else:
                predicted, precision = run_transferlab(system, train_inputs, labels[train], test_inputs, seed, args)
            predicted = np.asarray(predicted)
            row = {"backbone": args.backbone, "dataset": dataset, "per_class": k, "seed": seed, "system": name, "seconds": time.perf_counter() - started,
                   "training_precision": precision,
                   **score(labels[test], predicted), "n_test": len(test),
                   # two systems that did not train return the same predictions: the digest shows it
                   "predictions_sha256": hashlib.sha256(predicted.astype(np.int64).tobytes()).hexdigest()[:16]}  # fmt: skip
            rows.append(row)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"{dataset} k={k} seed={seed} {name}: macro-F1 {row['macro_f1']:.3f} in {row['seconds']:.1f}s", flush=True)
    print(summarize(rows))


if __name__ == "__main__":
    main()
