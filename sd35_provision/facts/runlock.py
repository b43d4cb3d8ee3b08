"""Whether another run holds a host's run lock now, and who (sd35_provision/hostlock.py), read without taking it.

``plan``, ``drift`` and ``status`` take no lock, so they would not know a run is
changing the host under them. Trying the flock (``flock -n``) would hold it for
an instant, long enough to make an ``apply`` starting just then refuse the host;
so this reads the kernel's list of held locks (/proc/locks, one line per lock:
``1: FLOCK  ADVISORY  WRITE 4242 00:19:5678 0 EOF``, the file as
major:minor:inode in hex, hex, decimal) and, when the lock file is in it, the
holder the run wrote there (``alice@ctl pid 4242 since 12:01:03 UTC (apply)``).
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from sd35_provision import layout


class RunLockHolder(FactBase["str | None"]):
    """Who holds the run lock now, as its file says ("an unknown run" when it says nothing); None: no run does."""

    def command(self, lock_file: str = layout.RUN_LOCK) -> str:
        lock = shlex.quote(lock_file)
        # st_dev as the kernel prints it: major is bits 8-19, minor bits 0-7 and 20-31.
        return (
            f"if [ -e {lock} ]; then d=$(stat -c %d {lock}); "
            "id=$(printf '%02x:%02x:%s' $((d >> 8 & 0xfff)) $(( (d & 0xff) | ((d >> 12) & 0xfff00) )) "
            f'"$(stat -c %i {lock})"); '
            'if grep -q " FLOCK .* $id " /proc/locks 2>/dev/null; then '
            f'echo "held $(head -n 1 {lock})"; fi; fi; true'
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
