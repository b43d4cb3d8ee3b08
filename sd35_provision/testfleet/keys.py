"""SSH keys for the fleet: the client key pair and the known_hosts lines of its hosts.

Host keys are generated before boot, so known_hosts is complete before any
host answers; every connection (``sd35_provision.sshlogin``) verifies against it.
"""

from __future__ import annotations

from pathlib import Path

from sd35_provision.sshlogin import known_hosts_name
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
    return f"{known_hosts_name(address, port)} {key_type} {key_data}"
