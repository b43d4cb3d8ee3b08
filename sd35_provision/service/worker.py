"""One GPU job at a time, with a bounded line of waiting jobs, batched when they match.

Every pipeline call (load, warm-up, generation) runs on the same single thread:
torch.compile's CUDA graphs are per thread, and one job at a time keeps GPU
memory predictable. The event loop only awaits the result, so /healthz and
/metrics stay responsive while an image is being drawn.

Batching (``run_batched``): when the GPU thread takes the oldest waiting job,
the other waiting jobs with the same key (size, steps, guidance) join it, up to
``max_batch`` images, and run as one pipeline call.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """No room in the queue; ``retry_after_s`` estimates when there will be."""

    def __init__(self, retry_after_s: int):
        self.retry_after_s = retry_after_s
        super().__init__(f"queue full, retry after {retry_after_s} s")


@dataclass(eq=False)
class _Waiting:
    """A batchable job in line."""

    key: Hashable
    images: int
    item: Any
    future: Future = field(default_factory=Future)
    abandoned: bool = False


class GPUWorker:
    """Runs jobs one by one on a single thread; at most ``queue_size`` wait behind the running one."""

    def __init__(self, queue_size: int, max_batch: int = 1):
        self.queue_size = queue_size
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd35-gpu")
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._line: list[_Waiting] = []
        # Moving average of job durations, for Retry-After.
        self._average_job_s: float | None = None
        self.batch_sizes: list[int] = []  # images per batch run, for the tests and metrics
        self.on_batch: Callable[[int], None] | None = None

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the GPU thread outside the queue's accounting (model load, warm-up)."""
        return self._executor.submit(fn)

    def retry_after_s(self) -> int:
        per_job = self._average_job_s if self._average_job_s is not None else 5.0
        return max(1, min(600, math.ceil(per_job * (self._waiting + 1))))

    def _admit(self) -> None:
        # Full when queue_size wait behind what runs (with nothing running, one more may wait).
        if self._waiting >= self.queue_size + (0 if self._running else 1):
            raise QueueFull(self.retry_after_s())
        self._waiting += 1

    def _finished(self, begin: float) -> None:
        elapsed = time.monotonic() - begin
        previous = self._average_job_s
        self._average_job_s = elapsed if previous is None else 0.8 * previous + 0.2 * elapsed

    async def run_batched(
        self, key: Hashable, images: int, item: Any, run_batch: Callable[[list[Any]], list[Any]]
    ) -> Any:
        """Queue ``item`` (``images`` images) and await its own result from ``run_batch``.

        ``run_batch`` gets the items of one batch, all with ``key``, and returns
        one result per item in order; it runs on the GPU thread. Raises
        QueueFull at once when the line is full.
        """
        entry = _Waiting(key, images, item)
        with self._lock:
            self._admit()
            self._line.append(entry)
        self._executor.submit(self._run_next_batch, run_batch)
        try:
            return await asyncio.wrap_future(entry.future)
        except asyncio.CancelledError:
            with self._lock:
                entry.abandoned = True
            raise

    def _take_batch(self) -> list[_Waiting]:
        with self._lock:
            # A client that went away while waiting: do not spend GPU time on it.
            for gone in [e for e in self._line if e.abandoned]:
                self._line.remove(gone)
                self._waiting -= 1
            if not self._line:
                return []
            first = self._line[0]
            batch, images = [first], first.images
            for entry in self._line[1:]:
                if entry.key == first.key and images + entry.images <= self.max_batch:
                    batch.append(entry)
                    images += entry.images
            for entry in batch:
                self._line.remove(entry)
            self._waiting -= len(batch)
            self._running += len(batch)
            return batch

    def _run_next_batch(self, run_batch: Callable[[list[Any]], list[Any]]) -> None:
        # One of these is queued per job; a job already taken into an earlier batch leaves nothing to do.
        batch = self._take_batch()
        if not batch:
            return
        images = sum(e.images for e in batch)
        self.batch_sizes.append(images)
        if self.on_batch is not None:
            self.on_batch(images)
        begin = time.monotonic()
        failure: BaseException | None = None
        try:
            results = run_batch([e.item for e in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the batch returned {len(results)} results for {len(batch)} jobs")
        except BaseException as exc:  # every waiting client hears of it; the thread lives on
            failure = exc
        # The counts first: a client that has its result sees this batch no longer running.
        with self._lock:
            self._running -= len(batch)
            self._finished(begin)
        for position, entry in enumerate(batch):
            if entry.future.done():  # cancelled: its client left while the batch ran
                continue
            if failure is not None:
                entry.future.set_exception(failure)
            else:
                entry.future.set_result(results[position])

    async def run(self, fn: Callable[[], T]) -> T:
        """Queue ``fn`` and await its result; raises QueueFull at once when the line is full."""
        with self._lock:
            self._admit()
        abandoned = threading.Event()

        def job() -> T | None:
            with self._lock:
                self._waiting -= 1
                if abandoned.is_set():
                    # The client went away while waiting: do not spend GPU time on it.
                    return None
                self._running += 1
            begin = time.monotonic()
            try:
                return fn()
            finally:
                with self._lock:
                    self._running -= 1
                    self._finished(begin)

        future = self._executor.submit(job)
        try:
            return await asyncio.wrap_future(future)  # type: ignore[return-value]
        except asyncio.CancelledError:
            abandoned.set()
            raise

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
