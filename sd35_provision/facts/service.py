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


@dataclass(frozen=True)
class InstalledInstance:
    """A service instance the host has: its settings file, its unit's state, or both."""

    index: int
    port: int | None  # SD35_PORT of its settings file (None: no file)
    device: str | None  # CUDA_VISIBLE_DEVICES of its settings file
    active: str | None  # systemd's ActiveState (None: the unit is not loaded)
    enabled: bool

    @property
    def running(self) -> bool:
        return self.active in ("active", "activating", "reloading")


@dataclass(frozen=True)
class ServiceInstallation:
    """The service units a host has: instances of the template, and the single unit of before instances."""

    instances: tuple[InstalledInstance, ...] = ()
    legacy_unit: bool = False  # /etc/systemd/system/sd35-inference.service is there (or loaded)
    legacy_active: str | None = None  # its ActiveState (None: not loaded)

    def instance(self, index: int) -> InstalledInstance | None:
        return next((each for each in self.instances if each.index == index), None)


class InstalledInstances(FactBase[ServiceInstallation]):
    """Which instances a host has (settings files, loaded or enabled units) and the old single unit; changes nothing.

    + instances_dir: where each instance's ``<i>.env`` is
    + template: the template unit's name, ``sd35-inference@.service``
    + legacy_unit: the single unit's name, ``sd35-inference.service``
    """

    @staticmethod
    def default() -> ServiceInstallation:
        return ServiceInstallation()

    def command(self, instances_dir: str, template: str, legacy_unit: str) -> str:
        d, pattern = shlex.quote(instances_dir), shlex.quote(template.replace("@", "@*"))
        legacy, prefix = shlex.quote(legacy_unit), template.split("@", 1)[0] + "@"
        return (
            f'for f in {d}/*.env; do [ -f "$f" ] || continue; i=${{f##*/}}; '
            "printf 'env %s %s %s\\n' \"${i%.env}\" "
            '"$(sed -n \'s/^SD35_PORT=//p\' "$f" | tail -n 1)" '
            '"$(sed -n \'s/^CUDA_VISIBLE_DEVICES=//p\' "$f" | tail -n 1)"; done; '
            f"systemctl list-units --all --plain --no-legend {pattern} 2>/dev/null | "
            'while read -r u load active rest; do echo "unit $u $active"; done; '
            f'for w in /etc/systemd/system/*.wants/{prefix}*.service; do [ -e "$w" ] || [ -L "$w" ] && '
            'echo "enabled ${w##*/}"; done; '
            f"[ -e /etc/systemd/system/{legacy} ] && echo legacy-file; "
            f"systemctl show --property=LoadState --property=ActiveState {legacy} 2>/dev/null "
            "| sed 's/^/legacy /'; true"
        )

    def process(self, output: list[str]) -> ServiceInstallation:
        return parse_installed_instances(output)


def _instance_number(unit: str) -> int | None:
    """3 for ``sd35-inference@3.service``; None for anything else."""
    name = unit.rsplit("@", 1)[-1].removesuffix(".service")
    return int(name) if "@" in unit and name.isdigit() else None


def parse_installed_instances(output: list[str]) -> ServiceInstallation:
    ports: dict[int, int | None] = {}
    devices: dict[int, str | None] = {}
    active: dict[int, str] = {}
    enabled: set[int] = set()
    legacy_file, legacy_shown = False, {}
    for line in output:
        kind, _, rest = line.strip().partition(" ")
        parts = rest.split(" ")
        if kind == "env" and parts[0].isdigit():
            index = int(parts[0])
            port = parts[1] if len(parts) > 1 else ""
            ports[index] = int(port) if port.isdigit() else None
            devices[index] = (parts[2] if len(parts) > 2 else "") or None
        elif kind == "unit" and len(parts) == 2 and (number := _instance_number(parts[0])) is not None:
            active[number] = parts[1]
        elif kind == "enabled" and (number := _instance_number(rest)) is not None:
            enabled.add(number)
        elif kind == "legacy-file":
            legacy_file = True
        elif kind == "legacy" and "=" in rest:
            key, _, value = rest.partition("=")
            legacy_shown[key] = value
    loaded = legacy_shown.get("LoadState", "not-found") not in ("not-found", "")
    instances = tuple(
        InstalledInstance(
            index=index,
            port=ports.get(index),
            device=devices.get(index),
            active=active.get(index),
            enabled=index in enabled,
        )
        for index in sorted(set(ports) | set(active) | enabled)
    )
    return ServiceInstallation(
        instances=instances,
        legacy_unit=legacy_file or loaded,
        legacy_active=legacy_shown.get("ActiveState") if loaded else None,
    )
