"""import-ansible: INI and YAML inventories become a spec skeleton that validates, group names kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sd35_provision.ansible_import import (
    AnsibleInventoryError,
    expand_host_pattern,
    read_inventory,
    spec_from_inventory,
)
from sd35_provision.hostspec import load_spec

INI = """\
# the rack
[h100]
gpu-a1 ansible_host=10.12.0.11
gpu-a[2:3] ansible_user=ubuntu

[h100:vars]
ansible_ssh_private_key_file=keys/rack.pem
ansible_become=true

[edge]
l40s ansible_host=l40s.office.example.com ansible_port=2222 ansible_python_interpreter=/usr/bin/python3

[gpu:vars]
ansible_port=22

[gpu:children]
h100
edge

[all:vars]
ansible_user=deploy
"""

YAML = """\
all:
  vars:
    ansible_user: deploy
  hosts:
    lonely.example.com:
  children:
    gpu:
      children:
        h100:
          hosts:
            gpu-a1: {ansible_host: 10.12.0.11}
            gpu-a[2:3]:
          vars:
            ansible_ssh_private_key_file: ~/.ssh/rack.pem
            ansible_become: yes
        edge:
          hosts:
            l40s:
              ansible_host: l40s.office.example.com
              ansible_port: 2222
              ansible_user: edge
"""


def imported(tmp_path: Path, name: str, text: str) -> tuple[dict, Path]:
    inventory = tmp_path / name
    inventory.write_text(text)
    spec_text = spec_from_inventory(read_inventory(inventory))
    spec = tmp_path / f"{name}.spec.yaml"
    spec.write_text(spec_text)
    return yaml.safe_load(spec_text), spec


def test_ini_inventory(tmp_path):
    data, spec = imported(tmp_path, "hosts.ini", INI)
    assert data["defaults"]["ssh"] == {"user": "deploy"}
    assert data["groups"]["h100"]["ssh"] == {"key": f"{tmp_path}/keys/rack.pem", "sudo": True}
    assert data["groups"]["gpu"]["description"] == "Ansible group; children: h100, edge"
    assert list(data["hosts"]) == ["gpu-a1", "gpu-a2", "gpu-a3", "l40s"]
    assert data["hosts"]["gpu-a1"] == {"address": "10.12.0.11", "groups": ["gpu", "h100"]}
    assert data["hosts"]["gpu-a2"] == {"address": "gpu-a2", "groups": ["gpu", "h100"], "ssh": {"user": "ubuntu"}}
    assert data["hosts"]["l40s"] == {
        "address": "l40s.office.example.com",
        "groups": ["gpu", "edge"],
        "ssh": {"port": 2222},
    }
    assert "# Not carried over: ansible_python_interpreter (host l40s)" in spec.read_text()

    fleet = load_spec(spec, check_local_files=False)  # the key file does not exist here
    assert fleet.host("gpu-a3").ssh.user == "ubuntu" and fleet.host("gpu-a1").ssh.user == "deploy"
    assert fleet.host("gpu-a1").ssh.sudo and fleet.host("gpu-a1").ssh.key == tmp_path / "keys" / "rack.pem"
    assert fleet.host("l40s").ssh.port == 2222 and fleet.host("gpu-a1").ssh.port == 22
    assert data["groups"]["gpu"]["ssh"] == {"port": 22}
    assert fleet.groups["gpu"] == ("gpu-a1", "gpu-a2", "gpu-a3", "l40s")


def test_yaml_inventory(tmp_path):
    data, spec = imported(tmp_path, "hosts.yaml", YAML)
    assert list(data["groups"]) == ["gpu", "h100", "edge"]
    assert data["hosts"]["lonely.example.com"] == {"address": "lonely.example.com"}
    assert data["hosts"]["gpu-a3"] == {"address": "gpu-a3", "groups": ["gpu", "h100"]}
    assert data["hosts"]["l40s"]["ssh"] == {"port": 2222, "user": "edge"}
    assert data["hosts"]["l40s"]["groups"] == ["gpu", "edge"]  # parents first: the child's settings win
    fleet = load_spec(spec, check_local_files=False)
    assert [host.name for host in fleet.hosts] == ["lonely.example.com", "gpu-a1", "gpu-a2", "gpu-a3", "l40s"]
    assert fleet.host("gpu-a2").ssh.key == Path("~/.ssh/rack.pem").expanduser()
    assert fleet.host("l40s").ssh.user == "edge" and fleet.host("gpu-a1").ssh.user == "deploy"


def test_host_ranges():
    assert expand_host_pattern("web[01:03].example.com") == [
        "web01.example.com",
        "web02.example.com",
        "web03.example.com",
    ]
    assert expand_host_pattern("db-[a:c]") == ["db-a", "db-b", "db-c"]
    assert expand_host_pattern("n[1:5:2]") == ["n1", "n3", "n5"]
    assert expand_host_pattern("plain") == ["plain"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[web\nhost1\n", r"hosts.ini:1: '\[web': a section header must end with '\]'"),
        ("[web:nonsense]\n", "unknown section kind 'nonsense'"),
        ("[web:vars]\njustaword\n", r"hosts.ini:2: 'justaword': expected name=value"),
        ("[web]\n", "no hosts found"),
    ],
)
def test_what_is_not_an_inventory_is_refused_with_its_line(tmp_path, text, message):
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(text)
    with pytest.raises(AnsibleInventoryError, match=message):
        spec_from_inventory(read_inventory(inventory))
