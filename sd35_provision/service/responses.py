"""The error answers that generations and edits share: one mapping from a failure to its status, one wording.

A full queue is 429 with the worker's Retry-After; a request the GPU had no
memory for is 503 (``CapacityError``); a model still loading is 503 with
``NOT_READY_RETRY_AFTER_S``. Each counts in ``sd35_errors_total`` by kind.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from .api import CapacityError, error_body
from .worker import QueueFull

NOT_READY_RETRY_AFTER_S = 10


def error_response(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(error_body(message, kind, **extra), status_code=status, headers=headers)


def not_ready_response(phase: str, metrics: Any) -> JSONResponse:
    """503 while the model loads or warms up."""
    metrics.errors.labels("not_ready").inc()
    return error_response(
        503,
        f"the model is not ready ({phase}); retry later",
        "server_error",
        headers={"Retry-After": str(NOT_READY_RETRY_AFTER_S)},
    )


def gpu_busy_response(exc: QueueFull | CapacityError, queue_size: int, worker: Any, metrics: Any) -> JSONResponse:
    """429 for a full queue, 503 for a request the GPU had no memory for."""
    if isinstance(exc, QueueFull):
        metrics.errors.labels("queue_full").inc()
        return error_response(
            429,
            f"the service is busy ({queue_size} requests waiting); retry after {exc.retry_after_s} s",
            "rate_limit_error",
            headers={"Retry-After": str(exc.retry_after_s)},
        )
    metrics.errors.labels("capacity").inc()
    return error_response(503, str(exc), "server_error", headers={"Retry-After": str(worker.retry_after_s())})
