"""Service layer: the inference service under systemd, running the ``current`` release.

The unit runs ``<install_root>/current/venv/bin/python -m sd35_provision.service``
from ``current/app`` as the service user, with the SD35_* settings in
``/etc/sd35/service.env`` (a copy of which each release keeps, for
rollbacks) and the API key (if any) in a 0400 file the
service reads itself. It is restarted only when something it runs changed:
the unit, its settings, the key, or the release ``current`` points at
(venv, model or code); otherwise it is only kept enabled and running.
"""

from __future__ import annotations

import hashlib

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Link, Sha256File
from pyinfra.operations import files, server, systemd

from sd35_provision.deploys.model import model_check
from sd35_provision.deploys.python_env import host_lock
from sd35_provision.deploys.release import release_id, release_manifest
from sd35_provision.deploys.service_settings import API_KEY_PATH, SERVICE_ENV_FILE, render_service_env, service_environment
from sd35_provision import layout
from sd35_provision.facts.venv import Venv
from sd35_provision.locks import compare_installed
from sd35_provision.operations import managed_file, record_note
from sd35_provision.service.unit import render_unit
from sd35_provision.hostspec.settings import HostSettings

STEP = "Service"
UNIT_NAME = layout.SERVICE_UNIT
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"


def render_service_unit(settings: HostSettings) -> str:
    current = layout.current_link(settings)
    return render_unit(
        venv_dir=f"{current}/venv",
        working_dir=f"{current}/app",
        cache_dirs=[settings.cache.root],
        service_env_file=SERVICE_ENV_FILE,
        user=settings.service.user,
        timeout_start_s=settings.service.start_timeout_s,
    )


def _differs(path: str, content: bytes) -> bool:
    return host.get_fact(Sha256File, path=path) != hashlib.sha256(content).hexdigest()


@deploy(STEP)
def service_layer() -> None:
    settings: HostSettings = host.data.sd35
    user = settings.service.user
    unit, env = render_service_unit(settings), render_service_env(settings)
    key = settings.service.api_key_file.read_text().strip() + "\n" if settings.service.api_key_file else None

    # Decide before the files change: what the running service was started with.
    reasons = []
    if _differs(UNIT_PATH, unit.encode()):
        reasons.append("unit")
    if _differs(SERVICE_ENV_FILE, env.encode()):
        reasons.append("settings")
    if key is not None and _differs(API_KEY_PATH, key.encode()):
        reasons.append("API key")
    lock = host_lock(settings)
    venv = host.get_fact(Venv, path=layout.venv_dir(settings, lock.id))
    if venv.complete and compare_installed(lock, venv.environment, venv.packages):
        reasons.append("venv")  # repaired in place by the environment layer: reload what it imported
    if not model_check(settings).healthy:
        reasons.append("model")  # files fetched again by the model layer
    link = host.get_fact(Link, path=layout.current_link(settings))
    if not link or link.get("link_target") != f"releases/{release_id(release_manifest(settings))}":
        reasons.append("release")

    files.directory(name="Smoke test directory", path=layout.smoke_dir(settings), user="root", group="root",
                    mode="755")
    if key is not None:
        managed_file(name="Service API key", path=API_KEY_PATH, content=key, user=user, group=user, mode="400",
                     secret=True)
    else:
        files.file(name="No API key file", path=API_KEY_PATH, present=False)
    managed_file(name="Service settings", path=SERVICE_ENV_FILE, content=env, user="root", group=user, mode="640")
    managed_file(name="Service unit", path=UNIT_PATH, content=unit, user="root", group="root", mode="644")

    if reasons:
        record_note(f"service restarts ({', '.join(reasons)} changed)")
        server.shell(
            name=f"Restart {UNIT_NAME}",
            # Type=notify: returns once the model is loaded and warmed up, or fails with the reason.
            commands=[f"systemctl daemon-reload && systemctl enable --quiet {UNIT_NAME} && "
                      f"systemctl restart {UNIT_NAME} || {{ systemctl status --no-pager --lines=15 {UNIT_NAME} >&2; "
                      "exit 1; }"],
        )
    else:
        systemd.service(name=f"{UNIT_NAME} enabled and running", service=UNIT_NAME, running=True, enabled=True)
