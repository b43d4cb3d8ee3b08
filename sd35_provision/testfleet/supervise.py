"""Keep a test host's container up across reboots: ``python supervise.py systemd-nspawn ARGS...``.

A ``systemd-nspawn --boot`` container whose systemd reboots makes nspawn exit
with status 133; systemd's own ``systemd-nspawn@.service`` starts it again
(``RestartForceExitStatus=133``). This machine has no systemd, so this small
loop does the same: it runs the command, runs it again after a 133, and
returns its status otherwise. SIGTERM, SIGINT and SIGHUP go to the running
nspawn (a clean poweroff of the container) and end the loop.

It imports nothing from the project: it runs as a file, detached, and must
not depend on which checkout or venv started it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container rebooted


def supervise(command: list[str]) -> int:
    """Run ``command`` until it exits with anything but ``REBOOT_EXIT``, or a stop signal came; its status."""
    child: subprocess.Popen | None = None
    stopping: list[int] = []

    def forward(signum: int, frame: object) -> None:
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        if stopping and child.poll() is None:
            child.send_signal(stopping[0])  # the signal came while the child was being started
        status = child.wait()
        if status != REBOOT_EXIT or stopping:
            return status
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} the container rebooted: starting it again", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: supervise.py COMMAND [ARGS...]")
    sys.exit(supervise(sys.argv[1:]))
