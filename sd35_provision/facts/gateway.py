"""The gateway host's HAProxy as ``status`` reads it: its systemd state and its backend servers.

HAProxy's runtime API (``show stat`` over the admin socket, layout.HAPROXY_ADMIN_SOCKET)
says which servers are up; ``drain.py`` sends its commands through the same
``runtime_shell``. One command per host: ``systemctl show`` and ``show stat``.
"""

from __future__ import annotations

import csv
import io
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from pyinfra.api import FactBase

from sd35_provision import layout

SHOW_STAT = "show stat -1 4 -1"  # every proxy, servers only (HAProxy still sends the CSV header)


@dataclass(frozen=True)
class ServerStat:
    """One server's line of ``show stat``."""

    backend: str
    server: str
    sessions: int  # scur: requests being answered now
    queued: int  # qcur: requests waiting for this server
    status: str  # UP, DOWN, DRAIN, MAINT, "UP 1/2"...

    @property
    def host(self) -> str:
        return layout.gateway_server_host(self.server)

    @property
    def busy(self) -> int:
        return self.sessions + self.queued


def parse_show_stat(text: str) -> list[ServerStat]:
    """The server lines of ``show stat`` (CSV, header ``# pxname,svname,...``); frontends and backends skipped."""
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError(f"not the output of show stat: {text.strip()[:200]!r}")
    rows = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    stats = []
    for row in rows:
        if row.get("svname") in ("FRONTEND", "BACKEND", None):
            continue
        stats.append(
            ServerStat(
                backend=row["pxname"],
                server=row["svname"],
                sessions=int(row.get("scur") or 0),
                queued=int(row.get("qcur") or 0),
                status=row.get("status", ""),
            )
        )
    return stats


def runtime_shell(commands: Sequence[str], sudo: bool = False) -> str:
    """A shell line that sends ``commands`` to the admin socket and prints the answers."""
    text = ";".join(commands)  # the runtime API takes several commands on one line, separated by ';'
    socat = f"socat -t 10 stdio UNIX-CONNECT:{layout.HAPROXY_ADMIN_SOCKET}"
    return f"printf '%s\\n' {shlex.quote(text)} | {'sudo -n ' if sudo else ''}{socat}"


@dataclass(frozen=True)
class HaproxyState:
    """haproxy.service and the gateway backend's servers, as the host answers."""

    active: str | None  # systemd's ActiveState; None: no such unit (HAProxy not installed yet)
    servers: int | None  # the backend's servers (one per instance behind it); None: the runtime API did not answer
    servers_up: int | None  # of those, the ones taking requests (UP, also "UP 1/2" while a check is going down)
    not_up: tuple[str, ...] = ()  # "SERVER STATUS" of the others: DOWN, DRAIN, MAINT...


class GatewayState(FactBase[HaproxyState]):
    """``haproxy.service``'s state and the gateway backend's servers (``show stat``); changes nothing.

    Runs as the fact's user (``ssh.sudo`` makes it root): the admin socket is the haproxy group's.
    """

    @staticmethod
    def default() -> HaproxyState:
        return HaproxyState(None, None, None)

    def command(self) -> str:
        unit = shlex.quote(layout.HAPROXY_UNIT)
        # show stat answers nothing when HAProxy is stopped: servers stay unknown, the command succeeds.
        return (
            f"systemctl show --property=LoadState --property=ActiveState {unit} 2>/dev/null; "
            f"{runtime_shell([SHOW_STAT])} 2>/dev/null || true"
        )

    def process(self, output: list[str]) -> HaproxyState:
        return parse_gateway_state(output)


def parse_gateway_state(output: list[str]) -> HaproxyState:
    shown = dict(line.split("=", 1) for line in output if "=" in line and not line.startswith("#") and "," not in line)
    active = shown.get("ActiveState") if shown.get("LoadState") not in (None, "not-found") else None
    stat = [line for line in output if line.startswith("# pxname") or (line and "," in line)]
    try:
        servers = [each for each in parse_show_stat("\n".join(stat)) if each.backend == layout.GATEWAY_BACKEND]
    except ValueError:
        return HaproxyState(active, None, None)
    down = tuple(f"{each.server} {each.status}" for each in servers if not each.status.startswith("UP"))
    return HaproxyState(active, len(servers), len(servers) - len(down), down)
