"""Where things live on a provisioned host: every host path, in one place.

The deploys, the per-host plan, the smoke test, the rollback and ``status``
all take their paths from here, so they agree on them. Each function takes
what the path depends on (a root, an id), not the whole settings.
"""

from __future__ import annotations

import re
import shlex

from sd35_provision.hostspec.settings import CacheSettings, ModelSettings

# -- /etc -----------------------------------------------------------------------------

CONFIG_DIR = "/etc/sd35"
ENV_FILE = f"{CONFIG_DIR}/env"
# One systemd template unit, one instance per GPU (or MIG device): sd35-inference@<i>.service.
SERVICE_TEMPLATE = "sd35-inference@.service"
UNIT_PATH = f"/etc/systemd/system/{SERVICE_TEMPLATE}"
INSTANCES_DIR = f"{CONFIG_DIR}/instances"  # <i>.env: one instance's port and device, read after service.env
# The single unit hosts ran before instances: apply stops, disables and removes it.
LEGACY_UNIT = "sd35-inference.service"
LEGACY_UNIT_PATH = f"/etc/systemd/system/{LEGACY_UNIT}"
SERVICE_ENV_FILE = f"{CONFIG_DIR}/service.env"  # the SD35_* settings every instance shares
RELEASE_SERVICE_ENV = "service.env"  # the copy of them in each release directory, for rollbacks
API_KEY_FILE = f"{CONFIG_DIR}/api-key"  # the service's bearer key, 0400, owned by the service user
HF_TOKEN_FILE = f"{CONFIG_DIR}/hf-token"  # the hub token, 0600, owned by the service user
PROFILE_SNIPPET = "/etc/profile.d/sd35.sh"
# unattended-upgrades' blacklist of the held NVIDIA driver packages (apt reads every file in apt.conf.d)
DRIVER_UPGRADE_BLACKLIST = "/etc/apt/apt.conf.d/51sd35-nvidia-driver"

# -- /run -------------------------------------------------------------------------------

RUN_DIR = "/run/sd35"  # <i>/running.json: what instance <i> runs, written by it at start (service/running.py)
APT_BUNDLES = "/var/cache/sd35-apt-bundle"  # pushed apt bundles (system.apt_bundle), one directory per release
RUN_LOCK = "/run/lock/sd35-provision.lock"  # held by a run for its whole length (sd35_provision/hostlock.py)


def instance_unit(index: int | str) -> str:
    """``sd35-inference@<index>.service`` (``%i`` gives the template's own spelling)."""
    return SERVICE_TEMPLATE.replace("@", f"@{index}")


def instance_env_file(index: int | str) -> str:
    return f"{INSTANCES_DIR}/{index}.env"


def running_record(index: int | str) -> str:
    """Where instance ``index`` states what it runs; its directory is the unit's RuntimeDirectory (gone at stop)."""
    return f"{RUN_DIR}/{index}/running.json"


# -- the cache root (cache.root, on the SSD) --------------------------------------------


def cache_environment(cache: CacheSettings) -> dict[str, str]:
    """The variables that point every tool at the SSD caches."""
    return {
        "HF_HOME": cache.hf_home,
        "HF_HUB_CACHE": hub_cache(cache.hf_home),
        "TORCH_HOME": cache.torch_home,
        "PIP_CACHE_DIR": cache.pip_cache,
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def cache_directories(cache: CacheSettings) -> list[str]:
    env = cache_environment(cache)
    return [cache.root, env["HF_HOME"], env["HF_HUB_CACHE"], env["TORCH_HOME"], env["PIP_CACHE_DIR"]]


def render_env_file(cache: CacheSettings) -> str:
    lines = ["# Managed by sd35-provision; edits are reverted on the next apply."]
    # /etc/profile.d sources this file: quoted, a value can never run as a command
    # (the spec's paths are plain already, and then quoting changes nothing).
    lines += [f"{key}={shlex.quote(value)}" for key, value in cache_environment(cache).items()]
    return "\n".join(lines) + "\n"


def render_profile_snippet() -> str:
    # Same file the service reads, so a human shell and the service share caches.
    return f"# Managed by sd35-provision.\nif [ -r {ENV_FILE} ]; then\n    set -a\n    . {ENV_FILE}\n    set +a\nfi\n"


def smoke_dir(cache_root: str) -> str:
    """The last smoke test's result (last.json) and image (last.png)."""
    return f"{cache_root}/smoke"


def smoke_record(cache_root: str, instance: int = 0) -> str:
    """Instance 0's is ``last.json`` (as before instances), instance i's ``last-<i>.json``."""
    return f"{smoke_dir(cache_root)}/last{_instance_suffix(instance)}.json"


def smoke_image(cache_root: str, instance: int = 0) -> str:
    return f"{smoke_dir(cache_root)}/last{_instance_suffix(instance)}.png"


def _instance_suffix(instance: int) -> str:
    return f"-{instance}" if instance else ""


# -- models (format of the manifests: sd35_provision/hostside/manifests.py) ----------------------
#
#   <hf_home>/hub/models--org--name/snapshots/<revision>/   source hf: the hub cache's snapshot
#   <cache root>/models/git-<name>-<commit>/                 source git: a checkout
#   <cache root>/models/push-<manifest hash>/                source push: files sent from here
#   <cache root>/manifests/<model dir name>.json             what each file must hash to


def models_dir(cache_root: str) -> str:
    return f"{cache_root}/models"


def manifests_dir(cache_root: str) -> str:
    return f"{cache_root}/manifests"


def hub_cache(hf_home: str) -> str:
    return f"{hf_home}/hub"


def hub_storage(hf_home: str, repo: str) -> str:
    """The hub cache folder of ``repo`` (blobs, snapshots, refs)."""
    org, name = repo.split("/", 1)
    return f"{hub_cache(hf_home)}/models--{org}--{name}"


def model_dir(cache: CacheSettings, model: ModelSettings, push_digest: str | None = None) -> str:
    """The directory the service loads with diffusers (the release's ``model`` link points here).

    ``push_digest``: for ``push``, the sha256 of the manifest's text (it names the directory).
    """
    revision = model.revision or ""  # the spec pins it; settings built in code may leave it out
    if model.source == "hf":
        assert model.repo is not None
        return f"{hub_storage(cache.hf_home, model.repo)}/snapshots/{revision}"
    if model.source == "git":
        assert model.url is not None
        name = _slug(model.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
        return f"{models_dir(cache.root)}/git-{name}-{revision[:12]}"
    assert push_digest is not None, "a pushed model is named by its manifest's hash"
    return f"{models_dir(cache.root)}/push-{push_digest[:12]}"


def model_manifest_path(cache: CacheSettings, model: ModelSettings, directory: str) -> str:
    """Where the manifest of the model in ``directory`` is kept (outside it)."""
    if model.source == "hf":
        assert model.repo is not None
        org, name = model.repo.split("/", 1)
        return f"{manifests_dir(cache.root)}/hf-{_slug(org)}--{_slug(name)}-{(model.revision or '')[:12]}.json"
    return manifest_of(cache.root, directory)


def manifest_of(cache_root: str, directory: str) -> str:
    """The manifest of a model directory under ``models/`` (it goes when that directory is pruned)."""
    return f"{manifests_dir(cache_root)}/{directory.rsplit('/', 1)[-1]}.json"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[-60:] or "model"


# -- the environment root (python.install_root, /opt/sd35 by default) -----------
#
#   venvs/<lock id>/        one venv per lock, never changed once stamped complete
#   locks/<lock id>.txt     the lock it was built from
#   wheelhouse/             wheels pushed from python.wheelhouse
#   apps/<code digest>/     the service code of one version
#   releases/<release id>/  venv, app, model (symlinks), release.json, service.env
#   current, previous       symlinks to releases; the service runs `current`


def venvs_dir(install_root: str) -> str:
    return f"{install_root}/venvs"


def venv_dir(install_root: str, lock_id: str) -> str:
    return f"{venvs_dir(install_root)}/{lock_id}"


def locks_dir(install_root: str) -> str:
    return f"{install_root}/locks"


def lock_path(install_root: str, lock_id: str) -> str:
    return f"{locks_dir(install_root)}/{lock_id}.txt"


def wheelhouse_dir(install_root: str) -> str:
    return f"{install_root}/wheelhouse"


def apps_dir(install_root: str) -> str:
    return f"{install_root}/apps"


def app_dir(install_root: str, code_digest: str) -> str:
    """Where one version of the service code is unpacked."""
    return f"{apps_dir(install_root)}/{code_digest[:12]}"


def releases_dir(install_root: str) -> str:
    return f"{install_root}/releases"


def release_target(release_id: str) -> str:
    """What ``current`` points at for a release (relative to the install root)."""
    return f"releases/{release_id}"


def current_link(install_root: str) -> str:
    return f"{install_root}/current"


def previous_link(install_root: str) -> str:
    return f"{install_root}/previous"


def apt_bundle_dir(release: str, arch: str) -> str:
    """Where the apt bundle of ``release``/``arch`` is pushed (sd35_provision/aptbundle.py)."""
    return f"{APT_BUNDLES}/{release}-{arch}"


# -- the gateway (HAProxy from the distribution's packages) ------------------------------

HAPROXY_CONFIG = "/etc/haproxy/haproxy.cfg"
HAPROXY_UNIT = "haproxy.service"
GATEWAY_DIR = "/etc/haproxy/sd35"  # 0700 root: the secrets the config names
GATEWAY_PEM = f"{GATEWAY_DIR}/gateway.pem"  # tls.cert_file + tls.key_file, 0600
GATEWAY_CLIENT_KEYS = f"{GATEWAY_DIR}/client-keys.map"  # "<key> <name>" per client key, 0600
GATEWAY_BACKEND_KEY = f"{GATEWAY_DIR}/backend-key.map"  # "backend <serving hosts' key>", 0600
HAPROXY_ADMIN_SOCKET = "/run/haproxy/admin.sock"  # the runtime API: drain and ready during rollouts
GATEWAY_BACKEND = "sd35"  # the HAProxy backend holding one server per instance


def gateway_server_name(host: str, instance: int) -> str:
    """An instance's server name in the gateway's backend: ``node1:0`` (host names never hold ':')."""
    return f"{host}:{instance}"


def gateway_server_host(server: str) -> str:
    """The host of a server name (``gateway_server_name``'s inverse)."""
    return server.rpartition(":")[0]
