"""Fixtures for the service tests: the tiny model, a shipped copy of the service, running services."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import SERVICE_SRC, TEST_KEY, RunningService, base_env, start_service, stop_service, write_key_file


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sd35_provision.tinymodel import generate_tiny_pipeline

    return generate_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd3"), seed=0)


@pytest.fixture(scope="session")
def shipped_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service package as it lands on a host: sd35_provision/service/ and an empty __init__.py, nothing else."""
    root = tmp_path_factory.mktemp("shipped")
    (root / "sd35_provision").mkdir()
    (root / "sd35_provision" / "__init__.py").write_text("")
    shutil.copytree(SERVICE_SRC, root / "sd35_provision" / "service", ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="session")
def live_service(
    shipped_dir: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """A real uvicorn service without auth, on loopback, with a systemd-style notify socket."""
    logs = tmp_path_factory.mktemp("live-service")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(logs / "notify.sock"))
    env = base_env(tiny_model_dir, NOTIFY_SOCKET=str(logs / "notify.sock"))
    service = start_service(shipped_dir, env, logs / "service.log")
    service.notify_socket = notify
    yield service
    stop_service(service)
    notify.close()


@pytest.fixture(scope="session")
def auth_service(
    shipped_dir: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """A real uvicorn service that requires the bearer key from a 0600 file."""
    logs = tmp_path_factory.mktemp("auth-service")
    key_file = write_key_file(logs)
    env = base_env(tiny_model_dir, SD35_API_KEY_FILE=str(key_file))
    service = start_service(shipped_dir, env, logs / "service.log", key=TEST_KEY, key_file=key_file)
    yield service
    stop_service(service)
