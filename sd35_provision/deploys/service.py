"""Service layer: the inference service's instances under systemd, running the ``current`` release.

One template unit, ``sd35-inference@.service``; instance ``i`` runs
``<install_root>/current/venv/bin/python -m sd35_provision.service`` from
``current/app`` as the service user, with the SD35_* settings every instance
shares in ``/etc/sd35/service.env`` (a copy of which each release keeps, for
rollbacks), its own port and device in ``/etc/sd35/instances/<i>.env``, and
the API key (if any) in a 0400 file the service reads itself. An instance is
restarted only when an operation that feeds it changes something (pyinfra's
``_if=any_changed(...)``): the unit, the shared settings, the key, the venv
(built or repaired), the model (fetched) or the release switch restart them
all, its own settings file only itself; otherwise each is only kept enabled
and running. Instances the plan does not have (fewer than before), and the
single ``sd35-inference.service`` of before instances, are stopped, disabled
and their files removed.

The files are not the whole truth: a run cut off after writing them, or a
file edited by hand and the service restarted (as a reboot would), leaves a
process that runs other settings than the files or the spec say. So each
instance states what it runs (service/running.py: its release and the digest
of each file it read) and the layer compares that with the plan: a process
that runs anything else is restarted, and ``plan``/``drift`` name the
difference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from sd35_provision import layout
from sd35_provision.facts.service import InstalledInstances, RunningService, RunningState, ServiceInstallation
from sd35_provision.hostplan import HostPlan, render_service_unit
from sd35_provision.instances import Instance
from sd35_provision.operations import HostRecorder, managed_file
from sd35_provision.service_settings import render_service_env

__all__ = [
    "API_KEY_PATH",
    "SERVICE_ENV_FILE",
    "UNIT_PATH",
    "render_service_env",
    "render_service_unit",
    "running_difference",
    "service_layer",
]

STEP = "Service"
UNIT_PATH = layout.UNIT_PATH
SERVICE_ENV_FILE = layout.SERVICE_ENV_FILE
API_KEY_PATH = layout.API_KEY_FILE
# Why every instance restarts, in the order the note names them.
RESTART_REASONS = ("unit", "settings", "API key", "venv", "model", "release")
INSTANCE_SETTINGS = "instance settings"  # one instance's own file: only that instance restarts


@deploy(STEP)
def service_layer(plan: HostPlan, recorder: HostRecorder) -> None:
    settings = plan.settings
    user = settings.service.user
    shared_files = dict(plan.running_files)

    files.directory(
        name="Smoke test directory", path=layout.smoke_dir(settings.cache.root), user="root", group="root", mode="755"
    )
    if plan.has_api_key:
        assert settings.service.api_key_file is not None
        key = settings.service.api_key_file.read_text().strip() + "\n"  # read here, kept nowhere
        shared_files[API_KEY_PATH] = hashlib.sha256(key.encode()).hexdigest()  # only its digest is compared
        recorder.feeds_service(
            "API key",
            managed_file(
                name="Service API key",
                path=API_KEY_PATH,
                content=key,
                user=user,
                group=user,
                mode="400",
                secret=True,
                recorder=recorder,
            ),
        )
    else:
        files.file(name="No API key file", path=API_KEY_PATH, present=False)
    recorder.feeds_service(
        "settings",
        managed_file(
            name="Service settings",
            path=SERVICE_ENV_FILE,
            content=plan.service_env,
            user="root",
            group=user,
            mode="640",
            recorder=recorder,
        ),
    )
    own_settings = {
        instance.index: managed_file(
            name=f"Instance {instance.index} settings",
            path=instance.env_file,
            content=plan.instance_envs[instance.index],
            user="root",
            group=user,
            mode="640",
            recorder=recorder,
        )
        for instance in plan.instances
    }
    recorder.feeds_service(
        "unit",
        managed_file(
            name="Service unit",
            path=UNIT_PATH,
            content=plan.unit,
            user="root",
            group="root",
            mode="644",
            recorder=recorder,
        ),
    )

    installed: ServiceInstallation = host.get_fact(
        InstalledInstances,
        instances_dir=layout.INSTANCES_DIR,
        template=layout.SERVICE_TEMPLATE,
        legacy_unit=layout.LEGACY_UNIT,
    )
    _remove_what_is_not_planned(plan, installed, recorder)

    # What each running process runs, read before this run changed anything.
    differs: dict[int, str | None] = {}
    for instance in plan.instances:
        running = host.get_fact(RunningService, unit=instance.unit, record=instance.running_record)
        differs[instance.index] = running_difference(
            running, plan.release_id, {**shared_files, **plan.running_files_of(instance)}
        )

    # pyinfra's verdict on each operation that feeds the service (prepared, not read again from the host).
    inputs = recorder.service_inputs
    reasons = [reason for reason in RESTART_REASONS if any(op.will_change for op in inputs.get(reason, ()))]
    shared_ops = [op for reason in reasons for op in inputs[reason]]
    own_changed = {index for index, op in own_settings.items() if op.will_change}
    restarting = [
        instance for instance in plan.instances if reasons or instance.index in own_changed or differs[instance.index]
    ]
    for instance in plan.instances:
        if instance not in restarting:
            systemd.service(
                name=f"{instance.unit} enabled and running", service=instance.unit, running=True, enabled=True
            )
    if not restarting:
        return
    units = " ".join(instance.unit for instance in restarting)
    restarted = server.shell(
        name=f"Restart {', '.join(instance.unit for instance in restarting)}",
        # Type=notify: returns once every model is loaded and warmed up, or fails with the reason.
        commands=[
            f"systemctl daemon-reload && systemctl enable --quiet {units} && "
            f"systemctl restart {units} || {{ systemctl status --no-pager --lines=15 {units} >&2; exit 1; }}"
        ],
        # A process that runs something else restarts in any case; else only if an input did change.
        _if=None
        if any(differs[instance.index] for instance in restarting)
        else any_changed(*shared_ops, *(own_settings[index] for index in sorted(own_changed))),
    )
    _note_restarts(plan.instances, restarting, reasons, own_changed, differs, recorder, restarted)


def _note_restarts(
    instances: tuple[Instance, ...],
    restarting: list[Instance],
    reasons: list[str],
    own_changed: set[int],
    differs: dict[int, str | None],
    recorder: HostRecorder,
    restart: OperationMeta,
) -> None:
    """Why: the files this run changes; with none, what the process runs. Per instance when not all restart.

    Said as planned until the restart ran, then as done ("restarted").
    """
    planned: list[str]
    if reasons:
        changed = [*reasons[:2], *([INSTANCE_SETTINGS] if own_changed else []), *reasons[2:]]
        planned = [f"service restarts ({', '.join(changed)} changed)"]
    else:
        planned = []
        for instance in restarting:
            who = "service" if len(instances) == 1 else instance.unit
            why = differs[instance.index]
            planned.append(
                f"{who} restarts ({INSTANCE_SETTINGS} changed)"
                if instance.index in own_changed
                else f"{who} restarts: {why}"
            )
    for text in planned:
        recorder.note(text, until=restart, done=text.replace("restarts", "restarted", 1))


def _remove_what_is_not_planned(plan: HostPlan, installed: ServiceInstallation, recorder: HostRecorder) -> None:
    """The single unit of before instances, and instances beyond the plan's: stopped, disabled, their files gone.

    Before any instance (re)starts: the old unit holds instance 0's port, and its RuntimeDirectory is
    the parent of every instance's.
    """
    if installed.legacy_unit:
        unit = layout.LEGACY_UNIT
        recorder.note(
            f"{unit} ({installed.legacy_active or 'not loaded'}) is replaced by {layout.SERVICE_TEMPLATE} instances"
        )
        server.shell(
            name=f"Remove {unit} (replaced by instances)",
            commands=[
                f"systemctl disable --now --quiet {unit} 2>/dev/null; rm -f {layout.LEGACY_UNIT_PATH} && "
                f"systemctl daemon-reload && systemctl reset-failed {unit} 2>/dev/null; true"
            ],
        )
    planned = {instance.index for instance in plan.instances}
    for extra in installed.instances:
        if extra.index in planned:
            continue
        if not (extra.port is not None or extra.enabled or extra.running or extra.active == "failed"):
            continue  # a unit systemd still remembers, stopped and with nothing left to remove
        unit = layout.instance_unit(extra.index)
        if extra.running:
            recorder.note(f"{unit} runs but the spec has no instance {extra.index}")
        server.shell(
            name=f"Remove {unit} (not in the spec)",
            commands=[
                f"systemctl disable --now --quiet {unit}; rm -f {layout.instance_env_file(extra.index)} && "
                f"systemctl reset-failed {unit} 2>/dev/null; true"
            ],
        )


def running_difference(running: RunningState, release_id: str, files: Mapping[str, str]) -> str | None:
    """How the running process differs from the plan (None: it runs the plan, or no process runs).

    ``files``: the SHA-256 each file the service reads should have. A process that
    states nothing (started by a service version that did not) counts as different.
    """
    if not running.running:
        return None  # nothing runs: starting it is the other operations' business
    record = running.stated
    if record is None:
        return f"the running process (pid {running.main_pid}) does not state what it runs"
    stated = record.get("files")
    stated_files: dict[str, str | None] = stated if isinstance(stated, dict) else {}
    changed = sorted(path for path in set(files) | set(stated_files) if stated_files.get(path) != files.get(path))
    release = record.get("release")
    if release == release_id and not changed:
        return None
    text = (
        f"service runs release {release or '(none)'} with settings digest {settings_digest(stated_files)}, "
        f"wanted {release_id} with {settings_digest(files)}"
    )
    return text + (f" ({', '.join(changed)} differ{'s' if len(changed) == 1 else ''})" if changed else "")


def settings_digest(files: Mapping[str, str | None]) -> str:
    """One short digest of every file the service reads (path and content), for messages."""
    text = "".join(f"{path} {files[path] or '-'}\n" for path in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
