"""``status`` without a fleet: the probe run here against a fake host tree, its parser, the rows."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from sd35_provision.facts.service import NO_SERVICE, ServiceState, parse_service_state
from sd35_provision.hostspec import load_spec
from sd35_provision.jsonreport import status_json
from sd35_provision.report import HostOutcome, OperationOutcome
from sd35_provision.status import HostStatus, _add_outcome, render_status_table, smoke_staleness, status_ok
from tests.unit.test_jsonreport import check

APPLIED = {
    "active": "active",
    "ready_status": 200,
    "ready_phase": None,
    "release": "releases/0a1b2c3d4e5f",
    "release_info": {
        "lock": "cpu-4ea3791261db",
        "model_revision": "ceddf0a7fdf2064ea28e2213e3b84e4afa170a0f",
        "links": {"model": "/srv/sd35/models/hub/snapshots/ceddf0a7"},
    },
    "smoke": {
        "ok": True,
        "latency_s": 0.84,
        "width": 64,
        "height": 64,
        "reason": "",
        "release": "0a1b2c3d4e5f",
        "at": "2026-11-25T05:00:00Z",
    },
}


def test_probe_runs_with_plain_python3_and_reads_what_is_there(tmp_path):
    root, smoke = tmp_path / "opt-sd35", tmp_path / "smoke" / "last.json"
    (root / "releases" / "0a1b2c3d4e5f").mkdir(parents=True)
    (root / "releases" / "0a1b2c3d4e5f" / "release.json").write_text(json.dumps(APPLIED["release_info"]))
    os.symlink("releases/0a1b2c3d4e5f", root / "current")
    smoke.parent.mkdir()
    smoke.write_text(json.dumps(APPLIED["smoke"]) + "\n")

    # 127.0.0.1:9 (discard) never answers HTTP: the service "gives no answer".
    command = ServiceState().command(
        unit="sd35-nosuch.service",
        install_root=str(root),
        smoke_record=str(smoke),
        url="http://127.0.0.1:9",
        api_key_file=str(tmp_path / "no-key"),
    )
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    state = parse_service_state(output.stdout.splitlines())
    assert state.release_id == "0a1b2c3d4e5f"
    assert state.model_revision == "ceddf0a7fdf2064ea28e2213e3b84e4afa170a0f"
    assert state.smoke == APPLIED["smoke"]
    assert state.ready == "no answer"

    fresh = ServiceState().command(
        unit="sd35-nosuch.service",
        install_root=str(tmp_path / "nothing"),
        smoke_record=str(tmp_path / "nothing.json"),
        url="http://127.0.0.1:9",
        api_key_file="/nonexistent",
    )
    state = parse_service_state(
        subprocess.run(["sh", "-c", fresh], capture_output=True, text=True, check=True).stdout.splitlines()
    )
    assert (state.release, state.release_info, state.smoke, state.model_revision) == (None, None, None, None)


def test_parser_takes_the_last_json_line_and_says_what_readyz_answered():
    noise = ["Warning: something printed first", json.dumps({**APPLIED, "ready_status": 503, "ready_phase": "loading"})]
    state = parse_service_state(noise)
    assert state.ready == "not ready (loading)" and state.active == "active"
    assert parse_service_state([json.dumps({"ready_status": 401})]).ready == "HTTP 401"
    assert parse_service_state([]) == NO_SERVICE
    assert parse_service_state(["not json"]) == NO_SERVICE
    pushed = {"release_info": {"model_revision": None, "links": {"model": "/srv/sd35/models/push-c90f99ab94fb"}}}
    assert parse_service_state([json.dumps(pushed)]).model_revision == "push-c90f99ab94fb"


def test_rows_of_a_mixed_fleet():
    state = parse_service_state([json.dumps(APPLIED)])
    applied = HostStatus(
        "gpu-1",
        "10.0.0.1",
        True,
        "Debian 12",
        "1x NVIDIA H100 (80 GiB, cc 9.0)",
        "570.86.15",
        True,
        state.active,
        state.ready,
        state.release_id,
        state.model_revision,
        state.smoke,
    )
    _add_outcome(applied, HostOutcome("gpu-1"))
    fresh = HostStatus("gpu-2", "10.0.0.2", True, "Ubuntu 24.04", "none", None, None)
    _add_outcome(fresh, HostOutcome("gpu-2", operations=[OperationOutcome("System | Install git and git-lfs", True)]))
    gone = HostStatus("gpu-3", "10.0.0.3", False)
    _add_outcome(gone, HostOutcome("gpu-3", failed=True, unreachable=True, step="connect", error="Could not connect"))
    odd = HostStatus("gpu-4", "10.0.0.4", True, "Rocky 9")
    _add_outcome(
        odd, HostOutcome("gpu-4", failed=True, step="preflight", error="only Debian and Ubuntu\nare supported")
    )

    assert applied.row() == (
        "gpu-1",
        "yes",
        "Debian 12",
        "1x NVIDIA H100 (80 GiB, cc 9.0)",
        "570.86.15",
        "yes",
        "active/ready",
        "0a1b2c3d4e5f",
        "ceddf0a7fdf2",
        "ok 0.8s",
        "no",
    )
    assert fresh.row() == ("gpu-2", "yes", "Ubuntu 24.04", "none", "-", "-", "-", "-", "-", "-", "yes")
    assert gone.row() == ("gpu-3", "no", "-", "-", "-", "-", "-", "-", "-", "-", "-")
    assert odd.row()[-1] == "?"

    table = render_status_table([applied, fresh, gone, odd]).splitlines()
    assert table[0].split() == [
        "HOST",
        "REACHABLE",
        "OS",
        "GPU",
        "DRIVER",
        "FP8",
        "SERVICE",
        "RELEASE",
        "MODEL",
        "REV",
        "LAST",
        "SMOKE",
        "DRIFT",
    ]
    assert table[-2:] == ["gpu-3: connect: Could not connect", "gpu-4: preflight: are supported"]

    data = json.loads(status_json([applied, fresh, gone]))["hosts"]
    assert data[0]["service"] == {"active": "active", "ready": "ready"}
    assert data[0]["model_revision"] == "ceddf0a7fdf2064ea28e2213e3b84e4afa170a0f"
    assert data[1]["drift"] is True and data[1]["drift_operations"] == ["System | Install git and git-lfs"]
    assert data[2]["reachable"] is False and data[2]["drift"] is None


def test_a_failed_smoke_shows_as_failed():
    row = HostStatus("gpu-1", "10.0.0.1", True, smoke={"ok": False, "latency_s": None, "reason": "blank image"})
    assert row.last_smoke == "FAILED"


def row_of(probe: dict) -> HostStatus:
    """A status row as status reads it from the probe's line (sd35_provision/status.py: _read_host)."""
    state = parse_service_state([json.dumps(probe)])
    row = HostStatus("gpu-1", "10.0.0.1", True, service_active=state.active, release=state.release_id)
    row.smoke, row.smoke_stale = state.smoke, smoke_staleness(state.smoke, state.release_id, state.active)
    _add_outcome(row, HostOutcome("gpu-1"))
    return row


def test_a_smoke_result_counts_only_for_the_running_release_of_an_active_service():
    current = row_of(APPLIED)
    assert current.smoke_stale is None and current.last_smoke == "ok 0.8s" and status_ok([current])

    # The case of the issue: the service stopped, its last smoke ok: that said "ok 3.5s" and exit 0.
    stopped = row_of({**APPLIED, "active": "inactive", "ready_status": None})
    assert stopped.last_smoke == "STALE (ok 0.8s)" and not status_ok([current, stopped])
    assert stopped.smoke_stale == (
        "the service is inactive; the last smoke test (2026-11-25T05:00:00Z) is of release 0a1b2c3d4e5f"
    )
    # An update applied without a smoke test, or a rollback: the result is of another release.
    updated = row_of({**APPLIED, "release": "releases/9e8d7c6b5a4f"})
    assert updated.smoke_stale == (
        "the last smoke test (2026-11-25T05:00:00Z) is of release 0a1b2c3d4e5f; the host runs 9e8d7c6b5a4f"
    )
    unnamed = row_of({**APPLIED, "smoke": {"ok": True, "latency_s": 3.5}})  # written before results named one
    assert unnamed.smoke_stale == "the last smoke test names no release (taken before smoke results named one)"
    assert row_of({**APPLIED, "smoke": None}).smoke_stale is None and status_ok([row_of({**APPLIED, "smoke": None})])

    table = render_status_table([current, stopped]).splitlines()
    assert table[-1] == f"gpu-1: stale smoke result: {stopped.smoke_stale}"
    document = check(status_json([current, stopped]))
    assert document["ok"] is False
    assert [host["smoke_stale"] for host in document["hosts"]] == [None, stopped.smoke_stale]
    assert document["hosts"][0]["smoke"]["release"] == "0a1b2c3d4e5f"


def test_a_host_whose_driver_needs_a_reboot_says_so_in_the_table_and_json():
    import jsonschema

    from sd35_provision.jsonreport import load_schema

    reason = "NVIDIA driver/library version mismatch: nvidia module 550.127.05 loaded, library 570.133.20 installed"
    row = HostStatus("gpu-1", "10.0.0.1", True, "Ubuntu 22.04", "none", None, None, reboot_required=reason)
    _add_outcome(row, HostOutcome("gpu-1"))
    assert row.row()[4] == "reboot required"
    assert render_status_table([row]).splitlines()[-1] == f"gpu-1: reboot required: run apply --reboot ({reason})"
    document = json.loads(status_json([row]))
    jsonschema.validate(document, load_schema(), cls=jsonschema.Draft202012Validator)
    assert document["hosts"][0]["reboot_required"] == reason


def test_a_host_that_needs_a_reboot_says_why_under_the_table_and_in_json():
    waiting = HostStatus("gpu-1", "10.0.0.1", True, reboot_required="/var/run/reboot-required exists")
    fine = HostStatus("gpu-2", "10.0.0.2", True)
    table = render_status_table([waiting, fine]).splitlines()
    assert table[-1] == "gpu-1: reboot required: run apply --reboot (/var/run/reboot-required exists)"
    assert len(table) == 4  # header, two rows, the one line: nothing about gpu-2
    data = json.loads(status_json([waiting, fine]))["hosts"]
    assert [row["reboot_required"] for row in data] == ["/var/run/reboot-required exists", None]


# -- a gateway host ---------------------------------------------------------------------------

FACT_CASES = Path(__file__).parent.parent / "facts"


def recorded(fact: str, case: str) -> list[str]:
    return json.loads((FACT_CASES / fact / f"{case}.json").read_text())["output"]


class RecordedHost:
    """A host answering each fact from its recorded output (parsed by the fact); any other fact fails."""

    name = "lb1"

    def __init__(self, outputs: dict[str, list[str]]):
        self.outputs, self.asked = outputs, []

    def get_fact(self, fact, **kwargs):
        self.asked.append(fact.__name__)
        if fact.__name__ == "LinuxDistribution":
            return {"name": "Debian", "major": 12, "minor": None, "release_meta": {"VERSION_ID": "12"}}
        return fact().process(self.outputs[fact.__name__])


def gateway_row(tmp_path: Path, case: str) -> tuple[HostStatus, RecordedHost]:
    from sd35_provision.status import _read_host
    from tests.unit.test_gateway import SPEC, write

    settings = load_spec(write(tmp_path, SPEC)).host("lb1")
    host = RecordedHost(
        {
            "GatewayState": recorded("GatewayState", case),
            "RebootState": recorded("RebootState", "cpu_host"),
            "RunLockHolder": recorded("RunLockHolder", "free"),
        }
    )
    row = HostStatus("lb1", settings.address, False)
    _read_host(host, settings, row)  # type: ignore[arg-type]
    _add_outcome(row, HostOutcome("lb1"))
    return row, host


def test_a_gateway_host_shows_haproxy_and_its_servers_not_a_gpu_service(tmp_path):
    row, host = gateway_row(tmp_path, "serving_one_down_one_drained")
    # No GPU, driver, service or smoke read; the run lock, as on every host.
    assert host.asked == ["RunLockHolder", "LinuxDistribution", "GatewayState", "RebootState"]
    assert row.row() == ("lb1", "yes", "Debian 12", "-", "-", "-", "haproxy active 1/3 up", "-", "-", "-", "no")
    assert status_ok([row])  # a server down is the gateway's business (health checks), not a status failure

    document = check(status_json([row]))
    (data,) = document["hosts"]
    assert data["service"] == {"active": "active", "ready": None}
    assert data["gateway"] == {
        "active": "active",
        "servers": 3,
        "servers_up": 1,
        "not_up": ["gpu1:0 DOWN", "gpu2:0 DRAIN"],
    }
    assert data["instances"] == [] and data["smoke"] is None and data["gpu"] is None and data["release"] is None


def test_a_gateway_before_its_first_apply_or_stopped_says_so(tmp_path):
    fresh, _ = gateway_row(tmp_path, "not_installed")
    assert fresh.service == "haproxy not installed"
    stopped, _ = gateway_row(tmp_path, "stopped")
    assert stopped.service == "haproxy failed"  # no servers count: the runtime API did not answer
    assert check(status_json([stopped]))["hosts"][0]["gateway"]["servers"] is None


def test_serving_hosts_carry_no_gateway_in_json():
    row = HostStatus("gpu-1", "10.0.0.1", True)
    _add_outcome(row, HostOutcome("gpu-1"))
    assert check(status_json([row]))["hosts"][0]["gateway"] is None


def test_a_host_another_run_holds_is_named_with_its_holder_and_status_still_answers(tmp_path):
    from sd35_provision.status import _read_host
    from tests.unit.test_gateway import SPEC, write

    settings = load_spec(write(tmp_path, SPEC)).host("lb1")
    host = RecordedHost(
        {
            "GatewayState": recorded("GatewayState", "serving_one_down_one_drained"),
            "RebootState": recorded("RebootState", "cpu_host"),
            "RunLockHolder": recorded("RunLockHolder", "held_by_an_apply"),
        }
    )
    row = HostStatus("lb1", settings.address, False)
    _read_host(host, settings, row)  # type: ignore[arg-type]
    _add_outcome(row, HostOutcome("lb1"))
    holder = "alice@ctl pid 4242 since 12:01:03 UTC (apply)"
    assert row.locked_by == holder
    assert "lb1: locked by another run: alice@ctl pid 4242 since 12:01:03 UTC (apply)" in (
        render_status_table([row]).splitlines()
    )
    assert status_ok([row])  # said, not a failure: the exit code stays what it was
    assert check(status_json([row]))["hosts"][0]["locked_by"] == holder
    free, _ = gateway_row(tmp_path, "serving_one_down_one_drained")
    assert free.locked_by is None and "locked by" not in render_status_table([free])
    assert check(status_json([free]))["hosts"][0]["locked_by"] is None


def test_plan_and_drift_note_the_lock_holder_and_apply_does_not_look(tmp_path):
    from types import SimpleNamespace

    from sd35_provision.workflow import _preflight_and_plan
    from tests.unit.test_gateway import SPEC, write

    settings = load_spec(write(tmp_path, SPEC)).host("lb1")  # a gateway host: no facts beyond the lock read here
    outputs = {"RunLockHolder": recorded("RunLockHolder", "held_by_an_apply")}

    def recorder() -> SimpleNamespace:  # a HostRecorder's notes, outside pyinfra's context
        notes: list[str] = []
        return SimpleNamespace(notes=notes, note=notes.append)

    run = SimpleNamespace(recorders={"lb1": recorder()})
    planning = RecordedHost(outputs)
    _preflight_and_plan({}, run, reboot_notes=True)(planning, settings)  # type: ignore[arg-type]
    assert run.recorders["lb1"].notes == ["locked by another run: alice@ctl pid 4242 since 12:01:03 UTC (apply)"]

    run = SimpleNamespace(recorders={"lb1": recorder()})
    applying = RecordedHost(outputs)  # apply holds the lock itself: nothing to read
    _preflight_and_plan({}, run, reboot_notes=False)(applying, settings)  # type: ignore[arg-type]
    assert applying.asked == [] and run.recorders["lb1"].notes == []
