"""What the CLI commands do, callable from Python: plan, apply, drift, facts."""

from __future__ import annotations

from pyinfra.api.host import Host

from sd35_provision.errors import PreflightError
from sd35_provision.inventory import select_hosts
from sd35_provision.report import RunReport
from sd35_provision.runner import FleetRun, RunOptions
from sd35_provision.spec.model import FleetSpec, HostSettings


def _layers():
    # Imported late: deploys import pyinfra's operation machinery.
    from deploys.layers import LAYERS

    return LAYERS


def _preflight(host: Host, settings: HostSettings) -> None:
    from sd35_provision.facts import gather_host_facts
    from sd35_provision.preflight import check_preflight

    failures = check_preflight(settings, gather_host_facts(host, settings))
    if failures:
        raise PreflightError(host.name, "preflight", "\n".join(failures))


def _prepared_run(spec: FleetSpec, limit: tuple[str, ...], options: RunOptions | None) -> FleetRun:
    run = FleetRun(select_hosts(spec, limit), options)
    run.connect()
    run.for_each_active_host("preflight", _preflight)
    run.prepare(_layers())
    return run


def plan(spec: FleetSpec, limit: tuple[str, ...] = (), options: RunOptions | None = None) -> RunReport:
    """Dry run: what would change on each host. Changes nothing."""
    run = _prepared_run(spec, limit, options)
    run.disconnect()
    return run.report("plan")


def apply(spec: FleetSpec, limit: tuple[str, ...] = (), options: RunOptions | None = None) -> RunReport:
    run = _prepared_run(spec, limit, options)
    run.execute()
    run.disconnect()
    return run.report("apply")


def gather_facts(spec: FleetSpec, limit: tuple[str, ...] = (), options: RunOptions | None = None):
    """Facts per host: ``({host: HostFacts}, RunReport)``; changes nothing."""
    from sd35_provision.facts import gather_host_facts

    run = FleetRun(select_hosts(spec, limit), options)
    run.connect()
    gathered = {}

    def collect(host: Host, settings: HostSettings) -> None:
        gathered[host.name] = gather_host_facts(host, settings)

    run.for_each_active_host("facts", collect)
    run.disconnect()
    return gathered, run.report("facts")
