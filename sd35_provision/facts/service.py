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


@dataclass(frozen=True)
class RunningState:
    """The service process as it states itself (service/running.py), with systemd's view of the unit."""

    active: str | None  # systemd's ActiveState (None: no such unit)
    main_pid: int | None  # systemd's MainPID (None: no process)
    record: dict[str, Any] | None  # the running record, if the file is there and parses

    @property
    def running(self) -> bool:
        """Whether a service process is up (starting or serving)."""
        return self.active in ("active", "activating", "reloading") and self.main_pid is not None

    @property
    def stated(self) -> dict[str, Any] | None:
        """The record, when it is the running process's own (a record left by another pid is not)."""
        if self.record is None or not self.running or self.record.get("pid") != self.main_pid:
            return None
        return self.record


class RunningService(FactBase[RunningState]):
    """What the service's process runs: its running record under /run and systemd's MainPID; changes nothing."""

    @staticmethod
    def default() -> RunningState:
        return RunningState(None, None, None)

    def command(self, unit: str, record: str) -> str:
        u, r = shlex.quote(unit), shlex.quote(record)
        return (
            f"systemctl show --property=LoadState --property=ActiveState --property=MainPID {u} 2>/dev/null; "
            f"printf 'record '; tr -d '\\n' 2>/dev/null < {r}; echo"
        )

    def process(self, output: list[str]) -> RunningState:
        return parse_running_state(output)


def parse_running_state(output: list[str]) -> RunningState:
    shown: dict[str, str] = {}
    record: dict[str, Any] | None = None
    for line in output:
        if line.startswith("record "):
            try:
                data = json.loads(line[len("record ") :])
            except json.JSONDecodeError:
                data = None
            record = data if isinstance(data, dict) else None
        elif "=" in line:
            key, _, value = line.partition("=")
            shown[key.strip()] = value.strip()
    # A unit that was never installed is "inactive" to systemd: say it is not there.
    loaded = shown.get("LoadState", "not-found") != "not-found"
    pid = shown.get("MainPID", "")
    return RunningState(
        active=shown.get("ActiveState") or None if loaded else None,
        main_pid=int(pid) if pid.isdigit() and int(pid) > 0 else None,
        record=record,
    )
