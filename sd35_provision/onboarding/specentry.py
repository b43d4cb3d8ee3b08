"""The host's entry in the spec: what to write (only what differs from defaults and groups),
checked before the host is contacted, then written with comments and order kept.

The spec file is validated after the edit; when the result is invalid, the old
file is put back.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sd35_provision.errors import SpecError
from sd35_provision.hostspec.edit import SpecEdit, add_host, restore
from sd35_provision.hostspec.loader import is_valid_address, load_spec, merged_host_settings, resolve_local_path
from sd35_provision.hostspec.merge import deep_merge
from sd35_provision.hostspec.settings import SECTIONS, FleetSpec
from sd35_provision.hostspec.yamlsource import load_yaml_document
from sd35_provision.onboarding.accounts import public_key_line
from sd35_provision.onboarding.request import DeployAccess, Echo, OnboardError, OnboardRequest

_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_setting(text: str) -> tuple[tuple[str, ...], Any]:
    """``service.bind=10.0.0.5`` -> (("service", "bind"), "10.0.0.5"); the value is read as YAML."""
    path, separator, value = text.partition("=")
    keys = tuple(path.strip().split("."))
    if not separator or len(keys) < 2 or not all(keys):
        raise OnboardError(f"--set {text}: expected SECTION.FIELD=VALUE, e.g. service.bind=10.0.0.5")
    if keys[0] not in SECTIONS:
        raise OnboardError(f"--set {text}: {keys[0]!r} is not a settings section ({', '.join(SECTIONS)})")
    return keys, yaml.safe_load(value) if value.strip() else ""


def settings_from(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for text in pairs:
        keys, value = parse_setting(text)
        node = settings
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise OnboardError(f"--set {text}: {'.'.join(keys[:-1])} is set to a value already")
        node[keys[-1]] = value
    return settings


def plan_entry(request: OnboardRequest) -> tuple[dict[str, Any], DeployAccess]:
    """The host's spec entry (only what differs from defaults and groups) and how to log in with it."""
    if not _HOST_NAME.match(request.name):
        raise OnboardError(
            f"--name {request.name}: use letters, digits, '.', '_' and '-' (starting with a letter or digit)"
        )
    if not is_valid_address(request.address):
        raise OnboardError(f"--address {request.address}: not a host name or IP address")
    entry: dict[str, Any] = {"address": request.address}
    if request.groups:
        entry["groups"] = list(request.groups)
    for section, values in request.settings.items():
        entry[section] = deep_merge(entry.get(section, {}), values)

    inherited = _inherited_ssh(request.spec_path, request.name, request.groups)
    given = entry.get("ssh", {})  # --set ssh.*
    current = {**inherited, **given}
    ssh: dict[str, Any] = {}
    user = request.deploy_user or current["user"]
    if not _USER_NAME.match(user):
        raise OnboardError(f"deploy user {user!r}: not a valid user name")
    if user != inherited["user"]:
        ssh["user"] = user
    port = int(request.port or current["port"])
    if port != inherited["port"]:
        ssh["port"] = port
    base = request.spec_path.resolve().parent
    key = request.deploy_key or current.get("key") or request.key
    if key is None:
        raise OnboardError(
            "no SSH key for the deploy user: set ssh.key in the spec, or pass --deploy-key "
            "(or --key, to use the first-contact key)"
        )
    key = resolve_local_path(base, key)
    if key != (resolve_local_path(base, inherited["key"]) if inherited.get("key") else None):
        ssh["key"] = _spec_relative(key, request.spec_path)
    sudo = bool(current["sudo"])
    if request.sudo and user != "root" and not sudo:
        sudo = True
    if sudo != bool(inherited["sudo"]):
        ssh["sudo"] = sudo
    if ssh:
        entry["ssh"] = deep_merge(given, ssh)
    # The way people write entries: where and how to reach the host first, then its settings.
    entry = {key: entry[key] for key in ("address", "groups", "ssh", *entry) if key in entry}

    known_hosts = current.get("known_hosts")
    known_hosts = resolve_local_path(base, known_hosts) if known_hosts else Path("~/.ssh/known_hosts").expanduser()
    access = DeployAccess(
        user=user,
        port=port,
        key=key,
        public_key=public_key_line(key),
        known_hosts=known_hosts,
        sudo=sudo,
        connect_timeout=int(current["connect_timeout"]),
    )
    return entry, access


def _inherited_ssh(spec_path: Path, name: str, groups: tuple[str, ...]) -> dict[str, Any]:
    """The ssh settings a host in ``groups`` gets from the spec's defaults and groups (and the schema)."""
    document = load_yaml_document(spec_path)
    if not isinstance(document.data, dict):
        raise SpecError([f"{spec_path}:1: (top level): expected a mapping with `hosts:`"])
    # Only this host: what it inherits, never what an earlier onboarding wrote into its own entry.
    document.data["hosts"] = {name: {"address": "placeholder", "groups": list(groups)}}
    merged, _ = merged_host_settings(document, name)  # conflicting groups: the validation names them
    return merged["ssh"]


def _spec_relative(path: Path, spec_path: Path) -> str:
    """``path`` as the spec should name it: relative when it sits beside or below the spec."""
    try:
        return str(path.resolve().relative_to(spec_path.resolve().parent))
    except ValueError:
        return str(path)


def check_spec_with(spec_path: Path, name: str, entry: dict[str, Any]) -> None:
    """Validate the spec as it would be with ``entry`` added, without touching it (a copy beside it)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{spec_path.name}.", suffix=".onboard", dir=spec_path.parent)
    os.close(handle)
    copy = Path(temporary)
    try:
        copy.write_text(spec_path.read_text(encoding="utf-8"), encoding="utf-8")
        add_host(copy, name, entry)
        load_spec(copy)
    except SpecError as error:
        raise SpecError(
            [problem.replace(str(copy), str(spec_path)) for problem in error.problems],
            notes=["(checked before contacting the host; the spec file was not changed)"],
        ) from error
    finally:
        copy.unlink(missing_ok=True)


def write_spec(spec_path: Path, name: str, entry: dict[str, Any], echo: Echo) -> tuple[FleetSpec, SpecEdit]:
    """Add the host to the spec and validate it; on any problem the old file is put back."""
    edit = add_host(spec_path, name, entry)
    try:
        spec = load_spec(spec_path)
    except SpecError as error:
        restore(edit)
        raise SpecError(error.problems, notes=[f"(the spec file {spec_path} was put back as it was)"]) from error
    if edit.changed:
        echo(f"added {name} to {spec_path}:{edit.line}")
    else:
        echo(f"{name} is already in {spec_path}:{edit.line} with these settings; the spec is unchanged")
    return spec, edit
