"""The facts each layer reads, read ahead of the layers in one round trip (sd35_provision/onepass.py).

A converged host would otherwise be asked one SSH command per directory,
file, hash and state the layers look at (about 50). The lists follow what
the layers and the pyinfra operations they call ask (``files.directory``:
``Directory``; ``managed_file``: ``Sha256File``, then ``files.put``'s
``File``, its parent ``Directory`` and ``Sha1File``; ...). A fact left out
here costs one round trip more, never a wrong answer: the layer reads it
itself. What only a host with changes to make reads (a diff's current
content, a free-space check) is left to the layers.
"""

from __future__ import annotations

import posixpath

from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Directory, File, Link, Sha1File, Sha256File
from pyinfra.facts.server import Groups, Os, Users
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from sd35_provision import layout
from sd35_provision.deploys.model import STEP as MODEL_STEP
from sd35_provision.deploys.model import model_check_arguments
from sd35_provision.deploys.python_env import STEP as PYTHON_STEP
from sd35_provision.deploys.release import STEP as RELEASE_STEP
from sd35_provision.deploys.service import STEP as SERVICE_STEP
from sd35_provision.facts.gitlfs import GitLfsSystemInstalled
from sd35_provision.facts.model import ModelFiles
from sd35_provision.facts.releases import ReleaseStoreContents
from sd35_provision.facts.service import InstalledInstances, RunningService
from sd35_provision.facts.users import NamedUsers
from sd35_provision.facts.venv import Venv, WheelHashes
from sd35_provision.hostplan import HostPlan
from sd35_provision.onepass import FactRead

SYSTEM_STEP = "System"


def layer_reads(plan: HostPlan) -> list[FactRead]:
    """Every fact the layers read on a host that has nothing to change, in the layers' order."""
    settings = plan.settings
    root, cache_root = settings.python.install_root, settings.cache.root
    reads = [
        FactRead(SYSTEM_STEP, DebPackages),
        FactRead(SYSTEM_STEP, GitLfsSystemInstalled),
        # server.user looks up only the service user: its line, not every account's (sd35_provision/facts/users.py).
        FactRead(SYSTEM_STEP, NamedUsers, {"users": (settings.service.user,)}, stands_in_for=Users),
        FactRead(SYSTEM_STEP, Groups),
        FactRead(SYSTEM_STEP, Os),
        *_directories(SYSTEM_STEP, *layout.cache_directories(settings.cache), layout.CONFIG_DIR),
        *_managed_file(SYSTEM_STEP, layout.ENV_FILE),
        *_managed_file(SYSTEM_STEP, layout.PROFILE_SNIPPET),
        *_directories(PYTHON_STEP, root, layout.venvs_dir(root), layout.locks_dir(root)),
        *_managed_file(PYTHON_STEP, plan.lock_path),
        FactRead(PYTHON_STEP, Venv, {"path": plan.venv_dir}),
    ]
    if plan.wheelhouse_dir is not None:
        reads += _directories(PYTHON_STEP, plan.wheelhouse_dir)
        reads.append(FactRead(PYTHON_STEP, WheelHashes, {"directory": plan.wheelhouse_dir}))
    reads += _directories(MODEL_STEP, layout.models_dir(cache_root), layout.manifests_dir(cache_root))
    if settings.model.source == "hf" and settings.model.token_file is not None:
        reads += _managed_file(MODEL_STEP, layout.HF_TOKEN_FILE)
    reads.append(FactRead(MODEL_STEP, ModelFiles, model_check_arguments(plan)))
    if plan.model_manifest_text is not None:
        reads += _managed_file(MODEL_STEP, plan.model_manifest_path)
    releases = layout.releases_dir(root)
    reads += [
        FactRead(RELEASE_STEP, ReleaseStoreContents, {"root": root, "models": layout.models_dir(cache_root)}),
        *_directories(RELEASE_STEP, releases, layout.apps_dir(root), plan.app_dir, f"{releases}/{plan.release_id}"),
        FactRead(RELEASE_STEP, Link, {"path": layout.current_link(root)}),
        *_directories(SERVICE_STEP, layout.smoke_dir(cache_root)),
    ]
    if plan.has_api_key:
        reads += _managed_file(SERVICE_STEP, layout.API_KEY_FILE)
    else:
        reads.append(FactRead(SERVICE_STEP, File, {"path": layout.API_KEY_FILE}))
    reads += _managed_file(SERVICE_STEP, layout.SERVICE_ENV_FILE)
    for instance in plan.instances:
        reads += _managed_file(SERVICE_STEP, instance.env_file)
    reads += [
        *_managed_file(SERVICE_STEP, layout.UNIT_PATH),
        FactRead(
            SERVICE_STEP,
            InstalledInstances,
            {
                "instances_dir": layout.INSTANCES_DIR,
                "template": layout.SERVICE_TEMPLATE,
                "legacy_unit": layout.LEGACY_UNIT,
            },
        ),
        *(
            FactRead(SERVICE_STEP, RunningService, {"unit": instance.unit, "record": instance.running_record})
            for instance in plan.instances
        ),
    ]
    for instance in plan.instances:  # systemd.service asks about one unit at a time
        systemd = {"user_mode": False, "machine": None, "user_name": None, "services": [instance.unit]}
        reads += [FactRead(SERVICE_STEP, SystemdStatus, systemd), FactRead(SERVICE_STEP, SystemdEnabled, systemd)]
    return reads


def _directories(step: str, *paths: str) -> list[FactRead]:
    return [FactRead(step, Directory, {"path": path}) for path in paths]


def _managed_file(step: str, path: str) -> list[FactRead]:
    """What ``managed_file`` reads of a file that is as wanted (sd35_provision/operations.py)."""
    return [
        FactRead(step, Sha256File, {"path": path}),
        FactRead(step, File, {"path": path}),
        FactRead(step, Directory, {"path": posixpath.dirname(path)}),
        FactRead(step, Sha1File, {"path": path}),
    ]
