"""Prometheus metrics of one service instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from .gpu_metrics import GpuCollector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)


def process_started_at() -> float | None:
    """This process's start (Unix time) from /proc; None where there is no /proc."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[19])  # starttime: field 22, clock ticks after boot
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class CudaMemoryCollector:
    """GPU memory as seen by torch's caching allocator, read at scrape time (only with CUDA)."""

    def collect(self) -> Iterable[Metric]:
        try:
            import torch

            if not torch.cuda.is_available() or not torch.cuda.is_initialized():
                return []
            device = torch.cuda.current_device()
            free, total = torch.cuda.mem_get_info(device)
            values = {
                "sd35_gpu_memory_allocated_bytes": ("Bytes held by live tensors.", torch.cuda.memory_allocated(device)),
                "sd35_gpu_memory_reserved_bytes": (
                    "Bytes reserved by torch's allocator.",
                    torch.cuda.memory_reserved(device),
                ),
                "sd35_gpu_memory_peak_allocated_bytes": (
                    "Most bytes held by live tensors since start.",
                    torch.cuda.max_memory_allocated(device),
                ),
                "sd35_gpu_memory_free_bytes": ("Free device memory (all processes).", free),
                "sd35_gpu_memory_total_bytes": ("Total device memory.", total),
            }
        except Exception:  # a scrape must never fail because the GPU query did
            return []
        return [GaugeMetricFamily(name, doc, value=float(value)) for name, (doc, value) in values.items()]


class ServiceMetrics:
    def __init__(
        self,
        queue_depth: Callable[[], float],
        in_progress: Callable[[], float],
        gpu: GpuCollector | None = None,
    ):
        """``gpu``: the NVML metrics (default: of the GPUs CUDA_VISIBLE_DEVICES gives this process)."""
        # The *_created series double every counter's lines and nobody graphs them.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sd35_http_requests",
            "HTTP requests answered, by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.errors = Counter(
            "sd35_errors",
            "Requests that did not produce images, by kind (invalid, auth, queue_full, not_ready, capacity, internal).",
            ["kind"],
            registry=r,
        )
        self.latency = Histogram(
            "sd35_http_request_duration_seconds",
            "Time to answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generation = Histogram(
            "sd35_generation_duration_seconds",
            "Pipeline time of one generation request (all its images), excluding queueing.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("sd35_images_generated", "Images returned to clients.", registry=r)
        self.queue_depth = Gauge("sd35_queue_depth", "Generation requests waiting for the GPU.", registry=r)
        self.queue_depth.set_function(queue_depth)
        self.in_progress = Gauge("sd35_generations_in_progress", "Generation requests on the GPU now.", registry=r)
        self.in_progress.set_function(in_progress)
        self.ready = Gauge("sd35_model_ready", "1 once the model is loaded and warmed up.", registry=r)
        self.load_seconds = Gauge("sd35_model_load_seconds", "Time spent loading and warming up the model.", registry=r)
        self.info = Info("sd35_model", "The precision and device the model runs with.", registry=r)
        self.ready_seconds = Gauge(
            "sd35_ready_seconds", "Seconds from the process's start to ready (imports, load, warm-up).", registry=r
        )
        self.batch_images = Histogram(
            "sd35_batch_images",
            "Images drawn per pipeline call (batched requests together).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        ProcessCollector(registry=r)
        r.register(CudaMemoryCollector())
        self.gpu = gpu if gpu is not None else GpuCollector()
        r.register(self.gpu)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
