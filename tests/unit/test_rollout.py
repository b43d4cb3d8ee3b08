"""Staged rollouts: how hosts are split into canary and batches, and when the rollout stops.

The waves themselves are real applies (tests/integration/test_fleet_ops.py runs a
canary that fails on a fleet); here ``_apply_hosts`` is replaced by a recorder to
check the orchestration: which hosts each wave gets, and that no host of a wave
after a failed one is ever applied.
"""

from __future__ import annotations

import json
import re

import pytest

from sd35_provision import workflow
from sd35_provision.hostspec.settings import FleetSpec, HostSettings
from sd35_provision.jsonreport import run_json
from sd35_provision.reboots import RebootOptions
from sd35_provision.report import HostOutcome, RunReport, render_table
from sd35_provision.rollout import BatchSize, Rollout, parse_batch, plan_waves
from sd35_provision.runner import RunOptions
from tests.unit.test_spec import run_cli

NAMES = [f"n{i}" for i in range(1, 8)]


@pytest.mark.parametrize(
    "text, expected", [("2", BatchSize(2, False)), ("25%", BatchSize(25, True)), (" 100% ", BatchSize(100, True))]
)
def test_batch_sizes_parse(text, expected):
    assert parse_batch(text) == expected


@pytest.mark.parametrize("text", ["0", "0%", "101%", "two", "-1", "2.5", ""])
def test_bad_batch_sizes_say_what_is_accepted(text):
    with pytest.raises(ValueError, match="host count|1 or more hosts"):
        parse_batch(text)


def test_percent_batches_round_up_and_never_shrink_to_zero():
    assert BatchSize(25, True).hosts_per_batch(7) == 2
    assert BatchSize(1, True).hosts_per_batch(7) == 1
    assert BatchSize(100, True).hosts_per_batch(7) == 7


def labelled(waves):
    return [(wave.label, list(wave.hosts)) for wave in waves]


def test_waves_in_spec_order():
    assert labelled(plan_waves(NAMES, Rollout(batch=BatchSize(3, False)))) == [
        ("batch 1/3", ["n1", "n2", "n3"]),
        ("batch 2/3", ["n4", "n5", "n6"]),
        ("batch 3/3", ["n7"]),
    ]
    assert labelled(plan_waves(NAMES, Rollout(canary=1))) == [("canary", ["n1"]), ("rest", NAMES[1:])]
    # The percentage is of all the hosts, the canary included.
    assert labelled(plan_waves(NAMES, Rollout(batch=BatchSize(50, True), canary=2))) == [
        ("canary", ["n1", "n2"]),
        ("batch 1/2", ["n3", "n4", "n5", "n6"]),
        ("batch 2/2", ["n7"]),
    ]
    assert labelled(plan_waves(NAMES[:2], Rollout(canary=5))) == [("canary", ["n1", "n2"])]


class Recorder:
    """Stands in for one wave's apply: remembers the hosts, fails the ones it is told to."""

    def __init__(self, failing: set[str], smoke_reason: str = "image is blank: every pixel is (128, 128, 128)"):
        self.failing, self.smoke_reason = failing, smoke_reason
        self.step = "smoke test"
        self.waves: list[list[str]] = []
        self.reboots: list[RebootOptions] = []

    def __call__(self, hosts, options, smoke, reboots, gateways=()):
        self.waves.append([host.name for host in hosts])
        self.reboots.append(reboots)
        outcomes = []
        for host in hosts:
            outcome = HostOutcome(name=host.name, executed=True)
            if host.name in self.failing:
                outcome.failed, outcome.step = True, self.step
                outcome.error = f"smoke test failed: {self.smoke_reason}; rolled back to 0123abcd"
            outcomes.append(outcome)
        return RunReport(mode="apply", hosts=outcomes)


def rolling(
    monkeypatch,
    failing: set[str],
    rollout: Rollout,
    fail_percent: int | None = None,
    reboots: RebootOptions | None = None,
    step: str = "smoke test",
):
    recorder = Recorder(failing)
    recorder.step = step
    monkeypatch.setattr(workflow, "_apply_hosts", recorder)
    lines: list[str] = []
    spec = FleetSpec(path=None, hosts=[HostSettings(name=name, address="127.0.0.1") for name in NAMES], groups={})
    report = workflow.apply(
        spec, (), RunOptions(progress=lines.append, fail_percent=fail_percent), rollout=rollout, reboots=reboots
    )
    return recorder, report, lines


def test_a_failed_canary_stops_the_rollout_and_no_other_host_is_touched(monkeypatch):
    recorder, report, lines = rolling(monkeypatch, {"n1"}, Rollout(canary=1, batch=BatchSize(3, False)))
    assert recorder.waves == [["n1"]]  # nothing else was even connected to
    assert report.aborted == "the canary failed (n1); the rollout stopped before any other host"
    assert [host.status for host in report.hosts] == ["failed"] + ["not started"] * 6
    assert all(host.error.startswith("not started: the canary failed") for host in report.hosts[1:])
    assert [(w["wave"], w["result"]) for w in report.waves] == [
        ("canary", "failed"),
        ("batch 1/2", "not started"),
        ("batch 2/2", "not started"),
    ]
    assert lines[0] == "== canary: n1" and lines[-1].startswith("ABORTED: the canary failed")
    table = render_table(report).splitlines()
    assert table[0].split() == ["HOST", "WAVE", "STATUS", "CHANGES", "DETAIL"]
    assert re.match(r"n1\s+canary\s+failed\s+0\s+smoke test: smoke test failed: image is blank", table[1]), table
    assert re.match(r"n2\s+batch 1/2\s+not started\s+0\s+untouched: the rollout stopped$", table[2]), table
    data = json.loads(run_json(report))
    assert data["ok"] is False and data["waves"][0] == {"wave": "canary", "hosts": ["n1"], "result": "failed"}
    assert [host["skipped"] for host in data["hosts"]] == [False] + [True] * 6


def test_each_batch_must_pass_before_the_next_starts(monkeypatch):
    recorder, report, _ = rolling(monkeypatch, {"n5"}, Rollout(batch=BatchSize(3, False)))
    assert recorder.waves == [["n1", "n2", "n3"], ["n4", "n5", "n6"]]
    assert report.aborted == "batch 2/3 failed (n5); the rollout stopped before the next batch"
    assert [host.status for host in report.hosts] == ["unchanged"] * 4 + ["failed", "unchanged", "not started"]


def test_fail_percent_lets_batches_go_on_while_the_failures_stay_within_it(monkeypatch):
    # 1 of 7 failed is 14%: within 20%, the rollout goes on; a failed canary still stops it.
    recorder, report, _ = rolling(monkeypatch, {"n5"}, Rollout(batch=BatchSize(3, False)), fail_percent=20)
    assert recorder.waves == [["n1", "n2", "n3"], ["n4", "n5", "n6"], ["n7"]]
    assert report.aborted is None and not report.ok
    recorder, report, _ = rolling(monkeypatch, {"n4", "n5"}, Rollout(batch=BatchSize(3, False)), fail_percent=20)
    assert len(recorder.waves) == 2 and report.aborted.startswith("batch 2/3 failed (n4, n5)")
    recorder, report, _ = rolling(monkeypatch, {"n1"}, Rollout(canary=1), fail_percent=50)
    assert recorder.waves == [["n1"]]


def test_every_wave_passing_is_a_plain_success(monkeypatch):
    recorder, report, lines = rolling(monkeypatch, set(), Rollout(canary=2, batch=BatchSize(50, True)))
    assert recorder.waves == [["n1", "n2"], ["n3", "n4", "n5", "n6"], ["n7"]]
    assert report.ok and report.aborted is None
    assert [host.wave for host in report.hosts] == ["canary"] * 2 + ["batch 1/2"] * 4 + ["batch 2/2"]
    assert "== batch 2/2: passed" in lines


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch", "0"], "a batch is 1 or more hosts"),
        (["--batch", "half"], "is not a host count"),
        (["--canary", "0"], "--canary"),
    ],
)
def test_bad_rollout_options_are_refused_before_anything_runs(tmp_path, args, message):
    result = run_cli("apply", str(tmp_path / "never-read.yaml"), *args)
    assert result.returncode == 64, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_host_whose_reboot_failed_stops_the_rollout_after_its_batch(monkeypatch):
    # Each wave reboots its own hosts (inside its apply) with the options given; a host that did not
    # come back fails its wave like any failed host, and later waves are never touched.
    reboots = RebootOptions(allowed=True, timeout_s=90)
    recorder, report, lines = rolling(
        monkeypatch, {"n2"}, Rollout(batch=BatchSize(2, False)), reboots=reboots, step="reboot: wait for SSH"
    )
    assert recorder.waves == [["n1", "n2"]] and recorder.reboots == [reboots]
    assert report.aborted == "batch 1/4 failed (n2); the rollout stopped before the next batch"
    assert [host.status for host in report.hosts] == ["unchanged", "failed"] + ["not started"] * 5
    assert report.hosts[1].step == "reboot: wait for SSH"
    assert "ABORTED: batch 1/4 failed (n2); the rollout stopped before the next batch" in lines
    # Without --reboot each wave still gets the (not allowing) options: hosts that need one are only reported.
    recorder, _, _ = rolling(monkeypatch, set(), Rollout(batch=BatchSize(4, False)))
    assert recorder.reboots == [RebootOptions(), RebootOptions()]
