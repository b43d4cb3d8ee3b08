"""First contact: the host key is shown, and recorded in known_hosts only when accepted.

A key other than the one recorded is refused: the box was reinstalled, or it
is not the box you think.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from pathlib import Path

import paramiko

from sd35_provision.onboarding.request import ConfirmHostKey, Echo, OnboardError
from sd35_provision.sshlogin import known_hosts_name


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def recorded_keys(known_hosts: Path, address: str, port: int) -> dict[str, paramiko.PKey]:
    """The keys ``known_hosts`` holds for ``address:port``, by key type (hashed entries included)."""
    if not known_hosts.is_file():
        return {}
    host_keys = paramiko.HostKeys()
    host_keys.load(str(known_hosts))
    found = host_keys.lookup(known_hosts_name(address, port))
    return dict(found) if found else {}


def host_key_verdict(recorded: dict[str, paramiko.PKey], offered: paramiko.PKey) -> str:
    """``known`` (recorded and equal), ``unknown`` (nothing recorded) or ``changed``."""
    if not recorded:
        return "unknown"
    mine = recorded.get(offered.get_name())
    return "known" if mine is not None and mine == offered else "changed"


def record_host_key(known_hosts: Path, address: str, port: int, key: paramiko.PKey) -> None:
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = known_hosts.read_text() if known_hosts.exists() else ""
    separator = "" if not existing or existing.endswith("\n") else "\n"
    with open(known_hosts, "a", encoding="utf-8") as out:
        out.write(f"{separator}{known_hosts_name(address, port)} {key.get_name()} {key.get_base64()}\n")
    if not existing:
        os.chmod(known_hosts, 0o600)


def scan_host_key(address: str, port: int, timeout: float, prefer: list[str]) -> paramiko.PKey:
    """The host key ``address:port`` presents, asking first for the types already recorded.

    Only the key exchange, no login: ``sshlogin.connect`` needs the key recorded first.
    """
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as error:
        raise OnboardError(f"{address}:{port}: cannot connect: {error.strerror or error}") from error
    transport = paramiko.Transport(sock)
    try:
        if prefer:
            options = transport.get_security_options()
            options.key_types = [*prefer, *(kind for kind in options.key_types if kind not in prefer)]
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as error:
        raise OnboardError(f"{address}:{port}: SSH handshake failed: {error}") from error
    finally:
        transport.close()


def trust_host_key(
    address: str, port: int, known_hosts: Path, timeout: float, confirm: ConfirmHostKey, echo: Echo
) -> tuple[str, bool]:
    """Show the host key; record it when new and accepted. Returns (description, recorded now)."""
    recorded = recorded_keys(known_hosts, address, port)
    offered = scan_host_key(address, port, timeout, list(recorded))
    shown = f"{offered.get_name()} {fingerprint(offered)}"
    verdict = host_key_verdict(recorded, offered)
    if verdict == "known":
        echo(f"host key of {address}:{port}: {shown} (already in {known_hosts})")
        return shown, False
    if verdict == "changed":
        kinds = ", ".join(f"{kind} {fingerprint(key)}" for kind, key in recorded.items())
        raise OnboardError(
            f"{address}:{port} presents {shown}, but {known_hosts} records {kinds}: the host key CHANGED. "
            f"If the box was reinstalled, remove its old line from {known_hosts} (ssh-keygen -R) and run again."
        )
    echo(f"host key of {address}:{port}: {shown} (new)")
    if not confirm(shown):
        raise OnboardError(
            f"{address}:{port}: host key {shown} not accepted; check it on the box's console "
            "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and run again with --accept-host-key"
        )
    record_host_key(known_hosts, address, port, offered)
    echo(f"recorded in {known_hosts}")
    return shown, True
