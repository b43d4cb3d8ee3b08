"""Results of a run, and how they are shown: a table, diffs, or JSON."""

from __future__ import annotations

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


def render_table(report: RunReport) -> str:
    staged = report.waves is not None
    rows = [("HOST", *(("WAVE",) if staged else ()), "STATUS", "CHANGES", "DETAIL")]
    for host in report.hosts:
        detail = ""
        if host.failed:
            first_line = (host.error or "").strip().splitlines()
            detail = f"{host.step}: {first_line[-1] if first_line else ''}"
        elif host.aborted:
            detail = f"aborted at {host.step}"
        elif host.skipped:
            detail = "untouched: the rollout stopped"
        elif host.notes:
            detail = "; ".join(host.notes)
        if host.smoke and host.smoke.get("ok"):
            detail = "; ".join(filter(None, [detail, f"smoke ok in {host.smoke['latency_s']:.1f}s"]))
        rows.append((host.name, *((host.wave or "-",) if staged else ()), host.status, str(len(host.changes)), detail))
    return render_rows(rows, right_aligned={len(rows[0]) - 2})  # CHANGES, a count


def render_plan(report: RunReport) -> str:
    """Per host: the operations that would change, with unified diffs of files."""
    blocks: list[str] = []
    for host in report.hosts:
        if host.failed or host.aborted:
            blocks.append(f"== {host.name}: {host.status} at {host.step}\n{host.error}")
            continue
        plan_line = [f"  {host.service_plan['line']}"] if host.service_plan else []
        if not host.changes:
            blocks.append("\n".join([f"== {host.name}: no changes", *plan_line]))
            continue
        lines = [f"== {host.name}: {len(host.changes)} operation(s) {'changed' if host.executed else 'would change'}"]
        lines += plan_line
        lines += [f"  ~ {op.name}" for op in host.changes]
        lines += [f"  note: {note}" for note in host.notes]
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
