"""The one JSON document every ``--json`` prints (schemas/report.schema.json).

::

    {"version": 1, "command": "plan|apply|drift|smoke|facts|status",
     "ok": bool, "drift": bool|null, "aborted": str|null, "waves": [...]|null,
     "hosts": [{"name": ..., "status": ..., "error": str|null, ...}, ...]}

Every key is always there, in this order; hosts come in spec order. Each
host has ``name``, ``status`` and ``error``; the rest depends on the command
(a run's operations and changes, a host's facts, a status row). ``version``
changes only when a key is removed or changes meaning.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sd35_provision.facts.host import HostFacts
    from sd35_provision.report import HostOutcome, RunReport
    from sd35_provision.status import HostStatus

VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "report.schema.json"


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def envelope(
    command: str,
    hosts: list[dict[str, Any]],
    *,
    ok: bool,
    drift: bool | None = None,
    aborted: str | None = None,
    waves: list[dict] | None = None,
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "command": command,
        "ok": ok,
        "drift": drift,
        "aborted": aborted,
        "waves": waves,
        "hosts": hosts,
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2)


# -- plan, apply, drift, smoke ------------------------------------------------------


def run_document(report: RunReport, command: str | None = None) -> dict[str, Any]:
    """A run's report: every host's outcome, its operations and the changes among them."""
    command = command or report.mode
    drift = report.drifted if command in ("plan", "apply", "drift") else None
    return envelope(
        command,
        [_run_host(host) for host in report.hosts],
        ok=report.ok,
        drift=drift,
        aborted=report.aborted,
        waves=report.waves,
    )


def _run_host(host: HostOutcome) -> dict[str, Any]:
    data = asdict(host)
    entry = {"name": data.pop("name"), "status": host.status, "error": data.pop("error")}
    entry.update(data)
    entry["changes"] = [
        {"operation": op.name, "change": "changed" if host.executed else "would change", "diff": op.diff}
        for op in host.changes
    ]
    return entry


# -- facts ---------------------------------------------------------------------------


def facts_document(gathered: dict[str, HostFacts], report: RunReport) -> dict[str, Any]:
    """Each host's facts (``null`` where they could not be read, with the reason)."""
    hosts = []
    for outcome in report.hosts:
        facts = gathered.get(outcome.name)
        entry: dict[str, Any] = {"name": outcome.name, "status": _read_status(outcome), "error": None, "facts": None}
        if outcome.failed or outcome.aborted:
            entry["error"] = f"{outcome.step}: {outcome.error}"
        if facts is not None:
            entry["facts"] = facts_dict(facts)
        hosts.append(entry)
    return envelope("facts", hosts, ok=report.ok, aborted=report.aborted)


def facts_dict(facts: HostFacts) -> dict[str, Any]:
    data = facts.to_dict()
    # Without a working GPU there is nothing to be FP8-capable: null, as in status.
    data["fp8_capable"] = facts.fp8_capable if facts.gpus else None
    return data


def _read_status(outcome: HostOutcome) -> str:
    """A host's status for commands that only read (facts, status): ``ok`` or what went wrong."""
    return outcome.status if outcome.failed or outcome.aborted else "ok"


# -- status --------------------------------------------------------------------------


def status_document(rows: list[HostStatus]) -> dict[str, Any]:
    hosts = []
    for row in rows:
        data = row.to_dict()
        entry = {"name": data.pop("name"), "status": row.status, "error": data.pop("error")}
        entry.update(data)
        hosts.append(entry)
    drifts = [row.drift for row in rows if row.drift is not None]
    ok = all(row.status == "ok" and not row.smoke_stale for row in rows)
    return envelope("status", hosts, ok=ok, drift=any(drifts) if drifts else None)


def run_json(report: RunReport) -> str:
    """A run's report as the one JSON document of every ``--json``."""
    return dumps(run_document(report))


def status_json(rows: list[HostStatus]) -> str:
    return dumps(status_document(rows))
