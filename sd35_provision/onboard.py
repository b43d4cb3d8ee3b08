"""Onboarding: first contact with a fresh box, up to a provisioned host in the spec.

1. First contact (paramiko): the host key is shown as a SHA256 fingerprint and
   recorded in the spec's known_hosts only when the caller accepts it; a key
   other than the one recorded is refused.
2. Log in with the first-contact account (password or key), make the deploy
   account: the user, its authorized key, passwordless sudo when asked.
3. Check that the deploy account logs in with its key (and sudo works).
4. Add the host to the spec (comments and order kept), validate (the old file
   is put back if the result is invalid), gather facts, apply to that host.

Every step looks before it changes, so onboarding a host twice changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import yaml

from sd35_provision.errors import Sd35Error, SpecError
from sd35_provision.hostspec import settings as model
from sd35_provision.hostspec.edit import SpecEdit, add_host, restore
from sd35_provision.hostspec.loader import is_valid_address, load_spec, merged_host_settings, resolve_local_path
from sd35_provision.hostspec.yamlsource import load_yaml_document

Echo = Callable[[str], None]
ConfirmHostKey = Callable[[str], bool]

_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
COMMAND_TIMEOUT_S = 120


class OnboardError(Sd35Error):
    """Onboarding stopped; the message says where and why."""


@dataclass
class OnboardRequest:
    """What ``sd35-provision onboard`` was asked to do."""

    spec_path: Path
    name: str
    address: str
    user: str = "root"  # first-contact account
    password: str | None = None  # first contact by password (asked with getpass, never argv)
    key: Path | None = None  # first contact by key
    port: int | None = None  # default: the spec's ssh.port for this host
    groups: tuple[str, ...] = ()
    deploy_user: str | None = None  # default: the spec's ssh.user for this host
    deploy_key: Path | None = None  # default: the spec's ssh.key, else ``key``
    sudo: bool = False  # passwordless sudo for the deploy user (and ssh.sudo in the spec)
    settings: dict[str, Any] = field(default_factory=dict)  # from --set section.field=value


@dataclass
class DeployAccess:
    """How sd35-provision will log in to the host: the merged ssh settings plus what onboarding adds."""

    user: str
    port: int
    key: Path
    public_key: str
    known_hosts: Path
    sudo: bool
    connect_timeout: int


@dataclass
class OnboardResult:
    name: str
    host_key: str  # "ssh-ed25519 SHA256:..."
    host_key_recorded: bool
    account_changes: list[str]
    spec_edit: SpecEdit


# -- the host entry --------------------------------------------------------------


def parse_setting(text: str) -> tuple[tuple[str, ...], Any]:
    """``service.bind=10.0.0.5`` -> (("service", "bind"), "10.0.0.5"); the value is read as YAML."""
    path, separator, value = text.partition("=")
    keys = tuple(path.strip().split("."))
    if not separator or len(keys) < 2 or not all(keys):
        raise OnboardError(f"--set {text}: expected SECTION.FIELD=VALUE, e.g. service.bind=10.0.0.5")
    if keys[0] not in model.SECTIONS:
        raise OnboardError(f"--set {text}: {keys[0]!r} is not a settings section ({', '.join(model.SECTIONS)})")
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
        raise OnboardError(f"--name {request.name}: use letters, digits, '.', '_' and '-' (starting with a letter or digit)")
    if not is_valid_address(request.address):
        raise OnboardError(f"--address {request.address}: not a host name or IP address")
    entry: dict[str, Any] = {"address": request.address}
    if request.groups:
        entry["groups"] = list(request.groups)
    for section, values in request.settings.items():
        entry[section] = _merge(entry.get(section, {}), values)

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
        raise OnboardError("no SSH key for the deploy user: set ssh.key in the spec, or pass --deploy-key "
                           "(or --key, to use the first-contact key)")
    key = resolve_local_path(base, key)
    if key != (resolve_local_path(base, inherited["key"]) if inherited.get("key") else None):
        ssh["key"] = _spec_relative(key, request.spec_path)
    sudo = bool(current["sudo"])
    if request.sudo and user != "root" and not sudo:
        sudo = True
    if sudo != bool(inherited["sudo"]):
        ssh["sudo"] = sudo
    if ssh:
        entry["ssh"] = _merge(given, ssh)
    # The way people write entries: where and how to reach the host first, then its settings.
    entry = {key: entry[key] for key in ("address", "groups", "ssh", *entry) if key in entry}

    known_hosts = current.get("known_hosts")
    known_hosts = resolve_local_path(base, known_hosts) if known_hosts else Path("~/.ssh/known_hosts").expanduser()
    access = DeployAccess(user=user, port=port, key=key, public_key=public_key_line(key), known_hosts=known_hosts,
                          sudo=sudo, connect_timeout=int(current["connect_timeout"]))
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


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _spec_relative(path: Path, spec_path: Path) -> str:
    """``path`` as the spec should name it: relative when it sits beside or below the spec."""
    try:
        return str(path.resolve().relative_to(spec_path.resolve().parent))
    except ValueError:
        return str(path)


def public_key_line(private_key: Path) -> str:
    """``type base64`` of the key pair at ``private_key`` (its ``.pub``, else derived from the key)."""
    public = Path(f"{private_key}.pub")
    if public.is_file():
        parts = public.read_text().split()
        if len(parts) >= 2:
            return f"{parts[0]} {parts[1]}"
    try:
        key = paramiko.PKey.from_path(private_key)
    except FileNotFoundError as error:
        raise OnboardError(f"{private_key}: no such key file") from error
    except paramiko.PasswordRequiredException as error:
        raise OnboardError(f"{private_key} is encrypted and {public} is missing: write the .pub beside it") from error
    except (paramiko.SSHException, ValueError) as error:
        raise OnboardError(f"{private_key}: not a usable private key ({error})") from error
    return f"{key.get_name()} {key.get_base64()}"


# -- host keys ---------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


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
    """The host key ``address:port`` presents, asking first for the types already recorded."""
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


def trust_host_key(address: str, port: int, known_hosts: Path, timeout: float, confirm: ConfirmHostKey,
                   echo: Echo) -> tuple[str, bool]:
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
        raise OnboardError(f"{address}:{port}: host key {shown} not accepted; check it on the box's console "
                           "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and run again with --accept-host-key")
    record_host_key(known_hosts, address, port, offered)
    echo(f"recorded in {known_hosts}")
    return shown, True


# -- accounts ------------------------------------------------------------------------


def connect(address: str, port: int, user: str, known_hosts: Path, timeout: float,
            password: str | None = None, key: Path | None = None) -> paramiko.SSHClient:
    """A verified SSH login (the host key must be in ``known_hosts``)."""
    client = paramiko.SSHClient()
    client.get_host_keys().load(str(known_hosts))  # read only: never written back
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(address, port=port, username=user, password=password,
                       key_filename=str(key) if key else None, allow_agent=False, look_for_keys=False,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout)
    except paramiko.AuthenticationException as error:
        client.close()
        how = "password" if password is not None else f"key {key}"
        raise OnboardError(f"{user}@{address}:{port}: login with {how} refused ({error})") from error
    except (paramiko.SSHException, OSError) as error:
        client.close()
        raise OnboardError(f"{user}@{address}:{port}: {error}") from error
    return client


def run(client: paramiko.SSHClient, command: str, stdin_text: str | None = None) -> tuple[int, str, str]:
    stdin, stdout, stderr = client.exec_command(command, timeout=COMMAND_TIMEOUT_S)
    if stdin_text is not None:
        stdin.write(stdin_text)
        stdin.flush()
    stdin.channel.shutdown_write()
    out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    return stdout.channel.recv_exit_status(), out, err


def as_root(command: str, login_user: str, password: str | None) -> tuple[str, str | None]:
    """(command line, stdin) that runs ``command`` as root from ``login_user``'s session."""
    if login_user == "root":
        return f"sh -c {shlex.quote(command)}", None
    if password is not None:
        return f"sudo -S -p '' sh -c {shlex.quote(command)}", password + "\n"
    return f"sudo -n sh -c {shlex.quote(command)}", None


def account_script(user: str, public_key: str, sudo: bool) -> str:
    """Shell (run as root) that makes ``user`` log in with ``public_key``; prints one line per change."""
    key_type, key_data = public_key.split()[:2]
    lines = [
        "set -eu",
        f"user={shlex.quote(user)}",
        f"key={shlex.quote(key_type + ' ' + key_data + ' sd35-provision')}",
        f"key_data={shlex.quote(key_data)}",
        'if ! id -u "$user" >/dev/null 2>&1; then',
        '  useradd --create-home --shell /bin/bash "$user"',
        '  echo "created user $user"',
        "fi",
        'home=$(getent passwd "$user" | cut -d: -f6)',
        'group=$(id -gn "$user")',
        'if [ ! -d "$home/.ssh" ]; then install -d -m 700 -o "$user" -g "$group" "$home/.ssh"; fi',
        'auth="$home/.ssh/authorized_keys"',
        'if ! grep -qF -- "$key_data" "$auth" 2>/dev/null; then',
        '  printf "%s\\n" "$key" >> "$auth"',
        '  chown "$user:$group" "$auth"',
        '  chmod 600 "$auth"',
        '  echo "authorized the deploy key for $user"',
        "fi",
    ]
    if sudo and user != "root":
        rule = f"{user} ALL=(ALL) NOPASSWD:ALL"
        lines += [
            "if ! command -v sudo >/dev/null 2>&1; then",
            '  echo "sudo is not installed: install it (apt-get install sudo) or onboard with --deploy-user root" >&2',
            "  exit 3",
            "fi",
            f'rules=/etc/sudoers.d/90-sd35-{user}',
            f"rule={shlex.quote(rule)}",
            'if [ "$(cat "$rules" 2>/dev/null)" != "$rule" ]; then',
            '  printf "%s\\n" "$rule" > "$rules.new"',
            '  chmod 440 "$rules.new"',
            '  if command -v visudo >/dev/null 2>&1; then visudo -cqf "$rules.new"; fi',
            '  mv -f "$rules.new" "$rules"',
            '  echo "passwordless sudo for $user"',
            "fi",
        ]
    return "\n".join(lines) + "\n"


def prepare_account(request: OnboardRequest, access: DeployAccess, echo: Echo) -> list[str]:
    """Log in with the first-contact account and make the deploy account; the changes made."""
    client = connect(request.address, access.port, request.user, access.known_hosts, access.connect_timeout,
                     password=request.password, key=request.key)
    try:
        command, stdin_text = as_root(account_script(access.user, access.public_key, request.sudo),
                                      request.user, request.password)
        status, out, err = run(client, command, stdin_text)
    finally:
        client.close()
    if status != 0:
        detail = err.strip().splitlines()[-1] if err.strip() else f"exit status {status}"
        if request.user != "root" and "password is required" in err:
            detail += f" ({request.user} needs passwordless sudo, or use --password-prompt)"
        raise OnboardError(f"{request.user}@{request.address}: preparing the deploy account {access.user} failed: {detail}")
    changes = [line for line in out.splitlines() if line.strip()]
    for line in changes:
        echo(f"{request.name}: {line}")
    if not changes:
        echo(f"{request.name}: deploy account {access.user} already set up")
    return changes


def check_deploy_login(request: OnboardRequest, access: DeployAccess) -> None:
    """The deploy account logs in with its key, and has passwordless sudo when the spec says it will."""
    client = connect(request.address, access.port, access.user, access.known_hosts, access.connect_timeout,
                     key=access.key)
    try:
        if access.sudo and access.user != "root":
            status, _, err = run(client, "sudo -n true")
            if status != 0:
                raise OnboardError(f"{access.user}@{request.address}: no passwordless sudo ({err.strip()}); "
                                   "onboard with --sudo")
    finally:
        client.close()


# -- the spec ------------------------------------------------------------------------


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
        raise SpecError([problem.replace(str(copy), str(spec_path)) for problem in error.problems]
                        + ["(checked before contacting the host; the spec file was not changed)"]) from error
    finally:
        copy.unlink(missing_ok=True)


def write_spec(spec_path: Path, name: str, entry: dict[str, Any], echo: Echo):
    """Add the host to the spec and validate it; on any problem the old file is put back."""
    edit = add_host(spec_path, name, entry)
    try:
        spec = load_spec(spec_path)
    except SpecError as error:
        restore(edit)
        raise SpecError(error.problems + [f"(the spec file {spec_path} was put back as it was)"]) from error
    if edit.changed:
        echo(f"added {name} to {spec_path}:{edit.line}")
    else:
        echo(f"{name} is already in {spec_path}:{edit.line} with these settings; the spec is unchanged")
    return spec, edit


def onboard_host(request: OnboardRequest, confirm_host_key: ConfirmHostKey, echo: Echo) -> tuple[OnboardResult, Any]:
    """Steps 1-4 up to a validated spec holding the host: (result, the loaded FleetSpec)."""
    entry, access = plan_entry(request)
    check_spec_with(request.spec_path, request.name, entry)
    shown, recorded = trust_host_key(request.address, access.port, access.known_hosts, access.connect_timeout,
                                     confirm_host_key, echo)
    changes = prepare_account(request, access, echo)
    check_deploy_login(request, access)
    spec, edit = write_spec(request.spec_path, request.name, entry, echo)
    return OnboardResult(request.name, shown, recorded, changes, edit), spec


@dataclass
class Onboarded:
    """Everything ``onboard`` did: the host's setup, its facts, and the apply (None when skipped)."""

    result: OnboardResult
    facts: Any  # HostFacts, or None when gathering failed
    facts_report: Any  # RunReport of the facts run
    apply_report: Any = None  # RunReport of the apply to this host only


def onboard(request: OnboardRequest, confirm_host_key: ConfirmHostKey, echo: Echo,
            apply: bool = True, options: Any = None) -> Onboarded:
    """First contact to applied host: steps 1-4, then facts, then ``apply`` limited to this host."""
    from sd35_provision import workflow
    from sd35_provision.runner import RunOptions

    result, spec = onboard_host(request, confirm_host_key, echo)
    gathered, facts_report = workflow.gather_facts(spec, (request.name,), RunOptions())
    done = Onboarded(result, gathered.get(request.name), facts_report)
    if apply and facts_report.ok:
        done.apply_report = workflow.apply(spec, (request.name,), options or RunOptions())
    return done
