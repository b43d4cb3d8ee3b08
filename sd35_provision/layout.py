"""Where things live on a provisioned host, derived from its settings.

One place for these paths so the deploys, the service unit and ``status``
agree on them.
"""

from __future__ import annotations

import shlex

from sd35_provision.hostspec.settings import HostSettings

CONFIG_DIR = "/etc/sd35"
ENV_FILE = f"{CONFIG_DIR}/env"
SERVICE_UNIT = "sd35-inference.service"
API_KEY_FILE = f"{CONFIG_DIR}/api-key"  # the service's bearer key, 0400, owned by the service user
PROFILE_SNIPPET = "/etc/profile.d/sd35.sh"


def cache_environment(settings: HostSettings) -> dict[str, str]:
    """The variables that point every tool at the SSD caches."""
    cache = settings.cache
    return {
        "HF_HOME": cache.hf_home,
        "HF_HUB_CACHE": f"{cache.hf_home}/hub",
        "TORCH_HOME": cache.torch_home,
        "PIP_CACHE_DIR": cache.pip_cache,
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def cache_directories(settings: HostSettings) -> list[str]:
    env = cache_environment(settings)
    return [settings.cache.root, env["HF_HOME"], env["HF_HUB_CACHE"], env["TORCH_HOME"], env["PIP_CACHE_DIR"]]


def render_env_file(settings: HostSettings) -> str:
    lines = ["# Managed by sd35-provision; edits are reverted on the next apply."]
    # /etc/profile.d sources this file: quoted, a value can never run as a command
    # (the spec's paths are plain already, and then quoting changes nothing).
    lines += [f"{key}={shlex.quote(value)}" for key, value in cache_environment(settings).items()]
    return "\n".join(lines) + "\n"


def render_profile_snippet() -> str:
    # Same file the service reads, so a human shell and the service share caches.
    return (
        "# Managed by sd35-provision.\n"
        f"if [ -r {ENV_FILE} ]; then\n"
        "    set -a\n"
        f"    . {ENV_FILE}\n"
        "    set +a\n"
        "fi\n"
    )


# -- the environment root (python.install_root, /opt/sd35 by default) -----------
#
#   venvs/<lock id>/        one venv per lock, never changed once stamped complete
#   locks/<lock id>.txt     the lock it was built from
#   wheelhouse/             wheels pushed from python.wheelhouse
#   releases/<release id>/  venv (symlink), model (symlink), release.json
#   current, previous       symlinks to releases; the service runs `current`


def venvs_dir(settings: HostSettings) -> str:
    return f"{settings.python.install_root}/venvs"


def venv_dir(settings: HostSettings, lock_id: str) -> str:
    return f"{venvs_dir(settings)}/{lock_id}"


def lock_path(settings: HostSettings, lock_id: str) -> str:
    return f"{settings.python.install_root}/locks/{lock_id}.txt"


def wheelhouse_dir(settings: HostSettings) -> str:
    return f"{settings.python.install_root}/wheelhouse"


def releases_dir(settings: HostSettings) -> str:
    return f"{settings.python.install_root}/releases"


def current_link(settings: HostSettings) -> str:
    return f"{settings.python.install_root}/current"


def previous_link(settings: HostSettings) -> str:
    return f"{settings.python.install_root}/previous"


def smoke_dir(settings: HostSettings) -> str:
    """The last smoke test's result (last.json) and image (last.png)."""
    return f"{settings.cache.root}/smoke"
