"""The deploy account: made over the first-contact login, then checked by logging in with its key.

The account script looks before it changes (user, authorized key, sudo rule),
so running it twice changes nothing; it prints one line per change made.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import paramiko

from sd35_provision import sshlogin
from sd35_provision.onboarding.request import DeployAccess, Echo, OnboardError, OnboardRequest

COMMAND_TIMEOUT_S = 120


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


def connect(
    address: str,
    port: int,
    user: str,
    known_hosts: Path,
    timeout: float,
    password: str | None = None,
    key: Path | None = None,
) -> paramiko.SSHClient:
    """A verified SSH login (the host key must be in ``known_hosts``); failures as OnboardError."""
    try:
        return sshlogin.connect(
            address, user=user, known_hosts=known_hosts, port=port, key=key, password=password, timeout=timeout
        )
    except paramiko.AuthenticationException as error:
        how = "password" if password is not None else f"key {key}"
        raise OnboardError(f"{user}@{address}:{port}: login with {how} refused ({error})") from error
    except (paramiko.SSHException, OSError) as error:
        raise OnboardError(f"{user}@{address}:{port}: {error}") from error


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
            f"rules=/etc/sudoers.d/90-sd35-{user}",
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
    client = connect(
        request.address,
        access.port,
        request.user,
        access.known_hosts,
        access.connect_timeout,
        password=request.password,
        key=request.key,
    )
    try:
        command, stdin_text = as_root(
            account_script(access.user, access.public_key, request.sudo), request.user, request.password
        )
        status, out, err = run(client, command, stdin_text)
    finally:
        client.close()
    if status != 0:
        detail = err.strip().splitlines()[-1] if err.strip() else f"exit status {status}"
        if request.user != "root" and "password is required" in err:
            detail += f" ({request.user} needs passwordless sudo, or use --password-prompt)"
        raise OnboardError(
            f"{request.user}@{request.address}: preparing the deploy account {access.user} failed: {detail}"
        )
    changes = [line for line in out.splitlines() if line.strip()]
    for line in changes:
        echo(f"{request.name}: {line}")
    if not changes:
        echo(f"{request.name}: deploy account {access.user} already set up")
    return changes


def check_deploy_login(request: OnboardRequest, access: DeployAccess) -> None:
    """The deploy account logs in with its key, and has passwordless sudo when the spec says it will."""
    client = connect(
        request.address, access.port, access.user, access.known_hosts, access.connect_timeout, key=access.key
    )
    try:
        if access.sudo and access.user != "root":
            status, _, err = run(client, "sudo -n true")
            if status != 0:
                raise OnboardError(
                    f"{access.user}@{request.address}: no passwordless sudo ({err.strip()}); onboard with --sudo"
                )
    finally:
        client.close()
