"""Service layer: the inference service under systemd, running the ``current`` release.

The unit runs ``<install_root>/current/venv/bin/python -m sd35_provision.service``
from ``current/app`` as the service user, with the SD35_* settings in
``/etc/sd35/service.env`` (a copy of which each release keeps, for
rollbacks) and the API key (if any) in a 0400 file the
service reads itself. It is restarted only when an operation that feeds it changes something
(pyinfra's ``_if=any_changed(...)``): the unit, its settings, the key, the
venv (built or repaired), the model (fetched) or the release switch;
otherwise it is only kept enabled and running.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from sd35_provision import layout
from sd35_provision.service_settings import render_service_env
from sd35_provision.hostplan import HostPlan, render_service_unit
from sd35_provision.operations import HostRecorder, managed_file

__all__ = ["API_KEY_PATH", "SERVICE_ENV_FILE", "UNIT_NAME", "UNIT_PATH", "render_service_env", "render_service_unit",
           "service_layer"]

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

    files.directory(name="Smoke test directory", path=layout.smoke_dir(settings.cache.root), user="root",
                    group="root", mode="755")
    if plan.has_api_key:
        assert settings.service.api_key_file is not None
        key = settings.service.api_key_file.read_text().strip() + "\n"  # read here, kept nowhere
        recorder.feeds_service("API key", managed_file(
            name="Service API key", path=API_KEY_PATH, content=key, user=user, group=user, mode="400", secret=True,
            recorder=recorder))
    else:
        files.file(name="No API key file", path=API_KEY_PATH, present=False)
    recorder.feeds_service("settings", managed_file(
        name="Service settings", path=SERVICE_ENV_FILE, content=plan.service_env, user="root", group=user,
        mode="640", recorder=recorder))
    recorder.feeds_service("unit", managed_file(
        name="Service unit", path=UNIT_PATH, content=plan.unit, user="root", group="root", mode="644",
        recorder=recorder))

    # pyinfra's verdict on each operation that feeds the service (prepared, not read again from the host).
    inputs = recorder.service_inputs
    reasons = [reason for reason in RESTART_REASONS if any(op.will_change for op in inputs.get(reason, ()))]
    if reasons:
        recorder.note(f"service restarts ({', '.join(reasons)} changed)")
        server.shell(
            name=f"Restart {UNIT_NAME}",
            # Type=notify: returns once the model is loaded and warmed up, or fails with the reason.
            commands=[f"systemctl daemon-reload && systemctl enable --quiet {UNIT_NAME} && "
                      f"systemctl restart {UNIT_NAME} || {{ systemctl status --no-pager --lines=15 {UNIT_NAME} >&2; "
                      "exit 1; }"],
            # Only if one of them did change when applied.
            _if=any_changed(*(op for reason in reasons for op in inputs[reason])),
        )
    else:
        systemd.service(name=f"{UNIT_NAME} enabled and running", service=UNIT_NAME, running=True, enabled=True)
