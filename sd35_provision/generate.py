"""``sd35-provision generate``: one image from the control machine, through the gateway or from one host.

Through the gateway (``--gateway``, the default when the spec has one): HTTPS
(its ``tls.cert_file`` is trusted besides the system's CAs) to the first gateway
host, with a client key: ``SD35_API_KEY`` from the environment, else the file
of ``gateway.keys`` entry ``--key`` (default: the first). To one host
(``--host H``): its first instance with the host's ``service.api_key_file``; a
service bound to loopback is reached through an SSH tunnel (a ``direct-tcpip``
channel of a verified login, sshlogin.py). The key never goes on a command line.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sd35_provision.errors import Sd35Error
from sd35_provision.hostspec.settings import FleetSpec, HostSettings
from sd35_provision.service.config import is_loopback

KEY_ENV = "SD35_API_KEY"
PATH = "/v1/images/generations"


class GenerateError(Sd35Error):
    """The request could not be made or was refused (one line: where and why)."""


@dataclass(frozen=True)
class Request:
    prompt: str
    size: str = "512x512"
    steps: int | None = None
    seed: int | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": self.prompt, "size": self.size, "n": 1, "response_format": "b64_json"}
        if self.steps is not None:
            body["num_inference_steps"] = self.steps
        if self.seed is not None:
            body["seed"] = self.seed
        return body


@dataclass(frozen=True)
class Target:
    """Where the request goes: ``where`` names it in messages."""

    where: str
    address: str
    port: int
    key: str
    tls_trust: Path | None = None  # a gateway with TLS: its certificate, trusted
    tunnel_through: HostSettings | None = None  # a loopback service: over SSH to this host


def gateway_target(spec: FleetSpec, key_name: str | None = None) -> Target:
    gateway = spec.gateway
    if gateway is None or not spec.gateway_hosts:
        raise GenerateError(f"{spec.path}: the spec has no gateway: section; use --host")
    host = spec.gateway_hosts[0]
    names = [key.name for key in gateway.keys]
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        chosen = next((entry for entry in gateway.keys if entry.name == (key_name or names[0])), None)
        if chosen is None:
            raise GenerateError(f"{spec.path}: gateway.keys has no key {key_name!r} (keys: {', '.join(names)})")
        key = _read_key(chosen.file, f"gateway.keys.{chosen.name}.file")
    address = host.address if gateway.bind in ("0.0.0.0", "::") else gateway.bind
    trust = gateway.tls.cert_file if gateway.tls else None
    return Target(f"gateway {host.name}", address, gateway.port, key, tls_trust=trust)


def host_target(spec: FleetSpec, name: str) -> Target:
    try:
        host = spec.host(name)
    except KeyError:
        raise GenerateError(f"{spec.path}: no host {name!r} (hosts: {', '.join(h.name for h in spec.hosts)})") from None
    if host.runs_gateway:
        raise GenerateError(f"{name} runs the gateway and serves no model; use --gateway")
    key = os.environ.get(KEY_ENV, "").strip()
    if not key and host.service.api_key_file is not None:
        key = _read_key(host.service.api_key_file, "service.api_key_file")
    bind = host.service.bind
    if is_loopback(bind):
        return Target(f"{name} (SSH tunnel)", bind, host.service.port, key, tunnel_through=host)
    return Target(name, host.address, host.service.port, key)


def _read_key(path: Path, field: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise GenerateError(f"{field}: {path} cannot be read: {error.strerror or error}") from None


def generate(target: Target, request: Request, output: Path, timeout_s: float = 900) -> dict[str, Any]:
    """Send ``request`` to ``target``, write the PNG to ``output``; what the service said about it."""
    connection, closer = _connect(target, timeout_s)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {target.key}"}
        connection.request("POST", PATH, body=json.dumps(request.body()), headers=headers)
        response = connection.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException) as error:
        raise GenerateError(f"{target.where}: {type(error).__name__}: {error}") from None
    finally:
        connection.close()
        closer()
    if response.status != 200:
        raise GenerateError(f"{target.where}: HTTP {response.status}: {_error_message(payload)}")
    try:
        answer = json.loads(payload)
        image = base64.b64decode(answer["data"][0]["b64_json"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise GenerateError(f"{target.where}: the answer is not an images response: {payload[:200]!r}") from None
    if not image.startswith(b"\x89PNG\r\n\x1a\n"):
        raise GenerateError(f"{target.where}: the image is not a PNG")
    output.write_bytes(image)
    return {"where": target.where, "output": str(output), "bytes": len(image), "created": answer.get("created")}


def _error_message(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return payload.decode(errors="replace").strip().splitlines()[0] if payload.strip() else "(no body)"


def _connect(target: Target, timeout_s: float):
    """An HTTP(S) connection to ``target`` and what closes its tunnel (if any)."""
    if target.tunnel_through is not None:
        return _tunnel(target, timeout_s)
    if target.tls_trust is not None:
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=str(target.tls_trust))
        return http.client.HTTPSConnection(target.address, target.port, timeout=timeout_s, context=context), _nothing
    return http.client.HTTPConnection(target.address, target.port, timeout=timeout_s), _nothing


def _nothing() -> None:
    return None


def _tunnel(target: Target, timeout_s: float):
    import paramiko

    from sd35_provision import sshlogin
    from sd35_provision.sshcheck import known_hosts_path

    host = target.tunnel_through
    assert host is not None
    try:
        client = sshlogin.connect(
            host.address,
            user=host.ssh.user,
            port=host.ssh.port,
            key=host.ssh.key,
            known_hosts=known_hosts_path(host),
            timeout=host.ssh.connect_timeout,
            default_keys=host.ssh.key is None,
        )
        transport = client.get_transport()
        assert transport is not None
        channel = transport.open_channel("direct-tcpip", (target.address, target.port), ("127.0.0.1", 0))
    except (OSError, paramiko.SSHException) as error:
        raise GenerateError(f"{target.where}: cannot open the SSH tunnel: {error}") from None
    channel.settimeout(timeout_s)
    connection = http.client.HTTPConnection(target.address, target.port, timeout=timeout_s)
    connection.sock = channel  # http.client only sends and reads through it
    return connection, client.close
