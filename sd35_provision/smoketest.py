"""The remote smoke test, per service instance, and the rollback when a new release fails it.

The check runs ON the host (``python -m sd35_provision.service.smoke`` from
the current release), once per instance the host has (its settings files in
/etc/sd35/instances, read after the apply): wait for /readyz, generate one
small image, check it is a PNG of the asked size that is not blank. It keeps
each instance's image and result in ``<cache root>/smoke/`` (instance 0's as
``last.png``/``last.json``) for ``status`` and for people to look at.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from pyinfra.api.host import Host

from sd35_provision import layout
from sd35_provision.facts.service import InstalledInstances, ServiceInstallation, parse_installed_instances
from sd35_provision.hostspec.settings import HostSettings

API_KEY_PATH = layout.API_KEY_FILE
RESTART_PATTERNS = shlex.quote(layout.SERVICE_TEMPLATE.replace("@", "@*"))


@dataclass(frozen=True)
class SmokeTarget:
    """One instance to smoke-test: what the host's settings file for it says."""

    index: int
    port: int
    device: str | None  # CUDA_VISIBLE_DEVICES: GPU-… / MIG-… (None: not pinned)
    unit: str


@dataclass
class SmokeOutcome:
    ok: bool  # every instance passed
    reason: str  # the first failure ("instance 1 (port 8001): ..."), "" when all passed
    latency_s: float | None = None  # the slowest instance's
    image: str | None = None  # instance 0's PNG on the host
    instances: list[dict[str, Any]] = field(default_factory=list)  # per instance: index, unit, port, device, ok...


@dataclass
class InstanceSmoke:
    ok: bool
    reason: str
    latency_s: float | None = None
    image: str | None = None


def _as_root(host: Host) -> dict:
    """pyinfra applies ``ssh.sudo`` to operations and facts only; these direct commands need it too."""
    return {"_sudo": True} if host.data.get("_sudo", False) else {}


def service_url(settings: HostSettings, port: int | None = None) -> str:
    """Where the host itself reaches an instance (``port``; default instance 0's, ``service.port``)."""
    bind = settings.service.bind
    address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)
    host_part = f"[{address}]" if ":" in address else address
    return f"http://{host_part}:{settings.service.port if port is None else port}"


def smoke_command(settings: HostSettings, instance: int = 0, port: int | None = None) -> str:
    current, cache_root = layout.current_link(settings.python.install_root), settings.cache.root
    args = [
        f"{current}/venv/bin/python",
        "-m",
        "sd35_provision.service.smoke",
        "--url",
        service_url(settings, port),
        "--size",
        settings.smoke.size,
        "--steps",
        str(settings.smoke.steps),
        "--timeout",
        str(settings.smoke.timeout_s),
        "--prompt",
        settings.smoke.prompt,
        "--save",
        layout.smoke_image(cache_root, instance),
        "--record",
        layout.smoke_record(cache_root, instance),
    ]
    if settings.service.api_key_file is not None:
        args += ["--api-key-file", API_KEY_PATH]  # a path: the key never reaches argv
    return f"mkdir -p {shlex.quote(layout.smoke_dir(cache_root))} && cd {shlex.quote(current + '/app')} && " + " ".join(
        map(shlex.quote, args)
    )


def smoke_targets(host: Host, settings: HostSettings) -> list[SmokeTarget]:
    """The instances the host has now (read afresh: after an apply, pyinfra's facts are the ones from before).

    A host still on the single unit of before instances has one, on ``service.port``.
    """
    command = InstalledInstances().command(layout.INSTANCES_DIR, layout.SERVICE_TEMPLATE, layout.LEGACY_UNIT)
    _, output = host.run_shell_command(command, print_output=False, **_as_root(host))
    return installed_targets(parse_installed_instances(output.stdout_lines)) or [legacy_target(settings)]


def installed_targets(installed: ServiceInstallation) -> list[SmokeTarget]:
    """The instances the host has set up (a settings file with a port), in order."""
    return [
        SmokeTarget(each.index, each.port, each.device, layout.instance_unit(each.index))
        for each in installed.instances
        if each.port is not None
    ]


def legacy_target(settings: HostSettings) -> SmokeTarget:
    """The single unit of before instances, on ``service.port``: what a host without instances is asked about."""
    return SmokeTarget(0, settings.service.port, None, layout.LEGACY_UNIT)


def run_smoke(host: Host, settings: HostSettings) -> SmokeOutcome:
    """Smoke-test every instance of the host, one after the other."""
    results: list[dict[str, Any]] = []
    for target in smoke_targets(host, settings):
        result = _smoke_instance(host, settings, target)
        results.append(
            {"index": target.index, "unit": target.unit, "port": target.port, "device": target.device, **asdict(result)}
        )
    failed = [each for each in results if not each["ok"]]
    latencies = [each["latency_s"] for each in results if isinstance(each["latency_s"], (int, float))]
    reason = ""
    if failed:
        first = failed[0]
        reason = (
            first["reason"]
            if len(results) == 1
            else f"instance {first['index']} (port {first['port']}): {first['reason']}"
        )
    return SmokeOutcome(
        ok=not failed,
        reason=reason,
        latency_s=max(latencies) if latencies else None,
        image=results[0]["image"] if results else None,
        instances=results,
    )


def _smoke_instance(host: Host, settings: HostSettings, target: SmokeTarget) -> InstanceSmoke:
    _, output = host.run_shell_command(
        smoke_command(settings, target.index, target.port),
        print_output=False,
        _timeout=settings.smoke.timeout_s + 60,
        **_as_root(host),
    )
    for line in reversed(output.stdout_lines):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and "ok" in result:
            return InstanceSmoke(
                ok=bool(result["ok"]),
                reason=result.get("reason", ""),
                latency_s=result.get("latency_s"),
                image=layout.smoke_image(settings.cache.root, target.index) if result["ok"] else None,
            )
    detail = (output.stderr or output.stdout).strip().splitlines()
    return InstanceSmoke(ok=False, reason=detail[-1] if detail else "the smoke test printed no result")


def service_cause(host: Host, unit: str) -> str | None:
    """Why the service is not serving, from its own journal lines (None: nothing telling there).

    A smoke test that finds no ready service only knows /readyz did not answer;
    the service's log says why (``model load failed: fp8-dynamic needs a CUDA GPU``).
    """
    from sd35_provision.report import failure_cause

    ok, output = host.run_shell_command(
        # The last start's lines only (its invocation id): an older failure must not stand in for this one.
        f"journalctl --lines 40 --no-pager --output cat "
        f"_SYSTEMD_INVOCATION_ID=$(systemctl show --property InvocationID --value {unit}) 2>/dev/null; "
        f"systemctl status --no-pager --lines 0 {unit} 2>/dev/null",
        print_output=False,
        **_as_root(host),
    )
    return failure_cause("\n".join(output.stdout_lines), fallback=False) or None


def current_release(host: Host, settings: HostSettings, link: str = "current") -> str | None:
    """What the ``current`` (or ``previous``) link points at, e.g. ``releases/<id>``."""
    root = settings.python.install_root
    path = layout.previous_link(root) if link == "previous" else layout.current_link(root)
    ok, output = host.run_shell_command(f"readlink {shlex.quote(path)}", print_output=False, **_as_root(host))
    return output.stdout.strip() if ok and output.stdout.strip() else None


def roll_back(host: Host, settings: HostSettings) -> tuple[str | None, str]:
    """Point ``current`` back at ``previous`` and restart the service: (release now current, what happened)."""
    from sd35_provision.deploys.release import switch_script

    previous = current_release(host, settings, "previous")
    failed = current_release(host, settings, "current")
    if previous is None or previous == failed:
        return None, "no previous release to roll back to"
    command = "\n".join(
        [
            switch_script(settings.python.install_root, previous),
            _restore_settings_script(settings),
            # Every instance the host runs (loaded units; a legacy single unit, if any, too).
            f"systemctl restart {RESTART_PATTERNS} || systemctl status --no-pager --lines=10 {RESTART_PATTERNS} >&2",
        ]
    )
    ok, output = host.run_shell_command(command, print_output=False, **_as_root(host))
    if not ok:
        return None, f"rollback to {previous} failed: {(output.stderr or '').strip().splitlines()[-1:]}"
    return previous, f"rolled back to {previous.removeprefix('releases/')}"


def _restore_settings_script(settings: HostSettings) -> str:
    """Put back the service settings the restored release was made with (older releases kept none)."""
    copy = shlex.quote(f"{layout.current_link(settings.python.install_root)}/{layout.RELEASE_SERVICE_ENV}")
    env_file = layout.SERVICE_ENV_FILE
    user = shlex.quote(settings.service.user)
    return (
        f"if [ -f {copy} ]; then install -m 640 -o root -g {user} {copy} {env_file}.new && "
        f"mv -f {env_file}.new {env_file}; fi"
    )
