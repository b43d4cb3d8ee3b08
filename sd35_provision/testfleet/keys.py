"""SSH keys for the fleet and verified connections to its hosts.

Host keys are generated here before boot, so known_hosts is complete before
any host answers; every connection uses paramiko's RejectPolicy against it.
"""

from __future__ import annotations

from pathlib import Path

import paramiko

from sd35_provision.testfleet.system import run_tool


def generate_key(path: Path, comment: str) -> str:
    """A new ed25519 key pair at ``path`` (+ ``.pub``); returns the public key line."""
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    run_tool(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], what="ssh-keygen")
    return public_key(path)


def public_key(path: Path) -> str:
    return Path(f"{path}.pub").read_text().strip()


def ensure_key(path: Path, comment: str) -> str:
    """The key pair at ``path``, generated on first use and reused afterwards."""
    if path.exists() and Path(f"{path}.pub").exists():
        return public_key(path)
    return generate_key(path, comment)


def known_hosts_line(address: str, public_key_line: str, port: int = 22) -> str:
    key_type, key_data = public_key_line.split()[:2]
    where = address if port == 22 else f"[{address}]:{port}"
    return f"{where} {key_type} {key_data}"


def connect(address: str, key_path: Path, known_hosts_path: Path, timeout: float = 10) -> paramiko.SSHClient:
    """Root SSH to ``address``; an unknown or changed host key is refused."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            address, port=22, username="root", key_filename=str(key_path),
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            allow_agent=False, look_for_keys=False,
        )
    except BaseException:
        client.close()
        raise
    return client
