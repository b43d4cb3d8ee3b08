"""The one JSON document of every --json, checked against schemas/report.schema.json.

The documents here are made by the same code paths as the commands' (a run with failed and aborted
hosts, a staged rollout, status rows, recorded H100 facts); the fleet tests validate the real
outputs of apply, drift, facts and status against the same schema.
"""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest

from sd35_provision.facts.disk import FreeSpaceInfo
from sd35_provision.facts.nvidia import NvidiaStatus
from sd35_provision.jsonreport import dumps, facts_document, load_schema, run_document, run_json, status_json
from sd35_provision.report import HostOutcome, OperationOutcome, RunReport
from sd35_provision.rollout import BatchSize, Rollout
from sd35_provision.runner import FleetRun, RunOptions
from sd35_provision.status import HostStatus, _add_outcome
from tests.facts.test_h100_local import RECORDED, host_facts
from tests.unit.test_fail_percent import HOSTS, failed
from tests.unit.test_rollout import rolling

TOP_KEYS = ["version", "command", "ok", "drift", "aborted", "waves", "hosts"]


def check(document: dict | str) -> dict:
    """The document as printed (JSON text, read back), valid against the schema."""
    document = json.loads(document if isinstance(document, str) else dumps(document))
    jsonschema.validate(document, load_schema(), cls=jsonschema.Draft202012Validator)
    assert list(document) == TOP_KEYS  # every key, always in this order
    assert all(list(host)[:3] == ["name", "status", "error"] for host in document["hosts"])
    return document


def test_the_schema_is_a_valid_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_a_run_with_failed_aborted_and_local_error_hosts():
    run = FleetRun(HOSTS, RunOptions(fail_percent=25))
    failed(run, "n2")
    run.outcomes["n1"].operations = [
        OperationOutcome("System | Cache environment file", True, diff="+HF_HOME=/x\n"),
        OperationOutcome("System | Service user", False),
    ]
    run.outcomes["n3"].failed, run.outcomes["n3"].local_error, run.outcomes["n3"].step = True, True, "connect"
    run.outcomes["n3"].error = "ssh.key /k/id.pub is a public key: give the private key"
    assert run.check_fail_percent()
    run._mark_aborted(run.outcomes["n4"], "execute")  # n1 had finished
    data = check(run_json(run.report("plan")))
    assert (data["command"], data["ok"], data["drift"]) == ("plan", False, True)
    assert data["aborted"] == "more than 25% of hosts failed (2 of 4: n2, n3)"
    assert [(h["name"], h["status"]) for h in data["hosts"]] == [
        ("n1", "would change"),
        ("n2", "failed"),
        ("n3", "error"),
        ("n4", "aborted"),
    ]
    assert data["hosts"][0]["changes"] == [
        {"operation": "System | Cache environment file", "change": "would change", "diff": "+HF_HOME=/x\n"}
    ]


def test_drift_and_smoke_say_what_they_checked():
    report = RunReport(mode="drift", hosts=[HostOutcome("n1")])
    assert check(run_document(report))["drift"] is False
    smoked = RunReport(
        mode="smoke",
        hosts=[
            HostOutcome("n1", smoke={"ok": True, "reason": "", "latency_s": 0.5, "image": "/srv/sd35/smoke/last.png"})
        ],
    )
    data = check(run_document(smoked))
    assert data["drift"] is None and data["hosts"][0]["smoke"]["ok"] is True


def test_a_staged_rollout_lists_its_waves(monkeypatch):
    _, report, _ = rolling(monkeypatch, {"n1"}, Rollout(canary=1, batch=BatchSize(3, False)))
    data = check(run_json(report))
    assert data["waves"][1] == {"wave": "batch 1/2", "hosts": ["n2", "n3", "n4"], "result": "not started"}
    assert data["hosts"][1]["status"] == "not started"


def test_status_rows():
    applied = HostStatus(
        "gpu-1",
        "10.0.0.1",
        True,
        "Debian 12",
        "1x NVIDIA H100",
        "570.86.15",
        True,
        "active",
        "ready",
        "0a1b2c3d4e5f",
        "ceddf0a7",
        {"ok": True, "latency_s": 0.8, "reason": ""},
    )
    _add_outcome(applied, HostOutcome("gpu-1"))
    gone = HostStatus("gpu-2", "10.0.0.2", False)
    _add_outcome(gone, HostOutcome("gpu-2", failed=True, unreachable=True, step="connect", error="timed out"))
    refused = HostStatus("gpu-3", "10.0.0.3", False)
    _add_outcome(refused, HostOutcome("gpu-3", failed=True, local_error=True, step="connect", error="no key"))
    data = check(status_json([applied, gone, refused]))
    assert [(h["name"], h["status"]) for h in data["hosts"]] == [
        ("gpu-1", "ok"),
        ("gpu-2", "unreachable"),
        ("gpu-3", "error"),
    ]
    assert data["ok"] is False and data["drift"] is False
    assert data["hosts"][0]["service"] == {"active": "active", "ready": "ready"}


@pytest.fixture(scope="module")
def h100_facts():
    return host_facts(json.loads((RECORDED / "h100-facts.json").read_text())["facts"])


def test_facts_in_spec_order_with_fp8_as_in_status(h100_facts):
    no_gpu = replace(
        h100_facts,
        nvidia=NvidiaStatus(state="absent"),
        cache_free=FreeSpaceInfo("/srv", "/srv", "/", "/dev/vda1", 10**10, 10**9),
    )
    # gathered in the order the hosts answered; the document keeps the spec's
    gathered = {"cpu-1": no_gpu, "gpu-1": h100_facts}
    report = RunReport(
        mode="facts",
        hosts=[
            HostOutcome("gpu-1"),
            HostOutcome("cpu-1"),
            HostOutcome("gone", failed=True, unreachable=True, step="connect", error="timed out"),
        ],
    )
    data = check(facts_document(gathered, report))
    assert [(h["name"], h["status"]) for h in data["hosts"]] == [
        ("gpu-1", "ok"),
        ("cpu-1", "ok"),
        ("gone", "unreachable"),
    ]
    assert data["hosts"][0]["facts"]["fp8_capable"] is True and data["hosts"][0]["facts"]["os_name"] == "Ubuntu"
    assert data["hosts"][1]["facts"]["fp8_capable"] is None  # no GPU: as status says it
    assert data["hosts"][2] == {"name": "gone", "status": "unreachable", "error": "connect: timed out", "facts": None}
    no_gpu_row = HostStatus("cpu-1", "10.0.0.9", True, fp8_capable=None)
    assert json.loads(status_json([no_gpu_row]))["hosts"][0]["fp8_capable"] is None


def test_the_schema_refuses_what_is_not_the_contract():
    good = run_document(RunReport(mode="apply", hosts=[HostOutcome("n1", executed=True)]))
    check(good)
    for broken in (
        {**good, "version": 2},
        {**good, "command": "deploy"},
        {key: value for key, value in good.items() if key != "waves"},
        {**good, "hosts": [{**good["hosts"][0], "status": "fine"}]},
        {**good, "hosts": [{"name": "n1"}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, load_schema(), cls=jsonschema.Draft202012Validator)


def test_plan_shows_each_hosts_service_plan_in_text_and_json():
    from sd35_provision.report import render_plan
    from sd35_provision.service.policy import gpu_device, plan_service

    service = plan_service(
        "auto", "auto", gpu_device("NVIDIA L4", (8, 9), 23034), "stabilityai/stable-diffusion-3.5-large", 4
    )
    entry = {**service.to_json(), "line": service.line()}
    report = RunReport(
        mode="plan",
        hosts=[
            HostOutcome("gpu-1", operations=[OperationOutcome("Service | Unit", True)], service_plan=entry),
            HostOutcome("gpu-2", service_plan=entry),
            HostOutcome("cpu-1"),
        ],
    )
    text = render_plan(report)
    blocks = text.split("\n\n")
    assert blocks[0].splitlines()[:2] == ["== gpu-1: 1 operation(s) would change", "  " + service.line()]
    assert blocks[1].splitlines() == ["== gpu-2: no changes", "  " + service.line()]
    assert blocks[2] == "== cpu-1: no changes"
    held = HostOutcome("cpu-2", notes=["locked by another run: alice@ctl pid 4242 since 12:01:03 UTC (apply)"])
    assert render_plan(RunReport(mode="plan", hosts=[held])) == (
        "== cpu-2: no changes\n  note: locked by another run: alice@ctl pid 4242 since 12:01:03 UTC (apply)"
    )
    data = check(run_json(report))
    plan = data["hosts"][0]["service_plan"]
    assert (plan["precision"], plan["memory"], plan["t5"]) == ("fp8-dynamic", "resident", "8-bit")
    assert plan["gpu_memory_gib"] == 22.49 and 15 < plan["expected_peak_gib"] < 22.49
    assert data["hosts"][2]["service_plan"] is None
