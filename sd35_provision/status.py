"""``status``: one row per host, from one SSH connection per host, all hosts in parallel.

Per host: reachable, OS, GPU, driver, FP8, the service (systemd + /readyz),
the current release and its model revision, the last smoke test, drift
(the dry run of every layer: would ``apply`` change anything?) and whether
the host needs a reboot (a line under the table). Nothing on the hosts
changes. What a host does not have yet shows as ``-``.

Per service instance (``instances``): its unit, port, device, systemd state,
/readyz and last smoke test; the host's SERVICE column sums them up (the first
instance that is not active and ready, else instance 0). When a host runs more
than one instance, the table is followed by one row per instance.

A gateway host (the spec's ``gateway:``) serves no model: its row says HAProxy's
state instead (``haproxy active 5/6 up``: systemd's state of ``haproxy.service``
and the backend servers up, from ``show stat`` over the admin socket), with no
GPU, driver, release or smoke test to read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pyinfra.api.host import Host

from sd35_provision import layout
from sd35_provision.facts.gateway import GatewayState, HaproxyState
from sd35_provision.facts.nvidia import MigDevice, NvidiaMigDevices
from sd35_provision.facts.runlock import RunLockHolder, locked_note
from sd35_provision.facts.service import (
    NO_SERVICE,
    InstalledInstances,
    ServiceInstallation,
    ServiceState,
    ServiceStatus,
)
from sd35_provision.hostspec.settings import FleetSpec, HostSettings
from sd35_provision.instances import host_devices
from sd35_provision.inventory import select_hosts
from sd35_provision.reboots import reboot_reason, required_note
from sd35_provision.report import HostOutcome, failure_cause
from sd35_provision.runner import FleetRun, RunOptions
from sd35_provision.smoketest import API_KEY_PATH, SmokeTarget, installed_targets, legacy_target, service_url
from sd35_provision.texttable import render_rows

HEADER = ("HOST", "REACHABLE", "OS", "GPU", "DRIVER", "FP8", "SERVICE", "RELEASE", "MODEL REV", "LAST SMOKE", "DRIFT")
INSTANCE_HEADER = ("HOST", "INSTANCE", "GPU", "PORT", "SERVICE", "LAST SMOKE")


@dataclass
class InstanceStatus:
    """One service instance of a host, as status reads it."""

    index: int
    unit: str
    port: int
    device: str | None  # CUDA_VISIBLE_DEVICES (GPU-…/MIG-… UUID); None: not pinned
    gpu: str  # "GPU 3", "GPU 0 MIG 3g.40gb #1", "cpu", or the UUID when the host no longer has it
    active: str | None
    ready: str | None
    smoke: dict[str, Any] | None


@dataclass
class HostStatus:
    name: str
    address: str
    reachable: bool
    os: str | None = None
    gpu: str | None = None
    driver: str | None = None
    fp8_capable: bool | None = None  # None: no GPU to say
    service_active: str | None = None
    service_ready: str | None = None
    release: str | None = None
    model_revision: str | None = None
    smoke: dict[str, Any] | None = None  # the last smoke record: ok, latency_s, reason, release, at
    drift: bool | None = None  # None: could not be worked out (see error)
    drift_operations: list[str] = field(default_factory=list)
    instances: list[InstanceStatus] = field(default_factory=list)
    gateway: HaproxyState | None = None  # a gateway host's HAProxy (its service is haproxy.service); None: not one
    smoke_stale: str | None = None  # why the last smoke result says nothing of what runs now (None: it does)
    reboot_required: str | None = None  # why the host needs a reboot (facts.reboot.reboot_needed); None: it does not
    locked_by: str | None = None  # the run holding the host's run lock now, as its lock file says; None: none
    error: str | None = None  # "step: reason" when something could not be read
    status: str = "ok"  # or the run's word for what went wrong: unreachable, error, failed, aborted

    @property
    def service(self) -> str:
        if self.gateway is not None:
            servers = "" if self.gateway.servers is None else f" {self.gateway.servers_up}/{self.gateway.servers} up"
            return f"haproxy {self.gateway.active or 'not installed'}{servers}"
        if not self.service_active:
            return "-"
        return f"{self.service_active}/{self.service_ready}" if self.service_ready else self.service_active

    @property
    def last_smoke(self) -> str:
        shown = _smoke_text(self.smoke)
        return f"STALE ({shown})" if self.smoke and self.smoke_stale else shown

    def row(self) -> tuple[str, ...]:
        fp8 = "-" if self.fp8_capable is None else ("yes" if self.fp8_capable else "no")
        drift = "?" if self.drift is None else ("yes" if self.drift else "no")
        revision = self.model_revision or "-"
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            revision = revision[:12]  # a commit sha; --json has all of it
        return (
            self.name,
            "yes" if self.reachable else "no",
            self.os or "-",
            self.gpu or "-",
            "reboot required" if self.reboot_required else (self.driver or "-"),
            fp8 if self.reachable else "-",
            self.service,
            self.release or "-",
            revision,
            self.last_smoke,
            drift if self.reachable else "-",
        )

    def instance_rows(self) -> list[tuple[str, ...]]:
        return [
            (
                self.name,
                str(each.index),
                each.gpu,
                str(each.port),
                f"{each.active}/{each.ready}" if each.active and each.ready else each.active or "-",
                _smoke_text(each.smoke),
            )
            for each in self.instances
        ]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["status"]  # the JSON document puts it first, beside the name
        data["service"] = {"active": data.pop("service_active"), "ready": data.pop("service_ready")}
        return data


def _smoke_text(smoke: dict[str, Any] | None) -> str:
    if not smoke:
        return "-"
    latency = smoke.get("latency_s")
    timing = f" {latency:.1f}s" if isinstance(latency, (int, float)) else ""
    return ("ok" if smoke.get("ok") else "FAILED") + timing


def smoke_staleness(smoke: dict[str, Any] | None, release: str | None, active: str | None) -> str | None:
    """Why the last smoke result is not one of the service running now (None: it is, or there is none).

    A result counts for the release that answered it (the record's ``release``)
    while the service is active: after an update without a smoke test, a
    rollback, or with the service stopped it says nothing of what runs.
    """
    if not smoke:
        return None
    when = f" ({smoke['at']})" if smoke.get("at") else ""
    tested = smoke.get("release")
    if active != "active":
        return f"the service is {active or 'not installed'}; the last smoke test{when} is of release {tested or '?'}"
    if not tested:
        return f"the last smoke test{when} names no release (taken before smoke results named one)"
    if tested != release:
        return f"the last smoke test{when} is of release {tested}; the host runs {release or 'none'}"
    return None


def fleet_status(
    spec: FleetSpec,
    limit: tuple[str, ...] = (),
    options: RunOptions | None = None,
    also_read: Callable[[Host, HostSettings], None] | None = None,
) -> list[HostStatus]:
    """The status of each selected host, in spec order. Changes nothing.

    ``also_read`` runs on each reachable host's connection after its row is read
    (``status --html`` fetches the smoke images with it).
    """
    from sd35_provision import workflow

    options = options or RunOptions()
    # Quiet: no progress lines; told of the run (for Ctrl-C) all the same.
    run = FleetRun(select_hosts(spec, limit), RunOptions(parallel=options.parallel, on_start=options.on_start))
    rows = {
        name: HostStatus(name=name, address=settings.address, reachable=False) for name, settings in run.hosts.items()
    }
    run.connect()

    def read(host: Host, settings: HostSettings) -> None:
        _read_host(host, settings, rows[host.name])
        if also_read is not None:
            also_read(host, settings)

    run.for_each_active_host("status", read)
    # Drift: the dry run apply would start with (preflight, then every layer's prepared commands).
    workflow.prepare_changes(run)
    run.disconnect()
    for outcome in run.report("status").hosts:
        _add_outcome(rows[outcome.name], outcome)
    return list(rows.values())


def _read_host(host: Host, settings: HostSettings, row: HostStatus) -> None:
    from sd35_provision.facts import gather_host_facts
    from sd35_provision.facts.table import facts_row

    row.reachable = True
    if settings.runs_gateway:
        row.locked_by = host.get_fact(RunLockHolder)  # read, never waited for: status takes no lock
        _read_gateway(host, settings, row)
        return
    facts = gather_host_facts(host, settings)
    row.locked_by = host.get_fact(RunLockHolder)  # read with the preflight facts, in their one round trip
    _, os_name, gpu, driver, _, _, _, _ = facts_row(host.name, facts)
    row.os, row.gpu, row.driver = os_name, gpu, None if driver == "-" else driver
    row.fp8_capable = facts.fp8_capable if facts.gpus else None
    row.reboot_required = reboot_reason(host, settings, facts.driver)
    installed: ServiceInstallation = host.get_fact(
        InstalledInstances,
        instances_dir=layout.INSTANCES_DIR,
        template=layout.SERVICE_TEMPLATE,
        legacy_unit=layout.LEGACY_UNIT,
    )
    targets = installed_targets(installed)
    migs: tuple[MigDevice, ...] = host.get_fact(NvidiaMigDevices) if facts.nvidia.working else ()
    labels = {device.uuid: device.label for device in host_devices(facts.nvidia, migs)}
    states: list[ServiceStatus] = []
    # A host still on the single unit of before instances (or with none yet) is asked about that unit.
    for target in targets or [legacy_target(settings)]:
        state = _service_state(host, settings, target)
        states.append(state)
        if targets or installed.legacy_unit:
            row.instances.append(
                InstanceStatus(
                    index=target.index,
                    unit=target.unit,
                    port=target.port,
                    device=target.device,
                    gpu=labels.get(target.device, target.device) if target.device else "cpu",
                    active=state.active,
                    ready=_ready(state),
                    smoke=state.smoke,
                )
            )
    unwell = [state for state in states if state.active != "active" or _ready(state) != "ready"]
    service = (unwell or states)[0]
    row.service_active = service.active
    row.service_ready = _ready(service)
    row.release = states[0].release_id
    row.model_revision = states[0].model_revision
    row.smoke = states[0].smoke
    row.smoke_stale = smoke_staleness(states[0].smoke, states[0].release_id, states[0].active)


def _read_gateway(host: Host, settings: HostSettings, row: HostStatus) -> None:
    """A gateway host's row: its OS, HAProxy (systemd and the runtime API), a reboot it waits for."""
    from pyinfra.facts.server import LinuxDistribution

    from sd35_provision.facts.host import os_name_version

    distro = host.get_fact(LinuxDistribution) or LinuxDistribution.default()
    row.os = " ".join(os_name_version(distro)).strip()
    row.gateway = host.get_fact(GatewayState)
    row.service_active = row.gateway.active
    row.reboot_required = reboot_reason(host, settings)


def _ready(state: ServiceStatus) -> str | None:
    # Only a running unit has a /readyz to ask (activating: still loading the model).
    return state.ready if state.active in ("active", "activating", "reloading") else None


def _service_state(host: Host, settings: HostSettings, target: SmokeTarget) -> ServiceStatus:
    state = host.get_fact(
        ServiceState,
        unit=target.unit,
        install_root=settings.python.install_root,
        smoke_record=layout.smoke_record(settings.cache.root, target.index),
        url=service_url(settings, target.port),
        api_key_file=API_KEY_PATH,
    )
    return state or NO_SERVICE


def _add_outcome(row: HostStatus, outcome: HostOutcome) -> None:
    if outcome.failed or outcome.aborted:
        row.status = outcome.status
    if outcome.unreachable:
        row.reachable = False
        row.error = f"connect: {outcome.error}"
        return
    if outcome.failed or outcome.aborted:
        row.error = f"{outcome.step}: {failure_cause(outcome.error)}"
        return
    row.drift = bool(outcome.changes)
    row.drift_operations = [op.name for op in outcome.changes]


def render_status_table(rows: list[HostStatus]) -> str:
    """One row per host; then, when a host runs more than one instance, one row per instance; then errors."""
    errors = [f"{row.name}: {row.error}" for row in rows if row.error]
    stale = [f"{row.name}: stale smoke result: {row.smoke_stale}" for row in rows if row.smoke_stale]
    reboots = [f"{row.name}: {required_note(row.reboot_required)}" for row in rows if row.reboot_required]
    locked = [f"{row.name}: {locked_note(row.locked_by)}" for row in rows if row.locked_by]
    tables = [render_rows([HEADER, *(row.row() for row in rows)])]
    if any(len(row.instances) > 1 for row in rows):
        tables.append("\n" + render_rows([INSTANCE_HEADER, *(line for row in rows for line in row.instance_rows())]))
    return "\n".join([*tables, *errors, *locked, *reboots, *stale])


def status_ok(rows: list[HostStatus]) -> bool:
    """Every host reachable and checked, with no stale smoke result (``status`` exits 1 otherwise)."""
    return all(row.reachable and not row.error and not row.smoke_stale for row in rows)
