"""Fleet operations over real SSH: a host that goes away in the middle of an apply fails alone while the
others finish; ``status`` on a mixed fleet (applied, drifted, stopped, fresh); onboarding freshly booted
boxes end to end (host key, deploy account, spec edit with comments kept, facts, apply) and again as a no-op;
a canary whose new release fails its smoke test, rolled back, stopping the rollout with the other hosts
untouched; a rollout in batches; a host that needs a reboot, reported, then rebooted alone (for real) and back.

One 4-host fleet for the module (node4 is never applied: the "fresh" host), plus a 2-host fleet of boxes
that are not in any spec for onboarding. Applies install the venv from the cached CPU wheelhouse.
Each test asks ``states`` for the hosts it starts from, so it runs alone or in any order.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sd35_provision.tinymodel import generate_tiny_pipeline
from tests.conftest import booted_fleet, cpu_fleet_defaults
from tests.integration.support import PROVISIONED, REPO, cli
from tests.integration.test_provision_fleet import json_report

pytestmark = pytest.mark.fleet
UNIT = "sd35-inference@0.service"  # the one instance of a CPU host


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, cpu_wheelhouse):
    with booted_fleet(4, tmp_path_factory.mktemp("ops-fleet")) as booted:
        generate_tiny_pipeline(booted.state_dir / "tiny-sd3")
        booted.wheelhouse = cpu_wheelhouse
        yield booted


def write_spec(fleet, name: str = "ops.yaml", model: str = "tiny-sd3", **service) -> Path:
    defaults = cpu_fleet_defaults(fleet, model, service={"precision": "fp32", "port": 8600, **service})
    return fleet.write_spec(fleet.state_dir / name, extra_defaults=defaults)


def sh(fleet, host: str, command: str) -> str:
    result = fleet.run(host, command)
    assert result.exit_status == 0, f"{host}: {command}: {result.stderr}"
    return result.stdout.strip()


def test_a_host_stopped_mid_run_fails_alone_and_the_others_finish(fleet, states, tmp_path):
    states.fresh("node1", "node2", "node3")  # node3 must still need its wheels when it goes away
    spec = write_spec(fleet)
    report_path = tmp_path / "report.json"
    with open(report_path, "w") as report_file:
        apply = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sd35_provision.cli",
                "apply",
                str(spec),
                "--json",
                "--limit",
                "node1",
                "--limit",
                "node2",
                "--limit",
                "node3",
            ],
            stdout=report_file,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
    progress: list[str] = []
    arrived: list[float] = []  # when each line came: heartbeats come while a step runs, not after it

    def read() -> None:
        for line in apply.stderr:
            arrived.append(time.monotonic())
            progress.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # node3 has its wheels; the venv build (the longest step) comes next: take the box away now.
        deadline = time.monotonic() + 300
        while not any(line.startswith("node3: changed: Python environment | Push wheels") for line in progress):
            assert apply.poll() is None, "".join(progress)
            assert time.monotonic() < deadline, "".join(progress)
            time.sleep(0.2)
        fleet.stop_host("node3")
        apply.wait(timeout=600)
    finally:
        apply.kill()
    reader.join(timeout=10)

    assert apply.returncode == 1, "".join(progress)
    report = json.loads(report_path.read_text())
    json_report(subprocess.CompletedProcess([], 0, stdout=report_path.read_text()))  # valid against the schema
    assert report["ok"] is False and report["aborted"] is None
    hosts = {host["name"]: host for host in report["hosts"]}
    assert list(hosts) == ["node1", "node2", "node3"]  # every host's outcome, in spec order
    for name in ("node1", "node2"):
        assert hosts[name]["status"] == "changed" and not hosts[name]["failed"], hosts[name]
        assert hosts[name]["smoke"]["ok"] is True
        assert sh(fleet, name, f"systemctl is-active {UNIT}") == "active"
    gone = hosts["node3"]
    assert gone["status"] == "unreachable" and gone["failed"]
    assert gone["step"].startswith("Python environment | ")  # the step it was in when it went away
    assert "SSH connection was lost" in gone["error"]
    assert any(line.startswith("node3: FAILED") for line in progress)
    # Live progress, one line per host and change, not a wall of text; a long step also says when it
    # started, that it is still running, and how long it took.
    assert all(
        re.match(r"^(node\d: (changed|FAILED|started|still running|done): |ABORTED)", line) for line in progress
    ), progress
    build = "node1: started: Python environment | Build venv"
    started = next(number for number, line in enumerate(progress) if line.startswith(build))
    ended = next(number for number, line in enumerate(progress) if line.startswith(build.replace("started", "changed")))
    assert re.search(r" \((\d+m)?\d+s\)$", progress[ended].strip()), progress[ended]
    assert arrived[ended] - arrived[started] > 1, progress  # said while it ran
    assert "\x1b" not in "".join(progress)  # not a terminal: plain lines
    states.are(spec, "node1", "node2")
    states.kept("node4")


def test_status_of_a_mixed_fleet(fleet, states):
    # node1 applied; node2 applied, then its service stopped (drift); node3 stopped; node4 never applied.
    spec = write_spec(fleet)
    states.converged(spec, "node1", "node2")
    states.fresh("node4")
    sh(fleet, "node2", f"systemctl stop {UNIT}")
    if fleet.is_running("node3"):  # when run on its own
        fleet.stop_host("node3")
    release = sh(fleet, "node1", "readlink /opt/sd35/current").rsplit("/", 1)[-1]

    started = time.monotonic()
    result = cli("status", str(spec), "--json", check_exit=1)  # 1: a host was unreachable
    took = time.monotonic() - started
    rows = {row["name"]: row for row in json_report(result)["hosts"]}
    assert list(rows) == ["node1", "node2", "node3", "node4"]

    applied = rows["node1"]
    assert applied["reachable"] and applied["os"] == "Debian 12" and applied["gpu"] == "none"
    assert applied["fp8_capable"] is None and applied["driver"] is None
    assert applied["service"] == {"active": "active", "ready": "ready"}
    assert applied["release"] == release and applied["model_revision"].startswith("push-")
    assert applied["smoke"]["ok"] is True and applied["smoke"]["latency_s"] > 0
    # A smoke result names the release that answered it and when; it counts while that release runs.
    assert applied["smoke"]["release"] == release and applied["smoke"]["at"] and applied["smoke_stale"] is None
    assert applied["drift"] is False and applied["error"] is None

    drifted = rows["node2"]
    assert drifted["service"]["active"] == "inactive"
    # The same build as node1's; the settings part differs (each host binds its own address).
    assert drifted["release"].split("-")[0] == release.split("-")[0] and drifted["release"] != release
    assert drifted["drift"] is True and f"Service | {UNIT} enabled and running" in drifted["drift_operations"]
    # Its last smoke test passed, but the service is stopped: stale (it once said "ok" with exit 0).
    assert drifted["smoke"]["ok"] is True
    assert drifted["smoke_stale"].startswith("the service is inactive; the last smoke test ("), drifted

    assert rows["node3"]["reachable"] is False and rows["node3"]["error"].startswith("connect: ")

    fresh = rows["node4"]
    assert fresh["reachable"] and fresh["service"] == {"active": None, "ready": None}  # no unit yet
    assert (fresh["release"], fresh["model_revision"], fresh["smoke"]) == (None, None, None)
    assert fresh["drift"] is True

    table = cli("status", str(spec), check_exit=1).stdout.splitlines()
    assert table[0].split()[:3] == ["HOST", "REACHABLE", "OS"]
    assert re.match(
        rf"node1\s+yes\s+Debian 12\s+none\s+-\s+-\s+active/ready\s+{release}\s+push-\w+\s+"
        r"ok \d+\.\ds\s+no$",
        table[1],
    ), table[1]
    assert re.match(r"node2\s+yes\s+.*inactive\s+.*STALE \(ok \d+\.\ds\)\s+yes$", table[2]), table[2]
    assert re.match(r"node3\s+no(\s+-){9}$", table[3]), table[3]
    assert re.match(r"node4\s+yes\s+Debian 12\s+none(\s+-){6}\s+yes$", table[4]), table[4]
    assert table[5].startswith("node3: connect: ")
    assert table[6] == f"node2: stale smoke result: {drifted['smoke_stale']}"
    # One connection per host, all in parallel: about as fast as one host's dry run, not four.
    assert took < 60, took
    states.kept("node1", "node4")
    states.are(PROVISIONED, "node2")


def onboard(spec: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    # A new session: no controlling terminal, like automation (getpass reads stdin, nobody is asked).
    return subprocess.run(
        [sys.executable, "-m", "sd35_provision.cli", "onboard", str(spec), *args],
        input=password + "\n" if password is not None else "",
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        start_new_session=True,
    )


def test_onboarding_fresh_boxes_end_to_end_and_again_as_a_no_op(fleet, states, boot_fleet):
    boxes = boot_fleet(2)  # booted, but in no spec of ours: their own keys and known_hosts
    spec = write_spec(fleet, "onboard.yaml")
    known_hosts = fleet.state_dir / "onboard_known_hosts"
    known_hosts.write_text(fleet.known_hosts_path.read_text())
    text = spec.read_text().replace("known_hosts: known_hosts", "known_hosts: onboard_known_hosts  # ours")
    text = text.replace("\nhosts:\n", "\nhosts:  # the fleet\n  # rack 1\n", 1) + "# end of the spec\n"
    spec.write_text(text)
    address = boxes.host("node1").address
    base = ["--address", address, "--name", "new1", "--key", str(boxes.key_path), "--set", f"service.bind={address}"]

    refused = onboard(spec, *base)  # no terminal and no --accept-host-key: never trusted silently
    assert refused.returncode == 1 and "not accepted" in refused.stderr and "--accept-host-key" in refused.stderr
    assert spec.read_text() == text and known_hosts.read_text() == fleet.known_hosts_path.read_text()

    first = onboard(spec, *base, "--accept-host-key")
    assert first.returncode == 0, first.stdout + first.stderr
    fingerprint = sh(boxes, "node1", "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
    assert f"host key of {address}:22: ssh-ed25519 {fingerprint} (new)" in first.stdout
    recorded = next(line for line in boxes.known_hosts_path.read_text().splitlines() if line.startswith(f"{address} "))
    assert known_hosts.read_text() == fleet.known_hosts_path.read_text() + recorded + "\n"
    assert "new1: authorized the deploy key for root" in first.stdout
    assert spec.read_text() == text.replace(
        "\n# end of the spec\n",
        f"\n  new1:\n    address: {address}\n    service:\n      bind: {address}\n# end of the spec\n",
    )
    assert re.search(r"^new1\s+Debian 12\s+none\s+", first.stdout, re.M)  # its facts
    assert re.search(r"^new1\s+changed\s+\d+\s+.*smoke ok in", first.stdout, re.M), first.stdout
    assert sh(boxes, "node1", f"systemctl is-active {UNIT}") == "active"

    spec_after, known_after = spec.read_text(), known_hosts.read_text()
    again = onboard(spec, *base)  # the key is known now: no acceptance needed
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(already in" in again.stdout and "deploy account root already set up" in again.stdout
    assert "the spec is unchanged" in again.stdout
    assert re.search(r"^new1\s+unchanged\s+0\s", again.stdout, re.M), again.stdout
    assert spec.read_text() == spec_after and known_hosts.read_text() == known_after

    # A box reached first with an admin's password and sudo; onboarding makes a deploy account with
    # passwordless sudo for the spec's key (and asks sudo for the password on stdin, never in argv).
    second = boxes.host("node2").address
    password = "first-contact-Pa55"
    sh(
        boxes,
        "node2",
        "sed -i 's/^PasswordAuthentication no/PasswordAuthentication yes/' "
        "/etc/ssh/sshd_config.d/*.conf && systemctl reload ssh && useradd -m -s /bin/bash admin && "
        f"echo 'admin:{password}' | chpasswd && echo 'admin ALL=(ALL) ALL' > /etc/sudoers.d/admin",
    )
    with_password = onboard(
        spec,
        "--address",
        second,
        "--name",
        "new2",
        "--user",
        "admin",
        "--password-prompt",
        "--deploy-user",
        "ops",
        "--sudo",
        "--set",
        f"service.bind={second}",
        "--accept-host-key",
        "--skip-apply",
        password=password,
    )
    assert with_password.returncode == 0, with_password.stdout + with_password.stderr
    assert password not in with_password.stdout + with_password.stderr
    for change in ("created user ops", "authorized the deploy key for ops", "passwordless sudo for ops"):
        assert f"new2: {change}" in with_password.stdout
    assert (
        f"  new2:\n    address: {second}\n    ssh:\n      user: ops\n      sudo: true\n"
        f"    service:\n      bind: {second}\n"
    ) in spec.read_text()
    assert re.search(r"^new2\s+Debian 12\s+", with_password.stdout, re.M)  # facts through ops + sudo
    assert sh(boxes, "node2", "stat -c '%a %U' /etc/sudoers.d/90-sd35-ops") == "440 root"
    cli("validate", str(spec), check_exit=0)
    states.kept()  # onboarding applies to the new host only


def blank_image_model(fleet) -> str:
    """The tiny pipeline with its VAE's last layer zeroed: it loads and runs, and every image is flat grey.

    The classic broken-VAE release (SD's all-black or all-grey images): only a smoke test that looks at
    the pixels catches it.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    broken = fleet.state_dir / "tiny-sd3-blank"
    if not broken.exists():
        shutil.copytree(fleet.state_dir / "tiny-sd3", broken)
        [weights] = (broken / "vae").glob("*.safetensors")
        tensors = load_file(weights)
        for name in ("decoder.conv_out.weight", "decoder.conv_out.bias"):
            tensors[name].zero_()
        save_file(tensors, weights)
    return broken.name


def host_state(fleet, name: str) -> tuple[str, str, str]:
    """(current release, service state, the model directories) of a host, whatever they are."""
    return (
        fleet.run(name, "readlink /opt/sd35/current").stdout.strip(),
        fleet.run(name, f"systemctl is-active {UNIT}").stdout.strip(),
        fleet.run(name, "ls /srv/sd35/models 2>/dev/null").stdout.strip(),
    )


def test_a_failing_canary_is_rolled_back_and_stops_the_rollout(fleet, states):
    for name in ("node1", "node2", "node4"):
        if not fleet.is_running(name):
            fleet.start_host(name)
    good = write_spec(fleet)
    states.converged(good, "node1")
    serving = sh(fleet, "node1", "readlink /opt/sd35/current")
    settings_before = sh(fleet, "node1", "cat /etc/sd35/service.env")
    untouched = {name: host_state(fleet, name) for name in ("node2", "node4")}

    # The update: a new model (that renders blank images) and a new queue size, canary first.
    bad = write_spec(fleet, "bad-update.yaml", model=blank_image_model(fleet), queue_size=3)
    result = cli(
        "apply",
        str(bad),
        "--limit",
        "node1",
        "--limit",
        "node2",
        "--limit",
        "node4",
        "--canary",
        "1",
        "--batch",
        "1",
        "--json",
        check_exit=3,
    )
    report = json_report(result)
    assert report["aborted"] == "the canary failed (node1); the rollout stopped before any other host"
    assert [(w["wave"], w["hosts"], w["result"]) for w in report["waves"]] == [
        ("canary", ["node1"], "failed"),
        ("batch 1/2", ["node2"], "not started"),
        ("batch 2/2", ["node4"], "not started"),
    ]
    hosts = {host["name"]: host for host in report["hosts"]}
    canary = hosts["node1"]
    assert canary["status"] == "failed" and canary["step"] == "smoke test", canary["error"]
    assert "image is blank" in canary["error"]
    assert f"rolled back to {serving.removeprefix('releases/')}" in canary["error"]
    assert "(its smoke test passes)" in canary["error"]
    for name in ("node2", "node4"):
        assert hosts[name]["status"] == "not started" and hosts[name]["operations"] == []
        assert host_state(fleet, name) == untouched[name]  # not a file, not a restart
    assert "== canary: node1" in result.stderr and "ABORTED: the canary failed" in result.stderr

    # The canary serves the old release again, with the settings it was tested with.
    assert sh(fleet, "node1", "readlink /opt/sd35/current") == serving
    assert sh(fleet, "node1", "cat /etc/sd35/service.env") == settings_before
    assert sh(fleet, "node1", f"systemctl is-active {UNIT}") == "active"
    smoked = cli("smoke", str(good), "--limit", "node1", check_exit=0)
    # One row per instance: HOST INSTANCE PORT DEVICE STATUS DETAIL.
    assert re.search(r"^node1\s+0\s+\d+\s+cpu\s+ok\s+smoke ok in", smoked.stdout, re.M), smoked.stdout
    # ... and drift names the spec's update as still to do.
    assert "Switch current to release" in cli("drift", str(bad), "--limit", "node1", check_exit=2).stdout
    states.are(PROVISIONED, "node1")
    states.kept("node2", "node4")


def test_a_rollout_in_batches_updates_every_host_batch_by_batch(fleet, states):
    # Each host has a release of the good model already: the update is its second release.
    states.provisioned(write_spec(fleet), "node1", "node2")
    for name in ("node1", "node2"):
        if not fleet.is_running(name):
            fleet.start_host(name)
    update = write_spec(fleet, "queue-update.yaml", queue_size=5)
    result = cli("apply", str(update), "--limit", "node1", "--limit", "node2", "--batch", "50%", check_exit=0)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["HOST", "WAVE", "STATUS", "CHANGES", "DETAIL"]
    for line, batch in zip(lines[1:3], ("1/2", "2/2"), strict=True):
        assert re.match(rf"node\d\s+batch {batch}\s+changed\s+\d+\s+.*smoke ok in", line), result.stdout
    progress = result.stderr.splitlines()
    # The second batch starts only after the first passed.
    assert progress.index("== batch 1/2: passed") < progress.index("== batch 2/2: node2")
    for name in ("node1", "node2"):
        assert "SD35_QUEUE_SIZE=5" in sh(fleet, name, "cat /etc/sd35/service.env")
        assert sh(fleet, name, f"systemctl is-active {UNIT}") == "active"
        # Only the new release and the one a rollback would go back to are kept: node1's canary
        # release of the test above went, with the blank-image model only it used.
        kept = {
            sh(fleet, name, f"readlink /opt/sd35/{link}").removeprefix("releases/") for link in ("current", "previous")
        }
        assert set(sh(fleet, name, "ls /opt/sd35/releases").split()) == kept
        assert len(sh(fleet, name, "ls /srv/sd35/models").split()) == 1  # both use the one good model
    assert_unchanged = cli("apply", str(update), "--limit", "node1", "--limit", "node2", check_exit=0)
    assert re.search(r"^node1\s+unchanged\s+0", assert_unchanged.stdout, re.M), assert_unchanged.stdout
    states.are(update, "node1", "node2")
    states.kept("node4")


def boot_id(fleet, name: str) -> str:
    return sh(fleet, name, "cat /proc/sys/kernel/random/boot_id")


def test_a_host_that_needs_a_reboot_is_reported_then_rebooted_alone(fleet, states):
    # The spec the batch rollout above leaves on node1 and node2 (nothing to apply when run after it).
    spec = write_spec(fleet, "queue-update.yaml", queue_size=5)
    states.converged(spec, "node1", "node2")
    limits = ("--limit", "node1", "--limit", "node2")
    sh(fleet, "node1", "touch /var/run/reboot-required")  # what an update that needs a reboot leaves
    boots = {name: boot_id(fleet, name) for name in ("node1", "node2")}

    # Another run holds node2's lock meanwhile (by hand: the lock script's steps, one process): status names it.
    holder = "tester@ctl pid 1 since 00:00:00 UTC (apply)"
    lock = "/run/lock/sd35-provision.lock"
    holding = sh(
        fleet,
        "node2",
        f"setsid sh -c 'exec 9>>{lock}; flock -n 9 || exit 1; echo \"{holder}\" > {lock}; exec sleep 300' "
        "</dev/null >/dev/null 2>&1 & echo $!; "
        f'for i in $(seq 100); do grep -qF "{holder}" {lock} && break; sleep 0.1; done',  # it holds the lock now
    )
    try:
        status = cli("status", str(spec), *limits, "--json", check_exit=0)
    finally:
        sh(fleet, "node2", f"kill {holding}")
    rows = {row["name"]: row for row in json_report(status)["hosts"]}
    assert rows["node1"]["reboot_required"] == "/var/run/reboot-required exists"
    assert rows["node2"]["reboot_required"] is None
    assert (rows["node1"]["locked_by"], rows["node2"]["locked_by"]) == (None, holder)

    # Without --reboot: said, never done.
    said = cli("apply", str(spec), "--limit", "node1", check_exit=0)
    assert re.search(
        r"^node1\s+unchanged\s+0\s+reboot required: run apply --reboot \(/var/run/reboot-required exists\)",
        said.stdout,
        re.M,
    ), said.stdout
    assert boot_id(fleet, "node1") == boots["node1"]

    # With --reboot: only node1 reboots, and comes back serving.
    result = cli("apply", str(spec), *limits, "--reboot", "--json", check_exit=0)
    hosts = {host["name"]: host for host in json_report(result)["hosts"]}
    rebooted = hosts["node1"]
    assert rebooted["status"] == "unchanged" and rebooted["smoke"]["ok"] is True, rebooted
    assert re.fullmatch(
        r"rebooted \(/var/run/reboot-required exists\); back and smoke-tested after \d+s", rebooted["notes"][-1]
    ), rebooted["notes"]
    assert hosts["node2"]["status"] == "unchanged" and not [n for n in hosts["node2"]["notes"] if "reboot" in n]
    assert boot_id(fleet, "node1") != boots["node1"] and boot_id(fleet, "node2") == boots["node2"]
    assert sh(fleet, "node1", "test -e /var/run/reboot-required || echo gone") == "gone"
    assert sh(fleet, "node1", f"systemctl is-active {UNIT}") == "active"
    # The run took its lock back in node1's new boot (/run is a tmpfs): saying what it says on node2, which
    # kept its boot, and released at the end as there.
    assert sh(fleet, "node1", f"head -n 1 {lock}") == sh(fleet, "node2", f"head -n 1 {lock}")
    assert re.search(r" since \d\d:\d\d:\d\d UTC \(apply\)$", sh(fleet, "node1", f"head -n 1 {lock}"))
    assert sh(fleet, "node1", f"flock -n {lock} true && echo free") == "free"
    assert "node1: rebooting: /var/run/reboot-required exists" in result.stderr.splitlines()
    states.are(spec, "node1", "node2")
    states.kept("node3", "node4")
