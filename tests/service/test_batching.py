"""Batching of waiting requests, encoding off the GPU thread, warm-up coverage, component-wise loading."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sd35_provision.service.api import GenerationJob, LoadedEngine, ModelLimits
from sd35_provision.service.app import create_app
from sd35_provision.service.worker import GPUWorker, QueueFull

from .support import make_config, noise_png


def job(
    prompt: str = "a cat", n: int = 1, size: int = 64, steps: int = 2, guidance: float = 3.5, seed: int = 0
) -> GenerationJob:
    return GenerationJob(prompt, None, n, size, size, steps, guidance, seed)


def key(j: GenerationJob) -> tuple:
    return (j.width, j.height, j.num_inference_steps, j.guidance_scale)


class GatedBatches:
    """run_batch for the worker: records each batch; the first one waits for the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def __call__(self, jobs: list[GenerationJob]) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.batches.append([j.prompt for j in jobs])
        self.started.set()
        assert self.gate.wait(10), "test gate never opened"
        if any(j.prompt == "boom" for j in jobs):
            raise RuntimeError("simulated failure")
        return [f"done {j.prompt}" for j in jobs]


async def _submit_while_busy(worker: GPUWorker, run: GatedBatches, waiting: list[GenerationJob]):
    """One job runs (held at the gate) while ``waiting`` line up; then the gate opens."""
    first = asyncio.ensure_future(worker.run_batched(key(job("first")), 1, job("first"), run))
    while not run.started.is_set():
        await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(worker.run_batched(key(j), j.n, j, run)) for j in waiting]
    while worker.waiting < len(waiting):
        await asyncio.sleep(0.01)
    run.gate.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_waiting_jobs_with_the_same_key_run_as_one_batch():
    worker = GPUWorker(queue_size=8, max_batch=4)
    run = GatedBatches()
    waiting = [job("a"), job("other size", size=128), job("b", n=2), job("c"), job("d")]
    results = asyncio.run(_submit_while_busy(worker, run, waiting))
    assert results == ["done first", "done a", "done other size", "done b", "done c", "done d"]
    # a, b (2 images) and c fill 4 images; d waits for the next batch; the other size runs alone, in its turn.
    assert run.batches == [["first"], ["a", "b", "c"], ["other size"], ["d"]]
    assert worker.batch_sizes == [1, 4, 1, 1]
    assert run.threads == {n for n in run.threads if n.startswith("sd35-gpu")}
    assert (worker.waiting, worker.running) == (0, 0)


def test_max_batch_one_runs_one_at_a_time():
    worker = GPUWorker(queue_size=8, max_batch=1)
    run = GatedBatches()
    asyncio.run(_submit_while_busy(worker, run, [job("a"), job("b")]))
    assert run.batches == [["first"], ["a"], ["b"]]


def test_a_failing_batch_fails_each_of_its_jobs_and_the_worker_goes_on():
    worker = GPUWorker(queue_size=8, max_batch=4)
    run = GatedBatches()
    results = asyncio.run(_submit_while_busy(worker, run, [job("boom"), job("x")]))
    assert results[0] == "done first"
    assert all(isinstance(r, RuntimeError) for r in results[1:])
    assert run.batches == [["first"], ["boom", "x"]]

    async def after() -> str:
        return await worker.run_batched(key(job("y")), 1, job("y"), run)

    assert asyncio.run(after()) == "done y"


def test_queue_limit_counts_waiting_jobs_not_images():
    worker = GPUWorker(queue_size=2, max_batch=4)
    run = GatedBatches()

    async def scenario() -> list:
        first = asyncio.ensure_future(worker.run_batched(key(job()), 1, job("first"), run))
        while not run.started.is_set():
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(worker.run_batched(key(job()), 2, job(p, n=2), run)) for p in "ab"]
        while worker.waiting < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await worker.run_batched(key(job()), 1, job("c"), run)
        run.gate.set()
        return await asyncio.gather(first, *queued)

    assert asyncio.run(scenario()) == ["done first", "done a", "done b"]


def test_a_client_that_left_is_not_drawn():
    worker = GPUWorker(queue_size=8, max_batch=4)
    run = GatedBatches()

    async def scenario() -> None:
        first = asyncio.ensure_future(worker.run_batched(key(job()), 1, job("first"), run))
        while not run.started.is_set():
            await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(worker.run_batched(key(job()), 1, job("gone"), run))
        stays = asyncio.ensure_future(worker.run_batched(key(job()), 1, job("stays"), run))
        while worker.waiting < 2:
            await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.05)
        run.gate.set()
        await asyncio.gather(first, stays)

    asyncio.run(scenario())
    assert run.batches == [["first"], ["stays"]]
    assert worker.waiting == 0


@dataclass
class BatchingEngine:
    """A batchable engine without torch: records its batches and the threads that draw and encode."""

    limits: ModelLimits = field(default_factory=lambda: ModelLimits(64, 64, 16, 512))
    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    batches: list[list[int]] = field(default_factory=list)
    draw_threads: set[str] = field(default_factory=set)
    encode_threads: set[str] = field(default_factory=set)

    def draw(self, jobs: list[GenerationJob]) -> list[list[tuple[int, int, int]]]:
        self.draw_threads.add(threading.current_thread().name)
        self.batches.append([j.seed for j in jobs])
        self.started.set()
        assert self.gate.wait(10)
        return [[(j.width, j.height, j.seed + i) for i in range(j.n)] for j in jobs]

    def encode(self, image: tuple[int, int, int]) -> bytes:
        self.encode_threads.add(threading.current_thread().name)
        return noise_png(*image)

    def generate(self, job: GenerationJob) -> list[bytes]:  # the Engine protocol; the app prefers draw
        raise AssertionError("a batchable engine is drawn through draw()")

    def loader(self):
        return lambda set_phase: LoadedEngine(engine=self, description={"precision": "fake"})


def test_app_batches_concurrent_requests_and_encodes_off_the_gpu_thread(tiny_model_dir: Path) -> None:
    engine = BatchingEngine()
    app = create_app(make_config(tiny_model_dir, SD35_MAX_BATCH="4"), load_engine=engine.loader())
    body = {"prompt": "a red cat", "size": "64x64", "num_inference_steps": 2}
    answers: dict[int, dict] = {}
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        def post(seed: int, n: int = 1) -> None:
            response = client.post("/v1/images/generations", json={**body, "seed": seed, "n": n})
            answers[seed] = response.json()

        threads = [threading.Thread(target=post, args=(100,))]
        threads[0].start()
        assert engine.started.wait(10)
        # One at a time into the line: two threads started together arrive in either order.
        for waiting, (seed, n) in enumerate(((200, 2), (300, 1)), start=1):
            threads.append(threading.Thread(target=post, args=(seed, n)))
            threads[-1].start()
            while app.state.worker.waiting < waiting:
                time.sleep(0.01)
        engine.gate.set()
        for t in threads:
            t.join(10)
        metrics = client.get("/metrics").text

    assert engine.batches == [[100], [200, 300]]
    assert [item["seed"] for item in answers[200]["data"]] == [200, 201]
    assert [item["seed"] for item in answers[300]["data"]] == [300]
    assert engine.draw_threads and all(n.startswith("sd35-gpu") for n in engine.draw_threads)
    assert engine.encode_threads and not any(n.startswith("sd35-gpu") for n in engine.encode_threads)
    assert "sd35_batch_images_count 2.0" in metrics and "sd35_batch_images_sum 4.0" in metrics


def test_warmup_plan_covers_every_batch_a_request_can_make():
    from sd35_provision.service.pipeline import warmup_plan

    assert warmup_plan([(1024, 1024)], 4, 3.5) == [
        (1024, 1024, 1, 3.5),
        (1024, 1024, 2, 3.5),
        (1024, 1024, 3, 3.5),
        (1024, 1024, 4, 3.5),
        (1024, 1024, 1, 0.0),  # no CFG: a transformer batch of 1, its own compiled case
    ]
    assert warmup_plan([(64, 64), (32, 48)], 1, 1.0) == [(64, 64, 1, 1.0), (32, 48, 1, 1.0)]


def test_warm_up_draws_each_planned_batch(monkeypatch):
    from sd35_provision.service import pipeline

    drawn: list[tuple[int, int, float]] = []
    monkeypatch.setattr(
        pipeline,
        "run_batch",
        lambda pipe, jobs: drawn.append((jobs[0].width, jobs[0].n, jobs[0].guidance_scale)) or [[]],
    )
    pipeline.warm_up(object(), [(64, 64)], steps=1, guidance_scale=3.5, max_batch=3)
    assert drawn == [(64, 1, 3.5), (64, 2, 3.5), (64, 3, 3.5), (64, 1, 0.0)]


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir: Path):
    import torch

    from sd35_provision.service.pipeline import load_pipeline
    from sd35_provision.service.precision import DeviceInfo, PrecisionChoice

    return load_pipeline(
        tiny_model_dir, PrecisionChoice("fp32", torch.float32, False, "test"), DeviceInfo("cpu", "cpu", None, None)
    )


def test_a_batched_image_is_the_image_drawn_alone(tiny_pipe) -> None:
    import numpy as np

    from sd35_provision.service.pipeline import run_batch, run_pipeline

    alone = run_pipeline(tiny_pipe, job("a red cat", seed=7))[0]
    together = run_batch(tiny_pipe, [job("a blue dog", n=2, seed=1), job("a red cat", seed=7)])
    assert [len(images) for images in together] == [2, 1]
    difference = np.abs(np.asarray(alone, dtype=np.int16) - np.asarray(together[1][0], dtype=np.int16))
    assert difference.max() <= 2  # same prompt, seed and noise; batched matmuls may round differently


def test_a_batch_refuses_jobs_of_different_sizes(tiny_pipe) -> None:
    from sd35_provision.service.pipeline import run_batch

    with pytest.raises(ValueError, match="one size"):
        run_batch(tiny_pipe, [job(size=64), job(size=32)])


def test_components_load_one_by_one_transformer_first(tiny_model_dir: Path, monkeypatch) -> None:
    import torch

    from sd35_provision.service import pipeline
    from sd35_provision.service.precision import DeviceInfo, PrecisionChoice

    order: list[str] = []
    converted: list[str] = []
    real_load = pipeline._load_component

    def load(model_dir, name, dtype, device):
        order.append(name)
        return real_load(model_dir, name, dtype, device)

    def convert(module, choice):
        converted.append(f"{type(module).__name__} after {order[-1]}, before the next")
        assert order[-1] == "transformer"

    monkeypatch.setattr(pipeline, "_load_component", load)
    monkeypatch.setattr(pipeline, "convert_transformer", convert)
    pipe = pipeline.load_pipeline(
        tiny_model_dir, PrecisionChoice("fp32", torch.float32, False, "test"), DeviceInfo("cpu", "cpu", None, None)
    )
    assert order == ["transformer", "text_encoder_3", "text_encoder_2", "text_encoder", "vae"]
    assert converted == ["SD3Transformer2DModel after transformer, before the next"]
    assert pipe.vae.use_slicing  # a batch decodes one image at a time
    assert pipe.transformer.dtype == torch.float32 and pipe.text_encoder_3.dtype == torch.float32


def test_an_fp8_resident_plan_stores_t5_alone_in_8_bits_right_after_it_is_read(
    tiny_model_dir: Path, monkeypatch
) -> None:
    """T5-XXL was FP8's rest over BF16's process peak (docs/benchmarks.md): it goes to 8 bits before the next
    component is read; CLIP-L/G and the VAE keep the compute dtype, and a lean plan uses its own FP8 for all three."""
    import torch

    from sd35_provision.service import pipeline
    from sd35_provision.service.precision import DeviceInfo, MemoryPlan, PrecisionChoice

    order: list[str] = []
    stored: list[tuple[str, str]] = []
    real_load = pipeline._load_component

    def load(model_dir, name, dtype, device):
        order.append(name)
        return real_load(model_dir, name, dtype, device)

    monkeypatch.setattr(pipeline, "_load_component", load)
    monkeypatch.setattr(pipeline, "store_t5_8bit", lambda module: stored.append(("8-bit", order[-1])))
    monkeypatch.setattr(pipeline, "store_fp8_scaled", lambda module: stored.append(("fp8", order[-1])))
    choice = PrecisionChoice("fp32", torch.float32, False, "test")
    cpu = DeviceInfo("cpu", "cpu", None, None)
    pipeline.load_pipeline(tiny_model_dir, choice, cpu, plan=MemoryPlan(False, False, "resident: test", t5_8bit=True))
    assert stored == [("8-bit", "text_encoder_3")]
    stored.clear()
    pipeline.load_pipeline(tiny_model_dir, choice, cpu, plan=MemoryPlan(False, False, "resident: test"))
    assert stored == []
    pipeline.load_pipeline(tiny_model_dir, choice, cpu, plan=MemoryPlan(True, False, "lean: test", t5_8bit=False))
    assert stored == [("fp8", "text_encoder_3"), ("fp8", "text_encoder_2"), ("fp8", "text_encoder")]
