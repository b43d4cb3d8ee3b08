"""Turn a validated spec into a pyinfra Inventory.

Each host's merged settings travel as ``host.data.sd35`` (a HostSettings) for
plain ``pyinfra`` (deploys/inventory.py gets exactly the same inventory), where
deploys/site.py builds the host's plan from them; the runner hands the layers
their plan as an argument instead.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from pyinfra.api import Inventory

from sd35_provision.errors import UsageError
from sd35_provision.hostspec.settings import FleetSpec, HostSettings


def select_hosts(spec: FleetSpec, limit: tuple[str, ...] = ()) -> list[HostSettings]:
    """Hosts named by ``limit``, in spec order; all hosts when empty.

    Each item is a host or group name, a comma-separated list of them, or a
    shell-style glob over both (``node*``, ``gpu-h100-a[12]``), as Ansible's
    and pyinfra's ``--limit`` take them. A name or glob that matches nothing
    is a UsageError naming the known hosts and groups.
    """
    if not limit:
        return list(spec.hosts)
    host_names = [host.name for host in spec.hosts]
    wanted: set[str] = set()
    for item in limit:
        for pattern in filter(None, (part.strip() for part in item.split(","))):
            hosts = fnmatch.filter(host_names, pattern)
            groups = fnmatch.filter(list(spec.groups), pattern)
            if not hosts and not groups:
                known = ", ".join(host_names + [f"{group} (group)" for group in spec.groups])
                raise UsageError(f"{spec.path}: --limit {pattern}: no such host or group (known: {known})")
            wanted.update(hosts)
            for group in groups:
                wanted.update(spec.groups[group])
    return [host for host in spec.hosts if host.name in wanted]


def connection_data(settings: HostSettings, accept_new_host_keys: bool = False) -> dict[str, Any]:
    ssh = settings.ssh
    data: dict[str, Any] = {
        "ssh_hostname": settings.address,
        "ssh_port": ssh.port,
        "ssh_user": ssh.user,
        # pyinfra's default is accept-new; we verify host keys unless asked.
        "ssh_strict_host_key_checking": "accept-new" if accept_new_host_keys else "yes",
        "ssh_paramiko_connect_kwargs": {"timeout": ssh.connect_timeout, "banner_timeout": ssh.connect_timeout},
        "_sudo": ssh.sudo,
        "sd35": settings,
    }
    if ssh.key:
        data["ssh_key"] = str(ssh.key)
    if ssh.known_hosts:
        data["ssh_known_hosts_file"] = str(ssh.known_hosts)
    return data


def build_inventory(hosts: list[HostSettings], accept_new_host_keys: bool = False) -> Inventory:
    names = [(host.name, connection_data(host, accept_new_host_keys)) for host in hosts]
    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for host in hosts:
        for group in host.groups:
            groups.setdefault(group, ([], {}))[0].append(host.name)
    return Inventory((names, {}), **groups)
