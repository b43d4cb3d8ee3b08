"""Whether another run holds a host's run lock now, and who (sd35_provision/hostlock.py), read without taking it.

``plan``, ``drift`` and ``status`` take no lock, so they would not know a run is
changing the host under them. Trying the flock (``flock -n``) would hold it for
an instant, long enough to make an ``apply`` starting just then refuse the host.
The kernel's /proc/locks does not do either: in a PID namespace (a container) it
leaves out a flock whose taker has exited, as ``flock(1)`` has once the lock
script holds its descriptor. So this asks which process has the lock file open
(/proc/PID/fd): only a run's lock script keeps it open, for as long as it holds
the lock (or waits for it, while another holds it). Then the holder it wrote
there (``alice@ctl pid 4242 since 12:01:03 UTC (apply)``) says who.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from sd35_provision import layout


class RunLockHolder(FactBase["str | None"]):
    """Who holds the run lock now, as its file says ("an unknown run" when it says nothing); None: no run does."""

    def command(self, lock_file: str = layout.RUN_LOCK) -> str:
        lock = shlex.quote(lock_file)
        # The caller's own processes, or every one under sudo: as the lock script ran.
        return (
            f"if [ -e {lock} ] && find /proc/[0-9]*/fd -maxdepth 1 -lname {lock} -print -quit 2>/dev/null "
            f'| grep -q .; then echo "held $(head -n 1 {lock})"; fi; true'
        )

    def process(self, output: list[str]) -> str | None:
        for line in output:
            kind, _, holder = line.strip().partition(" ")
            if kind == "held":
                return holder.strip() or "an unknown run"
        return None

    @staticmethod
    def default() -> str | None:
        return None


def locked_note(holder: str) -> str:
    """What plan, drift and status say of a host another run holds (they do not wait for it)."""
    return f"locked by another run: {holder}"
