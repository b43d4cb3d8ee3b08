"""Drain hosts on the gateways while they change, through HAProxy's runtime API.

``with drained(gateways, hosts) as drain:`` sets every server (instance) of
``hosts`` to ``drain`` on every gateway (no new request goes to them; those in
flight finish), waits until their sessions are 0 (at most
``gateway.drain_timeout_s``), and on leaving sets them ``ready`` again, except
the hosts marked ``drain.keep(host)`` (a failed smoke test: the host stays out
of the gateway until an apply passes). A server put back ``ready`` takes
traffic once its health check passes.

The runtime API is the admin socket of ``stats socket`` (layout.HAPROXY_ADMIN_SOCKET),
reached with ``socat`` over an SSH login to the gateway host (sshlogin.py, host
keys verified). A gateway that cannot be reached, or has no HAProxy yet (its
first apply), is said in one line and skipped: draining is a courtesy to the
requests in flight, never a reason to stop a rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import paramiko

from sd35_provision import layout, sshlogin
from sd35_provision.facts.gateway import ServerStat, parse_show_stat, runtime_shell
from sd35_provision.hostspec.settings import HostSettings

Say = Callable[[str], None]
POLL_S = 1.0


def servers_of(stats: Sequence[ServerStat], hosts: Sequence[str]) -> list[ServerStat]:
    """The servers of ``hosts`` in the gateway's backend."""
    wanted = set(hosts)
    return [stat for stat in stats if stat.backend == layout.GATEWAY_BACKEND and stat.host in wanted]


def set_state_command(server: str, state: str) -> str:
    """The runtime API command that sets ``server`` to ``state`` (ready, drain, maint)."""
    if state not in ("ready", "drain", "maint"):
        raise ValueError(state)
    return f"set server {layout.GATEWAY_BACKEND}/{server} state {state}"


class GatewayUnavailable(Exception):
    """This gateway's runtime API cannot be used now (unreachable, or no HAProxy yet)."""


@dataclass
class RuntimeApi:
    """One gateway host's admin socket, over one SSH login."""

    settings: HostSettings
    client: paramiko.SSHClient | None = None

    def __enter__(self) -> RuntimeApi:
        from sd35_provision.sshcheck import known_hosts_path

        ssh = self.settings.ssh
        try:
            self.client = sshlogin.connect(
                self.settings.address,
                user=ssh.user,
                port=ssh.port,
                key=ssh.key,
                known_hosts=known_hosts_path(self.settings),
                timeout=ssh.connect_timeout,
                default_keys=ssh.key is None,
            )
        except (OSError, paramiko.SSHException) as error:
            raise GatewayUnavailable(f"cannot log in: {error}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()

    def send(self, *commands: str) -> str:
        assert self.client is not None
        _, stdout, stderr = self.client.exec_command(runtime_shell(commands, self.settings.ssh.sudo), timeout=30)
        output = stdout.read().decode(errors="replace")
        if stdout.channel.recv_exit_status() != 0:
            problem = stderr.read().decode(errors="replace").strip().splitlines()
            raise GatewayUnavailable(problem[-1] if problem else "the admin socket did not answer")
        return output

    def stats(self) -> list[ServerStat]:
        try:
            return parse_show_stat(self.send("show stat -1 4 -1"))
        except ValueError as error:
            raise GatewayUnavailable(str(error)) from None


@dataclass
class Drain:
    """What ``drained`` did, and the hosts to keep drained when it ends."""

    hosts: tuple[str, ...]
    kept: set[str] = field(default_factory=set)
    waited_s: float = 0.0

    def keep(self, host: str) -> None:
        """Leave ``host`` drained on leaving (its change failed)."""
        self.kept.add(host)


def set_state(api: RuntimeApi, hosts: Sequence[str], state: str) -> list[str]:
    """Set every server of ``hosts`` to ``state``; the servers it set."""
    servers = [stat.server for stat in servers_of(api.stats(), hosts)]
    if servers:
        answer = api.send(*(set_state_command(server, state) for server in servers)).strip()
        if answer:
            raise GatewayUnavailable(f"set server ... state {state}: {answer.splitlines()[0]}")
    return servers


def wait_up(api: RuntimeApi, hosts: Sequence[str], timeout_s: float) -> list[ServerStat]:
    """Wait until the servers of ``hosts`` pass their health checks again; those that did not in ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        down = [stat for stat in servers_of(api.stats(), hosts) if not stat.status.startswith("UP")]
        if not down or time.monotonic() >= deadline:
            return down
        time.sleep(POLL_S)


def wait_idle(api: RuntimeApi, hosts: Sequence[str], timeout_s: float) -> tuple[bool, list[ServerStat]]:
    """Wait until the servers of ``hosts`` answer no request (True), or ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = [stat for stat in servers_of(api.stats(), hosts) if stat.busy]
        if not busy:
            return True, []
        if time.monotonic() >= deadline:
            return False, busy
        time.sleep(POLL_S)


@contextmanager
def drained(gateways: Sequence[HostSettings], hosts: Sequence[str], say: Say | None = None) -> Iterator[Drain]:
    """``hosts`` out of every gateway of ``gateways`` while the block runs (see the module's docstring)."""
    tell = say or (lambda message: None)
    drain = Drain(hosts=tuple(hosts))
    if not gateways or not hosts:
        yield drain
        return
    started = time.monotonic()
    drained_on: list[HostSettings] = []
    for gateway in gateways:
        timeout = gateway.gateway.drain_timeout_s if gateway.gateway else 0
        try:
            with RuntimeApi(gateway) as api:
                servers = set_state(api, hosts, "drain")
                if not servers:
                    continue
                drained_on.append(gateway)
                tell(f"{gateway.name}: draining {', '.join(servers)}")
                idle, busy = wait_idle(api, hosts, timeout)
                if not idle:
                    still = ", ".join(f"{stat.server} ({stat.busy})" for stat in busy)
                    tell(f"{gateway.name}: drain timeout ({timeout} s): requests still in flight on {still}")
        except GatewayUnavailable as error:
            tell(f"{gateway.name}: gateway: cannot drain {', '.join(hosts)}: {error}")
    drain.waited_s = time.monotonic() - started
    try:
        yield drain
    finally:
        back = [host for host in hosts if host not in drain.kept]
        for gateway in drained_on:
            settings = gateway.gateway
            # Until they take requests again (or not: their health checks say why), so that the
            # next wave is not drained while these are still coming back.
            up_within = 10 + 4 * (settings.health_check_interval_s if settings else 2)
            try:
                with RuntimeApi(gateway) as api:
                    if back:
                        set_state(api, back, "ready")
                        late = wait_up(api, back, up_within)
                        if late:
                            names = ", ".join(f"{stat.server} ({stat.status})" for stat in late)
                            tell(f"{gateway.name}: ready again but not passing health checks yet: {names}")
            except GatewayUnavailable as error:
                tell(f"{gateway.name}: gateway: cannot set {', '.join(back)} ready: {error}")
            if drain.kept:
                tell(f"{gateway.name}: {', '.join(sorted(drain.kept))} stay drained (their change failed)")


@contextmanager
def drained_unless_failed(
    gateways: Sequence[HostSettings], hosts: Sequence[str], say: Say | None = None
) -> Iterator[Drain]:
    """``drained``, but a block that raises (a reboot that did not come back) leaves ``hosts`` drained."""
    with drained(gateways, hosts, say) as drain:
        try:
            yield drain
        except BaseException:
            for name in hosts:
                drain.keep(name)
            raise
