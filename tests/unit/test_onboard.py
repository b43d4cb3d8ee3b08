"""Onboarding without a host: the spec entry it writes, host-key decisions, the account script, validation."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import paramiko
import pytest

from sd35_provision.errors import SpecError
from sd35_provision.onboarding import OnboardError, OnboardRequest, settings_from
from sd35_provision.onboarding.accounts import account_script, as_root
from sd35_provision.onboarding.hostkeys import fingerprint, host_key_verdict, record_host_key, recorded_keys
from sd35_provision.onboarding.specentry import check_spec_with, plan_entry, write_spec

SPEC = """\
# lab
defaults:
  ssh:
    user: root
    key: keys/fleet     # the fleet's key
    known_hosts: known_hosts
  gpu:
    accelerator: cpu
  model:
    source: push
    path: model
groups:
  lab:
    service:
      port: 8600
  admins:
    ssh:
      user: admin
hosts:
  n1:
    address: 127.0.0.5
"""

# Public halves of ed25519 keys made with ssh-keygen.
PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKP+wRUqKtNf/cZWy0xrP1CPhrWU30Fhzg6ESsfjHLt9"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEopk+pHKvtlWdynYvytLbq9lbmxZNuQotw7g5b638Iw"


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "fleet").write_text("private\n")
    (tmp_path / "keys" / "fleet.pub").write_text(PUBLIC + " fleet\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    (tmp_path / "known_hosts").write_text("")
    path = tmp_path / "fleet.yaml"
    path.write_text(SPEC)
    return path


def request(spec: Path, **kwargs) -> OnboardRequest:
    return OnboardRequest(
        **{"spec_path": spec, "name": "n2", "address": "127.0.0.6", "key": spec.parent / "keys" / "fleet", **kwargs}
    )


def test_entry_holds_only_what_defaults_and_groups_do_not_give(spec):
    entry, access = plan_entry(request(spec, groups=("lab",), settings=settings_from(["service.bind=127.0.0.6"])))
    assert entry == {"address": "127.0.0.6", "groups": ["lab"], "service": {"bind": "127.0.0.6"}}
    assert (access.user, access.port, access.sudo) == ("root", 22, False)
    assert access.key == spec.parent / "keys" / "fleet"
    assert access.known_hosts == spec.parent / "known_hosts"
    assert access.public_key == PUBLIC


def test_deploy_user_with_sudo_and_its_own_key(spec, tmp_path):
    other = tmp_path / "keys" / "deploy"
    other.write_text("private\n")
    Path(f"{other}.pub").write_text(PUBLIC + "\n")
    entry, access = plan_entry(
        request(spec, deploy_user="deploy", deploy_key=other, sudo=True, settings=settings_from(["smoke.steps=3"]))
    )
    assert list(entry) == ["address", "ssh", "smoke"]  # where and how to reach it first
    assert entry["ssh"] == {"user": "deploy", "key": "keys/deploy", "sudo": True}
    assert entry["smoke"] == {"steps": 3}
    assert (access.user, access.sudo, access.key) == ("deploy", True, other)


def test_a_group_that_sets_the_user_is_inherited_not_repeated(spec):
    entry, access = plan_entry(request(spec, groups=("admins",)))
    assert "ssh" not in entry and access.user == "admin"
    entry, _ = plan_entry(request(spec, groups=("admins",), deploy_user="root"))
    assert entry["ssh"] == {"user": "root"}


def test_without_a_key_in_the_spec_the_first_contact_key_becomes_the_deploy_key(spec, tmp_path):
    spec.write_text(SPEC.replace("    key: keys/fleet     # the fleet's key\n", ""))
    outside = tmp_path.parent / f"{tmp_path.name}-outside-key"
    outside.write_text("private\n")
    Path(f"{outside}.pub").write_text(PUBLIC + "\n")
    entry, access = plan_entry(request(spec, key=outside))
    assert entry["ssh"] == {"key": str(outside)}  # not below the spec: absolute
    with pytest.raises(OnboardError, match="no SSH key for the deploy user"):
        plan_entry(request(spec, key=None, password="pw"))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"name": "-bad"}, "--name -bad"),
        ({"address": "10.0.0.300"}, "--address 10.0.0.300"),
        ({"deploy_user": "Root;rm"}, "not a valid user name"),
    ],
)
def test_bad_names_are_refused_before_anything_happens(spec, bad, message):
    with pytest.raises(OnboardError, match=message):
        plan_entry(request(spec, **bad))


def test_settings_are_read_as_yaml_values():
    assert settings_from(
        ["service.port=8601", "gpu.driver.mode=install", "smoke.enabled=false", "service.bind=10.0.0.5"]
    ) == {
        "service": {"port": 8601, "bind": "10.0.0.5"},
        "gpu": {"driver": {"mode": "install"}},
        "smoke": {"enabled": False},
    }
    for bad in ("service", "nosuch.field=1", "service.port"):
        with pytest.raises(OnboardError, match="--set"):
            settings_from([bad])


def test_spec_is_checked_before_the_host_is_touched_and_left_alone(spec):
    with pytest.raises(SpecError) as caught:
        check_spec_with(spec, "n2", {"address": "127.0.0.6", "groups": ["nosuch"]})
    assert caught.value.problems[0].startswith(f"{spec}:25: hosts.n2.groups[0]: unknown group 'nosuch'")
    assert spec.read_text() == SPEC
    assert sorted(p.name for p in spec.parent.iterdir()) == ["fleet.yaml", "keys", "known_hosts", "model"]
    check_spec_with(spec, "n2", {"address": "127.0.0.6"})  # fine: no error, still unchanged
    assert spec.read_text() == SPEC


def test_an_invalid_result_puts_the_old_file_back(spec):
    with pytest.raises(SpecError) as caught:
        write_spec(spec, "n2", {"address": "127.0.0.6", "service": {"bind": "0.0.0.0"}}, print)
    assert "service.api_key_file is required" in "\n".join(caught.value.problems)
    assert caught.value.notes == [f"(the spec file {spec} was put back as it was)"]
    assert spec.read_text() == SPEC

    lines: list[str] = []
    _, edit = write_spec(spec, "n2", {"address": "127.0.0.6"}, lines.append)
    assert edit.changed and lines == [f"added n2 to {spec}:22"]
    _, again = write_spec(spec, "n2", {"address": "127.0.0.6"}, lines.append)
    assert not again.changed and lines[-1].endswith("with these settings; the spec is unchanged")


def test_a_spec_with_a_renamed_key_onboards_and_names_it(spec):
    old = SPEC.replace("    accelerator: cpu\n", "    accelerator: cpu\n  python:\n    venv_root: /srv/sd35\n")
    spec.write_text(old)
    check_spec_with(spec, "n2", {"address": "127.0.0.6"})  # the old key is no problem
    loaded, edit = write_spec(spec, "n2", {"address": "127.0.0.6"}, [].append)
    assert edit.changed
    assert loaded.warnings == (f"{spec}:10: python.venv_root is deprecated: use python.install_root",)
    assert loaded.host("n2").python.install_root == "/srv/sd35"


def test_host_keys_known_unknown_changed(tmp_path):
    key, other = _key(PUBLIC), _key(OTHER)
    known = tmp_path / "ssh" / "known_hosts"
    assert recorded_keys(known, "10.0.0.5", 22) == {}
    assert host_key_verdict({}, key) == "unknown"

    record_host_key(known, "10.0.0.5", 22, key)
    record_host_key(known, "10.0.0.6", 2222, other)
    assert known.read_text() == f"10.0.0.5 {PUBLIC}\n[10.0.0.6]:2222 {other.get_name()} {other.get_base64()}\n"
    assert (known.stat().st_mode & 0o777) == 0o600
    assert host_key_verdict(recorded_keys(known, "10.0.0.5", 22), key) == "known"
    assert host_key_verdict(recorded_keys(known, "10.0.0.5", 22), other) == "changed"
    assert recorded_keys(known, "10.0.0.6", 22) == {}  # another port is another entry


def test_fingerprint_is_the_one_ssh_keygen_shows(tmp_path):
    (tmp_path / "key.pub").write_text(PUBLIC + "\n")
    shown = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "key.pub")], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert fingerprint(_key(PUBLIC)) == shown


def test_account_script_is_valid_shell_and_quotes_what_it_is_given():
    script = account_script("deploy", PUBLIC, sudo=True)
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    assert "user=deploy\n" in script and "/etc/sudoers.d/90-sd35-deploy" in script
    assert "visudo -cqf" in script and "NOPASSWD:ALL" in script
    assert "sudoers" not in account_script("root", PUBLIC, sudo=True)  # root needs no sudo rule


def test_root_commands_from_another_account():
    assert as_root("id", "root", None) == ("sh -c id", None)
    assert as_root("id", "admin", "pw") == ("sudo -S -p '' sh -c id", "pw\n")  # password on stdin, never argv
    assert as_root("id", "admin", None) == ("sudo -n sh -c id", None)


def _key(line: str) -> paramiko.PKey:
    kind, data = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))
