"""Results of a run, and how they are shown: a table, diffs, or JSON."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sd35_provision.texttable import render_rows


@dataclass
class OperationOutcome:
    name: str
    changed: bool
    error: str | None = None
    diff: str | None = None  # unified diff of a managed file, when it would change


@dataclass
class HostOutcome:
    name: str
    operations: list[OperationOutcome] = field(default_factory=list)
    failed: bool = False
    unreachable: bool = False
    local_error: bool = False  # could not connect for a reason on this side (key, known_hosts, host key)
    aborted: bool = False  # the run was aborted (--fail-percent) before this host finished
    skipped: bool = False  # a staged rollout stopped before this host's wave: it was not touched
    wave: str | None = None  # "canary", "batch 2/3" in a staged rollout
    step: str | None = None
    error: str | None = None
    executed: bool = False
    notes: list[str] = field(default_factory=list)
    smoke: dict | None = None  # {ok, reason, latency_s, image} of the smoke test after apply
    # What the service will run on the host's GPU: policy.ServicePlan.to_json(), with its "line"
    service_plan: dict | None = None
    # Where the host's instances plan differently (MIG slices, GPUs of several models): each one's,
    # {"instance": index, "device": "GPU 0 MIG 1g.18gb #1", "plan": like service_plan}; else empty.
    instance_plans: list[dict] = field(default_factory=list)

    @property
    def changes(self) -> list[OperationOutcome]:
        return [op for op in self.operations if op.changed]

    @property
    def status(self) -> str:
        if self.unreachable:
            return "unreachable"
        if self.local_error:
            return "error"
        if self.failed:
            return "failed"
        if self.aborted:
            return "aborted"
        if self.skipped:
            return "not started"
        if self.changes:
            return "changed" if self.executed else "would change"
        return "unchanged"


@dataclass
class RunReport:
    mode: str  # plan | apply | drift
    hosts: list[HostOutcome]
    aborted: str | None = None  # why the run stopped early (--fail-percent, or a failed canary or batch)
    waves: list[dict] | None = None  # a staged rollout: [{label, hosts, result}] in order

    @property
    def ok(self) -> bool:
        return not self.aborted and not any(host.failed for host in self.hosts)

    @property
    def drifted(self) -> bool:
        return any(host.changes for host in self.hosts)


# A journal line's prefix (``Nov 30 15:02:11 node1 python[812]: ``), dropped before reading the message.
_JOURNAL_PREFIX = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ \S+?(\[\d+\])?: ")
# What a line that says why looks like, most telling first: the service's own status line (systemd's
# `Status: "..."`, set by the service with the cause), an exception, apt/git/pip errors, a mirror not reached.
_MIRROR = re.compile(
    r"^(?P<cause>.*\b(Could not resolve|Temporary failure resolving|Failed to fetch|Unable to connect).*)"
)
_CAUSES = (
    # Our host scripts' own verdict, written last after the tool's lines (hostside/venv-build.sh).
    re.compile(r"^(?P<cause>venv \S+ not built, .+)"),
    re.compile(r'^\s*Status: "(?P<cause>.*(fail|error|need|cannot|not ).*)"', re.I),
    re.compile(r"(?P<cause>model load failed: .+)"),
    re.compile(r"^(?P<cause>[\w.]*(Error|Exception): .+)"),
    _MIRROR,
    re.compile(r"^(?P<cause>(E|ERROR|error|fatal): .+)"),
)
# Lines a later stage adds to a host's error ("rollback: rolled back to X"): shown after the cause.
_ADDED_STAGES = ("rollback: ",)


def failure_cause(error: str | None, fallback: bool = True) -> str:
    """The line of ``error`` that says why, for a one-line table cell.

    A failed step's output ends with the least telling line (``systemctl status``'s
    last journal line, apt's ``E: Unable to locate package`` after the real cause,
    a traceback's frames); the cause is the service's status line, an exception
    line, or apt's mirror line beside its ``E:`` line. Without one: the last line
    (``fallback``) or nothing.
    """
    lines = [_JOURNAL_PREFIX.sub("", line).strip() for line in (error or "").strip().splitlines()]
    lines = [line for line in lines if line]
    added = [line for line in lines if line.startswith(_ADDED_STAGES)]
    own = [line for line in lines if line not in added] or lines
    found: list[str] = []
    for pattern in _CAUSES:
        matches = [match.group("cause") for line in own if (match := pattern.search(line))]
        if matches and pattern is _MIRROR:  # the mirror line (the one naming the URL) first, then the error
            found.append(max(matches, key=len))
            continue
        if matches:
            found.append(matches[-1])
            break
    cause = "; ".join(dict.fromkeys(found)) if found else (own[-1] if own and fallback else "")
    return "; ".join([cause, *added]) if added else cause


def render_table(report: RunReport) -> str:
    staged = report.waves is not None
    rows = [("HOST", *(("WAVE",) if staged else ()), "STATUS", "CHANGES", "DETAIL")]
    for host in report.hosts:
        detail = ""
        if host.failed:
            detail = f"{host.step}: {failure_cause(host.error)}"
        elif host.aborted:
            detail = f"aborted at {host.step}"
        elif host.skipped:
            detail = "untouched: the rollout stopped"
        elif host.notes:
            detail = "; ".join(host.notes)
        if host.smoke and host.smoke.get("ok"):
            count = len(host.smoke.get("instances") or ())
            each = f" ({count} instances)" if count > 1 else ""
            detail = "; ".join(filter(None, [detail, f"smoke ok in {host.smoke['latency_s']:.1f}s{each}"]))
        rows.append((host.name, *((host.wave or "-",) if staged else ()), host.status, str(len(host.changes)), detail))
    return render_rows(rows, right_aligned={len(rows[0]) - 2})  # CHANGES, a count


def render_smoke_table(report: RunReport) -> str:
    """``smoke``: one row per instance of each host (a host that failed before it got there: one row)."""
    rows = [("HOST", "INSTANCE", "PORT", "DEVICE", "STATUS", "DETAIL")]
    for host in report.hosts:
        instances = (host.smoke or {}).get("instances") or []
        if not instances:
            first_line = (host.error or "").strip().splitlines()
            detail = f"{host.step}: {first_line[-1] if first_line else ''}" if host.failed else ""
            rows.append((host.name, "-", "-", "-", host.status, detail))
        for each in instances:
            latency = each.get("latency_s")
            timing = f" in {latency:.1f}s" if isinstance(latency, (int, float)) else ""
            rows.append(
                (
                    host.name,
                    str(each["index"]),
                    str(each["port"]),
                    each.get("device") or "cpu",
                    "ok" if each["ok"] else "failed",
                    f"smoke ok{timing}" if each["ok"] else f"smoke test failed: {each.get('reason') or ''}",
                )
            )
    return render_rows(rows, right_aligned={2})


def render_plan(report: RunReport) -> str:
    """Per host: the operations that would change, with unified diffs of files."""
    blocks: list[str] = []
    for host in report.hosts:
        if host.failed or host.aborted:
            blocks.append(f"== {host.name}: {host.status} at {host.step}\n{host.error}")
            continue
        plan_line = [f"  {host.service_plan['line']}"] if host.service_plan else []
        if host.instance_plans:
            plan_line = [
                f"  instance {each['instance']} ({each['device']}): {each['plan']['line']}"
                for each in host.instance_plans
            ]
        notes = [f"  note: {note}" for note in host.notes]
        if not host.changes:
            # Notes too: what holds for a host that is up to date (another run holds it, a reboot it waits for).
            blocks.append("\n".join([f"== {host.name}: no changes", *plan_line, *notes]))
            continue
        lines = [f"== {host.name}: {len(host.changes)} operation(s) {'changed' if host.executed else 'would change'}"]
        lines += plan_line
        lines += [f"  ~ {op.name}" for op in host.changes]
        lines += notes
        for op in host.changes:
            if op.diff:
                lines.append("")
                lines += ["    " + line for line in op.diff.rstrip("\n").splitlines()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_failures(report: RunReport) -> str:
    blocks = []
    for host in report.hosts:
        if host.failed:
            indented = "\n".join("  " + line for line in (host.error or "").splitlines())
            blocks.append(f"{host.name}: {host.step}:\n" + indented)
    return "\n".join(blocks)
