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
from sd35_provision.instances import Instance
from sd35_provision.service import config

SERVICE_ENV_FILE = layout.SERVICE_ENV_FILE
API_KEY_PATH = layout.API_KEY_FILE
RELEASE_COPY = layout.RELEASE_SERVICE_ENV  # the copy in each release directory


def service_environment(settings: HostSettings) -> dict[str, str]:
    """The SD35_* settings every instance shares, named and checked by sd35_provision/service/config.py.

    No secret in here, and nothing of one instance: its port is in its own file (``render_instance_env``).
    """
    service, current = settings.service, layout.current_link(settings.python.install_root)
    values: list[tuple[config.Setting[Any], Any]] = [
        (config.MODEL_DIR, f"{current}/model"),
        (config.BIND, service.bind),
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


def instance_environment(instance: Instance) -> dict[str, str]:
    """One instance's own settings: its port and, on a GPU, the one device it may see (by UUID)."""
    values = config.render_env([(config.PORT, instance.port)])
    if instance.device is not None:
        values["CUDA_VISIBLE_DEVICES"] = instance.device
    return values


def render_instance_env(instance: Instance) -> str:
    lines = [
        "# Managed by sd35-provision; edits are reverted on the next apply.",
        f"# Instance {instance.index} ({instance.unit}) on {instance.gpu}; read after {SERVICE_ENV_FILE}.",
    ]
    lines += [f"{key}={value}" for key, value in instance_environment(instance).items()]
    return "\n".join(lines) + "\n"
