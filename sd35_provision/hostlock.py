"""One run at a time per host: a flock on /run/lock/sd35-provision.lock, held over the run's own SSH connection.

``take_run_lock`` starts ``hostside/run-lock.sh`` on its own channel of the
host's pyinfra connection. The script takes the flock, writes who holds it
(control host, user, pid, start time, command) into the file, and then waits
for its stdin to end, which happens when the connection closes: at the end of
the run, or when the control process is killed or the network drops. So a
lock is never left behind by a run that died. Another run is refused naming
the holder, or waits up to ``--wait-lock`` seconds.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Any

from sd35_provision import layout
from sd35_provision.errors import HostError
from sd35_provision.hostscripts import render_script

STEP = "lock"
# Beyond the wait: how long the lock's answer may take on a slow connection.
ANSWER_GRACE_S = 60


class HostLocked(HostError):
    """Another run holds this host's lock (``holder``: who, as its lock file says; None when unknown)."""

    def __init__(self, host: str, step: str, message: str, holder: str | None = None):
        super().__init__(host, step, message)
        self.holder = holder


def holder_text(mode: str, now: float | None = None) -> str:
    """Who this run is, as another run is told: ``alice@ctl pid 4242 since 12:01:03 UTC (apply)``."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid: say the uid
        user = str(os.getuid())
    since = time.strftime("%H:%M:%S UTC", time.gmtime(now))
    return f"{user}@{socket.gethostname()} pid {os.getpid()} since {since} ({mode})"


def lock_command(holder: str, wait_s: int, sudo: bool = False, lock_file: str = layout.RUN_LOCK) -> str:
    """The command that takes and holds the lock (through ``sudo -n`` when the host's operations use sudo)."""
    script = render_script("run-lock.sh", lock_file=lock_file, holder=holder, wait_s=str(wait_s))
    command = f"sh -c {shlex.quote(script)}"
    return f"sudo -n {command}" if sudo else command


@dataclass
class LockAnswer:
    """What the lock script said: ``locked``, or refused with the holder; ``waited_for``: a holder it waited on."""

    locked: bool
    holder: str | None = None
    waited_for: str | None = None


def read_answer(lines: list[str]) -> LockAnswer:
    """The script's output lines (pure, for tests): ``busy H``, ``refused H``, ``locked``."""
    answer = LockAnswer(locked=False)
    for line in lines:
        kind, _, rest = line.strip().partition(" ")
        if kind == "busy":
            answer.waited_for = rest or None
        elif kind == "refused":
            answer.holder = rest or "an unknown run"
        elif kind == "locked":
            answer.locked = True
    return answer


def refusal(host: str, answer: LockAnswer, wait_s: int) -> str:
    holder = answer.holder or answer.waited_for or "an unknown run"
    if wait_s:
        return f"{host}: still locked by {holder} after waiting {wait_s} s"
    return f"{host}: locked by {holder}; --wait-lock S to wait"


def take_run_lock(host: Any, mode: str, wait_s: int, sudo: bool, say=None, holder: str | None = None) -> Any:
    """Take the run lock of a connected pyinfra ``host``; returns the channel that holds it (close to release).

    ``holder``: what the lock file says of this run (default ``holder_text(mode)``; a run taking its
    lock back after its own reboot says what it said before). Raises ``HostLocked`` naming the holder
    when another run keeps it (beyond ``wait_s`` seconds).
    """
    transport = host.connector.client.get_transport()
    channel = transport.open_session()
    channel.settimeout(wait_s + ANSWER_GRACE_S)
    channel.exec_command(lock_command(holder or holder_text(mode), wait_s, sudo))
    output = channel.makefile("r")
    lines: list[str] = []
    try:
        for line in output:
            lines.append(line)
            answer = read_answer(lines)
            if answer.locked:
                return channel
            if answer.waited_for and say and len(lines) == 1 and wait_s:
                say(f"{host.name}: waiting up to {wait_s} s for the lock held by {answer.waited_for}")
    except TimeoutError:  # paramiko channel timeouts are socket.timeout, an alias
        pass
    answer = read_answer(lines)
    if answer.holder is None and answer.waited_for is None:
        detail = _stderr_of(channel)
        channel.close()
        raise HostLocked(
            host.name,
            STEP,
            f"could not take the run lock {layout.RUN_LOCK}" + (f": {detail.splitlines()[-1]}" if detail else ""),
        )
    channel.close()
    raise HostLocked(
        host.name,
        STEP,
        refusal(host.name, answer, wait_s).removeprefix(f"{host.name}: "),
        holder=answer.holder or answer.waited_for,
    )


def _stderr_of(channel: Any) -> str:
    """What the lock command said on stderr (e.g. no flock on the host, sudo refused), if it ended."""
    channel.settimeout(5)
    try:
        return channel.makefile_stderr("r").read().strip()
    except OSError:  # TimeoutError included
        return ""
