"""The spec's ``gateway:`` section: which hosts run HAProxy, and what it checks.

A gateway host is a host of ``hosts:`` named by ``gateway.hosts`` (or a member
of ``gateway.group``): it runs only the gateway, never the GPU, Python or model
layers; every other host serves behind it. The checks here need the hosts'
merged settings (the serving hosts' key and bind), so the loader calls
``gateway_settings`` once every host is built; each problem names the
``FILE:LINE`` of the value.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sd35_provision.hostspec import rules
from sd35_provision.hostspec.settings import GatewayKey, GatewaySettings, GatewayTls, HostSettings
from sd35_provision.hostspec.yamlsource import SourceDocument
from sd35_provision.service.config import is_loopback

SECTION = "gateway"


def _defaults() -> dict[str, Any]:
    properties = rules.load_schema()["$defs"][SECTION]["properties"]
    return {key: value["default"] for key, value in properties.items() if "default" in value}


def gateway_settings(
    document: SourceDocument, hosts: list[HostSettings], check_local_files: bool
) -> tuple[list[HostSettings], GatewaySettings | None, list[str]]:
    """``(hosts, gateway, problems)``: the hosts with the gateway set on those that run it."""
    raw = document.data.get(SECTION)
    if raw is None:
        return hosts, None, []
    problems: list[str] = []

    def problem(path: tuple[Any, ...], message: str) -> None:
        problems.append(document.problem((SECTION, *path), message))

    names = {host.name for host in hosts}
    wanted: set[str] = set()
    for position, name in enumerate(raw.get("hosts", [])):
        if name not in names:
            problem(("hosts", position), f"unknown host {name!r} (hosts: {', '.join(sorted(names))})")
        wanted.add(name)
    group = raw.get("group")
    if group is not None:
        members = [host.name for host in hosts if group in host.groups]
        if group not in (document.data.get("groups") or {}):
            problem(("group",), f"unknown group {group!r}")
        elif not members:
            problem(("group",), f"group {group!r} has no hosts")
        wanted.update(members)
    if "hosts" not in raw and group is None:
        problem((), "name the hosts that run the gateway: gateway.hosts or gateway.group")
    gateway_hosts = [host for host in hosts if host.name in wanted]
    serving = [host for host in hosts if host.name not in wanted]
    if gateway_hosts and not serving:
        problem((), "every host runs the gateway; at least one host must serve behind it")

    base = document.path.resolve().parent
    values = {**_defaults(), **raw}
    if values["bind"] not in ("0.0.0.0", "::") and not _is_address(values["bind"]):
        problem(("bind",), f"{values['bind']!r} is not an IP address or host name")
    metrics_port = values["metrics_port"] or None  # 0 and null: no metrics port
    if metrics_port == values["port"]:
        problem(("metrics_port",), f"{metrics_port} is gateway.port; the metrics need a port of their own")

    backend_key = _serving_problems(serving, problem)
    keys: list[GatewayKey] = []
    seen: dict[str, str] = {}
    for name, entry in raw["keys"].items():
        path = _resolve(base, entry["file"])
        keys.append(GatewayKey(name=name, file=path, rate_per_minute=entry.get("rate_per_minute", 60)))
        if not check_local_files:
            continue
        message = _file_problem(path)
        if message is None:
            for _, _, text in rules.api_key_problems(path):
                message = text
        if message is not None:
            problem(("keys", name, "file"), message)
            continue
        key = path.read_text(encoding="utf-8").strip()
        if key in seen:
            problem(("keys", name, "file"), f"holds the same key as keys.{seen[key]}; each client needs its own")
        elif backend_key is not None and key == backend_key:
            problem(("keys", name, "file"), "holds the backends' key (service.api_key_file), which clients never see")
        seen.setdefault(key, name)

    tls = None
    if "tls" in raw:
        tls = GatewayTls(
            cert_file=_resolve(base, raw["tls"]["cert_file"]), key_file=_resolve(base, raw["tls"]["key_file"])
        )
        for field_name in ("cert_file", "key_file") if check_local_files else ():
            message = _file_problem(getattr(tls, field_name))
            if message is not None:
                problem(("tls", field_name), message)

    gateway = GatewaySettings(
        hosts=tuple(host.name for host in gateway_hosts),
        keys=tuple(keys),
        bind=values["bind"],
        port=values["port"],
        metrics_port=metrics_port,
        tls=tls,
        max_body_mb=values["max_body_mb"],
        connect_timeout_s=values["connect_timeout_s"],
        request_timeout_s=values["request_timeout_s"],
        queue_timeout_s=values["queue_timeout_s"],
        health_check_interval_s=values["health_check_interval_s"],
        drain_timeout_s=values["drain_timeout_s"],
        serving=tuple(serving),
    )
    marked = [replace(host, gateway=gateway) if host.name in wanted else host for host in hosts]
    return marked, gateway, problems


def _serving_problems(serving: list[HostSettings], problem) -> str | None:
    """The serving hosts must be reachable and share one backend key; returns that key (None: unknown)."""
    keys: dict[str, list[str]] = {}
    for host in serving:
        # Loopback is fine only where it is the host's own address (a test fleet on 127.0.X.Y).
        if is_loopback(host.service.bind) and host.service.bind != host.address:
            problem(
                (),
                f"host {host.name} binds its service to {host.service.bind}, which the gateway cannot reach; "
                "set its service.bind to 0.0.0.0 or its address",
            )
        key_file = host.service.api_key_file
        if key_file is None:
            problem((), f"host {host.name} serves behind the gateway without service.api_key_file")
            continue
        try:
            keys.setdefault(key_file.read_text(encoding="utf-8").strip(), []).append(host.name)
        except (OSError, UnicodeDecodeError):
            continue  # the host's own checks name the file
    if len(keys) > 1:
        groups = "; ".join(", ".join(names) for names in keys.values())
        problem((), f"the hosts behind the gateway use different service.api_key_file keys ({groups}); use one")
        return None
    return next(iter(keys), None)


def _resolve(base: Path, value: str) -> Path:
    expanded = Path(value).expanduser()
    return expanded if expanded.is_absolute() else base / expanded


def _file_problem(path: Path) -> str | None:
    try:
        if not path.exists():
            return f"{path} does not exist on this machine"
        if not path.is_file():
            return f"{path} is not a regular file"
    except OSError as error:
        return f"{path} cannot be used: {error.strerror or error}"
    return None


def _is_address(text: str) -> bool:
    return rules.is_valid_address(text)
