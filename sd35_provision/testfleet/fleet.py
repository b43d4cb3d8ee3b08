"""A local fleet of real Debian 12 hosts for demos and integration tests.

Each host is a ``systemd-nspawn --boot`` container (systemd as PID 1) on its
own writable overlay over a cached debootstrap rootfs, with its own hostname and its own
sshd on 127.0.2.N:22: the containers share this machine's network
namespace, so each host listens on its own loopback address. Host keys are
made before boot and recorded in known_hosts; every connection verifies them.

Files under the state dir: ``id_ed25519`` (+ ``.pub``, the fleet's client
key, kept across runs), ``known_hosts``, ``fleet.yaml`` (the spec),
``state.json`` (hosts and pids), ``hosts/<name>/`` (disks: ``upper``, ``work``
and the mounted ``root``) and
``logs/<name>.log`` (each container's console).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import paramiko

from sd35_provision import sshlogin
from sd35_provision.testfleet import containers, keys
from sd35_provision.testfleet.errors import TestFleetError
from sd35_provision.testfleet.layout import (
    check_state_dir,
    client_key_path,
    known_hosts_path,
    machine_name,
    parse_binds,
    plan_hosts,
)
from sd35_provision.testfleet.rootfs import ensure_rootfs
from sd35_provision.testfleet.spec import render_spec
from sd35_provision.testfleet.state import FleetHost, FleetState, read_state, write_state
from sd35_provision.testfleet.system import mounts_under, port_in_use, unmount_all

DEFAULT_FIRST_ADDRESS = "127.0.2.1"
BOOT_TIMEOUT_S = 90.0


def default_state_dir() -> Path:
    return Path(os.environ.get("SD35_TESTFLEET_DIR", "/var/lib/sd35-provision/testfleet"))


class CommandResult(NamedTuple):
    exit_status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    pid: int | None
    running: bool
    ssh_ok: bool

    def line(self) -> str:
        return (
            f"{self.name}  {self.address}  pid {self.pid or '-'}  "
            f"{'running' if self.running else 'stopped'}  ssh {'ok' if self.ssh_ok else 'unreachable'}"
        )


class Fleet:
    """The hosts booted from one state dir, and what can be done with them."""

    def __init__(self, state_dir: Path, state: FleetState | None = None):
        self.state_dir = state_dir
        self.state = state or FleetState()

    @classmethod
    def load(cls, state_dir: Path | None = None) -> Fleet:
        """The fleet recorded in ``state_dir`` (no hosts when nothing was booted there)."""
        state_dir = (state_dir or default_state_dir()).absolute()  # mount points are compared as absolute paths
        return cls(state_dir, read_state(state_dir / "state.json"))

    # -- where things are ------------------------------------------------------

    @property
    def hosts(self) -> list[FleetHost]:
        return self.state.hosts

    @property
    def binds(self) -> list[str]:
        return self.state.binds

    @property
    def key_path(self) -> Path:
        return client_key_path(self.state_dir)

    @property
    def known_hosts_path(self) -> Path:
        return known_hosts_path(self.state_dir)

    @property
    def spec_path(self) -> Path:
        return self.state_dir / "fleet.yaml"

    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def host(self, name: str) -> FleetHost:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts) or "none; run `sd35-provision testfleet up N`"
        raise TestFleetError(f"no test host {name!r} in {self.state_dir} (hosts: {known})")

    def save(self) -> None:
        write_state(self.state_path, self.state)

    # -- SSH -------------------------------------------------------------------

    def ssh(self, name: str, timeout: float = 10) -> paramiko.SSHClient:
        """A root SSH connection to one host; its host key is checked against known_hosts."""
        return _connect(self, self.host(name), timeout)

    def run(self, name: str, command: str, timeout: float = 120) -> CommandResult:
        """Run a shell command on one host over SSH."""
        client = self.ssh(name)
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            out, err = stdout.read().decode(), stderr.read().decode()
            return CommandResult(stdout.channel.recv_exit_status(), out, err)
        finally:
            client.close()

    # -- one host ----------------------------------------------------------------

    def is_running(self, name: str) -> bool:
        return containers.is_running(self.host(name))

    def stop_host(self, name: str, timeout: float = 20) -> None:
        """Power one host off, keeping its disk (a box that went away)."""
        containers.stop([self.host(name)], timeout)
        self.save()

    def start_host(self, name: str, wait_s: float = BOOT_TIMEOUT_S) -> None:
        """Boot a stopped host again on the same disk; returns once its sshd answers."""
        host = self.host(name)
        if containers.is_running(host):
            return
        _check_free([host.address])
        containers.boot(host, self.binds, self.log_path(name))
        self.save()
        _wait_until_ready(self, host, wait_s)

    def reset_host(self, name: str, wait_s: float = BOOT_TIMEOUT_S) -> None:
        """Boot one host again on a disk as ``up`` made it (same name, address and keys, nothing else kept)."""
        # A provisioned host stops its services first (the inference service with its model loaded).
        containers.stop([self.host(name)], timeout=60)
        self.save()
        containers.reset_disk(self.host(name))
        self.start_host(name, wait_s)

    def status(self) -> list[HostStatus]:
        rows = []
        for host in self.hosts:
            running = containers.is_running(host)
            rows.append(
                HostStatus(
                    host.name, host.address, host.pid if running else None, running, running and _ssh_ok(self, host)
                )
            )
        return rows

    # -- spec --------------------------------------------------------------------

    def render_spec(
        self,
        extra_defaults: dict[str, Any] | None = None,
        groups: dict[str, Any] | None = None,
        host_overrides: dict[str, dict[str, Any]] | None = None,
        spec_dir: Path | None = None,
    ) -> str:
        """See ``sd35_provision.testfleet.spec.render_spec``."""
        return render_spec(self.hosts, self.state_dir, extra_defaults, groups, host_overrides, spec_dir)

    def write_spec(self, path: Path | None = None, **kwargs: Any) -> Path:
        """Write a spec for this fleet (default ``<state-dir>/fleet.yaml``); returns its path."""
        path = path or self.spec_path
        path.write_text(self.render_spec(spec_dir=path.parent, **kwargs))
        return path

    def down(self) -> None:
        down(self.state_dir)
        self.state = FleetState()


def up(
    count: int,
    state_dir: Path | None = None,
    binds: list[str] | tuple[str, ...] = (),
    first_address: str = DEFAULT_FIRST_ADDRESS,
    wait_s: float = BOOT_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
) -> Fleet:
    """Boot ``count`` fresh hosts and return once every sshd answers with its known host key.

    A fleet already running from ``state_dir`` is taken down first. When
    booting fails, whatever was started is stopped again.
    """
    state_dir = check_state_dir(state_dir or default_state_dir())
    planned = plan_hosts(count, first_address)
    checked_binds = parse_binds(binds)
    down(state_dir)
    _check_free([address for _, address in planned])
    rootfs = ensure_rootfs(progress=progress)

    state_dir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(state_dir, FleetState(binds=checked_binds))
    client_key = keys.ensure_key(fleet.key_path, "sd35-provision-testfleet")
    for name, address in planned:
        fleet.hosts.append(
            FleetHost(
                name=name,
                address=address,
                root=fleet.hosts_dir / name / "root",
                machine=machine_name(state_dir, name),
                rootfs=rootfs,
            )
        )
    try:
        fleet.save()  # before the first mount, so `down` finds everything `up` made
        for host in fleet.hosts:
            containers.create_disk(host)
        known_hosts = [
            keys.known_hosts_line(host.address, containers.configure_disk(host, client_key)) for host in fleet.hosts
        ]
        fleet.known_hosts_path.write_text("\n".join(known_hosts) + "\n")
        for host in fleet.hosts:
            fleet.log_path(host.name).unlink(missing_ok=True)
            containers.boot(host, checked_binds, fleet.log_path(host.name))
            fleet.save()  # after every boot, so `down` finds whatever was started
        fleet.write_spec()
        for host in fleet.hosts:
            _wait_until_ready(fleet, host, wait_s)
    except BaseException:
        down(state_dir)
        raise
    return fleet


def down(state_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> None:
    """Stop every host of ``state_dir`` and delete their disks; idempotent.

    Leaves no container process, no mount under the state dir and no nspawn
    runtime file behind. The client key pair and the logs are kept.
    ``progress`` is told what is being done, per host, as it goes (it takes minutes on a busy machine).
    """
    say = progress or (lambda line: None)
    fleet = Fleet.load(state_dir)
    state_dir = fleet.state_dir
    containers.stop(fleet.hosts, progress=progress)
    # Containers whose record was lost (an interrupted `up`, a deleted state.json).
    for pid, root in containers.nspawn_processes_under(fleet.hosts_dir):
        say(f"{root.parent.name}: powering off (nspawn pid {pid}, not in the fleet's record)")
        killed = containers.stop_process(pid, root.parent.name)
        say(f"{root.parent.name}: {'killed' if killed else 'off'}")
        containers.remove_runtime_files(root)
    started = time.monotonic()
    say(f"unmounting the hosts' file systems under {state_dir}")
    unmount_all(state_dir)
    left = mounts_under(state_dir)
    if left:
        raise TestFleetError(f"mounts left under {state_dir}: {', '.join(left)}; unmount them and run down again")
    if fleet.hosts_dir.exists():
        say(f"deleting the hosts' disks in {fleet.hosts_dir}")
        shutil.rmtree(fleet.hosts_dir)
    say(f"unmounted and deleted ({time.monotonic() - started:.1f}s)")
    for stale in (fleet.state_path, fleet.known_hosts_path, fleet.spec_path):
        stale.unlink(missing_ok=True)


def status(state_dir: Path | None = None) -> list[HostStatus]:
    """One row per recorded host: address, pid, running or not, SSH reachable or not."""
    return Fleet.load(state_dir).status()


def stop_host(fleet: Fleet, name: str, timeout: float = 20) -> None:
    """Same as ``fleet.stop_host(name)``."""
    fleet.stop_host(name, timeout)


def start_host(fleet: Fleet, name: str, wait_s: float = BOOT_TIMEOUT_S) -> None:
    """Same as ``fleet.start_host(name)``."""
    fleet.start_host(name, wait_s)


def _check_free(addresses: list[str]) -> None:
    busy = [address for address in addresses if port_in_use(address)]
    if busy:
        raise TestFleetError(
            f"{', '.join(f'{a}:22' for a in busy)} already in use on this machine (another test fleet? "
            "`sd35-provision testfleet status --state-dir DIR` shows it; or an sshd on 0.0.0.0:22); "
            "pick another --first-address or stop that listener"
        )


def _connect(fleet: Fleet, host: FleetHost, timeout: float) -> paramiko.SSHClient:
    """Root on ``host`` with the fleet's key; a host key other than the recorded one is refused."""
    return sshlogin.connect(
        host.address, user="root", key=fleet.key_path, known_hosts=fleet.known_hosts_path, timeout=timeout
    )


def _ssh_ok(fleet: Fleet, host: FleetHost) -> bool:
    try:
        _connect(fleet, host, timeout=3).close()
    except (OSError, paramiko.SSHException):
        return False
    return True


def _wait_until_ready(fleet: Fleet, host: FleetHost, wait_s: float) -> None:
    """Wait for the host's sshd (with its known host key), then for its boot to finish."""
    log = fleet.log_path(host.name)
    deadline = time.monotonic() + wait_s
    last_error: Exception | None = None
    while True:
        if not containers.is_running(host):
            raise TestFleetError(f"{host.name}: the container exited while booting; see {log}")
        try:
            client = _connect(fleet, host, timeout=5)
            break
        except paramiko.BadHostKeyException as error:
            raise TestFleetError(
                f"{host.name}: {host.address}:22 answered with a host key other than the recorded one "
                "(another sshd on that address?); run `sd35-provision testfleet down` and check `ss -ltnp`"
            ) from error
        except (OSError, paramiko.SSHException) as error:
            last_error = error
        if time.monotonic() >= deadline:
            raise TestFleetError(
                f"{host.name}: sshd on {host.address}:22 not ready after {wait_s:.0f}s ({last_error}); see {log}"
            )
        time.sleep(0.2)
    try:
        remaining = max(1, int(deadline - time.monotonic()))
        _, stdout, _ = client.exec_command(
            f"timeout {remaining} systemctl is-system-running --wait", timeout=remaining + 5
        )
        state = stdout.read().decode().strip()
        if state not in ("running", "degraded"):
            raise TestFleetError(f"{host.name}: boot did not finish (systemd says {state or 'nothing'!r}); see {log}")
    finally:
        client.close()
