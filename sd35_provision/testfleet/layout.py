"""What ``up`` will create, decided before anything is touched: names, addresses, binds, file names."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from sd35_provision.testfleet.errors import TestFleetError

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def plan_hosts(count: int, first_address: str) -> list[tuple[str, str]]:
    """(name, address) for each host: node1 on ``first_address``, node2 on the next, ..."""
    if count < 1:
        raise TestFleetError(f"a test fleet needs at least one host (asked for {count})")
    try:
        first = ipaddress.IPv4Address(first_address)
    except ValueError as error:
        raise TestFleetError(f"--first-address {first_address!r} is not an IPv4 address") from error
    if first not in LOOPBACK or int(first) + count - 1 > int(LOOPBACK.broadcast_address) - 1:
        raise TestFleetError(
            f"test hosts must stay inside 127.0.0.0/8: {count} host(s) from {first_address} do not; "
            "pick a --first-address such as 127.0.2.1"
        )
    addresses = [first + offset for offset in range(count)]
    if any(address.packed[-1] == 0 or address.packed[-1] == 255 for address in addresses):
        # 127.x.y.0 and .255 work on Linux, but they read like network/broadcast addresses.
        raise TestFleetError(
            f"{count} host(s) from {first_address} would use an address ending in .0 or .255; "
            "start lower, e.g. 127.0.2.1"
        )
    return [(f"node{index + 1}", str(address)) for index, address in enumerate(addresses)]


def parse_binds(binds: list[str] | tuple[str, ...]) -> list[str]:
    """Check ``SRC:DST`` binds: SRC an existing directory or file, DST absolute; SRC made absolute."""
    parsed = []
    for bind in binds:
        source, sep, target = bind.partition(":")
        if not sep or not source or not target or ":" in target:
            raise TestFleetError(f"--bind-ro {bind!r}: expected SRC:DST (no other ':'), e.g. /srv/mirror:/mnt/mirror")
        if not Path(source).exists():
            raise TestFleetError(f"--bind-ro {bind!r}: {source} does not exist on this machine")
        if not target.startswith("/"):
            raise TestFleetError(f"--bind-ro {bind!r}: the path inside the hosts must be absolute")
        parsed.append(f"{Path(source).resolve()}:{target}")
    return parsed


def check_state_dir(state_dir: Path) -> Path:
    """The state dir as an absolute path; refused when overlay mount options could not name it."""
    absolute = state_dir.absolute()
    if any(char in str(absolute) for char in ",:\n"):
        raise TestFleetError(
            f"--state-dir {state_dir}: pick a path without ',' or ':' (they cannot appear in mount options)"
        )
    return absolute


def machine_name(state_dir: Path, host_name: str) -> str:
    """The nspawn machine name: unique per state dir, so two fleets never share nspawn's runtime files."""
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return f"{host_name}-{tag}"


def client_key_path(state_dir: Path) -> Path:
    """The fleet's client key (``.pub`` beside it), kept across runs."""
    return state_dir / "id_ed25519"


def known_hosts_path(state_dir: Path) -> Path:
    """The host keys of the fleet, written before any host boots."""
    return state_dir / "known_hosts"
