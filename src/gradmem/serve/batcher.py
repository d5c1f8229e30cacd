"""An async batching queue in front of an Engine: concurrent requests become batched model calls.

Asks and writes wait in separate queues. One worker task takes the first job of a queue, waits up
to `wait_ms` for more of the same kind and gathers them while the batch stays within its budget
(`max_batch` jobs and a token budget: decode tokens for asks, token-steps for writes), groups
them by settings and runs each group as ONE engine call on a single worker thread (the model is
not thread-safe, and one thread keeps the event loop free). When both queues hold jobs the worker
alternates between them, so a stream of writes cannot starve asks (nor asks writes).

Every job carries a deadline: a job still queued at its deadline is dropped unrun and its request
gets Overloaded (HTTP 503), as does a request arriving while `max_queue` jobs already wait. A
batched write whose requests have all passed their deadline stops at its next step (an ask is
short: bounded by its decode budget, it runs to its end and its answer is dropped). Write jobs
report each step's loss back to their request as the write runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gradmem.core.errors import Overloaded
from gradmem.serve.engine import Engine, WriteResult
from gradmem.serve.os_memory import release_freed_memory

KINDS = ("ask", "write")
T = TypeVar("T")


@dataclass
class _Job:
    kind: str  # "ask" | "write"
    group: tuple  # jobs with equal (kind, group) run in one engine call
    payload: Any  # ask: list of (memory id, question); write: the text
    future: asyncio.Future
    cost: int  # tokens this job adds to its batch's budget
    on_step: Callable[[int, float], None] | None = None  # write progress (step, loss), called on the loop
    size: int = 1
    abandoned: bool = False  # its request gave up (deadline): never run it


@dataclass
class BatchStats:
    """Counters for the /health endpoint and the load test."""

    batches: int = 0
    jobs: int = 0
    largest: int = 0
    timed_out: int = 0  # requests that got 503 at their deadline
    refused: int = 0  # requests refused because the queue was full
    sizes: list[int] = field(default_factory=list, repr=False)


class Batcher:
    """See the module docstring. Use `start()` inside a running loop and `stop()` at shutdown."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 32,
        wait_ms: float = 5.0,
        max_ask_tokens: int = 16384,
        max_write_tokens: int = 16384,
        timeout_s: float = 30.0,
        max_queue: int = 1024,
    ) -> None:
        if max_batch < 1 or wait_ms < 0 or min(max_ask_tokens, max_write_tokens, max_queue) < 1 or timeout_s <= 0:
            raise ValueError("max_batch, token budgets and max_queue must be >= 1, wait_ms >= 0, timeout_s > 0")
        self.engine = engine
        self.max_batch = max_batch
        self.wait = wait_ms / 1000
        self.budgets = {"ask": max_ask_tokens, "write": max_write_tokens}
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queues: dict[str, deque[_Job]] = {kind: deque() for kind in KINDS}
        self._arrived: asyncio.Event | None = None
        self._last = "write"  # kind of the previous batch: the other kind goes first when both wait
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradmem-model")
        self._calls = 0  # one-off calls (`call`) queued or running on the model thread

    def start(self) -> None:
        self._arrived = asyncio.Event()
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
        return sum(len(q) for q in self._queues.values()) + self._calls

    async def call(self, fn: Callable[[Callable[[], bool]], T]) -> T:
        """Run an unbatched model call (e.g. a reconstruction) on the model thread, so it never
        overlaps the batches, under the same queue limit and deadline as a job. `fn(should_stop)`
        gets a function that turns true at the deadline: a call that has not started then never
        runs, and a running one should stop at its next step (its result would be dropped)."""
        self._admit()
        self._calls += 1
        passed = threading.Event()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, _releasing, lambda: fn(passed.is_set))
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            passed.set()
            raise self._timed_out() from None
        finally:
            self._calls -= 1

    async def ask(self, memory_id: str, questions: list[str], max_new_tokens: int | None, cost: int = 1) -> list[str]:
        items = [(memory_id, q) for q in questions]
        return await self._submit(_Job("ask", (max_new_tokens,), items, self._future(), cost, size=len(questions)))

    async def write(
        self,
        text: str,
        steps: int | None,
        lr: float | None,
        target_loss: float | None,
        on_step: Callable[[int, float], None] | None = None,
        cost: int = 1,
    ) -> WriteResult:
        return await self._submit(_Job("write", (steps, lr, target_loss), text, self._future(), cost, on_step))

    @staticmethod
    def _future() -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, job: _Job) -> Any:
        if self._arrived is None:
            raise RuntimeError("the batcher is not started")
        self._admit()
        self._queues[job.kind].append(job)
        self._arrived.set()
        try:  # shield: a timed-out job may already be running; its result is simply dropped
            return await asyncio.wait_for(asyncio.shield(job.future), self.timeout_s)
        except asyncio.TimeoutError:
            job.abandoned = True
            job.future.add_done_callback(
                lambda f: f.cancelled() or f.exception()
            )  # retrieved: no "never retrieved" log
            raise self._timed_out() from None

    def _admit(self) -> None:
        """Overloaded (counted as refused) when `max_queue` jobs already wait."""
        if self.pending >= self.max_queue:
            self.stats.refused += 1
            raise Overloaded(f"the server is busy ({self.pending} requests queued); retry later")

    def _timed_out(self) -> Overloaded:
        """The error of a request past its deadline, counted."""
        self.stats.timed_out += 1
        return Overloaded(f"the request did not finish within the {self.timeout_s:g} s deadline; retry later")

    def _next_kind(self) -> str | None:
        waiting = [kind for kind in KINDS if self._queues[kind]]
        if not waiting:
            return None
        other = [kind for kind in waiting if kind != self._last]
        return other[0] if other else waiting[0]

    async def _take(self, kind: str) -> list[_Job]:
        """The next batch of `kind`: jobs in arrival order within the count and token budgets."""
        loop = asyncio.get_running_loop()
        queue, budget = self._queues[kind], self.budgets[kind]
        jobs: list[_Job] = []
        spent = 0
        deadline = loop.time() + self.wait
        while len(jobs) < self.max_batch:
            while queue and queue[0].abandoned:
                queue.popleft()
            if queue:
                if jobs and spent + queue[0].cost > budget:
                    break
                job = queue.popleft()
                jobs.append(job)
                spent += job.cost
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not jobs:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._arrived is not None
        while True:
            kind = self._next_kind()
            if kind is None:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            jobs = await self._take(kind)
            if not jobs:
                continue
            self._last = kind
            self.stats.batches += 1
            self.stats.jobs += len(jobs)
            self.stats.largest = max(self.stats.largest, len(jobs))
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.group, []).append(job)
            for settings, group in groups.items():
                await self._run_group(loop, kind, settings, group)

    async def _run_group(self, loop: asyncio.AbstractEventLoop, kind: str, settings: tuple, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.abandoned]
        if not jobs:
            return
        try:
            if kind == "ask":
                items = [item for job in jobs for item in job.payload]
                answers = await loop.run_in_executor(
                    self._executor, _releasing, lambda: self.engine.ask(items, settings[0])
                )
                start = 0
                for job in jobs:
                    _resolve(job.future, answers[start : start + job.size])
                    start += job.size
            else:

                def on_step(index: int, step: int, loss: float) -> None:  # runs on the model thread
                    callback = jobs[index].on_step
                    if callback is not None:
                        loop.call_soon_threadsafe(callback, step, loss)

                def should_stop() -> bool:  # every request of the group gave up: stop between steps
                    return all(job.abandoned for job in jobs)

                texts = [job.payload for job in jobs]
                results = await loop.run_in_executor(
                    self._executor,
                    _releasing,
                    lambda: self.engine.write_texts(texts, *settings, on_step=on_step, should_stop=should_stop),
                )
                for job, result in zip(jobs, results):
                    _resolve(job.future, result)
        except Exception as err:  # noqa: BLE001 - a bad job in a group: retry one by one to isolate it
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(err)
                return
            for job in jobs:
                await self._run_group(loop, kind, settings, [job])


def _releasing(fn: Callable[[], T]) -> T:
    """fn(), then the memory it freed goes back to the OS (see gradmem.serve.os_memory): runs on
    the model thread, so the trim never competes with model work."""
    try:
        return fn()
    finally:
        release_freed_memory()


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():  # the client may have gone away
        future.set_result(value)
