"""``import-ansible``: an Ansible inventory (INI or YAML) as a host spec skeleton.

Hosts, groups and children keep their names; what a host or group says about
SSH (``ansible_host``, ``ansible_port``, ``ansible_user``,
``ansible_ssh_private_key_file``, ``ansible_become``) becomes its ``address``
and ``ssh`` settings, the ``all`` group's becomes ``defaults``. A host is in
every group that holds it, directly or through ``children``, parents first,
so that (as in Ansible) a child group's settings win over its parent's.
Other variables are listed in a comment, not carried over.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sd35_provision.errors import Sd35Error

# Ansible variable -> (spec ssh field, how to convert); the ansible_ssh_* spellings are the old names.
SSH_VARIABLES: dict[str, str] = {
    "ansible_port": "port",
    "ansible_ssh_port": "port",
    "ansible_user": "user",
    "ansible_ssh_user": "user",
    "ansible_ssh_private_key_file": "key",
    "ansible_private_key_file": "key",
    "ansible_become": "sudo",
}
ADDRESS_VARIABLES = ("ansible_host", "ansible_ssh_host")
IMPLICIT_GROUPS = ("all", "ungrouped")

# The model section every spec needs before it validates: the example's pinned SD 3.5 Large, to be checked.
MODEL_SKELETON = {
    "source": "hf",
    "repo": "stabilityai/stable-diffusion-3.5-large",
    "revision": "ceddf0a7fdf2064ea28e2213e3b84e4afa170a0f",
}

_RANGE = re.compile(r"\[([0-9]+|[a-z]):([0-9]+|[a-z])(?::([0-9]+))?\]")


class AnsibleInventoryError(Sd35Error):
    """The file is not an Ansible inventory this importer understands (names file and line)."""


@dataclass
class Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    """Hosts (name -> variables, in first-seen order) and groups, as Ansible reads them."""

    path: Path
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)

    def group(self, name: str) -> Group:
        return self.groups.setdefault(name, Group(name))

    def add_host(self, group: str, name: str, variables: dict[str, Any]) -> None:
        self.hosts.setdefault(name, {}).update(variables)
        members = self.group(group).hosts
        if name not in members:
            members.append(name)


def read_inventory(path: Path) -> Inventory:
    """Parse an Ansible inventory file: YAML when it parses as a mapping, else INI."""
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        return _read_yaml(path, data)
    return _read_ini(path, text)


def _read_yaml(path: Path, data: dict[str, Any]) -> Inventory:
    inventory = Inventory(path)

    def walk(name: str, body: Any) -> None:
        body = body or {}
        if not isinstance(body, dict):
            raise AnsibleInventoryError(f"{path}: group {name}: expected a mapping with hosts, vars or children")
        group = inventory.group(name)
        for pattern, variables in (body.get("hosts") or {}).items():
            for host in expand_host_pattern(str(pattern)):
                inventory.add_host(name, host, dict(variables or {}))
        group.variables.update(body.get("vars") or {})
        for child, child_body in (body.get("children") or {}).items():
            if child not in group.children:
                group.children.append(child)
            walk(child, child_body)

    for name, body in data.items():
        walk(str(name), body)
    return inventory


def _read_ini(path: Path, text: str) -> Inventory:
    inventory = Inventory(path)
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise AnsibleInventoryError(f"{path}:{number}: {line!r}: a section header must end with ']'")
            section, _, kind = line[1:-1].partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise AnsibleInventoryError(
                    f"{path}:{number}: [{line[1:-1]}]: unknown section kind {kind!r} (hosts, vars or children)"
                )
            inventory.group(section)
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise AnsibleInventoryError(f"{path}:{number}: {error}") from None
        if kind == "children":
            group = inventory.group(section)
            if words[0] not in group.children:
                group.children.append(words[0])
            inventory.group(words[0])
        elif kind == "vars":
            key, equals, value = line.partition("=")
            if not equals:
                raise AnsibleInventoryError(f"{path}:{number}: {line!r}: expected name=value in [{section}:vars]")
            inventory.group(section).variables[key.strip()] = _ini_value(value.strip())
        else:
            variables = {}
            for word in words[1:]:
                key, equals, value = word.partition("=")
                if not equals:
                    raise AnsibleInventoryError(f"{path}:{number}: {word!r}: expected name=value after the host")
                variables[key] = _ini_value(value)
            for host in expand_host_pattern(words[0]):
                inventory.add_host(section, host, variables)
    return inventory


def _ini_value(text: str) -> Any:
    """Values as Ansible's INI reader takes them: Python literals where they parse, else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text.strip("'\"")


def expand_host_pattern(pattern: str) -> list[str]:
    """Ansible's host ranges: ``web[01:03]`` is web01, web02, web03; ``db-[a:c]`` is db-a, db-b, db-c."""
    found = _RANGE.search(pattern)
    if not found:
        return [pattern]
    start, end, step = found.group(1), found.group(2), int(found.group(3) or 1)
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") else 0
        items = [str(n).zfill(width) for n in range(int(start), int(end) + 1, step)]
    else:
        items = [chr(n) for n in range(ord(start), ord(end) + 1, step)]
    head, tail = pattern[: found.start()], pattern[found.end() :]
    return [name for item in items for name in expand_host_pattern(head + item + tail)]


# -- the spec ---------------------------------------------------------------------------


def spec_from_inventory(inventory: Inventory) -> str:
    """The spec skeleton as YAML text, with a header saying what to check and what was left out."""
    base = inventory.path.resolve().parent
    left_out: list[str] = []

    def ssh_settings(variables: dict[str, Any], where: str) -> dict[str, Any]:
        ssh: dict[str, Any] = {}
        for key, value in variables.items():
            if key in SSH_VARIABLES:
                ssh[SSH_VARIABLES[key]] = _ssh_value(SSH_VARIABLES[key], value, base)
            elif key not in ADDRESS_VARIABLES:
                left_out.append(f"{key} ({where})")
        return ssh

    all_group = inventory.groups.get("all", Group("all"))
    defaults: dict[str, Any] = {}
    all_ssh = ssh_settings(all_group.variables, "all")
    if all_ssh:
        defaults["ssh"] = all_ssh
    defaults["model"] = dict(MODEL_SKELETON)

    groups: dict[str, Any] = {}
    for name, group in inventory.groups.items():
        if name in IMPLICIT_GROUPS:
            continue
        body: dict[str, Any] = {}
        if group.children:
            body["description"] = f"Ansible group; children: {', '.join(group.children)}"
        ssh = ssh_settings(group.variables, f"group {name}")
        if ssh:
            body["ssh"] = ssh
        groups[name] = body

    parents = _parents(inventory)
    hosts: dict[str, Any] = {}
    for name, variables in inventory.hosts.items():
        address = next((str(variables[key]) for key in ADDRESS_VARIABLES if key in variables), name)
        entry: dict[str, Any] = {"address": address}
        member_of = _groups_of(inventory, name, parents)
        if member_of:
            entry["groups"] = member_of
        ssh = ssh_settings(variables, f"host {name}")
        if ssh:
            entry["ssh"] = ssh
        hosts[name] = entry

    if not hosts:
        raise AnsibleInventoryError(f"{inventory.path}: no hosts found (is it an Ansible inventory?)")
    spec: dict[str, Any] = {"defaults": defaults}
    if groups:
        spec["groups"] = groups
    spec["hosts"] = hosts
    header = [
        f"# Imported from the Ansible inventory {inventory.path} by `sd35-provision import-ansible`.",
        "# Check before use: defaults.model (the pinned revision of the model to serve; add model.token_file",
        "# for a gated repo), gpu, cache and service settings (see inventory/example.yaml), and ssh.known_hosts",
        "# (host keys are verified: pass --accept-new-host-keys on first contact).",
    ]
    if left_out:
        header.append("# Not carried over: " + ", ".join(left_out))
    return "\n".join(header) + "\n" + yaml.safe_dump(spec, sort_keys=False, default_flow_style=False)


def _ssh_value(field_name: str, value: Any, base: Path) -> Any:
    if field_name == "port":
        return int(value)
    if field_name == "sudo":
        return value if isinstance(value, bool) else str(value).lower() in ("yes", "true", "1", "on")
    if field_name == "key":
        text = str(value)
        return text if text.startswith(("~", "/")) else str(base / text)
    return str(value)


def _parents(inventory: Inventory) -> dict[str, list[str]]:
    parents: dict[str, list[str]] = {}
    for group in inventory.groups.values():
        for child in group.children:
            parents.setdefault(child, []).append(group.name)
    return parents


def _groups_of(inventory: Inventory, host: str, parents: dict[str, list[str]]) -> list[str]:
    """The host's groups, parents before children (a child's settings win, as in Ansible), by name within a depth."""
    depth: dict[str, int] = {}

    def climb(group: str, level: int, seen: tuple[str, ...]) -> None:
        if group in seen or group in IMPLICIT_GROUPS:
            return
        depth[group] = max(depth.get(group, level), level)
        for parent in parents.get(group, []):
            climb(parent, level - 1, (*seen, group))

    for group in inventory.groups.values():
        if host in group.hosts:
            climb(group.name, 0, ())
    return sorted(depth, key=lambda group: (depth[group], group))
