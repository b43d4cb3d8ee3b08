"""End to end over real SSH: plan, apply, re-apply, drift, preflight, isolation.

Boots its own two-host test fleet (systemd-nspawn containers on a free 127.0.X.0/24 block)
and drives the `sd35-provision` command line as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import booted_fleet, cpu_fleet_defaults

pytestmark = pytest.mark.fleet
REPO = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def fleet(tmp_path_factory, cpu_wheelhouse, fleet_tiny_model):
    with booted_fleet(2, tmp_path_factory.mktemp("provision-fleet")) as booted:
        booted.wheelhouse = cpu_wheelhouse
        booted.tiny_model = fleet_tiny_model
        yield booted


def cli(*args: str, check_exit: int | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "sd35_provision.cli", *args],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    if check_exit is not None:
        assert result.returncode == check_exit, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def write_spec(fleet, name: str = "spec.yaml", host_overrides: dict | None = None, **extra) -> Path:
    defaults = {**cpu_fleet_defaults(fleet, fleet.tiny_model), **extra}
    return fleet.write_spec(fleet.state_dir / name, extra_defaults=defaults, host_overrides=host_overrides)


def exists(fleet, host: str, path: str) -> bool:
    return fleet.run(host, f"test -e {path}").exit_status == 0


def test_preflight_failure_changes_nothing_on_that_host(fleet):
    spec = write_spec(fleet, "preflight.yaml", host_overrides={"node2": {"cache": {"min_free_gb": 10**7}}})
    result = cli("apply", str(spec), "--limit", "node2", check_exit=1)
    assert "node2  failed" in result.stdout
    assert "GB required (cache.min_free_gb)" in result.stdout + result.stderr
    assert not exists(fleet, "node2", "/etc/sd35") and not exists(fleet, "node2", "/srv/sd35")


def test_plan_shows_diffs_and_changes_nothing(fleet):
    spec = write_spec(fleet)
    result = cli("plan", str(spec), check_exit=0)
    assert "== node1:" in result.stdout and "would change" in result.stdout
    assert "System | Install git and git-lfs" in result.stdout
    assert "+++ /etc/sd35/env (wanted)" in result.stdout
    assert "+HF_HOME=/srv/sd35/huggingface" in result.stdout
    for host in ("node1", "node2"):
        assert not exists(fleet, host, "/etc/sd35/env")
        assert not exists(fleet, host, "/usr/bin/git-lfs")


def test_apply_then_reapply_is_a_no_op(fleet):
    spec = write_spec(fleet)
    first = cli("apply", str(spec), check_exit=0)
    assert "node1  changed" in first.stdout and "node2  changed" in first.stdout
    for host in ("node1", "node2"):
        assert fleet.run(host, "git config --system --get filter.lfs.process").stdout.strip() == "git-lfs filter-process"
        stat = fleet.run(host, "stat -c '%U %a' /srv/sd35/huggingface/hub").stdout.strip()
        assert stat == "sd35 750"
        env = fleet.run(host, "bash -lc 'echo $HF_HOME'").stdout.strip()
        assert env == "/srv/sd35/huggingface"  # a login shell sees the same caches as the service

    second = cli("apply", str(spec), check_exit=0)
    assert "node1  unchanged        0" in second.stdout and "node2  unchanged        0" in second.stdout
    cli("drift", str(spec), check_exit=0)


def test_drift_is_reported_and_apply_restores(fleet):
    spec = write_spec(fleet)
    cli("apply", str(spec), check_exit=0)
    fleet.run("node1", "rm -rf /srv/sd35 && echo HF_HOME=/tmp >> /etc/sd35/env")

    result = cli("drift", str(spec), "--json", check_exit=2)
    report = json.loads(result.stdout)
    assert report["drift"] is True
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


def test_unreachable_host_is_reported_by_name_and_others_finish(fleet):
    spec = write_spec(fleet, "with-ghost.yaml")
    ghost = fleet.host("node1").address.rsplit(".", 1)[0] + ".250"  # nothing listens there
    text = spec.read_text() + f"  ghost:\n    address: {ghost}\n"
    spec.write_text(text)
    result = cli("apply", str(spec), check_exit=1)
    assert "ghost  unreachable" in result.stdout
    assert "node1  unchanged" in result.stdout and "node2  unchanged" in result.stdout


def test_host_keys_are_verified_and_accept_new_only_when_asked(fleet, tmp_path):
    spec = write_spec(fleet, "fresh-known-hosts.yaml")
    empty = fleet.state_dir / "empty_known_hosts"
    empty.write_text("")
    spec.write_text(spec.read_text().replace("known_hosts: known_hosts", f"known_hosts: {empty.name}"))

    refused = cli("plan", str(spec), "--limit", "node1", check_exit=1)
    assert "node1  unreachable" in refused.stdout
    assert empty.read_text() == ""

    cli("plan", str(spec), "--limit", "node1", "--accept-new-host-keys", check_exit=0)
    recorded = empty.read_text()
    assert fleet.host("node1").address in recorded and "ssh-ed25519" in recorded

    # A host presenting a different key than recorded is refused even with accept-new.
    other = fleet.known_hosts_path.read_text().splitlines()[1].split()[1:]
    empty.write_text(f"{fleet.host('node1').address} {' '.join(other)}\n")
    changed_key = cli("plan", str(spec), "--limit", "node1", "--accept-new-host-keys", check_exit=1)
    assert "node1  unreachable" in changed_key.stdout


def test_limit_and_facts(fleet):
    spec = write_spec(fleet)
    result = cli("plan", str(spec), "--limit", "node2", check_exit=0)
    assert "node2" in result.stdout and "node1" not in result.stdout
    bad = cli("plan", str(spec), "--limit", "nope", check_exit=1)
    assert "--limit nope: no such host or group" in bad.stderr

    facts = json.loads(cli("facts", str(spec), "--json", check_exit=0).stdout)
    assert set(facts) == {"node1", "node2"}
    assert facts["node1"]["os_name"] == "Debian" and facts["node1"]["os_version"] == "12"
    assert facts["node1"]["python_versions"]["python3"].startswith("3.11")
    assert facts["node1"]["fp8_capable"] is False
    assert facts["node1"]["cache_storage"]["kind"] == "unknown"  # a bind-mounted container root


def test_a_spec_with_a_renamed_key_still_plans_and_says_so(fleet):
    defaults = cpu_fleet_defaults(fleet, fleet.tiny_model, python={"venv_root": "/opt/legacy"})
    spec = fleet.write_spec(fleet.state_dir / "renamed.yaml", extra_defaults=defaults)
    line = next(number for number, text in enumerate(spec.read_text().splitlines(), 1) if "venv_root:" in text)
    result = cli("plan", str(spec), "--limit", "node2", check_exit=0)
    deprecation = f"{spec}:{line}: python.venv_root is deprecated: use python.install_root"
    assert result.stderr.splitlines().count(deprecation) == 1, result.stderr
    assert "/opt/legacy/" in result.stdout  # the old key's value is the install root the plan uses


def test_deploys_run_with_plain_pyinfra(fleet):
    spec = write_spec(fleet)
    pyinfra = Path(sys.executable).with_name("pyinfra")
    result = subprocess.run(
        [str(pyinfra), "-y", "deploys/inventory.py", "deploys/site.py"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "SD35_SPEC": str(spec)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "System | Cache environment file" in output
    assert exists(fleet, "node1", "/etc/sd35/env") and exists(fleet, "node2", "/etc/sd35/env")
