"""Helpers for the service tests: configs, running the shipped service, fake engines and PNGs."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sd35_provision.service.api import CapacityError, GenerationJob, LoadedEngine, ModelLimits
from sd35_provision.service.config import ServiceConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SERVICE_SRC = REPO / "sd35_provision" / "service"
TEST_KEY = "test-key-0123456789abcdef"
SERVICE_START_TIMEOUT_S = 90


def base_env(model_dir: Path, **overrides: str) -> dict[str, str]:
    # The name stock clients are pointed at in these tests, beside the service's own id.
    env = {
        "SD35_MODEL_DIR": str(model_dir),
        "SD35_WARMUP_STEPS": "1",
        "SD35_DEFAULT_STEPS": "2",
        "SD35_MODEL_ALIASES": "sd3.5-large",
    }
    env.update(overrides)
    return env


def make_config(model_dir: Path, **overrides: str) -> ServiceConfig:
    return load_config(base_env(model_dir, **overrides))


def write_key_file(directory: Path, key: str = TEST_KEY, mode: int = 0o600) -> Path:
    path = directory / "api-key"
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment: no PYTHONPATH, so only the shipped copy of the service can be imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SD35_", "PYTHON"))}
    env.update(extra)
    return env


@dataclass
class RunningService:
    url: str
    process: subprocess.Popen
    log_path: Path
    key: str | None = None
    key_file: Path | None = None
    notify_socket: socket.socket | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


def start_service(
    shipped: Path, env: dict[str, str], log_path: Path, key: str | None = None, key_file: Path | None = None
) -> RunningService:
    """Run ``python -m sd35_provision.service`` from the shipped copy on a free loopback port; wait for /readyz."""
    port = free_port()
    env = {"SD35_BIND": "127.0.0.1", **env, "SD35_PORT": str(port)}
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sd35_provision.service"],
        cwd=shipped,
        env=subprocess_env(env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    log_file.close()
    service = RunningService(f"http://127.0.0.1:{port}", process, log_path, key, key_file)
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}:\n{service.log()}")
        try:
            if httpx.get(f"{service.url}/readyz", headers=service.headers(), timeout=2).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_service(service)
    raise RuntimeError(f"service not ready after {SERVICE_START_TIMEOUT_S} s:\n{service.log()}")


def stop_service(service: RunningService) -> None:
    service.process.terminate()
    try:
        service.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()


def solid_png(width: int, height: int, color: tuple[int, int, int] = (128, 64, 32)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    import random

    from PIL import Image

    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), bytes(rng.randrange(256) for _ in range(width * height * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class FakeEngine:
    """An engine without torch: noise PNGs of the asked size; can block, fail, or draw blank/wrong-size images."""

    limits: ModelLimits = field(default_factory=lambda: ModelLimits(64, 64, 16, 512))
    gate: threading.Event | None = None
    started: threading.Event = field(default_factory=threading.Event)
    fail_on_prompt: str | None = None
    out_of_memory_on_prompt: str | None = None
    calls: int = 0

    def generate(self, job: GenerationJob) -> list[bytes]:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "test gate never opened"
        if self.fail_on_prompt is not None and job.prompt == self.fail_on_prompt:
            raise RuntimeError("CUDA error: simulated failure with a secret path /root/.cache")
        if self.out_of_memory_on_prompt is not None and job.prompt == self.out_of_memory_on_prompt:
            raise CapacityError(f"out of GPU memory for {job.n} image(s) of {job.width}x{job.height}")
        return [noise_png(job.width, job.height, job.seed + i) for i in range(job.n)]

    def loader(self, gate: threading.Event | None = None):
        def load(set_phase) -> LoadedEngine:
            set_phase("loading")
            if gate is not None:
                assert gate.wait(timeout=30), "test load gate never opened"
            return LoadedEngine(engine=self, description={"precision": "fake", "device": "none", "reason": "test"})

        return load
