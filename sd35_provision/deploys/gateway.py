"""Gateway layer: HAProxy (Debian's package) in front of every instance, its config from the spec.

The config (gatewayplan.py) names three secret files beside it: the TLS
certificate with its key, the client keys and the backend key, each pushed
0600 (shown in ``plan`` as changed, never their content). A new set never
replaces the running one unchecked: every file goes to ``<path>.new``,
``haproxy -c`` checks the candidate config (which names the ``.new`` files),
and only then are they moved into place and HAProxy reloaded (not restarted:
connections in flight survive). A candidate HAProxy refuses fails the step
with its message (host, step and file named); the running gateway keeps
serving what it served.
"""

from __future__ import annotations

import hashlib
import io
import shlex
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.files import FileContents, Sha256File
from pyinfra.operations import files, systemd

from sd35_provision import layout
from sd35_provision.gatewayplan import SERVER_STATE_FILE, GatewayPlan, render_backend_key, render_client_keys
from sd35_provision.operations import SECRET_NOTICE, HostRecorder, apt_packages_present, unified_diff

STEP = "Gateway"


@dataclass(frozen=True)
class GatewayFile:
    path: str
    content: str
    mode: str
    secret: bool
    source: str = ""  # what the spec calls it, for a refusal's message


def gateway_files(plan: GatewayPlan) -> list[GatewayFile]:
    """The files the gateway runs on, the secrets read here from the control machine (kept nowhere)."""
    gateway = plan.gateway
    keys = {key.name: key.file.read_text(encoding="utf-8").strip() for key in gateway.keys}
    backend = gateway.backend_key_file
    wanted = [
        GatewayFile(layout.GATEWAY_CLIENT_KEYS, render_client_keys(keys), "600", True, "gateway.keys"),
        GatewayFile(
            layout.GATEWAY_BACKEND_KEY,
            render_backend_key(backend.read_text(encoding="utf-8").strip() if backend else ""),
            "600",
            True,
            "service.api_key_file",
        ),
    ]
    if gateway.tls is not None:
        cert = gateway.tls.cert_file.read_text(encoding="utf-8")
        key = gateway.tls.key_file.read_text(encoding="utf-8")
        source = f"tls.cert_file {gateway.tls.cert_file} + tls.key_file {gateway.tls.key_file}"
        wanted.append(GatewayFile(layout.GATEWAY_PEM, cert.rstrip("\n") + "\n" + key, "600", True, source))
    wanted.append(GatewayFile(layout.HAPROXY_CONFIG, plan.config, "644", False, "gateway:"))
    return wanted


def switch_script(candidates: list[GatewayFile], check_config: str) -> str:
    """Check the candidate with ``haproxy -c``, then move every ``.new`` file into place and reload."""
    sources = "".join(f"#   {shlex.quote(c.path)}.new: {c.source}\n" for c in candidates)
    moves = " && ".join(f"mv -f {shlex.quote(c.path + '.new')} {shlex.quote(c.path)}" for c in candidates)
    leftovers = " ".join(shlex.quote(c.path + ".new") for c in candidates)
    check = shlex.quote(check_config)
    socket = shlex.quote(layout.HAPROXY_ADMIN_SOCKET)
    return (
        f"# the candidate's files:\n{sources}"
        f"if ! out=$(haproxy -c -f {check} 2>&1); then\n"
        f'  echo "haproxy -c refused the new gateway config; the running gateway keeps its own:" >&2\n'
        f'  echo "$out" | grep -v NOTICE >&2\n'
        f'  printf "%s\\n" {shlex.quote(sources.replace("#   ", "  "))} >&2\n'
        f"  rm -f {leftovers} {check}; exit 1\n"
        "fi\n"
        # Drained servers stay drained across the reload (the config's server-state-file).
        f"[ -S {socket} ] && echo 'show servers state' | socat -t 10 stdio UNIX-CONNECT:{socket} "
        f"> {SERVER_STATE_FILE}.new 2>/dev/null && mv -f {SERVER_STATE_FILE}.new {SERVER_STATE_FILE}\n"
        f"{moves} && rm -f {check} && "
        f"if systemctl is-active --quiet {layout.HAPROXY_UNIT}; then systemctl reload {layout.HAPROXY_UNIT}; "
        f"else systemctl restart {layout.HAPROXY_UNIT}; fi"
    )


@operation()
def gateway_config(wanted: list[GatewayFile], check_config: str, recorder: HostRecorder | None = None):
    """
    Bring the gateway's files to ``wanted``: pushed as ``.new``, checked by ``haproxy -c``, then switched.

    + wanted: the files (config last), with their mode and whether they are secret
    + check_config: the candidate config text naming the ``.new`` files
    + recorder: the host's recorder, for the diff (secret files: a notice only)
    """
    changed = [
        item
        for item in wanted
        if host.get_fact(Sha256File, path=item.path) != hashlib.sha256(item.content.encode()).hexdigest()
    ]
    if not changed:
        return
    if recorder is not None and not host.state.is_executing:
        diffs = []
        for item in changed:
            if item.secret:
                diffs.append(f"--- {item.path}\n+++ {item.path}\n{SECRET_NOTICE}\n")
            else:
                diffs.append(unified_diff(item.path, host.get_fact(FileContents, path=item.path), item.content))
        recorder.diff("".join(diffs))
    # Every file of the set goes through the check, changed or not: the candidate names them all.
    for item in wanted:
        yield from files.put._inner(
            src=io.BytesIO(item.content.encode()), dest=item.path + ".new", user="root", group="root", mode=item.mode
        )
    check = f"{layout.GATEWAY_DIR}/check.cfg"
    yield from files.put._inner(src=io.BytesIO(check_config.encode()), dest=check, mode="600")
    yield switch_script(wanted, check)


@deploy(STEP)
def gateway_layer(plan: GatewayPlan, recorder: HostRecorder) -> None:
    apt_packages_present(name="Install haproxy and socat", packages=["haproxy", "socat"])
    files.directory(name="Gateway secrets directory", path=layout.GATEWAY_DIR, user="root", group="root", mode="700")
    gateway_config(
        name="Gateway config (checked by haproxy -c, then reloaded)",
        wanted=gateway_files(plan),
        check_config=plan.candidate_config,
        recorder=recorder,
    )
    systemd.service(
        name=f"{layout.HAPROXY_UNIT} enabled and running", service=layout.HAPROXY_UNIT, running=True, enabled=True
    )
