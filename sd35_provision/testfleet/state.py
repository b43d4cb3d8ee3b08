"""What a running test fleet looks like on disk: ``<state-dir>/state.json``.

The file lets a later, separate CLI call (``down``, ``status``) find the hosts
that an earlier ``up`` booted: their addresses, disks and nspawn process ids.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sd35_provision.testfleet.errors import TestFleetError

STATE_VERSION = 1


@dataclass
class FleetHost:
    """One test host: a systemd-nspawn container with its own disk and address."""

    name: str  # also its hostname
    address: str  # sshd listens on address:22
    root: Path  # where its disk is mounted: an overlay over ``rootfs``
    machine: str  # the nspawn machine name, unique on this machine
    rootfs: Path | None = None  # the cached base tree (None: ``root`` is a plain directory)
    pid: int | None = None  # the systemd-nspawn process while it runs


@dataclass
class FleetState:
    hosts: list[FleetHost] = field(default_factory=list)
    binds: list[str] = field(default_factory=list)  # SRC:DST, bound read-only into every host


def dump_state(state: FleetState) -> str:
    return (
        json.dumps(
            {
                "version": STATE_VERSION,
                "hosts": [
                    {
                        "name": h.name,
                        "address": h.address,
                        "root": str(h.root),
                        "machine": h.machine,
                        "rootfs": None if h.rootfs is None else str(h.rootfs),
                        "pid": h.pid,
                    }
                    for h in state.hosts
                ],
                "binds": list(state.binds),
            },
            indent=2,
        )
        + "\n"
    )


def parse_state(text: str, where: Path) -> FleetState:
    """Parse ``state.json``; a damaged file is an error that says how to recover."""
    try:
        data = json.loads(text)
        # A file without "version" comes from the first release, whose machine name was the host name.
        if data.get("version", STATE_VERSION) != STATE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}")
        hosts = [
            FleetHost(
                name=str(h["name"]),
                address=str(h["address"]),
                root=Path(h["root"]),
                machine=str(h.get("machine", h["name"])),
                rootfs=None if h.get("rootfs") is None else Path(h["rootfs"]),
                pid=None if h["pid"] is None else int(h["pid"]),
            )
            for h in data["hosts"]
        ]
        binds = [str(b) for b in data.get("binds", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise TestFleetError(
            f"{where}: unreadable test fleet state ({error}); stop leftover systemd-nspawn "
            f"processes by hand, then delete {where}"
        ) from error
    return FleetState(hosts=hosts, binds=binds)


def read_state(path: Path) -> FleetState:
    """The recorded fleet, or an empty one when nothing was booted."""
    if not path.exists():
        return FleetState()
    return parse_state(path.read_text(), path)


def write_state(path: Path, state: FleetState) -> None:
    """Replace the state file atomically: a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dump_state(state))
    tmp.replace(path)
