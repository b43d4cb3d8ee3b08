"""The inference service's settings file, rendered from the spec.

Kept apart from the service layer because a release carries a copy of the
settings it was made with (see ``deploys/release.py``): a rollback restores
them along with the venv, code and model they were tested with.
"""

from __future__ import annotations

import hashlib

from sd35_provision import layout
from sd35_provision.hostspec.settings import HostSettings

SERVICE_ENV_FILE = f"{layout.CONFIG_DIR}/service.env"
API_KEY_PATH = layout.API_KEY_FILE
RELEASE_COPY = "service.env"  # the copy in each release directory


def service_environment(settings: HostSettings) -> dict[str, str]:
    """The service's SD35_* settings (see sd35_provision/service/config.py); no secret in here."""
    service, current = settings.service, layout.current_link(settings)
    env = {
        "SD35_MODEL_DIR": f"{current}/model",
        "SD35_BIND": service.bind,
        "SD35_PORT": str(service.port),
        "SD35_PRECISION": service.precision,
        "SD35_COMPILE": service.compile,
        "SD35_QUEUE_SIZE": str(service.queue_size),
        "SD35_MAX_SIDE": str(service.max_side),
        "SD35_MAX_PIXELS": str(service.max_side * service.max_side),
        "SD35_MAX_STEPS": str(service.max_steps),
        "SD35_MAX_N": str(service.max_n),
    }
    if service.api_key_file is not None:
        env["SD35_API_KEY_FILE"] = API_KEY_PATH
    return env


def render_service_env(settings: HostSettings) -> str:
    lines = ["# Managed by sd35-provision; edits are reverted on the next apply."]
    lines += [f"{key}={value}" for key, value in service_environment(settings).items()]
    return "\n".join(lines) + "\n"


def service_env_digest(settings: HostSettings) -> str:
    return hashlib.sha256(render_service_env(settings).encode()).hexdigest()[:16]
