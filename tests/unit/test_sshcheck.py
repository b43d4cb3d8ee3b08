"""SSH problems on this side, found before connecting and said in one line (the fleet tests connect for real)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from sd35_provision import sshcheck
from sd35_provision.hostspec.settings import HostSettings, SshSettings


def keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "test", "-f", str(path)], check=True)
    return path


def host(name: str = "n1", address: str = "10.0.0.1", **ssh) -> HostSettings:
    return HostSettings(name=name, address=address, ssh=SshSettings(**ssh))


def test_a_usable_key_and_known_hosts_pass(tmp_path):
    key = keygen(tmp_path / "id")
    (tmp_path / "known_hosts").write_text("")
    assert sshcheck.check_before_connect([host(key=key, known_hosts=tmp_path / "known_hosts")], False) == {}


def test_a_passphrase_protected_key_says_to_use_the_agent(tmp_path):
    key = keygen(tmp_path / "id", passphrase="secret")
    problem = sshcheck.key_problem(key)
    assert problem.startswith(f"ssh.key {key} is protected by a passphrase")
    assert f"ssh-add {key}" in problem and "remove ssh.key" in problem and "\n" not in problem


def test_a_public_key_names_the_private_one(tmp_path):
    keygen(tmp_path / "id")
    assert sshcheck.key_problem(tmp_path / "id.pub") == (
        f"ssh.key {tmp_path}/id.pub is a public key: give the private key ({tmp_path}/id?)"
    )


def test_a_file_that_is_no_key(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    assert sshcheck.key_problem(tmp_path / "notes.txt").startswith(
        f"ssh.key {tmp_path}/notes.txt is not a private key that paramiko can read"
    )
    assert sshcheck.key_problem(tmp_path / "missing") == f"ssh.key {tmp_path}/missing does not exist"


def test_problems_are_per_host_and_local(tmp_path):
    good, bad = keygen(tmp_path / "good"), keygen(tmp_path / "bad", passphrase="x")
    (tmp_path / "kh").write_text("")
    problems = sshcheck.check_before_connect(
        [host("a", key=good, known_hosts=tmp_path / "kh"), host("b", "10.0.0.2", key=bad, known_hosts=tmp_path / "kh")],
        accept_new=False,
    )
    assert list(problems) == ["b"] and problems["b"].local


def test_a_missing_known_hosts_is_created_only_when_accepting_new_keys(tmp_path):
    known_hosts = tmp_path / "fresh-home" / ".ssh" / "known_hosts"
    settings = host(known_hosts=known_hosts)
    refused = sshcheck.check_before_connect([settings], accept_new=False)
    assert refused["n1"].message.startswith(f"no known_hosts file {known_hosts}: pass --accept-new-host-keys")
    assert not known_hosts.parent.exists()

    assert sshcheck.check_before_connect([settings], accept_new=True) == {}
    assert known_hosts.read_text() == ""
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert stat.S_IMODE(known_hosts.parent.stat().st_mode) == 0o700


def test_the_default_known_hosts_is_in_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sshcheck.known_hosts_path(host()) == tmp_path / ".ssh" / "known_hosts"
    assert sshcheck.check_before_connect([host()], accept_new=True) == {}
    assert (tmp_path / ".ssh" / "known_hosts").is_file()


def test_connect_errors_are_explained():
    settings = host(known_hosts=Path("/k/known_hosts"), port=2222, key=Path("/k/id"), user="deploy")
    missing = sshcheck.explain_connect_error(
        settings, "SSH error (StrictPolicy: No host key for [10.0.0.1]:2222 found in known_hosts)"
    )
    assert missing.local and missing.message.startswith("[10.0.0.1]:2222 is not in /k/known_hosts: check the")
    refused = sshcheck.explain_connect_error(settings, "Authentication error (username=deploy, key=/k/id)")
    assert refused.local and refused.message.startswith("deploy@[10.0.0.1]:2222 refused the login with key /k/id")
    down = sshcheck.explain_connect_error(settings, "Could not connect ([Errno 111] Connection refused)")
    assert not down.local and down.message == "Could not connect ([Errno 111] Connection refused)"


def test_recorded_keys_are_found_by_plain_and_hashed_names(tmp_path):
    one = paramiko.Ed25519Key.from_private_key_file(str(keygen(tmp_path / "one")))
    two = paramiko.Ed25519Key.from_private_key_file(str(keygen(tmp_path / "two")))
    hashed = paramiko.HostKeys.hash_host("[10.0.0.1]:2222")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"# comment\n10.0.0.9 {one.get_name()} {one.get_base64()}\n"
        f"{hashed} {two.get_name()} {two.get_base64()}\n"
        f"10.0.0.1 {one.get_name()} {one.get_base64()}\n"
    )
    found = sshcheck.recorded_keys(known_hosts, "[10.0.0.1]:2222")
    assert [(line, key.fingerprint) for line, key in found] == [(3, two.fingerprint)]
    assert [line for line, _ in sshcheck.recorded_keys(known_hosts, "10.0.0.1")] == [4]


def test_accepted_keys_are_said_with_their_fingerprints(tmp_path):
    key = paramiko.Ed25519Key.from_private_key_file(str(keygen(tmp_path / "hostkey")))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        "10.0.0.9 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    )
    hosts = [host("n1", known_hosts=known_hosts), host("n2", "10.0.0.2", known_hosts=known_hosts)]
    watch = sshcheck.KnownHostsWatch(hosts)
    with open(known_hosts, "a") as appended:  # as pyinfra's accept-new policy does
        appended.write(paramiko.hostkeys.HostKeyEntry(["10.0.0.2"], key).to_line())
    assert watch.accepted() == [f"n2: accepted new host key ssh-ed25519 {key.fingerprint}, recorded in {known_hosts}:2"]
    assert key.fingerprint.startswith("SHA256:")


@pytest.mark.skipif(not Path("/usr/bin/ssh-keygen").exists(), reason="needs ssh-keygen")
def test_fingerprints_match_openssh(tmp_path):
    key_path = keygen(tmp_path / "id")
    openssh = subprocess.run(["ssh-keygen", "-l", "-f", str(key_path)], capture_output=True, text=True, check=True)
    assert paramiko.Ed25519Key.from_private_key_file(str(key_path)).fingerprint == openssh.stdout.split()[1]


def test_a_spec_naming_a_missing_known_hosts_loads_when_accept_new_will_create_it(tmp_path):
    from sd35_provision.errors import SpecError
    from sd35_provision.hostspec import load_spec

    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        "defaults:\n  ssh: {known_hosts: fresh/known_hosts}\n"
        "  model: {source: hf, repo: a/b, revision: ceddf0a7fdf2064ea28e2213e3b84e4afa170a0f}\n"
        "hosts:\n  n1: {address: 10.0.0.1}\n"
    )
    with pytest.raises(SpecError, match="fresh/known_hosts does not exist on this machine"):
        load_spec(spec)
    [settings] = load_spec(spec, known_hosts_may_be_missing=True).hosts
    assert sshcheck.check_before_connect([settings], accept_new=True) == {}
    assert (tmp_path / "fresh" / "known_hosts").is_file()
