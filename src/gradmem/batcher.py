"""An async batching queue in front of an Engine: concurrent requests become batched model calls.

Requests put jobs on an asyncio queue. One worker task takes the first job, waits up to `wait_ms`
for more (at most `max_batch`), groups them by kind and settings and runs each group as ONE
engine call on a single worker thread (the model is not thread-safe, and one thread keeps the
event loop free). Write jobs report each step's loss back to their request as the write runs.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from gradmem.engine import Engine, WriteResult


@dataclass
class _Job:
    kind: str  # "ask" | "write"
    group: tuple  # jobs with equal (kind, group) run in one engine call
    payload: Any  # ask: list of (memory id, question); write: the text
    future: asyncio.Future
    on_step: Callable[[int, float], None] | None = None  # write progress (step, loss), called on the loop
    size: int = 1


@dataclass
class BatchStats:
    """Counters for the /health endpoint and the load test."""

    batches: int = 0
    jobs: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list, repr=False)


class Batcher:
    """See the module docstring. Use `start()` inside a running loop and `stop()` at shutdown."""

    def __init__(self, engine: Engine, max_batch: int = 32, wait_ms: float = 5.0) -> None:
        if max_batch < 1 or wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and wait_ms >= 0")
        self.engine = engine
        self.max_batch = max_batch
        self.wait = wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradmem-model")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    @property
    def pending(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def ask(self, memory_id: str, questions: list[str], max_new_tokens: int | None) -> list[str]:
        return await self._submit("ask", (max_new_tokens,), [(memory_id, q) for q in questions], None, len(questions))

    async def write(self, text: str, steps: int | None, lr: float | None, target_loss: float | None,
                    on_step: Callable[[int, float], None] | None = None) -> WriteResult:
        return await self._submit("write", (steps, lr, target_loss), text, on_step, 1)

    async def _submit(self, kind: str, group: tuple, payload: Any, on_step: Any, size: int) -> Any:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(kind, group, payload, future, on_step, size))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            deadline = loop.time() + self.wait
            while len(jobs) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            self.stats.batches += 1
            self.stats.jobs += len(jobs)
            self.stats.largest = max(self.stats.largest, len(jobs))
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault((job.kind,) + job.group, []).append(job)
            for key, group in groups.items():
                await self._run_group(loop, key[0], key[1:], group)

    async def _run_group(self, loop: asyncio.AbstractEventLoop, kind: str, settings: tuple, jobs: list[_Job]) -> None:
        try:
            if kind == "ask":
                items = [item for job in jobs for item in job.payload]
                answers = await loop.run_in_executor(self._executor, self.engine.ask, items, settings[0])
                start = 0
                for job in jobs:
                    _resolve(job.future, answers[start : start + job.size])
                    start += job.size
            else:
                def on_step(index: int, step: int, loss: float) -> None:  # runs on the model thread
                    callback = jobs[index].on_step
                    if callback is not None:
                        loop.call_soon_threadsafe(callback, step, loss)

                texts = [job.payload for job in jobs]
                results = await loop.run_in_executor(
                    self._executor, lambda: self.engine.write_texts(texts, *settings, on_step=on_step))
                for job, result in zip(jobs, results):
                    _resolve(job.future, result)
        except Exception as err:  # noqa: BLE001 - a bad job in a group: retry one by one to isolate it
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(err)
                return
            for job in jobs:
                await self._run_group(loop, kind, settings, [job])


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():  # the client may have gone away
        future.set_result(value)
