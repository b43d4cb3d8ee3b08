"""End to end over real SSH: plan, apply, re-apply, drift, preflight, isolation.

Boots its own two-host test fleet (systemd-nspawn containers on a free 127.0.X.0/24 block)
and drives the `sd35-provision` command line as a user would. Each test asks ``states`` for the
hosts it starts from (fresh, or applied with the spec), so it runs alone or in any order.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from sd35_provision.jsonreport import load_schema
from tests.conftest import booted_fleet, cpu_fleet_defaults
from tests.integration.support import REPO, cli

pytestmark = pytest.mark.fleet
__all__ = ["REPO", "cli"]  # the other fleet modules used to import them from here


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, cpu_wheelhouse, fleet_tiny_model):
    with booted_fleet(2, tmp_path_factory.mktemp("provision-fleet")) as booted:
        booted.wheelhouse = cpu_wheelhouse
        booted.tiny_model = fleet_tiny_model
        yield booted


def write_spec(fleet, name: str = "spec.yaml", host_overrides: dict | None = None, **extra) -> Path:
    defaults = {**cpu_fleet_defaults(fleet, fleet.tiny_model), **extra}
    return fleet.write_spec(fleet.state_dir / name, extra_defaults=defaults, host_overrides=host_overrides)


def json_report(result: subprocess.CompletedProcess) -> dict:
    """The --json output, valid against schemas/report.schema.json."""
    report = json.loads(result.stdout)
    jsonschema.validate(report, load_schema(), cls=jsonschema.Draft202012Validator)
    return report


def fingerprint(public_key_line: str, tmp_path: Path) -> str:
    """OpenSSH's SHA256 fingerprint of ``type base64`` (ssh-keygen -l), to check ours against."""
    line_file = tmp_path / "key-to-fingerprint.pub"
    line_file.write_text(public_key_line + "\n")
    result = subprocess.run(["ssh-keygen", "-l", "-f", str(line_file)], capture_output=True, text=True, check=True)
    return result.stdout.split()[1]


def host_key_line(fleet, name: str) -> str:
    """``type base64`` of the host key the fleet recorded for ``name``."""
    address = fleet.host(name).address
    line = next(line for line in fleet.known_hosts_path.read_text().splitlines() if line.split()[0] == address)
    return " ".join(line.split()[1:3])


def exists(fleet, host: str, path: str) -> bool:
    return fleet.run(host, f"test -e {path}").exit_status == 0


def test_preflight_failure_changes_nothing_on_that_host(fleet, states):
    states.fresh("node2")
    spec = write_spec(fleet, "preflight.yaml", host_overrides={"node2": {"cache": {"min_free_gb": 10**7}}})
    result = cli("apply", str(spec), "--limit", "node2", check_exit=1)
    assert "node2  failed" in result.stdout
    assert "GB required (cache.min_free_gb)" in result.stdout + result.stderr
    assert not exists(fleet, "node2", "/etc/sd35") and not exists(fleet, "node2", "/srv/sd35")
    states.kept()


def test_plan_shows_diffs_and_changes_nothing(fleet, states):
    states.fresh()
    spec = write_spec(fleet)
    result = cli("plan", str(spec), check_exit=0)
    assert "== node1:" in result.stdout and "would change" in result.stdout
    assert "System | Install git and git-lfs" in result.stdout
    assert "+++ /etc/sd35/env (wanted)" in result.stdout
    assert "+HF_HOME=/srv/sd35/huggingface" in result.stdout
    for host in ("node1", "node2"):
        assert not exists(fleet, host, "/etc/sd35/env")
        assert not exists(fleet, host, "/usr/bin/git-lfs")
    states.kept()


def test_apply_then_reapply_is_a_no_op(fleet, states):
    states.fresh()
    spec = write_spec(fleet)
    first = cli("apply", str(spec), check_exit=0)
    assert "node1  changed" in first.stdout and "node2  changed" in first.stdout
    # The result says what was done, not the notes made before the change.
    assert "not fetched yet" not in first.stdout and "model fetched and verified" in first.stdout, first.stdout
    for host in ("node1", "node2"):
        lfs_filter = fleet.run(host, "git config --system --get filter.lfs.process").stdout.strip()
        assert lfs_filter == "git-lfs filter-process"
        stat = fleet.run(host, "stat -c '%U %a' /srv/sd35/huggingface/hub").stdout.strip()
        assert stat == "sd35 750"
        env = fleet.run(host, "bash -lc 'echo $HF_HOME'").stdout.strip()
        assert env == "/srv/sd35/huggingface"  # a login shell sees the same caches as the service

    second = cli("apply", str(spec), check_exit=0)
    assert "node1  unchanged        0" in second.stdout and "node2  unchanged        0" in second.stdout
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


def test_drift_is_reported_and_apply_restores(fleet, states):
    spec = write_spec(fleet)
    states.converged(spec)
    fleet.run("node1", "rm -rf /srv/sd35 && echo HF_HOME=/tmp >> /etc/sd35/env")

    result = cli("drift", str(spec), "--json", check_exit=2)
    report = json_report(result)
    assert report["command"] == "drift" and report["drift"] is True
    by_host = {host["name"]: host for host in report["hosts"]}
    assert by_host["node2"]["changes"] == []
    changed = {change["operation"] for change in by_host["node1"]["changes"]}
    assert "System | Cache directory /srv/sd35" in changed
    assert "System | Cache environment file" in changed
    env_change = next(c for c in by_host["node1"]["changes"] if c["operation"] == "System | Cache environment file")
    assert "-HF_HOME=/tmp" in env_change["diff"]

    cli("apply", str(spec), check_exit=0)
    assert exists(fleet, "node1", "/srv/sd35/huggingface/hub")
    assert "HF_HOME=/tmp" not in fleet.run("node1", "cat /etc/sd35/env").stdout
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


AIR_GAPPED = (
    # The mirror points nowhere; what apt had cached or listed is gone, and so are the layers' packages.
    "cp -a /etc/apt /root/apt.saved && rm -f /etc/apt/sources.list.d/* && "
    "echo 'deb http://deb.debian.invalid/debian bookworm main' > /etc/apt/sources.list && "
    "apt-get clean && rm -rf /var/lib/apt/lists/* && "
    "DEBIAN_FRONTEND=noninteractive apt-get remove --yes --quiet git-lfs git python3-venv"
)


def test_a_host_without_a_mirror_installs_from_the_apt_bundle(fleet, states, apt_bundle):
    spec = write_spec(fleet)
    states.converged(spec, "node2")
    assert fleet.run("node2", AIR_GAPPED).exit_status == 0
    try:
        # Without the bundle: the table names why (the mirror line), not only apt's last line.
        table = cli("apply", str(spec), "-l", "node2", check_exit=1).stdout
        row = next(line for line in table.splitlines() if line.startswith("node2"))
        assert "failed" in row and "System | Install git and git-lfs: " in row, row
        assert "deb.debian.invalid" in row and "E: Unable to locate package git" in row, row

        bundled = write_spec(fleet, "apt-bundle.yaml", system={"apt_bundle": str(apt_bundle)})
        applied = json_report(cli("apply", str(bundled), "-l", "node2", "--json", check_exit=0))["hosts"][0]
        changed = [op["name"] for op in applied["operations"] if op["changed"]]
        assert changed == [
            "System | Push apt bundle bookworm-amd64",
            "System | Install git and git-lfs",
            "System | Enable git-lfs for every user",  # its filter went with the package
            "Python environment | Install python3-venv",
        ], changed
        installed = fleet.run("node2", "dpkg-query -W -f '${Status}\\n' git git-lfs python3-venv").stdout
        assert installed.split("\n")[:3] == ["install ok installed"] * 3, installed
        assert fleet.run("node2", "git lfs version").exit_status == 0
        cli("drift", str(bundled), "-l", "node2", check_exit=0)  # and nothing left to do
    finally:
        fleet.run("node2", "rm -rf /etc/apt && mv /root/apt.saved /etc/apt")
    states.are(spec, "node2")  # the bundle changes nothing else: the same state as the spec's


def test_unreachable_host_is_reported_by_name_and_others_finish(fleet, states):
    states.converged(write_spec(fleet))
    spec = write_spec(fleet, "with-ghost.yaml")
    ghost = fleet.host("node1").address.rsplit(".", 1)[0] + ".250"  # nothing listens there
    text = spec.read_text() + f"  ghost:\n    address: {ghost}\n"
    spec.write_text(text)
    result = cli("apply", str(spec), check_exit=1)
    assert "ghost  unreachable" in result.stdout
    assert "node1  unchanged" in result.stdout and "node2  unchanged" in result.stdout
    states.kept()


def test_host_keys_are_verified_and_accept_new_only_when_asked(fleet, states, tmp_path):
    spec = write_spec(fleet, "fresh-known-hosts.yaml")
    empty = fleet.state_dir / "empty_known_hosts"
    empty.write_text("")
    spec.write_text(spec.read_text().replace("known_hosts: known_hosts", f"known_hosts: {empty.name}"))

    # Not in known_hosts: a problem on this side ("error", not "unreachable"), in one line with what to do.
    refused = cli("plan", str(spec), "--limit", "node1", check_exit=1)
    assert "node1  error" in refused.stdout
    address = fleet.host("node1").address
    assert (
        f"connect: {address} is not in {empty}: check the host's key fingerprint, then pass "
        "--accept-new-host-keys once to record it" in refused.stdout
    )
    assert empty.read_text() == ""

    accepted = cli("plan", str(spec), "--limit", "node1", "--accept-new-host-keys", check_exit=0)
    recorded = empty.read_text()
    assert fleet.host("node1").address in recorded and "ssh-ed25519" in recorded
    node1_key = fingerprint(host_key_line(fleet, "node1"), tmp_path)
    assert f"node1: accepted new host key ssh-ed25519 {node1_key}, recorded in {empty}:1" in accepted.stderr

    # A host presenting a different key than recorded is refused even with accept-new: both fingerprints, file, line.
    other = host_key_line(fleet, "node2")
    empty.write_text(f"# an older entry\n{address} {other}\n")
    changed_key = cli("plan", str(spec), "--limit", "node1", "--accept-new-host-keys", check_exit=1)
    assert "node1  error" in changed_key.stdout
    assert (
        f"connect: host key of {address} changed: it presents ssh-ed25519 {node1_key}, {empty}:2 has ssh-ed25519 "
        f"{fingerprint(other, tmp_path)}. Someone may be intercepting the connection"
    ) in changed_key.stdout
    assert f"ssh-keygen -R '{address}' -f {empty}" in changed_key.stdout
    assert empty.read_text() == f"# an older entry\n{address} {other}\n"  # nothing recorded
    states.kept()  # plans only


def test_a_passphrase_protected_or_public_key_is_one_line_with_what_to_do(fleet, states, tmp_path):
    protected = tmp_path / "protected_key"
    shutil.copy(fleet.key_path, protected)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "secret", "-f", str(protected)], check=True)
    public = Path(f"{fleet.key_path}.pub")
    for key, expected in (
        (protected, f"ssh.key {protected} is protected by a passphrase"),
        (public, f"ssh.key {public} is a public key: give the private key ({fleet.key_path}?)"),
    ):
        spec = write_spec(fleet, "key.yaml", ssh={"key": str(key)})
        result = cli("plan", str(spec), "--limit", "node1", check_exit=1)
        assert "node1  error" in result.stdout and expected in result.stdout, result.stdout
        assert "Traceback" not in result.stdout + result.stderr
        assert len((result.stdout + result.stderr).splitlines()) < 10  # not 130 lines of traceback

    # What the message advises works: without ssh.key, the key in ssh-agent logs in.
    home, socket_path = tmp_path / "home", tmp_path / "agent.sock"
    home.mkdir()
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if socket_path.exists():
                break
            subprocess.run(["sleep", "0.1"])
        agent_env = {"SSH_AUTH_SOCK": str(socket_path), "HOME": str(home)}  # HOME: no ~/.ssh/id_* to fall back on
        subprocess.run(["ssh-add", "-q", str(fleet.key_path)], check=True, env={**os.environ, **agent_env})
        spec = write_spec(fleet, "agent.yaml")
        spec.write_text(
            "".join(line for line in spec.read_text().splitlines(keepends=True) if not line.strip().startswith("key:"))
        )
        cli("plan", str(spec), "--limit", "node1", check_exit=0, env=agent_env)
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    states.kept()  # plans only


def test_accept_new_host_keys_creates_known_hosts_on_a_fresh_control_machine(fleet, states, tmp_path):
    home = tmp_path / "fresh-home"  # no ~/.ssh at all
    home.mkdir()
    spec = write_spec(fleet, "default-known-hosts.yaml")
    spec.write_text(spec.read_text().replace("    known_hosts: known_hosts\n", ""))
    known_hosts = home / ".ssh" / "known_hosts"

    refused = cli("plan", str(spec), "--limit", "node1", check_exit=1, env={"HOME": str(home)})
    assert "node1  error" in refused.stdout
    assert f"no known_hosts file {known_hosts}: pass --accept-new-host-keys to create it" in refused.stdout
    assert not (home / ".ssh").exists()

    accepted = cli(
        "plan", str(spec), "--limit", "node1", "--accept-new-host-keys", check_exit=0, env={"HOME": str(home)}
    )
    assert stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o700
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    node1_key = fingerprint(host_key_line(fleet, "node1"), tmp_path)
    assert f"node1: accepted new host key ssh-ed25519 {node1_key}, recorded in {known_hosts}:1" in accepted.stderr
    assert known_hosts.read_text().split() == [fleet.host("node1").address, *host_key_line(fleet, "node1").split()]
    states.kept()  # plans only


def test_limit_and_facts(fleet, states):
    spec = write_spec(fleet)
    result = cli("plan", str(spec), "--limit", "node2", check_exit=0)
    assert "node2" in result.stdout and "node1" not in result.stdout
    bad = cli("plan", str(spec), "--limit", "nope", check_exit=64)
    assert "--limit nope: no such host or group (known: node1, node2)" in bad.stderr

    for limit in (["-l", "node1,node2"], ["-l", "node*"], ["--limit", "node?", "-v"]):
        facts = json_report(cli("facts", str(spec), *limit, "--json", check_exit=0))
        assert facts["command"] == "facts" and facts["ok"] is True
        assert [host["name"] for host in facts["hosts"]] == ["node1", "node2"]  # spec order, every time
    node1 = facts["hosts"][0]["facts"]
    assert node1["os_name"] == "Debian" and node1["os_version"] == "12"
    assert node1["python_versions"]["python3"].startswith("3.11")
    assert node1["fp8_capable"] is None  # no GPU: null, as status says it
    assert node1["cache_storage"]["kind"] == "unknown"  # a bind-mounted container root

    status = json_report(cli("status", str(spec), "-l", "node1", "--json", check_exit=0))
    assert [(host["name"], host["status"], host["fp8_capable"]) for host in status["hosts"]] == [
        ("node1", "ok", node1["fp8_capable"])
    ]
    states.kept()  # plans, facts and status only


def test_a_spec_with_a_renamed_key_still_plans_and_says_so(fleet, states):
    defaults = cpu_fleet_defaults(fleet, fleet.tiny_model, python={"venv_root": "/opt/legacy"})
    spec = fleet.write_spec(fleet.state_dir / "renamed.yaml", extra_defaults=defaults)
    line = next(number for number, text in enumerate(spec.read_text().splitlines(), 1) if "venv_root:" in text)
    result = cli("plan", str(spec), "--limit", "node2", check_exit=0)
    deprecation = f"{spec}:{line}: python.venv_root is deprecated: use python.install_root"
    assert result.stderr.splitlines().count(deprecation) == 1, result.stderr
    assert "/opt/legacy/" in result.stdout  # the old key's value is the install root the plan uses
    states.kept()  # a plan only


def test_deploys_run_with_plain_pyinfra(fleet, states):
    spec = write_spec(fleet)
    states.converged(spec)  # what the deploys find to do is not the point here: that they run is
    pyinfra = Path(sys.executable).with_name("pyinfra")
    result = subprocess.run(
        [str(pyinfra), "-y", "deploys/inventory.py", "deploys/site.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "SD35_SPEC": str(spec)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "System | Cache environment file" in output
    assert exists(fleet, "node1", "/etc/sd35/env") and exists(fleet, "node2", "/etc/sd35/env")


def test_driver_packages_are_held_and_an_unheld_one_is_drift(fleet, states, tmp_path):
    """A fleet host has no GPU (gpu.accelerator: cpu, so the driver layer looks for none); its spec names the
    driver package it has (gpu.driver.packages), a real .deb built here, so hold and drift run for real."""
    from tests.fakedeb import build_fake_package, install_command

    base = write_spec(fleet)
    states.converged(base, "node2")
    hold_spec = write_spec(
        fleet, "driver-hold.yaml", host_overrides={"node2": {"gpu": {"driver": {"packages": ["nvidia-driver"]}}}}
    )
    deb = build_fake_package(tmp_path, "nvidia-driver", "535.216.01-1~sd35test")
    installed = fleet.run("node2", install_command(deb))
    assert installed.exit_status == 0, installed.stderr
    assert fleet.run("node2", "apt-mark showhold").stdout.split() == []

    cli("apply", str(hold_spec), "--limit", "node2", check_exit=0)
    assert fleet.run("node2", "apt-mark showhold").stdout.split() == ["nvidia-driver"]
    blacklist = fleet.run("node2", "cat /etc/apt/apt.conf.d/51sd35-nvidia-driver").stdout
    assert 'Unattended-Upgrade::Package-Blacklist {\n    "^nvidia-driver$";\n};' in blacklist
    # apt itself reads the file: unattended-upgrades sees the entry
    config = fleet.run("node2", "apt-config dump").stdout.splitlines()
    assert 'Unattended-Upgrade::Package-Blacklist:: "^nvidia-driver$";' in config

    assert fleet.run("node2", "apt-mark unhold nvidia-driver").exit_status == 0
    report = json_report(cli("drift", str(hold_spec), "--limit", "node2", "--json", check_exit=2))
    [host] = report["hosts"]
    assert [change["operation"] for change in host["changes"]] == ["NVIDIA driver | Hold nvidia-driver"]

    again = json_report(cli("apply", str(hold_spec), "--limit", "node2", "--json", check_exit=0))
    assert [change["operation"] for change in again["hosts"][0]["changes"]] == ["NVIDIA driver | Hold nvidia-driver"]
    assert fleet.run("node2", "apt-mark showhold").stdout.split() == ["nvidia-driver"]
    states.are(hold_spec, "node2")
