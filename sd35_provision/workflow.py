"""What the CLI commands do, callable from Python: plan, apply, drift, facts."""

from __future__ import annotations

from pyinfra.api.host import Host

from dataclasses import asdict

from sd35_provision.errors import HostError, PreflightError
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


def apply(spec: FleetSpec, limit: tuple[str, ...] = (), options: RunOptions | None = None,
          smoke: bool = True) -> RunReport:
    """Bring hosts to the spec, then smoke-test each; a new release that fails is rolled back."""
    run = _prepared_run(spec, limit, options)
    run.execute()
    run.for_each_connected_host("smoke test", _smoke_or_roll_back if smoke else _roll_back_failed)
    run.disconnect()
    return run.report("apply")


def smoke(spec: FleetSpec, limit: tuple[str, ...] = (), options: RunOptions | None = None) -> RunReport:
    """Only the smoke test, on the release each host runs now; changes nothing but the smoke record."""
    run = FleetRun(select_hosts(spec, limit), options)
    run.connect()
    run.for_each_active_host("smoke test", _smoke_only)
    run.disconnect()
    return run.report("smoke")


def _switched_release(host: Host) -> bool:
    from sd35_provision.runner import current_run_outcome

    return any(op.changed and "Switch current to release" in op.name for op in current_run_outcome(host).operations)


def _smoke_only(host: Host, settings: HostSettings) -> None:
    from sd35_provision.runner import current_run_outcome
    from sd35_provision.smoketest import run_smoke

    result = run_smoke(host, settings)
    current_run_outcome(host).smoke = asdict(result)
    if not result.ok:
        raise HostError(host.name, "smoke test", f"smoke test failed: {result.reason}")


def _roll_back_failed(host: Host, settings: HostSettings) -> None:
    """A host that failed after switching to a new release goes back to the previous one."""
    from sd35_provision.runner import current_run_outcome
    from sd35_provision.smoketest import roll_back

    outcome = current_run_outcome(host)
    if outcome.failed and outcome.executed and _switched_release(host):
        _, what = roll_back(host, settings)
        outcome.notes.append(what)
        raise HostError(host.name, "rollback", what)


def _smoke_or_roll_back(host: Host, settings: HostSettings) -> None:
    from sd35_provision.runner import current_run_outcome
    from sd35_provision.smoketest import roll_back, run_smoke

    outcome = current_run_outcome(host)
    if outcome.failed:
        _roll_back_failed(host, settings)
        return
    if not settings.smoke.enabled:
        return
    result = run_smoke(host, settings)
    outcome.smoke = asdict(result)
    if result.ok:
        return
    reason = f"smoke test failed: {result.reason}"
    if _switched_release(host):
        restored, what = roll_back(host, settings)
        reason += f"; {what}"
        if restored is not None:
            again = run_smoke(host, settings)
            reason += f" (its smoke test {'passes' if again.ok else 'fails too: ' + again.reason})"
    outcome.notes.append(reason)
    raise HostError(host.name, "smoke test", reason)


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
