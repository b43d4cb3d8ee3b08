"""SSH problems in one line each, with what to do.

Checked before pyinfra connects (the key file, the known_hosts file), so that
a passphrase-protected or public key gives a line instead of a traceback and
``--accept-new-host-keys`` can create a missing known_hosts; and pyinfra's
connect errors explained after it tried (a changed host key with both
fingerprints and the known_hosts line). A problem on this side (key,
known_hosts, host key, refused login) is ``local``: the host is reported as
``error``, not ``unreachable``.

About ssh-agent: pyinfra loads ``ssh.key`` itself and then does not ask the
agent (``allow_agent`` is off when a key is given); with no ``ssh.key``,
paramiko tries the agent's keys and ``~/.ssh/id_*``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys

from sd35_provision.hostspec.settings import HostSettings

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


@dataclass(frozen=True)
class ConnectProblem:
    message: str
    local: bool  # on this side (key, known_hosts, host key, login refused): the host itself answers


def known_hosts_path(settings: HostSettings) -> Path:
    return Path(settings.ssh.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()


def host_entry(settings: HostSettings) -> str:
    """How known_hosts names the host: ``address``, or ``[address]:port`` off port 22."""
    return settings.address if settings.ssh.port == 22 else f"[{settings.address}]:{settings.ssh.port}"


# -- before connecting ------------------------------------------------------------------


def check_before_connect(hosts: Iterable[HostSettings], accept_new: bool) -> dict[str, ConnectProblem]:
    """The hosts that cannot be connected to because of a local file, each with its one-line problem.

    With ``accept_new`` a missing known_hosts file is created (0600, in a
    0700 directory if that is missing too) so the new keys can be recorded.
    """
    problems: dict[str, ConnectProblem] = {}
    key_problems: dict[Path, str | None] = {}
    for settings in hosts:
        message = None
        if settings.ssh.key is not None:
            key = Path(settings.ssh.key).expanduser()
            if key not in key_problems:
                key_problems[key] = key_problem(key)
            message = key_problems[key]
        message = message or _known_hosts_problem(known_hosts_path(settings), accept_new)
        if message:
            problems[settings.name] = ConnectProblem(message, local=True)
    return problems


def key_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as the private key to log in with (None: pyinfra can load it)."""
    try:
        head = path.read_bytes()[:100]
    except FileNotFoundError:
        return f"ssh.key {path} does not exist"
    except OSError as error:
        return (
            f"cannot read ssh.key {path}: {error.strerror} (run as the key's owner, or give a key this user can read)"
        )
    if head.lstrip().startswith((b"ssh-", b"ecdsa-", b"sk-", b"---- BEGIN SSH2 PUBLIC KEY")):
        private = path.with_suffix("") if path.suffix == ".pub" else None
        hint = f" ({private}?)" if private is not None and private.is_file() else ""
        return f"ssh.key {path} is a public key: give the private key{hint}"
    last_error: Exception | None = None
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            key_class.from_private_key_file(str(path))
            return None
        except paramiko.PasswordRequiredException:
            return (
                f"ssh.key {path} is protected by a passphrase, which sd35-provision does not ask for: "
                f"load it into ssh-agent (ssh-add {path}) and remove ssh.key from the spec (without "
                "ssh.key the agent's keys are used; with it, only that file), or use a key without a passphrase"
            )
        except (paramiko.SSHException, ValueError) as failed:
            last_error = failed
    return f"ssh.key {path} is not a private key that paramiko can read (ed25519, ECDSA or RSA): {last_error}"


def _known_hosts_problem(path: Path, accept_new: bool) -> str | None:
    if path.is_file():
        return None if os.access(path, os.R_OK) else f"cannot read known_hosts file {path}: permission denied"
    if path.exists():
        return f"known_hosts {path} is not a file"
    if not accept_new:
        return (
            f"no known_hosts file {path}: pass --accept-new-host-keys to create it (with plan or apply) and "
            "record the hosts' keys; check the fingerprints it prints"
        )
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True)
        path.touch(mode=0o600)
    except OSError as error:
        return f"cannot create known_hosts file {path}: {error.strerror}"
    return None


# -- after pyinfra tried ----------------------------------------------------------------


def explain_connect_error(settings: HostSettings, error: str) -> ConnectProblem:
    """pyinfra's connect error as one line with what to do; ``local`` unless the network is the problem."""
    known_hosts = known_hosts_path(settings)
    entry = host_entry(settings)
    if "No host key for" in error:
        return ConnectProblem(
            f"{entry} is not in {known_hosts}: check the host's key fingerprint, then pass "
            "--accept-new-host-keys once to record it, with plan or apply (or onboard the host)",
            local=True,
        )
    if "does not match" in error and "Host key" in error:
        return ConnectProblem(host_key_mismatch(settings), local=True)
    if "Authentication" in error:
        key = f"key {settings.ssh.key}" if settings.ssh.key else "ssh-agent and ~/.ssh/id_* keys"
        return ConnectProblem(
            f"{settings.ssh.user}@{entry} refused the login with {key}: authorize its public key "
            f"for {settings.ssh.user} on the host (or check ssh.user) [{error}]",
            local=True,
        )
    return ConnectProblem(error, local=False)


def host_key_mismatch(settings: HostSettings) -> str:
    """Both SHA256 fingerprints, the known_hosts file and line, and what to do."""
    known_hosts = known_hosts_path(settings)
    entry = host_entry(settings)
    recorded = recorded_keys(known_hosts, entry)
    try:
        presented = presented_key(settings, [key.get_name() for _, key in recorded])
        shown = f"it presents {presented.get_name()} {presented.fingerprint}"
    except (OSError, paramiko.SSHException, EOFError) as error:
        presented = None
        shown = f"its key could not be read again ({error})"
    same_type = [(line, key) for line, key in recorded if presented and key.get_name() == presented.get_name()]
    listed = (
        "; ".join(
            f"{known_hosts}:{line} has {key.get_name()} {key.fingerprint}" for line, key in (same_type or recorded)
        )
        or f"{known_hosts} has no usable entry"
    )
    return (
        f"host key of {entry} changed: {shown}, {listed}. Someone may be intercepting the connection; if the host "
        f"was reinstalled, check the new fingerprint on its console, then remove the old entry "
        f"(ssh-keygen -R '{entry}' -f {known_hosts}) and pass --accept-new-host-keys"
    )


def recorded_keys(known_hosts: Path, entry: str) -> list[tuple[int, paramiko.PKey]]:
    """(line number, key) of every line of ``known_hosts`` for ``entry`` (hashed names included)."""
    found = []
    try:
        lines = known_hosts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for number, line in enumerate(lines, start=1):
        parsed = _parse_line(line, number)
        if parsed is not None and _names_match(parsed.hostnames, entry):
            found.append((number, parsed.key))
    return found


def presented_key(settings: HostSettings, preferred_types: list[str]) -> paramiko.PKey:
    """The host key the host presents now, asking first for the types known_hosts has (as paramiko did)."""
    transport = paramiko.Transport((settings.address, settings.ssh.port))
    try:
        options = transport.get_security_options()
        wanted = [name for name in preferred_types if name in options.key_types]
        options.key_types = [*wanted, *(name for name in options.key_types if name not in wanted)]
        transport.banner_timeout = settings.ssh.connect_timeout
        transport.start_client(timeout=settings.ssh.connect_timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def _parse_line(line: str, number: int) -> HostKeyEntry | None:
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    try:
        parsed = HostKeyEntry.from_line(line, number)
    except (paramiko.SSHException, ValueError, TypeError):
        return None
    return parsed if parsed is not None and parsed.key is not None else None


def _names_match(names: list[str], entry: str) -> bool:
    for name in names:
        if name.startswith("|1|"):
            if HostKeys.hash_host(entry, name) == name:
                return True
        elif name == entry:
            return True
    return False


class KnownHostsWatch:
    """Says which host keys a connect with accept-new recorded: the lines added to each known_hosts."""

    def __init__(self, hosts: Iterable[HostSettings]):
        self.hosts = list(hosts)
        self.lines_before = {path: _line_count(path) for path in {known_hosts_path(host) for host in self.hosts}}

    def accepted(self) -> list[str]:
        """One line per key recorded since: host, key type, SHA256 fingerprint, file:line."""
        by_entry = {host_entry(host): host.name for host in self.hosts}
        said = []
        for path, before in sorted(self.lines_before.items()):
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            for number, line in enumerate(lines[before:], start=before + 1):
                parsed = _parse_line(line, number)
                if parsed is None:
                    continue
                names = [by_entry.get(name, name) for name in parsed.hostnames]
                said.append(
                    f"{', '.join(names)}: accepted new host key {parsed.key.get_name()} "
                    f"{parsed.key.fingerprint}, recorded in {path}:{number}"
                )
        return said


def _line_count(path: Path) -> int:
    try:
        return len(path.read_text(encoding="utf-8", errors="replace").splitlines())
    except OSError:
        return 0
