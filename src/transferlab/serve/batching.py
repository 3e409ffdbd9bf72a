"""Concurrent requests for one task share a forward pass: a small asynchronous micro-batcher.

Requests wait at most `max_wait_s` for company, or until `max_batch` texts are queued; then one
forward pass runs in a worker thread (the event loop keeps accepting requests meanwhile) and each
request gets back its own rows. A backbone forward over 16 texts costs far less than 16 forwards
over one text, so under load throughput grows with the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Run = Callable[[str, Sequence[str]], np.ndarray]


@dataclass
class _Pending:
    texts: Sequence[str]
    future: asyncio.Future


class MicroBatcher:
    """`run(task, texts)` is called with the texts of several requests at once, one call at a time per task."""

    def __init__(self, run: Run, max_batch: int = 64, max_wait_s: float = 0.005):
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queues: dict[str, asyncio.Queue[_Pending]] = {}
        self._workers: list[asyncio.Task] = []

    async def submit(self, task: str, texts: Sequence[str]) -> np.ndarray:
        if task not in self._queues:  # workers start inside the running event loop, on first use
            self._queues[task] = asyncio.Queue()
            self._workers.append(asyncio.create_task(self._work(task, self._queues[task])))
        future = asyncio.get_running_loop().create_future()
        await self._queues[task].put(_Pending(texts, future))
        return await future

    async def _work(self, task: str, queue: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            size = len(batch[0].texts)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    break
                size += len(batch[-1].texts)
            texts = [text for pending in batch for text in pending.texts]
            try:
                probs = await asyncio.to_thread(self.run, task, texts)
            except Exception as err:  # every waiting request learns of the failure; the worker lives on
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(err)
                continue
            offset = 0
            for pending in batch:
                if not pending.future.done():  # a client that went away cancelled its future
                    pending.future.set_result(probs[offset : offset + len(pending.texts)])
                offset += len(pending.texts)

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers.clear()
        self._queues.clear()
