"""Run the deploys against a fleet through pyinfra's Python API.

Stages, per host, each isolated so one host's failure never stops the others:
connect -> preflight (facts only, no change) -> prepare (work out the commands
each operation would run; this is the dry run) -> execute (apply only).
"""

from __future__ import annotations

import logging

import gevent.pool
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pyinfra.api import Config, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.host import Host
from pyinfra.api.operations import run_ops
from pyinfra.api.state import BaseStateCallback, StateStage
from pyinfra.context import ctx_host, ctx_state

from sd35_provision.errors import HostError
from sd35_provision.inventory import build_inventory
from sd35_provision.operations import file_diffs_of, notes_of
from sd35_provision.report import HostOutcome, OperationOutcome, RunReport
from sd35_provision.spec.model import HostSettings

logger = logging.getLogger(__name__)

Layer = Callable[[], None]
ProgressSink = Callable[[str], None]


@dataclass
class RunOptions:
    accept_new_host_keys: bool = False
    parallel: int = 0  # 0: pyinfra picks
    fail_percent: int | None = None
    progress: ProgressSink | None = None


class _Recorder(BaseStateCallback):
    """Collects what pyinfra only logs: connect errors and live progress."""

    def __init__(self, progress: ProgressSink | None):
        self.connect_errors: dict[str, str] = {}
        self.progress = progress

    def host_connect_error(self, state: State, host: Host, error) -> None:  # noqa: D102
        self.connect_errors[host.name] = str(error) or error.__class__.__name__

    def operation_host_success(self, state: State, host: Host, op_hash, retry_count: int = 0) -> None:
        # Called before pyinfra marks the operation complete: use the prepared verdict.
        meta = state.ops[host][op_hash].operation_meta
        if self.progress and meta._maybe_is_change:
            self.progress(f"{host.name}: changed: {_op_name(state, op_hash)}")

    def operation_host_error(self, state: State, host: Host, op_hash, retry_count: int = 0, max_retries: int = 0) -> None:
        if self.progress:
            self.progress(f"{host.name}: FAILED: {_op_name(state, op_hash)}")


def _op_name(state: State, op_hash: str) -> str:
    return sorted(state.get_op_meta(op_hash).names)[0]


class FleetRun:
    """One connection to a set of hosts, used for a plan, an apply or facts."""

    def __init__(self, hosts: list[HostSettings], options: RunOptions | None = None):
        self.hosts = {host.name: host for host in hosts}
        self.options = options or RunOptions()
        config = Config(PARALLEL=self.options.parallel, FAIL_PERCENT=self.options.fail_percent)
        self.state = State(build_inventory(hosts, self.options.accept_new_host_keys), config)
        self.recorder = _Recorder(self.options.progress)
        self.state.add_callback_handler(self.recorder)
        self.outcomes: dict[str, HostOutcome] = {name: HostOutcome(name=name) for name in self.hosts}
        self.aborted: str | None = None
        self.state.sd35_run = self

    # -- stages ---------------------------------------------------------------

    def connect(self) -> None:
        self.state.set_stage(StateStage.Connect)
        self._tolerate_all_failed(connect_all, self.state)
        for host in self.state.inventory:
            if not host.connected:
                reason = self.recorder.connect_errors.get(host.name, "could not connect")
                self._fail(host, "connect", reason, unreachable=True)

    def for_each_active_host(self, step: str, action: Callable[[Host, HostSettings], None]) -> None:
        """Run ``action`` per active host, in parallel, in pyinfra's context; a raise fails only that host."""
        self._for_each(step, action, list(self.state.inventory.get_active_hosts()))

    def for_each_connected_host(self, step: str, action: Callable[[Host, HostSettings], None]) -> None:
        """Like ``for_each_active_host``, failed hosts included (e.g. to roll one back)."""
        self._for_each(step, action, [host for host in self.state.inventory if host.connected])

    def _for_each(self, step: str, action: Callable[[Host, HostSettings], None], hosts: list[Host]) -> None:
        def one(host: Host) -> None:
            with ctx_state.use(self.state), ctx_host.use(host):
                try:
                    action(host, self.hosts[host.name])
                except Exception as error:  # noqa: BLE001 - isolate hosts
                    logger.debug("%s: %s failed", host.name, step, exc_info=True)
                    self._fail(host, step, _describe(error))

        # Greenlets, as pyinfra runs hosts: each waits on its own SSH channel.
        pool = gevent.pool.Pool(self.options.parallel or max(1, len(hosts)))
        for host in hosts:
            pool.spawn(one, host)
        pool.join()

    def prepare(self, layers: Iterable[Layer]) -> None:
        """Work out every operation's commands from current facts (the dry run)."""
        self.state.set_stage(StateStage.Prepare)
        for layer in layers:
            step = getattr(layer, "deploy_name", layer.__name__)
            for host in list(self.state.inventory.get_active_hosts()):
                try:
                    add_deploy(self.state, layer, host=host)
                except Exception as error:  # noqa: BLE001 - isolate hosts
                    logger.debug("%s: preparing %s failed", host.name, step, exc_info=True)
                    self._fail(host, step, _describe(error))
        self._collect(executed=False)

    def execute(self) -> None:
        self.state.set_stage(StateStage.Execute)
        self._tolerate_all_failed(run_ops, self.state)
        self._collect(executed=True)

    def disconnect(self) -> None:
        self.state.set_stage(StateStage.Disconnect)
        disconnect_all(self.state)

    def report(self, mode: str) -> RunReport:
        return RunReport(mode=mode, hosts=[self.outcomes[name] for name in self.hosts])

    # -- helpers --------------------------------------------------------------

    def _fail(self, host: Host, step: str, reason: str, unreachable: bool = False) -> None:
        outcome = self.outcomes[host.name]
        if outcome.failed:
            if step != outcome.step:  # a later stage adds to it (e.g. the rollback after a failed start)
                outcome.error = f"{outcome.error}\n{step}: {reason}"
            return
        outcome.failed = True
        outcome.unreachable = unreachable
        outcome.step = step
        outcome.error = reason
        if host in self.state.active_hosts:
            self._tolerate_all_failed(self.state.fail_hosts, {host})
        if self.options.progress:
            self.options.progress(f"{host.name}: FAILED at {step}: {reason.splitlines()[0] if reason else ''}")

    def _tolerate_all_failed(self, function, *args) -> None:
        # pyinfra raises once no host is left; we report every host instead.
        try:
            function(*args)
        except PyinfraError as error:
            if "No hosts remaining" not in str(error) and "of hosts failed" not in str(error):
                raise
            self.aborted = str(error)

    def _collect(self, executed: bool) -> None:
        diffs = file_diffs_of(self.state)
        for host in self.state.inventory:
            outcome = self.outcomes[host.name]
            operations: list[OperationOutcome] = []
            for op_hash in self.state.get_op_order():
                op_data = self.state.ops[host].get(op_hash)
                if op_data is None:
                    continue
                meta = op_data.operation_meta
                name = _op_name(self.state, op_hash)
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
                else:
                    changed, error = bool(meta._maybe_is_change), None
                operations.append(OperationOutcome(
                    name=name, changed=changed, error=error, diff=diffs.get(host.name, {}).get(op_hash)
                ))
            outcome.notes = list(notes_of(self.state).get(host.name, []))
            if operations or not outcome.failed:
                outcome.operations = operations
            outcome.executed = executed


def current_run_outcome(host: Host) -> HostOutcome:
    """The outcome record of ``host`` in the run it belongs to (inside ``for_each_*`` actions)."""
    return host.state.sd35_run.outcomes[host.name]


def _describe(error: BaseException) -> str:
    if isinstance(error, HostError):
        return error.message
    text = str(error).strip()
    return text or error.__class__.__name__
