"""Reboots as an operation: ``apply --reboot`` (or ``gpu.driver.allow_reboot``).

After a wave's apply and smoke test, each of its hosts that needs a reboot
(``facts.reboot.reboot_needed``) goes through, in this order:

  drain (on the gateway, if there is one) -> reboot (detached, so the SSH
  command returns) -> wait for SSH and a new boot id (bounded) -> the run's
  lock taken back (it went with the boot; another run that took it meanwhile
  stops this one here) -> the NVIDIA driver loads (GPU hosts) -> the service
  is active -> smoke test -> undrain.

A step that fails fails the host with ``reboot: <step>`` and one line saying
what; the rollout stops as for any failed host of a wave, and hosts of later
waves are never touched. Without ``--reboot``/``allow_reboot`` a host that
needs a reboot is only reported ("reboot required: run apply --reboot").

The steps talk to the host through ``RebootableHost`` (SSH in real runs; a
fake in the unit tests), so the order, the bounds and the messages are tested
without a host.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from pyinfra.api.host import Host
from pyinfra.connectors.util import clear_askpass_cache

from sd35_provision.errors import HostError
from sd35_provision.facts.driver import DriverState, NvidiaDriverState
from sd35_provision.facts.nvidia import NvidiaGpus
from sd35_provision.facts.reboot import RebootState, reboot_needed
from sd35_provision.hostlock import HostLocked
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.smoketest import SmokeOutcome, _as_root, run_smoke

# The order a host goes through; the names are the steps a failure names.
STEPS = ("drain", "reboot", "wait for SSH", "lock", "driver check", "service", "smoke test", "undrain")
POLL_INTERVAL_S = 2.0
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"  # new on every boot
# Detached, so the SSH command returns before the host goes down: a transient timer (its accuracy
# set, or systemd may fire it up to a minute late), or shutdown's scheduled reboot without systemd-run.
REBOOT_COMMAND = (
    "systemd-run --quiet --on-active=1 --timer-property=AccuracySec=100ms systemctl reboot || shutdown -r +0"
)

# The gateway seam: ``drain(hosts)`` takes hosts out of rotation for the ``with`` block and
# puts them back when it ends (an exception tells it the host did not come back right).
Drain = Callable[[Sequence[str]], AbstractContextManager[object]]


def no_gateway(hosts: Sequence[str]) -> AbstractContextManager[object]:
    """The drain when no gateway is configured: nothing to take out of rotation."""
    return nullcontext()


@dataclass(frozen=True)
class RebootOptions:
    allowed: bool = False  # apply --reboot; a host's gpu.driver.allow_reboot allows it for that host
    timeout_s: int | None = None  # --reboot-timeout; None: each host's gpu.driver.reboot_timeout_s
    drain: Drain = field(default=no_gateway)

    def allowed_for(self, settings: HostSettings) -> bool:
        return self.allowed or settings.gpu.driver.allow_reboot

    def timeout_for(self, settings: HostSettings) -> int:
        return self.timeout_s if self.timeout_s is not None else settings.gpu.driver.reboot_timeout_s


def reboot_reason(host: Host, settings: HostSettings, driver: DriverState | None = None) -> str | None:
    """Why ``host`` needs a reboot now (None: it does not): the one place plan, apply and status ask.

    On an NVIDIA host the driver facts' reason counts too (``DriverState.reboot_reason``: NVML's
    "Driver/library version mismatch", which a host may show without a library the reboot fact finds).
    ``driver``: those facts when the caller has read them already; read here when not. A gateway
    host has no driver facts of its own (its plan reads none).
    """
    if settings.gpu.accelerator == "nvidia" and not settings.runs_gateway:
        driver = driver if driver is not None else host.get_fact(NvidiaDriverState)
        return reboot_needed(host.get_fact(RebootState), driver.reboot_reason)
    return reboot_needed(host.get_fact(RebootState))


def required_note(reason: str) -> str:
    """What plan, apply and status say about a host that needs a reboot it will not get."""
    return f"reboot required: run apply --reboot ({reason})"


class RebootFailed(HostError):
    """A host did not get through its reboot; ``step`` is ``reboot: <one of STEPS>``."""

    def __init__(self, host: str, step: str, message: str):
        super().__init__(host, f"reboot: {step}", message)


class RebootableHost(Protocol):
    """What a reboot needs from one host."""

    name: str

    def boot_id(self) -> str | None:
        """The current boot id; None when the host does not answer (connecting again as needed)."""

    def request_reboot(self) -> None:
        """Ask the host to reboot, detached: returns before it goes down."""

    def disconnect(self) -> None:
        """Drop the connection (it dies with the reboot)."""

    def lock_again(self) -> str | None:
        """Take the run's lock back (it went with the reboot); why it could not (another run has it), or None."""

    def driver_problem(self) -> str | None:
        """Why the NVIDIA driver does not work now; None if it does."""

    def service_problem(self, timeout_s: float) -> str | None:
        """Wait up to ``timeout_s`` for the service to be active; why it is not, or None."""

    def smoke_problem(self) -> str | None:
        """Run the smoke test; why it failed, or None."""


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up when called: gevent's under the CLI's monkey patching, so other hosts go on


@dataclass
class Clock:
    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = _sleep


def reboot_host(
    host: RebootableHost,
    reason: str,
    timeout_s: float,
    gpu: bool,
    drain: Drain = no_gateway,
    clock: Clock | None = None,
    say: Callable[[str], None] | None = None,
) -> str:
    """Reboot one host and check it came back whole (see the module's docstring); returns a note for the report.

    Raises ``RebootFailed`` naming the step that failed.
    """
    clock = clock or Clock()
    say = say or (lambda message: None)
    old_boot = host.boot_id()
    if old_boot is None:
        raise RebootFailed(host.name, "reboot", "could not read the boot id before rebooting")
    started = clock.now()
    step = "drain"
    try:
        with ExitStack() as stack:
            stack.enter_context(drain((host.name,)))
            step = "reboot"
            say(f"{host.name}: rebooting: {reason}")
            host.request_reboot()
            host.disconnect()
            step = "wait for SSH"
            _wait_for_new_boot(host, old_boot, started + timeout_s, timeout_s, clock)
            say(f"{host.name}: back after {clock.now() - started:.0f}s")
            # Before anything is checked: a run started meanwhile must not work on the host beside this one.
            step = "lock"
            problem = host.lock_again()
            if problem:
                raise RebootFailed(host.name, step, f"{problem}; the driver check and smoke test did not run")
            if gpu:
                step = "driver check"
                problem = host.driver_problem()
                if problem:
                    raise RebootFailed(host.name, step, f"the NVIDIA driver does not work after the reboot: {problem}")
            step = "service"
            problem = host.service_problem(max(1.0, started + timeout_s - clock.now()))
            if problem:
                raise RebootFailed(host.name, step, problem)
            step = "smoke test"
            problem = host.smoke_problem()
            if problem:
                raise RebootFailed(host.name, step, f"smoke test failed after the reboot: {problem}")
            step = "undrain"
    except RebootFailed:
        raise
    except Exception as error:  # noqa: BLE001 - the gateway's or the connection's error, named by its step
        raise RebootFailed(host.name, step, str(error).strip() or error.__class__.__name__) from error
    return f"rebooted ({reason}); back and smoke-tested after {clock.now() - started:.0f}s"


def _wait_for_new_boot(host: RebootableHost, old_boot: str, deadline: float, timeout_s: float, clock: Clock) -> None:
    answered_since = False  # the host answered, still in its old boot: the reboot has not happened (yet)
    while True:
        boot = host.boot_id()
        if boot is not None and boot != old_boot:
            return
        answered_since = boot is not None
        if clock.now() >= deadline:
            why = "it still runs the boot it had (the reboot did not happen)" if answered_since else "no SSH answer"
            raise RebootFailed(host.name, "wait for SSH", f"not back within {timeout_s:.0f}s: {why}")
        clock.sleep(POLL_INTERVAL_S)


def wait_active_command(unit: str, timeout_s: float) -> str:
    """Wait until ``unit`` is active; on timeout print its state and fail."""
    quoted = shlex.quote(unit)
    return (
        f"end=$(( $(date +%s) + {int(timeout_s)} )); "
        f"until systemctl is-active --quiet {quoted}; do "
        f'if [ "$(date +%s)" -ge "$end" ]; then '
        f'echo "{unit} is $(systemctl is-active {quoted}) {int(timeout_s)}s after the reboot" >&2; exit 1; fi; '
        "sleep 1; done"
    )


class SshHost:
    """``RebootableHost`` over a run's pyinfra host (its SSH connection, reconnected after the reboot)."""

    def __init__(self, host: Host, settings: HostSettings, take_lock: Callable[[], None] | None = None):
        """``take_lock``: takes the run's lock of the host again (``FleetRun.take_lock_again``); None: no lock."""
        self.host = host
        self.settings = settings
        self.name = host.name
        self.smoke: SmokeOutcome | None = None
        self.take_lock = take_lock

    def _run(self, command: str, timeout: float | None = None) -> tuple[bool, str, str]:
        ok, output = self.host.run_shell_command(command, print_output=False, _timeout=timeout, **_as_root(self.host))
        return ok, output.stdout, output.stderr

    def boot_id(self) -> str | None:
        if not self.host.connected:
            self.host.connect(show_errors=False)
            if not self.host.connected:
                return None
        try:
            ok, out, _ = self._run(f"cat {BOOT_ID_FILE}", timeout=30)
        except Exception:  # noqa: BLE001 - a connection dying under the command: not up (yet)
            ok = False
        if not ok:
            self.disconnect()
            return None
        return out.strip() or None

    def request_reboot(self) -> None:
        ok, _, err = self._run(REBOOT_COMMAND, timeout=60)
        if not ok:
            raise RuntimeError(f"`{REBOOT_COMMAND}` failed: {err.strip().splitlines()[-1:] or 'no output'}")

    def disconnect(self) -> None:
        # The remote askpass files went with the old boot: nothing to delete over a dead connection.
        clear_askpass_cache(self.host)
        client = getattr(self.host.connector, "client", None)
        self.host.disconnect()
        if client is not None:
            client.close()  # pyinfra's disconnect keeps the paramiko client open

    def lock_again(self) -> str | None:
        if self.take_lock is None:
            return None
        try:
            self.take_lock()
        except HostLocked as error:
            if error.holder:
                return f"another run took the run lock while the host rebooted: {error.holder}"
            return error.message
        return None

    def driver_problem(self) -> str | None:
        # The driver layer's own verdict (it works, new enough for torch), so a new driver the
        # layer installed (gpu.driver.allow_reboot) is checked as it was by the layer itself.
        from sd35_provision.deploys.nvidia import driver_problem, torch_flavours

        fact = NvidiaGpus()
        _, out, err = self._run(fact.command(), timeout=120)
        return driver_problem(fact.process((out + err).splitlines()), torch_flavours(self.settings))

    def service_problem(self, timeout_s: float) -> str | None:
        from sd35_provision.smoketest import smoke_targets

        # Every instance the host has after the reboot (read afresh, as the smoke test does).
        for unit in [target.unit for target in smoke_targets(self.host, self.settings)]:
            ok, _, err = self._run(wait_active_command(unit, timeout_s), timeout=timeout_s + 30)
            if not ok:
                return err.strip().splitlines()[-1] if err.strip() else f"{unit} is not active"
        return None

    def smoke_problem(self) -> str | None:
        if not self.settings.smoke.enabled:
            return None
        self.smoke = run_smoke(self.host, self.settings)
        return None if self.smoke.ok else self.smoke.reason
