"""What the CLI commands do, callable from Python: plan, apply, drift, facts."""

from __future__ import annotations

from dataclasses import asdict, replace
from functools import partial
from typing import Any

from pyinfra.api.host import Host

from sd35_provision.drain import drained_unless_failed
from sd35_provision.errors import HostError, PreflightError
from sd35_provision.hostplan import HostPlan
from sd35_provision.hostspec.settings import FleetSpec, HostSettings
from sd35_provision.inventory import select_hosts
from sd35_provision.reboots import RebootOptions, SshHost, no_gateway, reboot_host, reboot_reason, required_note
from sd35_provision.report import HostOutcome, RunReport
from sd35_provision.rollout import Rollout, plan_waves, stop_reason
from sd35_provision.runner import FleetRun, ProgressSink, RunOptions


def _layers(run: FleetRun) -> dict[str, list]:
    """Each host's layers: the serving stack, or only the gateway on a gateway host."""
    # Imported late: deploys import pyinfra's operation machinery.
    from sd35_provision.deploys.gateway import gateway_layer
    from sd35_provision.deploys.layers import LAYERS

    return {name: [gateway_layer] if settings.runs_gateway else LAYERS for name, settings in run.hosts.items()}


def _preflight_and_plan(
    plans: dict[str, HostPlan], run: FleetRun, reboot_notes: bool, reboots: RebootOptions | None = None
):
    """Per host: preflight on the gathered facts, then the host's plan from the same facts (read once).

    With ``reboot_notes`` (plan, drift: runs without a lock of their own) a host that needs a reboot
    gets a note saying so, and one that another run holds the lock of says who (not waiting). With
    ``reboots`` (apply) a host it may reboot passes preflight though its driver waits for a reboot.
    A gateway host has neither: its plan needs the plans of the hosts behind it (``_gateway_plans``).
    """
    from sd35_provision.deploys.plan import plan_host
    from sd35_provision.facts import gather_host_facts
    from sd35_provision.facts.runlock import RunLockHolder, locked_note
    from sd35_provision.preflight import check_preflight

    def note_lock(host: Host) -> None:
        if reboot_notes and (holder := host.get_fact(RunLockHolder)):
            run.recorders[host.name].note(locked_note(holder))

    def one(host: Host, settings: HostSettings) -> None:
        if settings.runs_gateway:
            note_lock(host)
            return
        facts = gather_host_facts(host, settings)
        note_lock(host)  # read with the preflight facts, in their one round trip
        failures = check_preflight(settings, facts, rebooting=reboots is not None and reboots.allowed_for(settings))
        if failures:
            raise PreflightError(host.name, "preflight", "\n".join(failures))
        plans[host.name] = plan_host(host, settings, facts)
        if reboot_notes:
            reason = reboot_reason(host, settings, facts.driver)
            if reason and settings.gpu.driver.allow_reboot:
                run.recorders[host.name].note(f"reboot after apply (gpu.driver.allow_reboot): {reason}")
            elif reason:
                run.recorders[host.name].note(required_note(reason))

    return one


def _prepared_run(
    hosts: list[HostSettings],
    options: RunOptions | None,
    lock: str | None = None,
    reboots: RebootOptions | None = None,
) -> FleetRun:
    """Connected (holding each host's run lock for ``lock``, e.g. "apply"), preflighted and prepared.

    Without a lock (plan, drift) the hosts that need a reboot get a note; apply looks after its changes.
    """
    run = FleetRun(hosts, options)
    run.connect()
    if lock:
        run.take_locks(lock)
    prepare_changes(run, reboot_notes=lock is None, reboots=reboots)
    return run


def prepare_changes(run: FleetRun, reboot_notes: bool = False, reboots: RebootOptions | None = None) -> None:
    """On a connected run: preflight, each host's plan, then every layer's commands worked out (the dry run)."""
    from sd35_provision.deploys.reads import layer_reads

    plans: dict[str, HostPlan] = {}
    run.for_each_active_host("preflight", _preflight_and_plan(plans, run, reboot_notes, reboots))
    all_plans: dict[str, Any] = dict(plans)
    gateways = [run.hosts[host.name] for host in run.state.inventory.get_active_hosts()]
    gateways = [settings for settings in gateways if settings.gateway is not None]
    if gateways:
        run.for_each_active_host("gateway plan", _gateway_plans(plans, all_plans, gateways, run.options))
    run.prepare(_layers(run), all_plans, layer_reads)


def _gateway_plans(plans: dict[str, HostPlan], into: dict[str, Any], gateways: list[HostSettings], options: RunOptions):
    """Per gateway host: its plan, from the plans of the hosts behind it.

    Those not in this run (``--limit``, a rollout's other waves) are read first,
    without their lock: only their facts, for their instances.
    """
    from sd35_provision.gatewayplan import build_gateway_plan

    missing = {serving.name: serving for gateway in gateways for serving in gateway.gateway.serving}  # type: ignore[union-attr]
    unknown: HostError | None = None
    try:
        plans = {**_read_plans([host for name, host in missing.items() if name not in plans], options), **plans}
    except HostError as error:
        unknown = error

    def one(host: Host, settings: HostSettings) -> None:
        if settings.gateway is None:
            return
        if unknown is not None:
            raise HostError(host.name, unknown.step, unknown.message)
        into[host.name] = build_gateway_plan(settings, plans)

    return one


def _read_plans(hosts: list[HostSettings], options: RunOptions) -> dict[str, HostPlan]:
    """The plans of ``hosts``, read over their own connections (changes nothing); a HostError if one fails."""
    read: dict[str, HostPlan] = {}
    if not hosts:
        return read
    quiet = RunOptions(accept_new_host_keys=options.accept_new_host_keys, parallel=options.parallel)
    run = FleetRun(hosts, quiet)
    run.connect()
    run.for_each_active_host("preflight", _preflight_and_plan(read, run, reboot_notes=False))
    run.disconnect()
    failed = [outcome for outcome in run.outcomes.values() if outcome.failed]
    if failed:
        reasons = "; ".join(f"{outcome.name}: {(outcome.error or '').splitlines()[0]}" for outcome in failed)
        raise HostError("gateway", "gateway plan", f"the instances of hosts behind the gateway are unknown ({reasons})")
    return read


def plan(spec: FleetSpec, limit: tuple[str, ...] = (), options: RunOptions | None = None) -> RunReport:
    """Dry run: what would change on each host. Changes nothing."""
    run = _prepared_run(select_hosts(spec, limit), options)
    run.disconnect()
    return run.report("plan")


def apply(
    spec: FleetSpec,
    limit: tuple[str, ...] = (),
    options: RunOptions | None = None,
    smoke: bool = True,
    rollout: Rollout | None = None,
    reboots: RebootOptions | None = None,
) -> RunReport:
    """Bring hosts to the spec, then smoke-test each; a new release that fails is rolled back.

    With a staged ``rollout`` (canary, batches) the hosts are applied wave by
    wave, and a wave that fails stops the rollout (see ``sd35_provision/rollout.py``).
    Then the hosts of the wave that need a reboot are rebooted when ``reboots``
    (or their spec) allows it, else reported (see ``sd35_provision/reboots.py``).
    """
    reboots = reboots or RebootOptions()
    gateways = spec.gateway_hosts
    if gateways and reboots.drain is no_gateway:
        reboots = replace(
            reboots, drain=partial(drained_unless_failed, gateways, say=(options or RunOptions()).progress)
        )
    if rollout is not None and rollout.staged:
        return _rolling_apply(select_hosts(spec, limit), options or RunOptions(), smoke, rollout, reboots, gateways)
    return _apply_hosts(select_hosts(spec, limit), options, smoke, reboots, gateways)


def _apply_hosts(
    hosts: list[HostSettings],
    options: RunOptions | None,
    smoke: bool,
    reboots: RebootOptions,
    gateways: tuple[HostSettings, ...] = (),
) -> RunReport:
    """Apply ``hosts``; those behind ``gateways`` that change are drained there meanwhile (drain.py).

    Then those that need a reboot and may get one are rebooted, drained again for it.
    """
    from sd35_provision.drain import drained

    run = _prepared_run(hosts, options, lock="apply", reboots=reboots)
    changing = [
        name
        for name, outcome in run.outcomes.items()
        if not run.hosts[name].runs_gateway and not outcome.failed and outcome.changes
    ]
    with drained(gateways, changing, run.options.progress) as drain:
        run.execute()
        run.for_each_connected_host(
            "smoke test", partial(_smoke_or_roll_back, reboots=reboots) if smoke else _roll_back_failed
        )
        for name in changing:
            if run.outcomes[name].failed or run.outcomes[name].aborted:
                drain.keep(name)
    for name in drain.kept:
        run.outcomes[name].notes.append(f"stays drained on the gateway ({', '.join(gw.name for gw in gateways)})")
    run.for_each_active_host("reboot", _reboot_if_needed(reboots, run.options.progress))
    run.disconnect()
    return run.report("apply")


def _reboot_if_needed(reboots: RebootOptions, progress: ProgressSink | None):
    """After a host's apply: reboot it when it needs it and may (``reboots``), else say it needs one."""
    from sd35_provision.runner import current_run, current_run_outcome

    def one(host: Host, settings: HostSettings) -> None:
        reason = reboot_reason(host, settings)
        if reason is None:
            return
        outcome = current_run_outcome(host)
        if not reboots.allowed_for(settings):
            outcome.notes.append(required_note(reason))
            return
        target = SshHost(host, settings, take_lock=partial(current_run(host).take_lock_again, host, settings))
        note = reboot_host(
            target,
            reason,
            timeout_s=reboots.timeout_for(settings),
            gpu=settings.gpu.accelerator == "nvidia",
            drain=reboots.drain,
            say=progress,
        )
        if target.smoke is not None:
            outcome.smoke = asdict(target.smoke)
        outcome.notes.append(note)

    return one


def _rolling_apply(
    hosts: list[HostSettings],
    options: RunOptions,
    smoke: bool,
    rollout: Rollout,
    reboots: RebootOptions,
    gateways: tuple[HostSettings, ...] = (),
) -> RunReport:
    by_name = {host.name: host for host in hosts}
    waves = plan_waves(list(by_name), rollout)
    say = options.progress or (lambda message: None)
    outcomes: dict[str, HostOutcome] = {}
    summary: list[dict] = []
    stopped: str | None = None
    for wave in waves:
        if stopped:
            for name in wave.hosts:
                outcomes[name] = HostOutcome(name=name, skipped=True, wave=wave.label, error=f"not started: {stopped}")
            summary.append({"wave": wave.label, "hosts": list(wave.hosts), "result": "not started"})
            continue
        say(f"== {wave.label}: {', '.join(wave.hosts)}")
        unchecked = [name for name in wave.hosts if smoke and not by_name[name].smoke.enabled]
        if unchecked:
            say(f"   {', '.join(unchecked)}: smoke test disabled in the spec; only the apply gates this wave")
        report = _apply_hosts([by_name[name] for name in wave.hosts], options, smoke, reboots, gateways)
        failed = [host.name for host in report.hosts if host.failed or host.aborted]
        for host in report.hosts:
            host.wave = wave.label
            outcomes[host.name] = host
        failed_so_far = sum(1 for host in outcomes.values() if host.failed or host.aborted)
        if report.aborted:
            stopped = f"{wave.label}: {report.aborted}; the rollout stopped"
        else:
            stopped = stop_reason(wave, failed, failed_so_far, len(by_name), options.fail_percent)
        summary.append({"wave": wave.label, "hosts": list(wave.hosts), "result": "failed" if failed else "passed"})
        say(f"== {wave.label}: {'passed' if not failed else 'failed: ' + ', '.join(failed)}")
        if stopped:
            say(f"ABORTED: {stopped}")
    return RunReport(mode="apply", hosts=[outcomes[name] for name in by_name], aborted=stopped, waves=summary)


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

    if settings.runs_gateway:
        current_run_outcome(host).notes.append("runs the gateway: no smoke test of its own")
        return
    result = run_smoke(host, settings)
    current_run_outcome(host).smoke = asdict(result)
    if not result.ok:
        raise HostError(host.name, "smoke test", f"smoke test failed: {result.reason}")


def _roll_back_failed(host: Host, settings: HostSettings) -> None:
    """A host that failed after switching to a new release goes back to the previous one."""
    from sd35_provision.runner import current_run_outcome
    from sd35_provision.smoketest import roll_back

    outcome = current_run_outcome(host)
    if outcome.aborted:
        _roll_back_aborted(host, settings)
    elif outcome.failed and outcome.executed and _switched_release(host):
        _, what = roll_back(host, settings)
        outcome.notes.append(what)
        raise HostError(host.name, "rollback", what)


def _roll_back_aborted(host: Host, settings: HostSettings) -> None:
    """A host the run stopped after it switched release: its new release was never smoke-tested."""
    from sd35_provision.runner import current_run_outcome
    from sd35_provision.smoketest import roll_back

    outcome = current_run_outcome(host)
    if outcome.executed and _switched_release(host):
        _, what = roll_back(host, settings)
        outcome.notes.append(f"{what} (the run stopped before its new release was smoke-tested)")


def driver_waits_for_reboot(host: Host, settings: HostSettings, reboots: RebootOptions) -> str | None:
    """Why a host's smoke test waits for the reboot that follows its apply; None: it does not.

    An NVIDIA driver that only a reboot loads (the driver layer just installed it) runs no GPU
    instance before it: a smoke test then says nothing, and failing it would keep the host from the
    reboot that mends it. The reboot's own smoke test (reboots.py) is the one that counts.
    """
    if settings.gpu.accelerator != "nvidia" or settings.runs_gateway or not reboots.allowed_for(settings):
        return None
    from sd35_provision.facts.driver import NvidiaDriverState

    return host.get_fact(NvidiaDriverState).reboot_reason


def _smoke_or_roll_back(host: Host, settings: HostSettings, reboots: RebootOptions | None = None) -> None:
    from sd35_provision.runner import current_run_outcome
    from sd35_provision.smoketest import roll_back, run_smoke, service_cause

    outcome = current_run_outcome(host)
    if outcome.failed:
        _roll_back_failed(host, settings)
        return
    if outcome.aborted:
        _roll_back_aborted(host, settings)
        return
    if not settings.smoke.enabled or settings.runs_gateway:
        return  # a gateway host serves no model of its own
    if reboots is not None and (why := driver_waits_for_reboot(host, settings, reboots)):
        outcome.notes.append(f"smoke test after the reboot: {why}")
        return
    result = run_smoke(host, settings)
    outcome.smoke = asdict(result)
    if result.ok:
        return
    reason = f"smoke test failed: {result.reason}"
    failed_unit = next(each["unit"] for each in result.instances if not each["ok"])
    cause = service_cause(host, failed_unit)  # read before a rollback restarts the service
    if cause:
        reason += f" (the service: {cause})"
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


def apt_releases(spec: FleetSpec, limit: tuple[str, ...] = (), options: RunOptions | None = None):
    """Each host's OS release and architecture as apt names them: ``({host: (release, arch)}, RunReport)``."""
    from pyinfra.facts.deb import DebArch
    from pyinfra.facts.server import LinuxDistribution

    run = FleetRun(select_hosts(spec, limit), options)
    run.connect()
    found: dict[str, tuple[str, str]] = {}

    def read(host: Host, settings: HostSettings) -> None:
        release = ((host.get_fact(LinuxDistribution) or {}).get("release_meta") or {}).get("VERSION_CODENAME")
        arch = (host.get_fact(DebArch) or "").strip()
        if not release or not arch:
            raise HostError(
                host.name, "facts", "not a Debian or Ubuntu host (no release codename or dpkg architecture)"
            )
        found[host.name] = (release, arch)

    run.for_each_active_host("facts", read)
    run.disconnect()
    return found, run.report("facts")
