"""One GPU job at a time, with a bounded line of waiting jobs.

Every pipeline call (load, warm-up, generation) runs on the same single thread:
torch.compile's CUDA graphs are per thread, and one job at a time keeps GPU
memory predictable. The event loop only awaits the result, so /healthz and
/metrics stay responsive while an image is being drawn.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """No room in the queue; ``retry_after_s`` estimates when there will be."""

    def __init__(self, retry_after_s: int):
        self.retry_after_s = retry_after_s
        super().__init__(f"queue full, retry after {retry_after_s} s")


class GPUWorker:
    """Runs jobs one by one on a single thread; at most ``queue_size`` wait behind the running one."""

    def __init__(self, queue_size: int):
        self.queue_size = queue_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd35-gpu")
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        # Moving average of job durations, for Retry-After.
        self._average_job_s: float | None = None

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

    async def run(self, fn: Callable[[], T]) -> T:
        """Queue ``fn`` and await its result; raises QueueFull at once when the line is full."""
        with self._lock:
            if self._waiting + self._running >= self.queue_size + 1:
                raise QueueFull(self.retry_after_s())
            self._waiting += 1
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
                elapsed = time.monotonic() - begin
                with self._lock:
                    self._running -= 1
                    previous = self._average_job_s
                    self._average_job_s = elapsed if previous is None else 0.8 * previous + 0.2 * elapsed

        future = self._executor.submit(job)
        try:
            return await asyncio.wrap_future(future)  # type: ignore[return-value]
        except asyncio.CancelledError:
            abandoned.set()
            raise

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
