"""Load test of `transferlab serve` on loopback, and the memory one shared backbone saves.

Trains one LoRA adapter per task (`train --keep-adapter`, small and quick: the figures are about
serving, not accuracy), starts `transferlab serve` with all of them in a subprocess, and sends
`--requests` single-text requests from `--clients` concurrent clients, tasks interleaved. Reports
throughput, p50/p99 latency and failures. Memory: parameter bytes and the resident set of a process
holding one backbone plus N adapters, against one holding the N merged models.

    python bench/serve_load.py [--backbone minilm-l6] [--requests 2000] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

TASKS = {"sentiment": "rt-polarity", "topic": "bbc-news", "review": "imdb"}


def train_adapters(backbone: str, root: Path, n_train: int) -> dict[str, Path]:
    from transferlab.config import load_run_config
    from transferlab.recipes.train import train

    folders = {}
    for task, dataset in TASKS.items():
        folder = root / task
        if not (folder / "model" / "transferlab.json").is_file():
            config = load_run_config(
                None,
                backbone=backbone,
                dataset=dataset,
                strategies=["lora"],
                cv=1,
                n_train=n_train,
                n_test=100,
                max_length=64,
                training={"epochs": 1, "batch_size": 16},
            )
            train(config, folder, keep_adapter=True, log=lambda _: None)
        folders[task] = folder / "model"
    return folders


def sample_texts(n: int) -> dict[str, list[str]]:
    from transferlab.data.catalog import load_dataset

    return {task: [t[:1000] for t in load_dataset(dataset).inputs[-n:]] for task, dataset in TASKS.items()}


async def load(url: str, jobs: list[tuple[str, str]], clients: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        while not queue.empty():
            task, text = queue.get_nowait()
            started = time.perf_counter()
            try:
                reply = await http.post("/v1/predict", json={"task": task, "inputs": [text]})
                ok = reply.status_code == 200 and reply.json()["task"] == task
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            failures += not ok

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return latencies, failures, time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resident_memory(kind: str, backbone: str, folders: dict[str, Path]) -> dict[str, float]:
    """Measured in a fresh process, so both sides pay the same interpreter and library overhead."""
    args = [sys.executable, __file__, "--hold", kind, "--backbone", backbone] + [f"{k}={v}" for k, v in folders.items()]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def hold(kind: str, backbone: str, pairs: list[str]) -> None:
    """Child process: load the models one way and print parameter bytes and resident set size."""
    from transferlab.recipes.loading import load_model
    from transferlab.serve.task_folders import parse_task_folders
    from transferlab.serve.tasks import MultiTaskModel

    folders = parse_task_folders(pairs)
    if kind == "shared":
        models = [MultiTaskModel(backbone, folders).model]
    else:
        models = [load_model(folder).model.merge_and_unload() for folder in folders.values()]
    tensors = {id(t): t for m in models for t in [*m.parameters(), *m.buffers()]}
    for tensor in tensors.values():
        # Weights loaded from one safetensors file are views of one shared file mapping; N merged models
        # deployed from N files each hold their own copy, so every tensor is given private memory.
        tensor.data = tensor.data.clone()
    parameter_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print(json.dumps({"parameter_mb": parameter_bytes / 2**20, "rss_mb": psutil.Process().memory_info().rss / 2**20}))


def serve_and_load(args: argparse.Namespace, folders: dict[str, Path], jobs: list[tuple[str, str]], max_batch: int) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "transferlab.cli", "serve", "--backbone", args.backbone, "--port", str(port)]
    command += ["--max-batch", str(max_batch)] + [a for task, folder in folders.items() for a in ("--adapter", f"{task}={folder}")]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit("the server exited")
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        asyncio.run(load(url, jobs[: 4 * args.clients], args.clients))  # warm-up
        latencies, failures, seconds = asyncio.run(load(url, jobs, args.clients))
        server_rss = psutil.Process(server.pid).memory_info().rss / 2**20
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = np.array(latencies) * 1000
    return {
        "max_batch": max_batch,
        "failures": failures,
        "seconds": seconds,
        "requests_per_second": len(jobs) / seconds,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())},
        "server_rss_mb_after_load": server_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[64, 1], help="one load test per value; 1 turns batching off")
    parser.add_argument("--work", type=Path, default=Path("runs/bench/serve"))
    parser.add_argument("--hold", choices=["shared", "merged"], help=argparse.SUPPRESS)
    parser.add_argument("adapters", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        hold(args.hold, args.backbone, args.adapters)
        return

    folders = train_adapters(args.backbone, args.work, args.n_train)
    texts = sample_texts(200)
    rng = np.random.default_rng(0)
    tasks = list(TASKS)
    jobs = [(tasks[i % len(tasks)], texts[tasks[i % len(tasks)]][int(rng.integers(200))]) for i in range(args.requests)]

    report = {
        "backbone": args.backbone,
        "tasks": len(folders),
        "requests": args.requests,
        "clients": args.clients,
        "load": [serve_and_load(args, folders, jobs, max_batch) for max_batch in args.max_batch],
        "memory": {kind: resident_memory(kind, args.backbone, folders) for kind in ("shared", "merged")},
    }
    out = args.work / "serve_load.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
