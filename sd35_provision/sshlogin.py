"""SSH logins outside a pyinfra run, always with host-key verification.

pyinfra makes the connections of a run; the few made outside one (onboarding's
account setup, the test fleet's boot checks and commands) go through
``connect`` here. The host key must already be in ``known_hosts``, which is
only read, never written: paramiko's RejectPolicy refuses an unknown key
(``SSHException``) and a key other than the recorded one raises
``BadHostKeyException``. Callers turn these into their own errors.
"""

from __future__ import annotations

from pathlib import Path

import paramiko


def known_hosts_name(address: str, port: int = 22) -> str:
    """How known_hosts names ``address:port`` (OpenSSH's ``[address]:port`` off port 22)."""
    return address if port == 22 else f"[{address}]:{port}"


def connect(
    address: str,
    *,
    user: str,
    known_hosts: Path,
    port: int = 22,
    key: Path | None = None,
    password: str | None = None,
    timeout: float = 10,
    default_keys: bool = False,
) -> paramiko.SSHClient:
    """Log in to ``address`` with ``key`` or ``password``; the agent and ~/.ssh keys only with ``default_keys``
    (a spec host without ``ssh.key`` logs in with them, as pyinfra does for its runs)."""
    client = paramiko.SSHClient()
    client.get_host_keys().load(str(known_hosts))  # read only: never written back
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            address,
            port=port,
            username=user,
            password=password,
            key_filename=str(key) if key else None,
            allow_agent=default_keys,
            look_for_keys=default_keys,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except BaseException:
        client.close()
        raise
    return client
