"""Small wrappers over this machine's processes, mounts, sockets and tools."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

from sd35_provision.testfleet.errors import TestFleetError

PROC = Path("/proc")


def run_tool(
    command: list[str], what: str, log: Path | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    """Run a tool to completion; its output goes to ``log`` when given. Returns stdout."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, cwd=cwd)
    except FileNotFoundError as error:
        raise TestFleetError(f"{what}: {command[0]} is not installed ({error})") from error
    if log is not None:
        log.write_text(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        where = f"see {log}" if log is not None else (result.stderr.strip()[-2000:] or "no output")
        raise TestFleetError(f"{what} failed (exit {result.returncode}): {where}")
    return result.stdout


# -- processes ------------------------------------------------------------------


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, Z, ...), or None when there is no such process."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]  # the command name may hold spaces and ')'


def is_alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def command_line(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def parent_pids() -> dict[int, int]:
    """pid -> parent pid for every process on the machine."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("PPid:"):
                    parents[int(entry.name)] = int(line.split()[1])
                    break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return parents


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (a container's whole process tree below its nspawn)."""
    children: dict[int, list[int]] = {}
    for child, parent in parent_pids().items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def reap(pid: int) -> None:
    """Collect the exit status of ``pid`` when it is our own child, so it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- mounts ---------------------------------------------------------------------


def _unescape_mount_path(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts_under(path: Path, mounts_text: str | None = None) -> list[str]:
    """Mount points at or below ``path`` in this machine's mount table, deepest last."""
    text = mounts_text if mounts_text is not None else (PROC / "mounts").read_text()
    prefix = str(path).rstrip("/")
    points = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            point = _unescape_mount_path(fields[1])
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return points


def overlay_lower_dirs(mounts_text: str | None = None) -> set[str]:
    """Every directory some overlay mount on this machine reads from."""
    text = mounts_text if mounts_text is not None else (PROC / "mounts").read_text()
    lower: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "overlay":
            for option in fields[3].split(","):
                if option.startswith("lowerdir="):
                    lower.update(_unescape_mount_path(p) for p in option.split("=", 1)[1].split(":"))
    return lower


def unmount_all(path: Path) -> None:
    for point in reversed(mounts_under(path)):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


# -- addresses ------------------------------------------------------------------


def port_in_use(address: str, port: int = 22) -> bool:
    """Whether something on this machine already listens where a test host's sshd would.

    A wildcard listener (an sshd on 0.0.0.0:22) counts too: the kernel refuses
    the specific address while it listens.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd sets it
    try:
        probe.bind((address, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return True
        raise TestFleetError(f"cannot bind {address}:{port} to check it is free: {error}") from error
    finally:
        probe.close()
    return False
