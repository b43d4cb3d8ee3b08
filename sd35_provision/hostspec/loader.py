"""Load a host spec: YAML -> JSON Schema -> semantic checks -> typed settings.

Every problem is collected (not just the first) and reported as
``FILE:LINE: path.to.field: message``; a spec with any problem raises
SpecError before anything touches a host.
"""

from __future__ import annotations

import copy
import datetime
import math
import re
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from sd35_provision.errors import SpecError
from sd35_provision.hostspec import rules
from sd35_provision.hostspec.gateway import gateway_settings
from sd35_provision.hostspec.merge import deep_merge
from sd35_provision.hostspec.renamed import rename_deprecated_keys
from sd35_provision.hostspec.rules import is_valid_address, load_schema
from sd35_provision.hostspec.settings import (
    SECTIONS,
    CacheSettings,
    DriverSettings,
    FleetSpec,
    GpuSettings,
    HostSettings,
    ModelSettings,
    PythonSettings,
    ServiceSettings,
    SmokeSettings,
    SshSettings,
    SystemSettings,
)
from sd35_provision.hostspec.yamlsource import (
    PathKey,
    SourceDocument,
    format_path,
    load_yaml_document,
)
from sd35_provision.locks import LockError, parse_lock
from sd35_provision.service.config import is_loopback

# Settings that name files on the control machine: resolved relative to the spec.
LOCAL_PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "ssh": ("key", "known_hosts"),
    "python": ("wheelhouse", "lock_file"),
    "model": ("token_file", "path"),
    "service": ("api_key_file",),
    "system": ("apt_bundle",),
}

_FULL_COMMIT = re.compile(r"^[0-9a-f]{40}$")


# Settings that name local directories; the other LOCAL_PATH_FIELDS name files.
LOCAL_DIRECTORY_FIELDS: dict[str, tuple[str, ...]] = {
    "python": ("wheelhouse",),
    "model": ("path",),
    "system": ("apt_bundle",),
}

# A value's real type: YAML's 8000.0 is not an integer (JSON Schema would take it,
# and the host would get SD35_PORT=8000.0), and .inf or .nan is no number of GB.
_TYPE_CHECKER = Draft202012Validator.TYPE_CHECKER.redefine_many(
    {
        "integer": lambda _checker, value: isinstance(value, int) and not isinstance(value, bool),
        "number": lambda _checker, value: (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ),
    }
)
SpecValidator = validators.extend(Draft202012Validator, type_checker=_TYPE_CHECKER)

_TYPE_NAMES = {
    "integer": "a whole number",
    "number": "a finite number",
    "string": "a string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


@lru_cache(maxsize=1)
def load_spec(
    path: str | Path, *, check_local_files: bool = True, known_hosts_may_be_missing: bool = False
) -> FleetSpec:
    """Parse and validate ``path``; raise SpecError listing every problem.

    ``known_hosts_may_be_missing``: for ``--accept-new-host-keys``, which creates it.
    """
    spec_path = Path(path)
    document = load_yaml_document(spec_path)
    warnings, problems = rename_deprecated_keys(document)

    problems += schema_problems(document)
    if problems:
        # Semantic checks assume the shapes the schema guarantees.
        raise SpecError(problems)

    problems = semantic_problems(document)
    hosts = []
    endpoints: dict[tuple[str, int], tuple[str, str]] = {}
    # A problem set in defaults or a group is the same for every host that inherits it: said once, at its line.
    setting_problems: dict[tuple[PathKey, str], list[str]] = {}
    for name in document.data["hosts"]:
        merged, merge_problems = merged_host_settings(document, name)
        problems.extend(merge_problems)
        if merge_problems:
            continue
        problems.extend(_endpoint_problems(document, name, merged, endpoints))
        for origin, message in _host_setting_problems(
            document, name, merged, check_local_files, known_hosts_may_be_missing
        ):
            setting_problems.setdefault((origin, message), []).append(name)
        hosts.append(_build_host(document, name, merged))
    host_count = len(document.data["hosts"])
    for (origin, message), names in setting_problems.items():
        problems.append(document.problem(origin, f"{message} ({_hosts_phrase(names, host_count)})"))
    hosts, gateway, gateway_problems = gateway_settings(document, hosts, check_local_files)
    problems += gateway_problems
    if problems:
        raise SpecError(problems)

    groups: dict[str, tuple[str, ...]] = {name: () for name in document.data.get("groups") or {}}
    for host in hosts:
        for group in host.groups:
            groups[group] = (*groups[group], host.name)
    return FleetSpec(
        path=spec_path,
        hosts=tuple(hosts),
        groups=groups,
        raw=document.data,
        warnings=tuple(warnings),
        gateway=gateway,
    )


def schema_problems(document: SourceDocument) -> list[str]:
    validator = SpecValidator(load_schema())
    problems: list[tuple[int, str]] = []
    for error in validator.iter_errors(document.data):
        for path, message in _explain(error):
            line = document.line_of(path)
            problems.append((line, f"{document.path}:{line}: {format_path(path)}: {message}"))
    return [text for _, text in sorted(problems)]


def _explain(error: ValidationError) -> list[tuple[PathKey, str]]:
    """Turn one jsonschema error into user-facing (path, message) pairs."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in allowed]
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return [((*path, key), f"unknown key{hint}") for key in unknown]
    if error.validator == "required":
        return [(path, error.message.replace("is a required property", "is required"))]
    if error.validator == "enum":
        choices = ", ".join(str(choice) for choice in error.validator_value)
        return [(path, f"{error.instance!r} is not one of: {choices}")]
    if error.validator == "pattern":
        return [(path, f"{error.instance!r} is not valid: {error.schema.get('description', 'bad format')}")]
    if error.validator == "maximum":
        return [(path, f"{error.instance} is above {error.validator_value}")]
    if error.validator == "minimum":
        return [(path, f"{error.instance} is below {error.validator_value}")]
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        expected = " or ".join(_TYPE_NAMES.get(name, str(name)) for name in wanted)
        if "string" in wanted and isinstance(error.instance, (int, float, datetime.date)):
            # YAML read it as something else: 0123456 is octal 42798, 2024-01-01 a date.
            return [
                (
                    path,
                    f"{error.instance!r} is not a string (YAML read it as {type(error.instance).__name__}); quote it",
                )
            ]
        return [(path, f"{error.instance!r} is not {expected}")]
    if error.validator in ("anyOf", "oneOf"):
        # A list item that fits no choice: say so at the item, not at the whole list.
        deeper = [sub for sub in error.context or () if len(sub.absolute_path) > len(path)]
        if deeper:
            return _explain(max(deeper, key=lambda sub: len(sub.absolute_path)))
        choices = re.split(r"\.\s+(?=[A-Z])", error.schema.get("description", ""))[0]  # its first sentence
        return [(path, f"{error.instance!r} is not valid: {choices}" if choices else error.message)]
    if error.validator == "propertyNames":
        return [((*path, error.instance), "name may only use letters, digits, '.', '_' and '-'")]
    return [(path, error.message)]


def semantic_problems(document: SourceDocument) -> list[str]:
    data = document.data
    groups = data.get("groups") or {}
    problems: list[str] = []
    lowered_names: dict[str, str] = {}
    for name, host in data["hosts"].items():
        if name.lower() in lowered_names:
            problems.append(
                document.problem(
                    ("hosts", name),
                    f"duplicate host name (same as {lowered_names[name.lower()]!r} ignoring case)",
                )
            )
        lowered_names[name.lower()] = name

        address = host["address"]
        if not is_valid_address(address):
            problems.append(
                document.problem(
                    ("hosts", name, "address"),
                    f"{address!r} is not a host name or IP address",
                )
            )
        for position, group in enumerate(host.get("groups", [])):
            if group not in groups:
                known = ", ".join(groups) or "none defined"
                problems.append(
                    document.problem(
                        ("hosts", name, "groups", position),
                        f"unknown group {group!r} (groups: {known})",
                    )
                )
    return problems


def _endpoint_problems(
    document: SourceDocument, name: str, merged: dict[str, Any], seen: dict[tuple[str, int], tuple[str, str]]
) -> list[str]:
    """Two hosts on one address:port, however the port is set and however the address is spelled.

    Every port a host answers on counts, each service instance's too (instance i on service.port + i;
    ``auto`` counts one: how many it makes depends on the host's GPUs). Hosts that share an address
    with their own SSH ports are distinct machines behind one address (port forwarding), so their
    services collide only where certain: an instance on the host's own SSH port; an instance bound to
    a reachable address on a port that is some host's SSH endpoint there; two instances bound to
    that very address (one machine, one socket).
    """
    address, ssh_port = document.data["hosts"][name]["address"], merged["ssh"]["port"]
    service = merged["service"]
    problems: list[str] = []
    endpoint = rules.endpoint(address, ssh_port)
    if endpoint in seen and seen[endpoint][1] == "ssh":
        problems.append(
            document.problem(("hosts", name, "address"), f"{address}:{ssh_port} is already host {seen[endpoint][0]!r}")
        )
    elif endpoint in seen:  # another host's service instance listens there
        problems.append(
            document.problem(
                ("hosts", name, "address"),
                f"{address}:{ssh_port} (ssh.port) is already host {seen[endpoint][0]!r} (a service instance)",
            )
        )
    else:
        seen[endpoint] = (name, "ssh")
    reachable = not is_loopback(service["bind"])
    on_address = rules.endpoint(service["bind"], 0) == rules.endpoint(address, 0)
    for i in range(rules.instance_count(service["instances"])):
        port = service["port"] + i
        what = f"service instance {i} (service.port + {i})" if i else "service instance 0 (service.port)"
        if port == ssh_port:
            problems.append(
                document.problem(_origin(document, name, "service", "port"), f"{what} would listen on {port}, ssh.port")
            )
            continue
        if not reachable:
            continue
        endpoint = rules.endpoint(address, port)
        owner = seen.get(endpoint)
        if owner is not None and (owner[1] == "ssh" or (on_address and owner[1] == "bound")):
            its = "its ssh port" if owner[1] == "ssh" else "a service instance bound to that address"
            problems.append(
                document.problem(
                    ("hosts", name, "address"),
                    f"{address}:{port}, {what}, is already host {owner[0]!r} ({its})",
                )
            )
        elif owner is None and on_address:
            seen[endpoint] = (name, "bound")
    return problems


def merged_host_settings(document: SourceDocument, name: str) -> tuple[dict[str, Any], list[str]]:
    """defaults < groups (in the host's order) < host, plus schema defaults.

    Two groups of one host that set the same field to different values are a
    conflict unless the host sets that field itself.
    """
    data = document.data
    host = data["hosts"][name]
    merged = copy.deepcopy(data.get("defaults") or {})
    problems: list[str] = []

    group_values: dict[PathKey, tuple[str, Any]] = {}
    host_leaves = dict(_leaves(_settings_only(host)))
    for group in host.get("groups", []):
        group_settings = _settings_only((data.get("groups") or {}).get(group, {}))
        for leaf, value in _leaves(group_settings):
            earlier = group_values.get(leaf)
            if earlier and earlier[1] != value and leaf not in host_leaves:
                problems.append(
                    document.problem(
                        ("hosts", name, "groups"),
                        f"groups {earlier[0]!r} and {group!r} set {format_path(leaf)} differently "
                        f"({earlier[1]!r} vs {value!r}); set it on the host to choose",
                    )
                )
            group_values.setdefault(leaf, (group, value))
        merged = deep_merge(merged, group_settings)
    merged = deep_merge(merged, _settings_only(host))
    _fill_schema_defaults(merged)
    return merged, problems


def _settings_only(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key in SECTIONS}


def _leaves(mapping: dict[str, Any], prefix: PathKey = ()) -> list[tuple[PathKey, Any]]:
    found: list[tuple[PathKey, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            found.extend(_leaves(value, (*prefix, key)))
        else:
            found.append(((*prefix, key), value))
    return found


def _fill_schema_defaults(merged: dict[str, Any]) -> None:
    definitions = load_schema()["$defs"]

    def fill(target: dict[str, Any], schema: dict[str, Any]) -> None:
        for key, subschema in schema.get("properties", {}).items():
            if subschema.get("type") == "object":
                fill(target.setdefault(key, {}), subschema)
            elif "default" in subschema and key not in target:
                target[key] = subschema["default"]

    for section in SECTIONS:
        fill(merged.setdefault(section, {}), definitions[section])


def _origin(document: SourceDocument, name: str, section: str, key: str) -> PathKey:
    """Where a merged value was set: on the host, a group, or the defaults."""
    data = document.data
    candidates: list[PathKey] = [("hosts", name, section, key)]
    for group in reversed(data["hosts"][name].get("groups", [])):
        candidates.append(("groups", group, section, key))
    candidates.append(("defaults", section, key))
    for candidate in candidates:
        if _get(data, candidate) is not None:
            return candidate
    return ("hosts", name)


def _hosts_phrase(names: list[str], host_count: int) -> str:
    if len(names) == 1:
        return f"host {names[0]}"
    if len(names) == host_count:
        return f"all {host_count} hosts"
    return f"hosts {', '.join(names)}"


def _host_setting_problems(
    document: SourceDocument,
    name: str,
    merged: dict[str, Any],
    check_local_files: bool,
    known_hosts_may_be_missing: bool = False,
) -> list[tuple[PathKey, str]]:
    """(where the value was set, what is wrong) for each problem of one host's merged settings."""
    problems: list[tuple[PathKey, str]] = []

    def problem(section: str, key: str, message: str) -> None:
        problems.append((_origin(document, name, section, key), message))

    service = merged["service"]
    # The service's own loopback rule (service/config.py): the spec refuses what the service would.
    if not is_loopback(service["bind"]) and "api_key_file" not in service:
        problem("service", "bind", f"{service['bind']} is not loopback, so service.api_key_file is required")
    if service["bind"] not in ("0.0.0.0", "::") and not is_valid_address(service["bind"]):
        problem("service", "bind", f"{service['bind']!r} is not an IP address or host name")

    model_settings = merged["model"]
    needed = {"git": "url", "push": "path"}.get(model_settings["source"])
    if needed and needed not in model_settings:
        problem("model", "source", f"source {model_settings['source']!r} needs model.{needed}")
    if model_settings["source"] in ("hf", "git") and "revision" not in model_settings:
        problem(
            "model", "source", "a pinned model.revision (commit sha) is required so every host gets the same weights"
        )
    elif model_settings["source"] == "hf" and not _FULL_COMMIT.match(model_settings["revision"]):
        problem(
            "model",
            "revision",
            f"{model_settings['revision']!r} is not a full 40-character commit sha; "
            "the hub cache names the snapshot by it, so an abbreviated one cannot be used with source hf",
        )

    for section, key, message in rules.instances_problems(service, merged["gpu"]["accelerator"]):
        problem(section, key, message)

    smoke = merged["smoke"]
    width, height = (int(part) for part in smoke["size"].split("x"))
    if width % 16 or height % 16:
        problem("smoke", "size", f"{smoke['size']} is not a multiple of 16 on both sides")
    elif max(width, height) > service["max_side"]:
        problem("smoke", "size", f"{smoke['size']} is larger than service.max_side {service['max_side']}")

    base = document.path.resolve().parent
    for section, keys in LOCAL_PATH_FIELDS.items():
        for key in keys:
            if key not in merged[section]:
                continue
            resolved = resolve_local_path(base, merged[section][key])
            merged[section][key] = resolved
            if not check_local_files:
                continue
            creatable = known_hosts_may_be_missing and (section, key) == ("ssh", "known_hosts")
            try:
                if not resolved.exists() and not creatable:
                    problem(section, key, f"{resolved} does not exist on this machine")
            except OSError as error:  # a name too long, a directory that may not be searched
                problem(section, key, f"{resolved} cannot be used: {error.strerror or error}")
                del merged[section][key]  # the checks below look at the files that can be
    push_path = merged["model"].get("path")
    if check_local_files and model_settings["source"] == "push" and push_path is not None and push_path.exists():
        if not (push_path / "model_index.json").is_file():
            problem("model", "path", f"{push_path} has no model_index.json: not a diffusers pipeline directory")
    lock_file = merged["python"].get("lock_file")
    if check_local_files and lock_file is not None and lock_file.is_file():
        try:
            parse_lock(lock_file.read_text(), str(lock_file))
        except LockError as error:
            problem("python", "lock_file", str(error))

    found: list[rules.Problem] = []
    for section, key in rules.HOST_DIRECTORY_FIELDS:
        found += rules.host_directory_problems(section, key, merged[section][key])
    found += rules.repo_problems(model_settings["repo"])
    if "url" in model_settings:
        found += rules.git_url_problems(model_settings["url"])
    found += rules.service_limit_problems(service, smoke)
    found += rules.device_problems(merged["gpu"], merged["python"], service)
    if check_local_files:
        files = {
            section: tuple(key for key in keys if key not in LOCAL_DIRECTORY_FIELDS.get(section, ()))
            for section, keys in LOCAL_PATH_FIELDS.items()
        }
        wrong_kind = rules.local_file_problems(merged, files, LOCAL_DIRECTORY_FIELDS)
        found += wrong_kind
        key_file = service.get("api_key_file")
        if key_file is not None and key_file.is_file() and not any(key == "api_key_file" for _, key, _ in wrong_kind):
            found += rules.api_key_problems(key_file)
    for section, key, message in found:
        problem(section, key, message)
    return problems


def resolve_local_path(base: Path, value: str | Path) -> Path:
    expanded = Path(value).expanduser()
    return expanded if expanded.is_absolute() else (base / expanded)


def _get(data: Any, path: PathKey) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _build_host(document: SourceDocument, name: str, merged: dict[str, Any]) -> HostSettings:
    def build(cls: type, values: dict[str, Any]) -> Any:
        kwargs = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            if f.name == "driver":
                value = build(DriverSettings, value)
            elif isinstance(value, list):
                value = tuple(value)  # settings are frozen: service.instances' list
            elif f.name == "gpu_memory_gib":
                value = float(value)  # YAML reads 22 as an int
            kwargs[f.name] = value
        return cls(**kwargs)

    host = document.data["hosts"][name]
    return HostSettings(
        name=name,
        address=host["address"],
        groups=tuple(host.get("groups", [])),
        ssh=build(SshSettings, merged["ssh"]),
        gpu=build(GpuSettings, merged["gpu"]),
        cache=build(CacheSettings, merged["cache"]),
        python=build(PythonSettings, merged["python"]),
        model=build(ModelSettings, merged["model"]),
        service=build(ServiceSettings, merged["service"]),
        smoke=build(SmokeSettings, merged["smoke"]),
        system=build(SystemSettings, merged["system"]),
    )


__all__ = ["format_path", "is_loopback", "is_valid_address", "load_spec", "merged_host_settings"]
