"""The HTTP API: `POST /v1/predict`, `GET /v1/tasks`, `GET /healthz` (and FastAPI's `/docs`, `/openapi.json`).

Every request is bounded before any model work: its body size (413), its number of texts and each
text's length (422, FastAPI's validation messages name the offending field); an unknown task is a 404.
"""

# No `from __future__ import annotations`: FastAPI reads the request model defined inside create_app from the signature.
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Protocol

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, StringConstraints
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from transferlab.evaluation.metrics import predicted_labels
from transferlab.serve.batching import MicroBatcher


class ServedTask(Protocol):
    name: str
    label_names: list[str]
    strategy: str
    threshold: float | list[float] | None  # binary: class 1 from this probability on; None: the most probable class
    multi_label: bool  # independent labels: every label whose probability reaches its threshold (one per label)
    label_separator: str  # multi-label: joins the chosen labels into `label`, as the training data wrote them


class ServedModel(Protocol):
    """What the API needs of its tasks, whichever backend runs them (serve/tasks.py: torch, serve/onnx_tasks.py: onnxruntime)."""

    backbone: str
    tasks: dict[str, ServedTask]

    def predict_proba(self, task: str, texts: Sequence[str], batch_size: int = ...) -> np.ndarray: ...


@dataclass(frozen=True)
class Limits:
    max_inputs: int = 64  # texts per request
    max_chars: int = 2000  # characters per text (the tokenizer truncates to the task's max length anyway)
    max_batch: int = 64  # texts per forward pass, gathered from concurrent requests
    max_wait_ms: float = 5.0  # how long a request waits for others to share its forward pass

    @property
    def max_body_bytes(self) -> int:
        """Room for the largest valid request (6 bytes a character covers JSON's \\uXXXX escapes), refused before parsing."""
        return 6 * self.max_inputs * self.max_chars + 65536


class TaskInfo(BaseModel):
    name: str
    labels: list[str]
    strategy: str


class Prediction(BaseModel):
    label: str  # multi-label: the predicted labels joined by the training data's separator (";" by default; "" for none)
    probabilities: dict[str, float]
    labels: list[str] | None = None  # multi-label: the predicted labels


class PredictResponse(BaseModel):
    task: str
    predictions: list[Prediction]


class _BodyLimit:
    """ASGI middleware: a body over the limit is refused with 413, whether or not it declares its length."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if (declared and int(declared) > self.max_bytes) or received > self.max_bytes:
                # Raised while the route reads its body, so FastAPI turns it into a normal error response.
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def create_app(model: ServedModel, limits: Limits = Limits()) -> FastAPI:
    batcher = MicroBatcher(model.predict_proba, limits.max_batch, limits.max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await batcher.close()

    app = FastAPI(title="transferlab", summary=f"tasks served over '{model.backbone}'", lifespan=lifespan)
    app.add_middleware(_BodyLimit, max_bytes=limits.max_body_bytes)

    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_chars)]

    class PredictRequest(BaseModel):
        task: str
        inputs: list[Text] = Field(min_length=1, max_length=limits.max_inputs)

    @app.post("/v1/predict")
    async def predict(request: PredictRequest) -> PredictResponse:
        task = model.tasks.get(request.task)
        if task is None:
            raise HTTPException(404, f"unknown task '{request.task}'; tasks: {', '.join(model.tasks)}")
        probs = await batcher.submit(task.name, request.inputs)
        labels = task.label_names
        chosen = predicted_labels(probs, task.threshold, task.multi_label)
        return PredictResponse(
            task=task.name,
            predictions=[_prediction(labels, row, decided, task) for row, decided in zip(probs, chosen)],
        )

    @app.get("/v1/tasks")
    async def tasks() -> list[TaskInfo]:
        return [TaskInfo(name=t.name, labels=t.label_names, strategy=t.strategy) for t in model.tasks.values()]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _prediction(label_names: list[str], probs: np.ndarray, decided: np.ndarray, task: ServedTask) -> Prediction:
    """One input's answer: its class, or its set of labels, with every probability."""
    probabilities = {name: float(p) for name, p in zip(label_names, probs)}
    if not task.multi_label:
        return Prediction(label=label_names[int(decided)], probabilities=probabilities)
    chosen = [name for name, on in zip(label_names, decided) if on]
    return Prediction(label=task.label_separator.join(chosen), probabilities=probabilities, labels=chosen)
