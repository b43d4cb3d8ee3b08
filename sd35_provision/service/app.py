"""The HTTP service: OpenAI-compatible image generation, health, readiness and metrics.

``create_app`` builds the FastAPI app; the model is loaded once, on the GPU
worker thread, after the server starts listening, so /healthz answers during a
long load and /readyz says when generation can start.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import (
    CapacityError,
    EngineLoader,
    LoadedEngine,
    RequestError,
    decode_json_body,
    model_not_found,
    parse_generation_request,
)
from .config import ServiceConfig
from .edits import EDITS_PATH, add_edits_route
from .gpu_metrics import GpuCollector
from .metrics import ServiceMetrics, process_started_at
from .playground import PAGE_PATHS, add_playground
from .responses import NOT_READY_RETRY_AFTER_S, error_response, gpu_busy_response, not_ready_response
from .worker import GPUWorker, QueueFull

log = logging.getLogger("sd35.service")

GENERATIONS_PATH = "/v1/images/generations"
MODELS_PATH = "/v1/models"
# Route labels for metrics; anything else is "other" so scanners cannot blow up label cardinality.
KNOWN_ROUTES = frozenset(
    {GENERATIONS_PATH, EDITS_PATH, MODELS_PATH, "/healthz", "/readyz", "/metrics", "/openapi.json"}
)
UNAUTHENTICATED_PATHS = frozenset({"/healthz"}) | PAGE_PATHS  # the playground page holds no secret


class ServiceState:
    """Where start-up stands; written by the GPU thread, read by request handlers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phase = "starting"
        self.loaded: LoadedEngine | None = None

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def set_loaded(self, loaded: LoadedEngine) -> None:
        with self._lock:
            self.loaded = loaded
            self.phase = "ready"


_error = error_response


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def create_app(
    config: ServiceConfig,
    load_engine: EngineLoader | None = None,
    on_ready: Callable[[], None] | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
    running: dict[str, Any] | None = None,
    gpu_metrics: GpuCollector | None = None,
) -> FastAPI:
    """The service app. ``load_engine`` defaults to loading ``config.model_dir`` (tests pass their own).

    ``running``: what this process runs (service/running.py), answered on /readyz as ``running``.
    ``gpu_metrics``: the NVML metrics on /metrics (default: of this process's GPUs; tests pass their own).
    """
    if load_engine is None:
        from .pipeline import engine_loader

        load_engine = engine_loader(config)

    state = ServiceState()
    worker = GPUWorker(config.queue_size, config.max_batch)
    metrics = ServiceMetrics(queue_depth=lambda: worker.waiting, in_progress=lambda: worker.running, gpu=gpu_metrics)
    worker.on_batch = metrics.batch_images.observe
    created = time.time()
    body_limit = 16 * 1024 + 8 * config.limits.max_prompt_chars

    def loaded(future: Any) -> None:
        # Runs on the GPU thread when loading ends, successfully or not.
        if future.cancelled():  # shut down before the load began
            return
        exc = future.exception()
        if exc is not None:
            state.set_phase("failed")
            log.error("model load failed: %s", exc, exc_info=exc)
            if on_fatal is not None:
                on_fatal(exc)
            return
        result: LoadedEngine = future.result()
        # From the process's start (its imports included) to ready: what a restart costs.
        started = process_started_at() or created
        ready_s = max(0.0, time.time() - started)
        result = LoadedEngine(engine=result.engine, description={**result.description, "ready_s": f"{ready_s:.1f}"})
        metrics.ready_seconds.set(ready_s)
        state.set_loaded(result)
        metrics.ready.set(1)
        metrics.info.info(result.description)
        log.info("ready: serving %s", config.model_dir)
        if on_ready is not None:
            on_ready()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        begin = time.monotonic()

        def load() -> LoadedEngine:
            result = load_engine(state.set_phase)
            metrics.load_seconds.set(time.monotonic() - begin)
            return result

        state.set_phase("loading")
        worker.submit(load).add_done_callback(loaded)
        try:
            yield
        finally:
            worker.shutdown()

    app = FastAPI(
        title="sd35 inference",
        lifespan=lifespan,
        docs_url=None,  # no CDN for the docs UI on the hosts; /openapi.json stays
        redoc_url=None,
    )
    app.state.service = state
    app.state.worker = worker
    app.state.metrics = metrics

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        key = config.api_key
        if key is None or request.url.path in UNAUTHENTICATED_PATHS:
            return await call_next(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), key.reveal()):
            metrics.errors.labels("auth").inc()
            return _error(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                "authentication_error",
                headers={"WWW-Authenticate": "Bearer"},
                code="invalid_api_key",
            )
        return await call_next(request)

    @app.middleware("http")
    async def count(request: Request, call_next):
        route = request.url.path if request.url.path in KNOWN_ROUTES else "other"
        begin = time.monotonic()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.latency.labels(route).observe(time.monotonic() - begin)
            metrics.requests.labels(route, request.method, str(status)).inc()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "invalid_request_error", headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels("internal").inc()
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error; the service logged the details", "server_error")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive", "phase": state.phase}

    stated = {"running": running} if running is not None else {}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if state.loaded is None:
            return JSONResponse(
                {"status": state.phase, **stated},
                status_code=503,
                headers={"Retry-After": str(NOT_READY_RETRY_AFTER_S)},
            )
        return JSONResponse({"status": "ready", **state.loaded.description, **stated})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        # Off the event loop: the GPU collectors ask the driver, which may take a while (bounded there).
        payload, content_type = await asyncio.to_thread(metrics.render)
        return Response(payload, media_type=content_type)

    started = int(time.time())

    def model_entry(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": started, "owned_by": "sd35-provision"}

    @app.get(MODELS_PATH)
    async def list_models() -> dict[str, Any]:
        """The names ``model`` may take, in the shape of OpenAI's model list."""
        return {"object": "list", "data": [model_entry(name) for name in config.model_names]}

    @app.get(MODELS_PATH + "/{name:path}")
    async def retrieve_model(name: str) -> JSONResponse:
        if name not in config.model_names:
            error = model_not_found(name, config.model_names)
            return JSONResponse(error.body(), status_code=error.status)
        return JSONResponse(model_entry(name))

    @app.post(
        GENERATIONS_PATH,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object", "required": ["prompt"]}}},
            }
        },
    )
    async def generations(request: Request) -> JSONResponse:
        try:
            return await _generate(request)
        except RequestError as exc:
            metrics.errors.labels("invalid").inc()
            return JSONResponse(exc.body(), status_code=exc.status)

    async def _generate(request: Request) -> JSONResponse:
        if not _is_json(request.headers.get("content-type", "")):
            raise RequestError(415, "the request body must be JSON (Content-Type: application/json)")
        data = decode_json_body(await _read_body(request, body_limit))

        loaded_engine = state.loaded
        if loaded_engine is None:
            return not_ready_response(state.phase, metrics)
        engine = loaded_engine.engine
        job = parse_generation_request(
            data, config.limits, engine.limits, config.default_steps, config.default_guidance, config.model_names
        )

        def draw() -> tuple[list[str], float]:
            begin = time.monotonic()
            pngs = engine.generate(job)
            elapsed = time.monotonic() - begin
            return [base64.b64encode(png).decode("ascii") for png in pngs], elapsed

        def draw_batch(jobs: list[Any]) -> list[tuple[list[Any], float]]:
            begin = time.monotonic()
            images = engine.draw(jobs)
            elapsed = time.monotonic() - begin
            return [(found, elapsed) for found in images]

        def encode(images: list[Any]) -> list[str]:
            return [base64.b64encode(engine.encode(image)).decode("ascii") for image in images]

        try:
            if hasattr(engine, "draw"):
                # Batchable engine: jobs of one size, steps and guidance share a
                # pipeline call, and the PNG/base64 encoding runs here, off the GPU
                # thread, which moves on to the next batch meanwhile.
                key = (job.width, job.height, job.num_inference_steps, job.guidance_scale)
                drawn, elapsed = await worker.run_batched(key, job.n, job, draw_batch)
                images = await asyncio.to_thread(encode, drawn)
            else:
                images, elapsed = await worker.run(draw)
        except (QueueFull, CapacityError) as exc:
            return gpu_busy_response(exc, config.queue_size, worker, metrics)
        except Exception:
            metrics.errors.labels("internal").inc()
            log.exception(
                "generation failed (%dx%d, n=%d, %d steps)", job.width, job.height, job.n, job.num_inference_steps
            )
            return _error(500, "image generation failed; the service logged the details", "server_error")

        metrics.generation.observe(elapsed)
        metrics.images.inc(len(images))
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [{"b64_json": image, "seed": job.seed + i} for i, image in enumerate(images)],
                "size": f"{job.width}x{job.height}",
                "output_format": "png",
            }
        )

    add_edits_route(app, config)
    add_playground(app, config)
    return app
