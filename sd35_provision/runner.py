"""Run the deploys against a fleet through pyinfra's Python API.

Stages, per host, each isolated so one host's failure never stops the others:
connect -> preflight (facts only, no change) -> prepare (work out the commands
each operation would run; this is the dry run) -> execute (apply only).

Hosts run in parallel greenlets in every stage (at most ``RunOptions.parallel``
at a time); pyinfra executes each operation on all hosts at once. When more
than ``RunOptions.fail_percent`` of the run's hosts have failed, the run is
aborted: no further operation or stage starts, and the hosts it had not
finished are reported as aborted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gevent.pool
from pyinfra.api import Config, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.host import Host
from pyinfra.api.operations import run_ops
from pyinfra.api.state import BaseStateCallback, StateStage
from pyinfra.context import ctx_host, ctx_state

from sd35_provision import sshcheck
from sd35_provision.errors import HostError
from sd35_provision.hostplan import HostPlan
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.inventory import build_inventory
from sd35_provision.onepass import FactRead, OnePassState, read_facts
from sd35_provision.operations import HostRecorder
from sd35_provision.progress import StepWatch, TransferBars, count_uploads
from sd35_provision.report import HostOutcome, OperationOutcome, RunReport

logger = logging.getLogger(__name__)

Layer = Callable[[Any, HostRecorder], None]  # takes a HostPlan (a gateway layer: a GatewayPlan)
ProgressSink = Callable[[str], None]


@dataclass
class RunOptions:
    accept_new_host_keys: bool = False
    parallel: int = 0  # hosts at a time; 0: all of them
    fail_percent: int | None = None  # abort once more than this % of the run's hosts failed
    progress: ProgressSink | None = None
    transfer_bars: bool = False  # draw a bar per file transfer (stderr is a terminal)
    on_start: Callable[[FleetRun], None] | None = None  # told of each run (the CLI says where hosts were on Ctrl-C)
    wait_lock: int = 0  # seconds to wait for a host's run lock that another run holds


class _FailPercentExceeded(PyinfraError):
    """Raised from a callback to stop pyinfra's operation loop; the run records why."""


class _Recorder(BaseStateCallback):
    """Collects what pyinfra only logs: connect errors and live progress."""

    def __init__(self, run: FleetRun, progress: ProgressSink | None, watch: StepWatch | None):
        self.connect_errors: dict[str, str] = {}
        self.progress = progress
        self.run = run
        self.watch = watch

    def host_before_connect(self, state: State, host: Host) -> None:
        if self.watch:
            self.watch.started(host.name, "connect")

    def host_connect(self, state: State, host: Host) -> None:
        if self.watch:
            self.watch.ended(host.name)

    def host_connect_error(self, state: State, host: Host, error) -> None:  # noqa: D102
        self.connect_errors[host.name] = str(error) or error.__class__.__name__
        if self.watch:
            self.watch.ended(host.name)

    def operation_host_start(self, state: State, host: Host, op_hash) -> None:
        if self.watch:
            self.watch.started(host.name, _op_name(state, op_hash, host))

    def operation_host_success(self, state: State, host: Host, op_hash, retry_count: int = 0) -> None:
        # Called before pyinfra marks the operation complete: use the prepared verdict.
        took = self.watch.ended(host.name) if self.watch else ""
        meta = state.ops[host][op_hash].operation_meta
        if self.progress and meta.will_change:
            self.progress(f"{host.name}: changed: {_op_name(state, op_hash, host)}{took}")
        elif self.progress and took:  # a long step that found nothing to change: its end, as its start was shown
            self.progress(f"{host.name}: done: {_op_name(state, op_hash, host)}{took}")

    def operation_host_error(
        self, state: State, host: Host, op_hash, retry_count: int = 0, max_retries: int = 0
    ) -> None:
        took = self.watch.ended(host.name) if self.watch else ""
        if self.progress:
            self.progress(f"{host.name}: FAILED: {_op_name(state, op_hash, host)}{took}")

    def operation_end(self, state: State, op_hash) -> None:
        # pyinfra has failed this operation's hosts by now: stop before the next operation.
        if self.run.check_fail_percent(extra_failed=state.failed_hosts):
            raise _FailPercentExceeded(self.run.aborted)


def _op_name(state: State, op_hash: str, host: Host | None = None) -> str:
    """The operation's name on ``host``.

    In pyinfra's API mode an operation's hash is its position in the host's
    list, so when hosts need different operations (one fresh, one applied)
    the n-th operations of two hosts share one hash, and its shared meta
    unites their names. The ``name=`` each host's call gave is kept per host
    in that host's operation data (``global_arguments``): use it to pick the
    host's own name, so a host's change is never shown under another's name.
    """
    names = sorted(state.get_op_meta(op_hash).names)
    op_data = state.ops[host].get(op_hash) if host is not None else None
    own = op_data.global_arguments.get("name") if op_data is not None else None
    if own:
        mine = [name for name in names if name == own or name.endswith(f" | {own}")]
        if mine:
            return mine[0]
    return names[0]


class FleetRun:
    """One connection to a set of hosts, used for a plan, an apply or facts."""

    def __init__(self, hosts: list[HostSettings], options: RunOptions | None = None):
        self.hosts = {host.name: host for host in hosts}
        self.options = options or RunOptions()
        # pyinfra's FAIL_PERCENT counts only connected hosts; ours counts every host of the run.
        config = Config(PARALLEL=self.options.parallel or max(1, len(hosts)), FAIL_PERCENT=None)
        self.state = OnePassState(build_inventory(hosts, self.options.accept_new_host_keys), config)
        progress = self.options.progress
        bars = TransferBars() if progress and self.options.transfer_bars else None
        self.watch = StepWatch(progress, bars=bars) if progress else None
        self.recorder = _Recorder(self, progress, self.watch)
        self.state.add_callback_handler(self.recorder)
        self.outcomes: dict[str, HostOutcome] = {name: HostOutcome(name=name) for name in self.hosts}
        self.recorders: dict[str, HostRecorder] = {name: HostRecorder() for name in self.hosts}
        self.aborted: str | None = None
        self.locks: dict[str, object] = {}  # host -> the SSH channel holding its run lock
        self.lock_holder = ""  # what the run lock files say of this run (take_locks)
        self.state.sd35_run = self
        if self.options.on_start:
            self.options.on_start(self)

    # -- stages ---------------------------------------------------------------

    def connect(self) -> None:
        self.state.set_stage(StateStage.Connect)
        accept_new = self.options.accept_new_host_keys
        # A bad key or known_hosts file: said in one line, and pyinfra is not asked to connect those hosts.
        refused = sshcheck.check_before_connect(self.hosts.values(), accept_new)
        watch = sshcheck.KnownHostsWatch(self.hosts.values()) if accept_new else None
        limit = self.state.limit_hosts
        if refused:
            self.state.limit_hosts = [host for host in self.state.inventory if host.name not in refused]
        try:
            with self._ticking():
                self._tolerate_all_failed(connect_all, self.state)
        finally:
            self.state.limit_hosts = limit
        if self.watch:
            for host in self.state.inventory:
                if host.connected:
                    count_uploads(host.connector, host.name, self.watch)
        for line in watch.accepted() if watch and self.options.progress else ():
            self.options.progress(line)
        for host in self.state.inventory:
            if not host.connected:
                problem = refused.get(host.name) or sshcheck.explain_connect_error(
                    self.hosts[host.name], self.recorder.connect_errors.get(host.name, "could not connect")
                )
                self._fail(host, "connect", problem.message, unreachable=not problem.local, local=problem.local)

    def take_locks(self, mode: str) -> None:
        """Hold each connected host's run lock until the run disconnects (sd35_provision/hostlock.py).

        A host another run holds is failed here, before anything is read or changed on it.
        """
        from sd35_provision.hostlock import STEP, holder_text, take_run_lock

        self.lock_holder = holder_text(mode)

        def lock(host: Host, settings: HostSettings) -> None:
            self.locks[host.name] = take_run_lock(
                host, mode, self.options.wait_lock, settings.ssh.sudo, self.options.progress, holder=self.lock_holder
            )

        self.for_each_active_host(STEP, lock)

    def take_lock_again(self, host: Host, settings: HostSettings) -> None:
        """After this run rebooted ``host``: its run lock went with the old boot (/run is a tmpfs); take
        it back, saying what it said before, without waiting. A host whose lock this run never held is
        left alone. Raises ``HostLocked`` naming the run that took the lock meanwhile.
        """
        from sd35_provision.hostlock import take_run_lock

        old = self.locks.pop(host.name, None)
        if old is None:
            return
        old.close()  # type: ignore[attr-defined]  # its connection died with the reboot; nothing to release
        self.locks[host.name] = take_run_lock(host, "", 0, settings.ssh.sudo, holder=self.lock_holder)

    def for_each_active_host(self, step: str, action: Callable[[Host, HostSettings], None]) -> None:
        """Run ``action`` per active host, in parallel, in pyinfra's context; a raise fails only that host."""
        if self._stopped(step):
            return
        self._for_each(step, action, list(self.state.inventory.get_active_hosts()))

    def for_each_connected_host(self, step: str, action: Callable[[Host, HostSettings], None]) -> None:
        """Like ``for_each_active_host``, failed hosts included (e.g. to roll one back).

        After an abort only the failed and aborted hosts are visited: a rollback still happens.
        """
        connected = [host for host in self.state.inventory if host.connected]
        if self._stopped(step):
            connected = [
                host for host in connected if self.outcomes[host.name].failed or self.outcomes[host.name].aborted
            ]
        self._for_each(step, action, connected)

    def _for_each(self, step: str, action: Callable[[Host, HostSettings], None], hosts: list[Host]) -> None:
        def one(host: Host) -> None:
            with ctx_state.use(self.state), ctx_host.use(host):
                try:
                    with self._step(host, step):
                        action(host, self.hosts[host.name])
                except Exception as error:  # noqa: BLE001 - isolate hosts
                    logger.debug("%s: %s failed", host.name, step, exc_info=True)
                    # A host's first failure names the step that raised it (e.g. the plan's "Python environment").
                    named = isinstance(error, HostError) and not self.outcomes[host.name].failed
                    self._fail(host, error.step if named else step, _describe(error))

        self._in_pool(one, hosts)

    def prepare(
        self,
        layers: Iterable[Layer] | Mapping[str, Iterable[Layer]],
        plans: Mapping[str, Any],
        reads: Callable[[HostPlan], Sequence[FactRead]] | None = None,
    ) -> None:
        """Work out every operation's commands from current facts (the dry run).

        Each layer gets the host's plan and recorder (its diffs and notes);
        ``layers`` is one list for every host, or a list per host name.
        ``reads``: the facts a host's layers will read, read first in one round trip (sd35_provision/onepass.py).

        Hosts are prepared in parallel greenlets, each through all layers in
        order: reading facts is mostly waiting on SSH. In pyinfra's API mode an
        operation's identity is its position in the host's list, so the
        interleaving of hosts does not matter.
        """
        self.state.set_stage(StateStage.Prepare)
        if self._stopped("prepare"):
            return
        per_host = {name: list(some) for name, some in layers.items()} if isinstance(layers, Mapping) else None
        shared = list(layers) if per_host is None else []

        def one(host: Host) -> None:
            plan = plans.get(host.name)
            service_plan = getattr(plan, "service_plan", None)  # a gateway host's plan has none
            if service_plan is not None:
                self.outcomes[host.name].service_plan = {**service_plan.to_json(), "line": service_plan.line()}
            if isinstance(plan, HostPlan):
                self.outcomes[host.name].instance_plans = plan.differing_instance_plans()
            if reads is not None and isinstance(plan, HostPlan):
                try:
                    read_facts(host, reads(plan))
                except HostError as error:
                    self._fail(host, error.step, error.message)
                    return
            for layer in per_host[host.name] if per_host is not None else shared:
                step = getattr(layer, "deploy_name", layer.__name__)
                try:
                    with self._step(host, f"reading what {step} would change"):
                        add_deploy(self.state, layer, plans[host.name], self.recorders[host.name], host=host)
                except Exception as error:  # noqa: BLE001 - isolate hosts
                    logger.debug("%s: preparing %s failed", host.name, step, exc_info=True)
                    self._fail(host, step, _describe(error))
                    return

        self._in_pool(one, list(self.state.inventory.get_active_hosts()))
        self._collect(executed=False)

    def execute(self) -> None:
        self.state.set_stage(StateStage.Execute)
        if self._stopped("execute"):
            return
        with self._ticking():
            self._tolerate_all_failed(run_ops, self.state)
        self._collect(executed=True)
        if self.aborted:
            for host in self.state.inventory.get_active_hosts():
                outcome = self.outcomes[host.name]
                if not outcome.failed and self._ops_not_run(host):
                    self._mark_aborted(outcome, "execute")

    def disconnect(self) -> None:
        self.state.set_stage(StateStage.Disconnect)
        for channel in self.locks.values():
            channel.close()  # the lock script's stdin ends: the lock is released
        self.locks.clear()
        disconnect_all(self.state)

    def report(self, mode: str) -> RunReport:
        return RunReport(mode=mode, hosts=[self.outcomes[name] for name in self.hosts], aborted=self.aborted)

    def check_fail_percent(self, extra_failed: Iterable[Host] = ()) -> bool:
        """Whether the run is aborted: more than ``fail_percent`` of its hosts failed (records why)."""
        limit = self.options.fail_percent
        if self.aborted or limit is None:
            return bool(self.aborted)
        failed = {name for name, outcome in self.outcomes.items() if outcome.failed}
        failed.update(host.name for host in extra_failed)
        if len(failed) * 100 > limit * len(self.outcomes):
            self.aborted = (
                f"more than {limit}% of hosts failed ({len(failed)} of {len(self.outcomes)}: "
                f"{', '.join(sorted(failed))})"
            )
            if self.options.progress:
                self.options.progress(f"ABORTED: {self.aborted}; no further operation starts")
        return bool(self.aborted)

    # -- helpers --------------------------------------------------------------

    def _ticking(self):
        """While a stage runs: the heartbeat of its long steps (nothing to tick without progress lines)."""
        return self.watch.ticking() if self.watch else contextlib.nullcontext()

    @contextlib.contextmanager
    def _step(self, host: Host, step: str):
        """A per-host step of ours (preflight, smoke test...): shown while it runs long, and its time at the end."""
        if not self.watch:
            yield
            return
        self.watch.started(host.name, step)
        failed = True
        try:
            yield
            failed = False
        finally:
            took = self.watch.ended(host.name)
            if took and not failed and self.options.progress:
                self.options.progress(f"{host.name}: done: {step}{took}")

    def _in_pool(self, action: Callable[[Host], None], hosts: list[Host]) -> None:
        # Greenlets, as pyinfra runs hosts: each waits on its own SSH channel. pyinfra's
        # state context is global, not per greenlet: set it here, around all of them, or
        # the first greenlet to finish would unset it under the others.
        pool = gevent.pool.Pool(self.options.parallel or max(1, len(hosts)))
        with ctx_state.use(self.state), self._ticking():
            for host in hosts:
                pool.spawn(action, host)
            pool.join()

    def _stopped(self, step: str) -> bool:
        """After an abort: mark the hosts still in the run as aborted before ``step``; True if so."""
        if not self.aborted:
            return False
        for outcome in self.outcomes.values():
            if not outcome.failed:
                self._mark_aborted(outcome, step)
        return True

    def _mark_aborted(self, outcome: HostOutcome, step: str) -> None:
        if not outcome.aborted:
            outcome.aborted = True
            outcome.step = step
            outcome.error = f"not finished: the run was aborted ({self.aborted})"

    def _ops_not_run(self, host: Host) -> bool:
        return any(not data.operation_meta.is_complete() for data in self.state.ops[host].values())

    def _fail(self, host: Host, step: str, reason: str, unreachable: bool = False, local: bool = False) -> None:
        outcome = self.outcomes[host.name]
        if outcome.failed:
            if step != outcome.step:  # a later stage adds to it (e.g. the rollback after a failed start)
                outcome.error = f"{outcome.error}\n{step}: {reason}"
            return
        outcome.failed = True
        outcome.unreachable = unreachable
        outcome.local_error = local
        outcome.step = step
        outcome.error = reason
        if host in self.state.active_hosts:
            self._tolerate_all_failed(self.state.fail_hosts, {host})
        if self.options.progress:
            self.options.progress(f"{host.name}: FAILED at {step}: {reason.splitlines()[0] if reason else ''}")
        self.check_fail_percent()

    def _tolerate_all_failed(self, function, *args) -> None:
        # pyinfra raises once no host is left; we report every host instead.
        try:
            function(*args)
        except _FailPercentExceeded:
            pass  # self.aborted says why
        except PyinfraError as error:
            if "No hosts remaining" not in str(error):
                raise

    def _collect(self, executed: bool) -> None:
        for host in self.state.inventory:
            recorder = self.recorders[host.name]
            outcome = self.outcomes[host.name]
            operations: list[OperationOutcome] = []
            for op_hash in self.state.get_op_order():
                op_data = self.state.ops[host].get(op_hash)
                if op_data is None:
                    continue
                meta = op_data.operation_meta
                name = _op_name(self.state, op_hash, host)
                if executed:
                    if not meta.is_complete():
                        continue  # not reached: an earlier operation failed
                    failed = meta.did_error()
                    changed = not failed and meta.did_change()
                    error = "\n".join(meta.stderr_lines[-20:]) if failed else None
                    if failed and not outcome.failed:
                        outcome.failed = True
                        outcome.step = name
                        outcome.error = error or "failed (no output)"
                        if not error and _connection_lost(host):
                            outcome.unreachable = True
                            outcome.error = "the SSH connection was lost during this step (host down or unreachable)"
                else:
                    changed, error = meta.will_change, None
                operations.append(
                    OperationOutcome(name=name, changed=changed, error=error, diff=recorder.diffs.get(op_hash))
                )
            ops = self.state.ops[host]
            outcome.notes = recorder.notes_after(
                executed, lambda op_hash, ops=ops: ops[op_hash].operation_meta if op_hash in ops else None
            )
            if operations or not outcome.failed:
                outcome.operations = operations
            outcome.executed = executed


def current_run(host: Host) -> FleetRun:
    """The run ``host`` belongs to (inside ``for_each_*`` actions)."""
    return host.state.sd35_run


def current_run_outcome(host: Host) -> HostOutcome:
    """The outcome record of ``host`` in the run it belongs to (inside ``for_each_*`` actions)."""
    return current_run(host).outcomes[host.name]


def _connection_lost(host: Host) -> bool:
    """Whether the host's SSH connection has died (the box went away in the middle of the run)."""
    client = getattr(host.connector, "client", None)
    transport = client.get_transport() if client is not None else None
    return transport is not None and not transport.is_active()


def _describe(error: BaseException) -> str:
    if isinstance(error, HostError):
        return error.message
    text = str(error).strip()
    return text or error.__class__.__name__
