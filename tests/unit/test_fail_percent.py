"""--fail-percent: counted over every host of the run; once past it, no stage starts and the rest are 'aborted'."""

from __future__ import annotations

import json
import re

from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.jsonreport import run_json
from sd35_provision.report import render_plan, render_table
from sd35_provision.runner import FleetRun, RunOptions

HOSTS = [HostSettings(name=f"n{i}", address=f"127.0.0.{i}") for i in range(1, 5)]


def failed(run: FleetRun, name: str) -> None:
    outcome = run.outcomes[name]
    outcome.failed, outcome.step, outcome.error = True, "preflight", "too old"


def test_threshold_is_a_share_of_all_hosts_and_strictly_above():
    run = FleetRun(HOSTS, RunOptions(fail_percent=25))
    failed(run, "n1")
    assert not run.check_fail_percent()  # 1 of 4 is 25%: not above
    failed(run, "n3")
    assert run.check_fail_percent()
    assert run.aborted == "more than 25% of hosts failed (2 of 4: n1, n3)"


def test_no_threshold_never_aborts():
    run = FleetRun(HOSTS, RunOptions())
    for name in ("n1", "n2", "n3"):
        failed(run, name)
    assert not run.check_fail_percent() and run.aborted is None


def test_after_an_abort_stages_do_nothing_and_the_rest_are_reported_aborted():
    lines: list[str] = []
    run = FleetRun(HOSTS, RunOptions(fail_percent=0, progress=lines.append))
    failed(run, "n2")
    assert run.check_fail_percent()
    assert lines == ["ABORTED: more than 0% of hosts failed (1 of 4: n2); no further operation starts"]

    visited: list[str] = []
    run.for_each_active_host("smoke test", lambda host, settings: visited.append(host.name))
    run.prepare([], {})
    assert visited == []
    report = run.report("apply")
    assert [host.status for host in report.hosts] == ["aborted", "failed", "aborted", "aborted"]
    assert report.hosts[0].step == "smoke test"  # where it stopped
    assert not report.ok

    table = render_table(report)
    assert re.search(r"^n1\s+aborted\s+0\s+aborted at smoke test$", table, re.M), table
    assert "== n1: aborted at smoke test" in render_plan(report)
    data = json.loads(run_json(report))
    assert data["aborted"] == "more than 0% of hosts failed (1 of 4: n2)"
    assert [host["aborted"] for host in data["hosts"]] == [True, False, True, True]


def test_after_an_abort_the_rollback_stage_still_visits_failed_and_aborted_hosts():
    # Hosts the run stopped after they switched release are rolled back (workflow._roll_back_aborted).
    run = FleetRun(HOSTS, RunOptions(fail_percent=25))
    for host in run.state.inventory:
        host.connected = True  # as after connect; nothing here talks to a host
    failed(run, "n2")
    failed(run, "n4")
    assert run.check_fail_percent()
    visited: list[str] = []
    run.for_each_connected_host("smoke test", lambda host, settings: visited.append(host.name))
    assert sorted(visited) == ["n1", "n2", "n3", "n4"]
    assert [host.status for host in run.report("apply").hosts] == ["aborted", "failed", "aborted", "failed"]
