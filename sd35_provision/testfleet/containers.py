"""One test host's disk and its systemd-nspawn process.

This machine has no systemd of its own (no machinectl), so a container is
managed through its nspawn process: started detached in its own session,
stopped with SIGTERM (nspawn turns it into a clean poweroff of the container)
and, if that hangs, SIGKILL of everything in the container's PID namespace.
nspawn runs under ``supervise.py``, which starts it again when the container
reboots (nspawn exits with 133 then), so a host can be rebooted for real and
comes back on the same disk and address; the recorded pid is the supervisor's.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sd35_provision.testfleet.errors import TestFleetError
from sd35_provision.testfleet.keys import generate_key
from sd35_provision.testfleet.state import FleetHost
from sd35_provision.testfleet.system import (
    command_line,
    descendants,
    is_alive,
    parent_pids,
    process_state,
    reap,
    run_tool,
)

NSPAWN = "systemd-nspawn"
SUPERVISOR = Path(__file__).with_name("supervise.py")
NSPAWN_RUNTIME = Path("/run/systemd/nspawn")
KILL_WAIT_S = 30.0
SSHD_DROP_IN = "etc/ssh/sshd_config.d/00-testfleet.conf"
# What ``configure_disk`` wrote: a reset disk keeps them, so the host keeps its name, address and keys.
IDENTITY_FILES = (
    "etc/hostname",
    "etc/hosts",
    "etc/machine-id",
    SSHD_DROP_IN,
    "etc/ssh/ssh_host_ed25519_key",
    "etc/ssh/ssh_host_ed25519_key.pub",
    "root/.ssh/authorized_keys",
)


def create_disk(host: FleetHost) -> None:
    """A fresh, empty writable layer over the cached rootfs, mounted at ``host.root``.

    An overlay costs nothing to create (a copy of the tree takes seconds per
    host), and the cached tree below it is never written to.
    """
    layer = host.root.parent
    if layer.exists():
        raise TestFleetError(f"{layer} already exists; run `sd35-provision testfleet down` first")
    for part in ("upper", "work", "root"):
        (layer / part).mkdir(parents=True)
    mount_disk(host)


def mount_disk(host: FleetHost) -> None:
    """Mount the host's disk unless it is mounted already (it is not after this machine rebooted)."""
    if host.rootfs is None or os.path.ismount(host.root):
        return
    if not host.rootfs.is_dir():
        raise TestFleetError(
            f"{host.name}: its base rootfs {host.rootfs} is gone (rebuilt for a new recipe?); "
            "run `sd35-provision testfleet up N` for fresh hosts"
        )
    layer = host.root.parent
    run_tool(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={host.rootfs},upperdir={layer / 'upper'},workdir={layer / 'work'}",
            str(host.root),
        ],
        what=f"{host.name}: mounting its disk",
    )


def configure_disk(host: FleetHost, authorized_key: str) -> str:
    """Give a fresh disk its identity; returns the host's public SSH host key line."""
    root = host.root
    (root / "etc/hostname").write_text(f"{host.name}\n")  # wins over nspawn's --hostname
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    # Hosts share this machine's network namespace: each sshd must listen on its own address only.
    (root / SSHD_DROP_IN).write_text(
        "# sd35-provision test fleet\n"
        f"ListenAddress {host.address}\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PasswordAuthentication no\n"
    )
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(authorized_key + "\n")
    authorized.chmod(0o600)
    return generate_key(root / "etc/ssh/ssh_host_ed25519_key", f"root@{host.name}")


def reset_disk(host: FleetHost) -> None:
    """Put a stopped host's disk back to how ``up`` left it: an empty writable layer but for its identity.

    Seconds instead of a new fleet: tests that need a never-provisioned host get one this way.
    """
    if is_running(host):
        raise TestFleetError(f"{host.name}: stop the host before resetting its disk")
    layer = host.root.parent
    if os.path.ismount(host.root):
        run_tool(["umount", str(host.root)], what=f"{host.name}: unmounting its disk")
    fresh = layer / "upper.reset"
    run_tool(["rm", "-rf", str(fresh)], what=f"{host.name}: clearing {fresh}")
    fresh.mkdir()
    # --parents with -a keeps the owners and modes of the directories on the way (/root is 0700).
    run_tool(
        ["cp", "-a", "--parents", *IDENTITY_FILES, str(fresh)],
        what=f"{host.name}: keeping its identity",
        cwd=layer / "upper",
    )
    for old in ("upper", "work"):
        run_tool(["rm", "-rf", str(layer / old)], what=f"{host.name}: deleting its old {old} layer")
    fresh.rename(layer / "upper")
    (layer / "work").mkdir()
    mount_disk(host)


def nspawn_command(host: FleetHost, binds: list[str]) -> list[str]:
    return [
        NSPAWN,
        "--quiet",
        "--boot",
        f"--directory={host.root}",
        f"--machine={host.machine}",
        f"--hostname={host.name}",
        "--register=no",
        "--keep-unit",
        "--console=passive",
        "--link-journal=no",
        *(f"--bind-ro={bind}" for bind in binds),
    ]


def container_command(host: FleetHost, binds: list[str]) -> list[str]:
    """nspawn under the supervisor that starts it again when the container reboots."""
    return [sys.executable, str(SUPERVISOR), *nspawn_command(host, binds)]


def boot(host: FleetHost, binds: list[str], log: Path) -> None:
    """Start the container detached (own session, own log) so it outlives this process."""
    mount_disk(host)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} boot {host.name} on {host.address}\n".encode())
        out.flush()
        process = subprocess.Popen(
            container_command(host, binds),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    host.pid = process.pid


def is_running(host: FleetHost) -> bool:
    """Whether ``host.pid`` is still this host's container (not a dead pid reused by another program)."""
    return host.pid is not None and _is_nspawn_of(host.pid, host.root)


def nspawn_directory(argv: list[str]) -> Path | None:
    """The container disk of an nspawn command line (``--directory=D``, ``-D D``), supervised or not, else None."""
    if len(argv) > 2 and Path(argv[1]).name == SUPERVISOR.name:
        argv = argv[2:]
    if not argv or Path(argv[0]).name != NSPAWN:
        return None
    for index, arg in enumerate(argv):
        if arg.startswith("--directory="):
            return Path(arg.split("=", 1)[1])
        if arg in ("-D", "--directory") and index + 1 < len(argv):
            return Path(argv[index + 1])
    return None


def _is_nspawn_of(pid: int, root: Path) -> bool:
    return is_alive(pid) and nspawn_directory(command_line(pid)) == root


def nspawn_processes_under(hosts_dir: Path) -> list[tuple[int, Path]]:
    """(pid, disk) of every running container whose disk lies in ``hosts_dir``, recorded or not.

    A supervised nspawn is found as its supervisor only: stopping that stops both.
    """
    found: dict[int, Path] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            root = nspawn_directory(command_line(int(entry.name)))
            if root is not None and hosts_dir in root.parents and is_alive(int(entry.name)):
                found[int(entry.name)] = root
    parents = parent_pids()
    return [(pid, root) for pid, root in found.items() if parents.get(pid) not in found]


def stop(hosts: list[FleetHost], timeout: float = 20, progress: Callable[[str], None] | None = None) -> None:
    """Power the containers off together and wait until none of their processes is left.

    ``progress`` is told of each host as it is asked to power off and once it is gone (with the time it took).
    """
    say = progress or (lambda line: None)
    running = [host for host in hosts if is_running(host)]
    started = time.monotonic()
    stopping = []
    for host in running:
        if host.pid is not None:
            say(f"{host.name}: powering off (nspawn pid {host.pid})")
            stopping.append((host.name, host.pid, _request_stop(host.pid)))
    deadline = started + timeout
    for name, pid, namespace in stopping:
        killed = _finish_stop(name, pid, namespace, deadline)
        how = f"did not power off within {timeout:.0f}s: killed" if killed else "off"
        say(f"{name}: {how} ({time.monotonic() - started:.1f}s)")
    for host in hosts:
        if host.pid is not None:
            reap(host.pid)
        host.pid = None
        remove_runtime_files(host.root, host.machine)


def stop_process(pid: int, name: str, timeout: float = 20) -> bool:
    """Stop one nspawn process found running (see ``nspawn_processes_under``); whether it had to be killed."""
    return _finish_stop(name, pid, _request_stop(pid), time.monotonic() + timeout)


def _request_stop(pid: int) -> str | None:
    namespace = _container_namespace(pid)
    os.kill(pid, signal.SIGTERM)  # nspawn asks the container's systemd to power off
    return namespace


def _finish_stop(name: str, pid: int, namespace: str | None, deadline: float) -> bool:
    """Wait for the container to power off; kill it at ``deadline``. Whether it had to be killed."""
    if _wait_exit(pid, deadline - time.monotonic()):
        return False
    # A hung shutdown: kill nspawn (and its supervisor) and everything in the container's PID namespace.
    members = [
        p
        for p in descendants(pid)
        if (namespace and _namespace(p) == namespace) or nspawn_directory(command_line(p)) is not None
    ]
    for target in [pid, *members]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # A killed process with a large memory or pending disk writes can take a while to go on a busy machine.
    kill_deadline = time.monotonic() + KILL_WAIT_S
    gone = _wait_exit(pid, KILL_WAIT_S)
    while gone and any(is_alive(p) for p in members) and time.monotonic() < kill_deadline:
        time.sleep(0.1)
    if not gone or any(is_alive(p) for p in members):
        raise TestFleetError(f"{name}: container (nspawn pid {pid}) survived SIGKILL; check `ps -ef` and kill it")
    return True


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        reap(pid)  # when nspawn is our own child, it would otherwise stay a zombie
        if process_state(pid) is None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _container_namespace(nspawn_pid: int) -> str | None:
    ours = _namespace(os.getpid())
    for child in descendants(nspawn_pid):
        namespace = _namespace(child)
        if namespace and namespace != ours:
            return namespace
    return None


def remove_runtime_files(root: Path, machine: str | None = None) -> None:
    """What nspawn leaves in /run when it does not exit cleanly: its image lock, its propagation dir.

    Only call this once the container on ``root`` has stopped.
    """
    if machine is not None:
        propagate = NSPAWN_RUNTIME / "propagate" / machine
        if propagate.is_dir() and not any(propagate.iterdir()):
            propagate.rmdir()
    if root.exists():
        stat = root.stat()
        # The lock is named after the disk's inode (systemd's image_path_lock()).
        (NSPAWN_RUNTIME / "locks" / f"inode-{stat.st_dev}:{stat.st_ino}").unlink(missing_ok=True)
