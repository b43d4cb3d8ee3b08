"""Service layer: the inference service under systemd, running the ``current`` release.

The unit runs ``<install_root>/current/venv/bin/python -m sd35_provision.service``
from ``current/app`` as the service user, with the SD35_* settings in
``/etc/sd35/service.env`` (a copy of which each release keeps, for
rollbacks) and the API key (if any) in a 0400 file the
service reads itself. It is restarted only when an operation that feeds it changes something
(pyinfra's ``_if=any_changed(...)``): the unit, its settings, the key, the
venv (built or repaired), the model (fetched) or the release switch;
otherwise it is only kept enabled and running.

The files are not the whole truth: a run cut off after writing them, or a
file edited by hand and the service restarted (as a reboot would), leaves a
process that runs other settings than the files or the spec say. So the
service states what it runs (service/running.py: its release and the digest
of each file it read) and the layer compares that with the plan: a process
that runs anything else is restarted, and ``plan``/``drift`` name the
difference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from sd35_provision import layout
from sd35_provision.facts.service import RunningService, RunningState
from sd35_provision.hostplan import HostPlan, render_service_unit
from sd35_provision.operations import HostRecorder, managed_file
from sd35_provision.service_settings import render_service_env

__all__ = [
    "API_KEY_PATH",
    "SERVICE_ENV_FILE",
    "UNIT_NAME",
    "UNIT_PATH",
    "render_service_env",
    "render_service_unit",
    "running_difference",
    "service_layer",
]

STEP = "Service"
UNIT_NAME = layout.SERVICE_UNIT
UNIT_PATH = layout.UNIT_PATH
SERVICE_ENV_FILE = layout.SERVICE_ENV_FILE
API_KEY_PATH = layout.API_KEY_FILE
# Why a restart, in the order the note names them.
RESTART_REASONS = ("unit", "settings", "API key", "venv", "model", "release")


@deploy(STEP)
def service_layer(plan: HostPlan, recorder: HostRecorder) -> None:
    settings = plan.settings
    user = settings.service.user
    wanted_files = dict(plan.running_files)

    files.directory(
        name="Smoke test directory", path=layout.smoke_dir(settings.cache.root), user="root", group="root", mode="755"
    )
    if plan.has_api_key:
        assert settings.service.api_key_file is not None
        key = settings.service.api_key_file.read_text().strip() + "\n"  # read here, kept nowhere
        wanted_files[API_KEY_PATH] = hashlib.sha256(key.encode()).hexdigest()  # only its digest is compared
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

    # What the running process runs, read before this run changed anything.
    running = host.get_fact(RunningService, unit=UNIT_NAME, record=layout.RUNNING_RECORD)
    differs = running_difference(running, plan.release_id, wanted_files)

    # pyinfra's verdict on each operation that feeds the service (prepared, not read again from the host).
    inputs = recorder.service_inputs
    reasons = [reason for reason in RESTART_REASONS if any(op.will_change for op in inputs.get(reason, ()))]
    restart = (
        f"systemctl daemon-reload && systemctl enable --quiet {UNIT_NAME} && "
        f"systemctl restart {UNIT_NAME} || {{ systemctl status --no-pager --lines=15 {UNIT_NAME} >&2; "
        "exit 1; }"
    )
    if differs or reasons:
        # Files this run changes say why; with none, what the process runs does.
        planned = f"service restarts ({', '.join(reasons)} changed)" if reasons else f"service restarts: {differs}"
        restarted = server.shell(
            name=f"Restart {UNIT_NAME}",
            # Type=notify: returns once the model is loaded and warmed up, or fails with the reason.
            commands=[restart],
            # A process that runs something else restarts in any case; else only if an input did change.
            _if=None if differs else any_changed(*(op for reason in reasons for op in inputs[reason])),
        )
        recorder.note(planned, until=restarted, done=planned.replace("restarts", "restarted", 1))
    else:
        systemd.service(name=f"{UNIT_NAME} enabled and running", service=UNIT_NAME, running=True, enabled=True)


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
