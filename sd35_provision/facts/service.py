"""What the inference service on a host is doing, read in one command (for ``status``).

The command runs the host's own ``python3`` (preflight requires it): systemd's
view of the unit (none when it was never installed), /readyz through the loopback (with the API key when the
service has one; it stays on the host), the release ``current`` points at,
its ``release.json`` and the last smoke test's ``last.json``. One JSON line
out (the program is sd35_provision/hostside/service_state.py);
``ServiceState.process`` is a pure parser of it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from pyinfra.api import FactBase

from sd35_provision import hostside


@dataclass(frozen=True)
class ServiceStatus:
    active: str | None  # systemd's ActiveState: active, inactive, failed, activating, ... (None: no such unit)
    ready_status: int | None  # HTTP status of /readyz (None: nothing answered)
    ready_phase: str | None  # what /readyz said ("ready", "loading", ...)
    release: str | None  # where ``current`` points, e.g. releases/0a1b2c3d4e5f
    release_info: dict[str, Any] | None  # release.json of the current release
    smoke: dict[str, Any] | None  # the last smoke test: ok, latency_s, width, height, reason, at

    @property
    def ready(self) -> str:
        """``ready``, ``not ready (<phase>)``, ``no answer`` or ``HTTP <code>``."""
        if self.ready_status == 200:
            return "ready"
        if self.ready_status == 503:
            return f"not ready ({self.ready_phase})" if self.ready_phase else "not ready"
        if self.ready_status is None:
            return "no answer"
        return f"HTTP {self.ready_status}"

    @property
    def release_id(self) -> str | None:
        return self.release.rstrip("/").rsplit("/", 1)[-1] if self.release else None

    @property
    def model_revision(self) -> str | None:
        """The release's pinned model revision; for a pushed model (no revision), its content-named directory."""
        info = self.release_info or {}
        if info.get("model_revision"):
            return str(info["model_revision"])
        model = (info.get("links") or {}).get("model")
        return model.rstrip("/").rsplit("/", 1)[-1] if model else None


NO_SERVICE = ServiceStatus(None, None, None, None, None, None)


class ServiceState(FactBase):
    """The service's state on the host (see module docstring); changes nothing."""

    def command(self, unit: str, install_root: str, smoke_record: str, url: str, api_key_file: str) -> str:
        args = [unit, install_root, smoke_record, url, api_key_file]
        program = hostside.source("service_state.py")
        return "python3 -c " + shlex.quote(program) + " " + " ".join(shlex.quote(arg) for arg in args)

    def process(self, output: list[str]) -> ServiceStatus:
        return parse_service_state(output)


def parse_service_state(output: list[str]) -> ServiceStatus:
    for line in reversed(output):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return ServiceStatus(
                active=data.get("active"),
                ready_status=data.get("ready_status"),
                ready_phase=data.get("ready_phase"),
                release=data.get("release"),
                release_info=data.get("release_info") if isinstance(data.get("release_info"), dict) else None,
                smoke=data.get("smoke") if isinstance(data.get("smoke"), dict) else None,
            )
    return NO_SERVICE
