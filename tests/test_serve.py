"""`transferlab serve`: two tasks over one tiny backbone, each answered by its own adapter and head."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE, sentiment_texts, tiny_bert
from transferlab.config import load_run_config
from transferlab.errors import UserError
from transferlab.recipes.loading import load_model
from transferlab.recipes.train import train
from transferlab.serve.app import Limits, create_app
from transferlab.serve.batching import MicroBatcher
from transferlab.serve.task_folders import parse_task_folders
from transferlab.serve.tasks import MultiTaskModel

TEXTS = ["the film was good", "a boring plot", "the story is a plot and the actors", "superb", "dull and awful movie"]
TONES = ["complaint", "praise", "plain"]


def _tone_table(n: int, seed: int = 1) -> pd.DataFrame:
    """A second task with three classes: a negative word, a positive word, or neither."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(NEUTRAL, k=rng.randint(3, 9))
        if i % 3 < 2:
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if i % 3 else NEGATIVE))
        rows.append((" ".join(words), TONES[i % 3]))
    return pd.DataFrame(rows, columns=["text", "label"])


def _train_adapter(root, backbone, table: pd.DataFrame, name: str):
    table.to_csv(root / f"{name}.csv", index=False)
    config = load_run_config(
        None,
        backbone=str(backbone),
        dataset=str(root / f"{name}.csv"),
        strategies=["lora"],
        cv=1,
        n_train=120,
        n_test=30,
        max_length=32,
        training={"epochs": 2, "batch_size": 8},
    )
    train(config, root / name, keep_adapter=True, log=lambda _: None)
    return root / name / "model"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("serve")
    texts, labels = sentiment_texts(200)
    sentiment = pd.DataFrame({"text": texts, "label": ["positive" if y else "negative" for y in labels]})
    return {
        "sentiment": _train_adapter(root, tiny_bert_dir, sentiment, "sentiment"),
        "tone": _train_adapter(root, tiny_bert_dir, _tone_table(210), "tone"),
    }


@pytest.fixture(scope="module")
def merged_probs(adapters):
    """What `predict` gives on each task's merged model: the reference every served answer must match."""
    out = {}
    for name, folder in adapters.items():
        loaded = load_model(folder)
        loaded.model = loaded.model.merge_and_unload()
        out[name] = loaded.predict_proba(TEXTS)
    return out


@pytest.fixture(scope="module")
def served(adapters, tiny_bert_dir):
    return MultiTaskModel(str(tiny_bert_dir), adapters)


def _probabilities(response: dict, labels: list[str]) -> np.ndarray:
    return np.array([[p["probabilities"][name] for name in labels] for p in response["predictions"]])


def test_each_task_answers_with_its_own_adapter_and_head(served, merged_probs):
    assert served.tasks["tone"].label_names == sorted(TONES)
    with TestClient(create_app(served)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/v1/tasks").json() == [
            {"name": "sentiment", "labels": ["negative", "positive"], "strategy": "lora"},
            {"name": "tone", "labels": sorted(TONES), "strategy": "lora"},
        ]
        assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
        for task in ("sentiment", "tone", "sentiment"):  # switching back and forth
            body = client.post("/v1/predict", json={"task": task, "inputs": TEXTS}).json()
            labels = served.tasks[task].label_names
            assert body["task"] == task
            np.testing.assert_allclose(_probabilities(body, labels), merged_probs[task], atol=1e-5, rtol=0)
            assert [p["label"] for p in body["predictions"]] == [labels[i] for i in merged_probs[task].argmax(1)]


def test_requests_are_bounded(served):
    limits = Limits(max_inputs=3, max_chars=40)
    with TestClient(create_app(served, limits)) as client:

        def post(payload):
            return client.post("/v1/predict", json=payload)

        missing = post({"task": "nope", "inputs": ["good"]})
        assert missing.status_code == 404 and missing.json()["detail"] == "unknown task 'nope'; tasks: sentiment, tone"
        for payload, message in [
            ({"task": "tone", "inputs": []}, "at least 1 item"),
            ({"task": "tone", "inputs": ["good"] * 4}, "at most 3 items"),
            ({"task": "tone", "inputs": [""]}, "at least 1 character"),
            ({"task": "tone", "inputs": ["good " * 9]}, "at most 40 characters"),
            ({"inputs": ["good"]}, "Field required"),
        ]:
            response = post(payload)
            assert response.status_code == 422, payload
            assert message in response.json()["detail"][0]["msg"]
        huge = client.post("/v1/predict", content=b'{"task": "tone", "inputs": ["' + b"a" * limits.max_body_bytes + b'"]}')
        assert huge.status_code == 413 and "request body over" in huge.json()["detail"]
        assert post({"task": "tone", "inputs": ["good"] * 3}).status_code == 200


def test_micro_batcher_groups_concurrent_requests_and_returns_each_its_rows():
    calls = []

    def run(task, texts):
        calls.append((task, len(texts)))
        return np.array([[float(t), float(len(task))] for t in texts])

    async def scenario():
        batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.05)
        requests = [("ab", [str(i), str(i + 100)]) for i in range(6)] + [("xyz", [str(i)]) for i in range(3)]
        results = await asyncio.gather(*(batcher.submit(task, texts) for task, texts in requests))
        await batcher.close()
        return requests, results

    requests, results = asyncio.run(scenario())
    for (task, texts), rows in zip(requests, results):
        np.testing.assert_array_equal(rows, [[float(t), len(task)] for t in texts])
    assert sorted(calls) == [("ab", 4), ("ab", 8), ("xyz", 3)]  # at most 8 texts a batch, never mixing tasks


def test_bad_adapters_are_refused_with_a_reason(tmp_path, adapters, tiny_bert_dir, served):
    with pytest.raises(UserError, match="takes NAME=DIR"):
        parse_task_folders(["sentiment"])
    with pytest.raises(UserError, match="given twice"):
        parse_task_folders(["a=x", "a=y"])
    with pytest.raises(UserError, match="no such folder"):
        MultiTaskModel(str(tiny_bert_dir), {"a": tmp_path / "missing"})
    with pytest.raises(UserError, match="no transferlab.json"):
        MultiTaskModel(str(tiny_bert_dir), {"a": tmp_path})
    other = tiny_bert(tmp_path / "other-bert")
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes() + b" ")  # other weights
    with pytest.raises(UserError, match="trained on backbone"):
        MultiTaskModel(str(other), {"a": adapters["tone"]})
    merged = tmp_path / "merged"
    shutil.copytree(adapters["tone"], merged)
    manifest = json.loads((merged / "transferlab.json").read_text())
    (merged / "transferlab.json").write_text(json.dumps({**manifest, "format": "merged"}))
    with pytest.raises(UserError, match="a merged model, not an adapter"):
        MultiTaskModel(str(tiny_bert_dir), {"a": merged})
    image = tmp_path / "image"
    shutil.copytree(adapters["tone"], image)
    (image / "transferlab.json").write_text(json.dumps({**manifest, "modality": "image"}))  # a CNN's kept adapter
    with pytest.raises(UserError, match="an image classifier; serve answers texts"):
        MultiTaskModel(str(tiny_bert_dir), {"a": image})
    run = tmp_path / "killed-run"  # a run folder without its complete results.json: its adapter may be any checkpoint's
    shutil.copytree(adapters["tone"], run / "model")
    (run / "config.yaml").write_text("backbone: tiny\n")
    with pytest.raises(UserError, match="the run that wrote it did not finish"):
        MultiTaskModel(str(tiny_bert_dir), {"a": run / "model"})
    (merged / "transferlab.json").write_text("{not json")
    with pytest.raises(UserError, match="transferlab.json: unreadable"):
        MultiTaskModel(str(tiny_bert_dir), {"a": merged})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command_on_loopback_answers_concurrent_requests_per_task(adapters, merged_probs, tiny_bert_dir):
    port = _free_port()
    args = [sys.executable, "-m", "transferlab.cli", "serve", "--port", str(port)]  # the backbone: from the manifests
    args += [a for name, folder in adapters.items() for a in ("--adapter", f"{name}={folder}")]
    server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            assert server.poll() is None, server.communicate()[1]
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)

        async def burst():
            async with httpx.AsyncClient(base_url=url) as client:
                jobs = [(task, i) for i in range(len(TEXTS)) for task in ("sentiment", "tone")] * 2
                replies = await asyncio.gather(*(client.post("/v1/predict", json={"task": t, "inputs": [TEXTS[i]]}) for t, i in jobs))
                return jobs, replies

        jobs, replies = asyncio.run(burst())
        for (task, i), reply in zip(jobs, replies):
            assert reply.status_code == 200
            labels = json.loads(httpx.get(f"{url}/v1/tasks").text)[0 if task == "sentiment" else 1]["labels"]
            np.testing.assert_allclose(_probabilities(reply.json(), labels)[0], merged_probs[task][i], atol=1e-5, rtol=0)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_bad_adapter_option_is_one_line_and_exit_code_2(tmp_path, tiny_bert_dir):
    args = [sys.executable, "-m", "transferlab.cli", "serve", "--backbone", str(tiny_bert_dir), "--adapter", f"t={tmp_path / 'nope'}"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 2
    assert "no such folder" in done.stderr and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_adapters_of_different_backbones_are_refused_without_a_backbone_named(tmp_path, adapters):
    other = tmp_path / "other"
    shutil.copytree(adapters["tone"], other)
    manifest = json.loads((other / "transferlab.json").read_text())
    (other / "transferlab.json").write_text(json.dumps({**manifest, "backbone": "mpnet-base", "backbone_sha256": {"x": "0" * 64}}))
    with pytest.raises(UserError, match="trained on different backbones"):
        MultiTaskModel(None, {"sentiment": adapters["sentiment"], "other": other})
    assert MultiTaskModel(None, {"a": adapters["sentiment"], "b": adapters["tone"]}).backbone == manifest["backbone"]
    args = [sys.executable, "-m", "transferlab.cli", "serve", "--adapter", f"a={adapters['sentiment']}", "--adapter", f"b={other}"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 2 and "trained on different backbones" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
