"""The inference service's settings file, rendered from the spec.

Kept apart from the service layer because a release carries a copy of the
settings it was made with (see ``deploys/release.py``): a rollback restores
them along with the venv, code and model they were tested with. It sits beside
``hostplan.py``, which renders it into each host's plan (imports run downwards).
"""

from __future__ import annotations

import hashlib
from typing import Any

from sd35_provision import layout
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.service import config

SERVICE_ENV_FILE = layout.SERVICE_ENV_FILE
API_KEY_PATH = layout.API_KEY_FILE
RELEASE_COPY = layout.RELEASE_SERVICE_ENV  # the copy in each release directory


def service_environment(settings: HostSettings) -> dict[str, str]:
    """The service's SD35_* settings, named and checked by sd35_provision/service/config.py; no secret in here."""
    service, current = settings.service, layout.current_link(settings.python.install_root)
    values: list[tuple[config.Setting[Any], Any]] = [
        (config.MODEL_DIR, f"{current}/model"),
        (config.BIND, service.bind),
        (config.PORT, service.port),
        (config.PRECISION, service.precision),
        (config.COMPILE, service.compile),
        (config.QUEUE_SIZE, service.queue_size),
        (config.MAX_SIDE, service.max_side),
        (config.MAX_PIXELS, service.max_side * service.max_side),
        (config.MAX_STEPS, service.max_steps),
        (config.MAX_N, service.max_n),
    ]
    if service.api_key_file is not None:
        values.append((config.API_KEY_FILE, API_KEY_PATH))
    values.append((config.PLAYGROUND, service.playground))
    values.append((config.MAX_BATCH, service.max_batch))
    values.append((config.GPU_MEMORY_GIB, service.gpu_memory_gib))
    return config.render_env(values)


def render_service_env(settings: HostSettings) -> str:
    lines = ["# Managed by sd35-provision; edits are reverted on the next apply."]
    lines += [f"{key}={value}" for key, value in service_environment(settings).items()]
    return "\n".join(lines) + "\n"


def service_env_digest(settings: HostSettings) -> str:
    return hashlib.sha256(render_service_env(settings).encode()).hexdigest()[:16]
