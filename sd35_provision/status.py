"""``status``: one row per host, from one SSH connection per host, all hosts in parallel.

Per host: reachable, OS, GPU, driver, FP8, the service (systemd + /readyz),
the current release and its model revision, the last smoke test, drift
(the dry run of every layer: would ``apply`` change anything?) and whether
the host needs a reboot (a line under the table). Nothing on the hosts
changes. What a host does not have yet shows as ``-``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pyinfra.api.host import Host

from sd35_provision import layout
from sd35_provision.facts.service import NO_SERVICE, ServiceState, ServiceStatus
from sd35_provision.hostspec.settings import FleetSpec, HostSettings
from sd35_provision.inventory import select_hosts
from sd35_provision.reboots import reboot_reason, required_note
from sd35_provision.report import HostOutcome
from sd35_provision.runner import FleetRun, RunOptions
from sd35_provision.smoketest import API_KEY_PATH, UNIT_NAME, service_url
from sd35_provision.texttable import render_rows

HEADER = ("HOST", "REACHABLE", "OS", "GPU", "DRIVER", "FP8", "SERVICE", "RELEASE", "MODEL REV", "LAST SMOKE", "DRIFT")


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
    smoke: dict[str, Any] | None = None
    drift: bool | None = None  # None: could not be worked out (see error)
    drift_operations: list[str] = field(default_factory=list)
    reboot_required: str | None = None  # why the host needs a reboot (facts.reboot.reboot_needed); None: it does not
    error: str | None = None  # "step: reason" when something could not be read
    status: str = "ok"  # or the run's word for what went wrong: unreachable, error, failed, aborted

    @property
    def service(self) -> str:
        if not self.service_active:
            return "-"
        return f"{self.service_active}/{self.service_ready}" if self.service_ready else self.service_active

    @property
    def last_smoke(self) -> str:
        if not self.smoke:
            return "-"
        latency = self.smoke.get("latency_s")
        timing = f" {latency:.1f}s" if isinstance(latency, (int, float)) else ""
        return ("ok" if self.smoke.get("ok") else "FAILED") + timing

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
            self.driver or "-",
            fp8 if self.reachable else "-",
            self.service,
            self.release or "-",
            revision,
            self.last_smoke,
            drift if self.reachable else "-",
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["status"]  # the JSON document puts it first, beside the name
        data["service"] = {"active": data.pop("service_active"), "ready": data.pop("service_ready")}
        return data


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
    facts = gather_host_facts(host, settings)
    _, os_name, gpu, driver, _, _, _, _ = facts_row(host.name, facts)
    row.os, row.gpu, row.driver = os_name, gpu, None if driver == "-" else driver
    row.fp8_capable = facts.fp8_capable if facts.gpus else None
    service = _service_state(host, settings)
    row.service_active = service.active
    # Only a running unit has a /readyz to ask (activating: still loading the model).
    row.service_ready = service.ready if service.active in ("active", "activating", "reloading") else None
    row.release = service.release_id
    row.model_revision = service.model_revision
    row.smoke = service.smoke
    row.reboot_required = reboot_reason(host)


def _service_state(host: Host, settings: HostSettings) -> ServiceStatus:
    state = host.get_fact(
        ServiceState,
        unit=UNIT_NAME,
        install_root=settings.python.install_root,
        smoke_record=layout.smoke_record(settings.cache.root),
        url=service_url(settings),
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
        first = (outcome.error or "").strip().splitlines()
        row.error = f"{outcome.step}: {first[-1] if first else ''}"
        return
    row.drift = bool(outcome.changes)
    row.drift_operations = [op.name for op in outcome.changes]


def render_status_table(rows: list[HostStatus]) -> str:
    errors = [f"{row.name}: {row.error}" for row in rows if row.error]
    reboots = [f"{row.name}: {required_note(row.reboot_required)}" for row in rows if row.reboot_required]
    return "\n".join([render_rows([HEADER, *(row.row() for row in rows)]), *errors, *reboots])
