"""The running process is the truth, over real SSH on one host (tiny model on the CPU).

One fleet boot for the module (the service fleet's fixture); each test starts from the host
applied with a spec (``states``), so any one runs alone. A settings change whose
control process is SIGKILLed at each step boundary, an SSH connection dropped by the
host after the files were written, /etc/sd35/env edited by hand and the service
restarted: each time ``drift`` names what the process runs and one ``apply``
brings the process (its running record, /readyz and its environment) to the spec.
Two applies at once: one is refused naming the holder and changes nothing, or waits
with --wait-lock. Leftovers of a killed run and a broken ``previous`` are named and removed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import cpu_fleet_defaults
from tests.integration.support import REPO, cli
from tests.integration.test_service_fleet import (  # noqa: F401 - fixture
    API_KEY,
    UNIT,
    assert_smoke_ok,
    fleet,
    sh,
    url,
)

pytestmark = pytest.mark.fleet
RECORD = "/run/sd35/0/running.json"  # instance 0's


def spec_with(fleet, queue_size: int, name: str | None = None) -> Path:  # noqa: F811 - the fixture
    defaults = cpu_fleet_defaults(
        fleet,
        "tiny-sd3",
        service={"precision": "fp32", "port": 8600, "api_key_file": "api-key", "queue_size": queue_size},
    )
    return fleet.write_spec(fleet.state_dir / (name or f"queue-{queue_size}.yaml"), extra_defaults=defaults)


def start_apply(spec: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sd35_provision.cli", "apply", str(spec), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def wait_for_line(process: subprocess.Popen, pattern: str, timeout: float = 540) -> list[str]:
    """stderr lines of ``process`` up to the first matching ``pattern`` (a regex); fails if it ends first."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    for line in process.stderr:
        seen.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return seen
        if time.monotonic() > deadline:
            break
    process.kill()
    pytest.fail(f"no line like {pattern!r} in:\n" + "\n".join(seen))


def kill_after(spec: Path, step: str) -> list[str]:
    """Run apply and SIGKILL it as soon as its progress says ``step`` was done on node1."""
    process = start_apply(spec)
    seen = wait_for_line(process, rf"^node1: changed: {re.escape(step)}")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return seen


def settled_pid(fleet, timeout: float = 180) -> str:  # noqa: F811
    """The service's pid once it serves and has stated what it runs (no restart under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = fleet.run(
            "node1",
            f"systemctl is-active {UNIT}; systemctl show -p MainPID --value {UNIT}; "
            f"systemctl list-jobs --no-legend | wc -l; cat {RECORD}",
        ).stdout.splitlines()
        active, pid, jobs = (state + ["", "", ""])[:3]
        record = state[3] if len(state) > 3 else "{}"
        if active == "active" and jobs == "0" and json.loads(record).get("pid") == int(pid or 0):
            return pid
        time.sleep(1)
    pytest.fail("the service did not settle:\n" + sh(fleet, f"systemctl status --no-pager {UNIT} || true"))


def cut_off_after_the_settings(fleet, sizes, interrupt) -> tuple[Path, int]:  # noqa: F811
    """The settings written, the restart not done: ``interrupt(spec)`` cuts a run off once its progress says
    the settings were written; the next step (the restart) may race it, so try the next size until it did not."""
    for queue_size in sizes:
        spec = spec_with(fleet, queue_size)
        before = settled_pid(fleet)
        interrupt(spec)
        time.sleep(3)  # a restart whose command left first would be under way by now
        if settled_pid(fleet) == before:
            return spec, queue_size
    pytest.fail("every run was cut off only after its restart had started")


def assert_runs(fleet, queue_size: int) -> dict:  # noqa: F811
    """The service process runs the spec: its record names the release and the files as they are, its
    environment has the spec's queue size and nothing made by hand, and /readyz says the same."""
    record = json.loads(sh(fleet, f"cat {RECORD}"))
    assert record["pid"] == int(sh(fleet, f"systemctl show -p MainPID --value {UNIT}"))
    assert record["release"] == sh(fleet, "readlink /opt/sd35/current").removeprefix("releases/")
    paths = " ".join(sorted(record["files"]))
    on_host = dict(reversed(line.split(None, 1)) for line in sh(fleet, f"sha256sum {paths}").splitlines())
    assert record["files"] == on_host and len(on_host) == 5  # unit, env, service.env, the instance's env, API key
    environ = sh(fleet, f"tr '\\0' '\\n' < /proc/{record['pid']}/environ").splitlines()
    assert f"SD35_QUEUE_SIZE={queue_size}" in environ and "HAND_MADE=1" not in environ
    ready = httpx.get(f"{url(fleet)}/readyz", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).json()
    assert ready["running"] == record and API_KEY not in json.dumps(ready)
    return record


def test_a_settings_change_killed_at_every_step_boundary_converges_on_reapply(fleet, states):  # noqa: F811
    states.converged(spec_with(fleet, 8))
    assert_runs(fleet, 8)
    # Every boundary of the settings change but the one before the restart, which has its own part below.
    steps = ["Release | Create release", "Release | Switch current", "Release | Prune", f"Service | Restart {UNIT}"]
    for queue_size, step in enumerate(steps, start=11):
        spec = spec_with(fleet, queue_size)
        kill_after(spec, step)
        # Killed once the restart was done: the process runs the spec already, only the smoke test is missing.
        cli("drift", str(spec), check_exit=0 if step.startswith("Service | Restart") else 2)
        again = cli("apply", str(spec), check_exit=0)
        assert "locked by" not in again.stdout + again.stderr  # the killed run's lock died with its connection
        assert_smoke_ok(again)
        assert_runs(fleet, queue_size)
        cli("drift", str(spec), check_exit=0)

    # Killed right after the settings were written, before the restart: the files are as the spec says,
    # only the process is not. Before the running record, apply and drift said all was well here.
    spec, queue_size = cut_off_after_the_settings(
        fleet, range(21, 25), lambda spec: kill_after(spec, "Service | Service settings")
    )
    drift = cli("drift", str(spec), check_exit=2)
    assert re.search(
        r"service restarts: service runs release \S+ with settings digest \w+, wanted \S+ "
        r"with \w+ \(/etc/sd35/service.env differs\)",
        drift.stdout,
    ), drift.stdout
    assert_smoke_ok(cli("apply", str(spec), check_exit=0))
    assert_runs(fleet, queue_size)
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


def test_a_host_whose_ssh_connection_drops_after_the_files_were_written(fleet, states):  # noqa: F811
    def drop_connection(spec: Path) -> None:
        process = start_apply(spec)
        wait_for_line(process, r"^node1: changed: Service \| Service settings")
        os.kill(process.pid, signal.SIGSTOP)  # hold the run where it is while the host drops it
        # The host drops the run's connection: kill the sshd session whose child holds the run lock
        # (and its privilege-separation monitor), so the TCP connection closes from the host's side.
        sh(
            fleet,
            "holder=$(for p in /proc/[0-9]*; do ls -l $p/fd 2>/dev/null | grep -q sd35-provision.lock && "
            "echo ${p#/proc/}; done | head -1); "
            "session=$(ps -o ppid= -p $holder | tr -d ' '); monitor=$(ps -o ppid= -p $session | tr -d ' '); "
            'case "$(ps -o args= -p $monitor)" in *priv*) kill -9 $session $monitor;; '
            "*) kill -9 $session;; esac",
        )
        os.kill(process.pid, signal.SIGCONT)
        out, err = process.communicate(timeout=300)
        assert process.returncode != 0, out + err
        print(out, err)  # shown when the test fails

    states.converged(spec_with(fleet, 8))
    spec, queue_size = cut_off_after_the_settings(fleet, range(31, 35), drop_connection)
    stale = json.loads(sh(fleet, f"cat {RECORD}"))
    environ = sh(fleet, f"tr '\\0' '\\n' < /proc/{stale['pid']}/environ")
    assert f"SD35_QUEUE_SIZE={queue_size}" not in environ  # the files say so, the process does not
    assert "/etc/sd35/service.env differs" in cli("drift", str(spec), check_exit=2).stdout
    assert_smoke_ok(cli("apply", str(spec), check_exit=0))
    assert_runs(fleet, queue_size)
    states.are(spec)


def test_a_hand_edited_env_file_the_service_restarted_with_is_restored_and_restarted(fleet, states):  # noqa: F811
    spec = spec_with(fleet, 7)
    states.converged(spec)
    sh(fleet, f"echo HAND_MADE=1 >> /etc/sd35/env && systemctl restart {UNIT}")
    drift = cli("drift", str(spec), check_exit=2)
    assert "+HAND_MADE=1" not in drift.stdout and "-HAND_MADE=1" in drift.stdout
    assert "(/etc/sd35/env differs)" in drift.stdout
    assert_smoke_ok(cli("apply", str(spec), check_exit=0))
    assert "HAND_MADE" not in sh(fleet, "cat /etc/sd35/env")
    assert_runs(fleet, 7)
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


def test_two_applies_on_one_host_one_is_refused_naming_the_holder_or_waits(fleet, states):  # noqa: F811
    states.converged(spec_with(fleet, 8))
    first = start_apply(spec_with(fleet, 9))
    wait_for_line(first, r"^node1: changed: ")
    second = cli("apply", str(spec_with(fleet, 5)))
    assert second.returncode == 1, second.stdout + second.stderr
    text = second.stdout + second.stderr
    assert re.search(
        rf"locked by \S+@\S+ pid {first.pid} since \d\d:\d\d:\d\d UTC \(apply\); --wait-lock S to wait", text
    ), text
    assert "changed:" not in second.stderr
    first.communicate(timeout=540)
    assert first.returncode == 0
    assert_runs(fleet, 9)  # the refused run changed nothing

    first = start_apply(spec_with(fleet, 10))
    wait_for_line(first, r"^node1: changed: ")
    waiting = cli("apply", str(spec_with(fleet, 4)), "--wait-lock", "540", check_exit=0)
    assert "waiting up to 540 s for the lock held by" in waiting.stderr and f"pid {first.pid}" in waiting.stderr
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert_runs(fleet, 4)  # the waiting run went second
    states.are(spec_with(fleet, 4))


def test_leftovers_of_a_killed_run_and_a_broken_previous_are_named_and_removed(fleet, states):  # noqa: F811
    spec = spec_with(fleet, 8)
    states.converged(spec)
    sh(
        fleet,
        "mkdir -p /opt/sd35/releases/.0123456789ab-cdef01.new /opt/sd35/venvs/cpu-halfbuilt && "
        "touch /srv/sd35/models/x.safetensors.partial && ln -sfn releases/gone-0 /opt/sd35/previous",
    )
    drift = cli("drift", str(spec), check_exit=2)
    assert "Remove what an interrupted run left: releases/.0123456789ab-cdef01.new" in drift.stdout
    assert "models/x.safetensors.partial" in drift.stdout and "venvs/cpu-halfbuilt" in drift.stdout
    assert "Remove the broken link previous (releases/gone-0 is gone: no rollback target)" in drift.stdout
    cli("apply", str(spec), check_exit=0)
    for path in (
        "/opt/sd35/releases/.0123456789ab-cdef01.new",
        "/opt/sd35/venvs/cpu-halfbuilt",
        "/srv/sd35/models/x.safetensors.partial",
        "/opt/sd35/previous",
    ):
        assert fleet.run("node1", f"test -e {path} || test -L {path}").exit_status != 0, path
    assert_runs(fleet, 8)
    cli("drift", str(spec), check_exit=0)
    states.are(spec)
