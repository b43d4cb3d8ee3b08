"""Release layer: what the service runs, switched in with one atomic rename.

A release is a directory ``releases/<build>-<settings>`` of symlinks to the
parts the earlier layers prepared (the locked venv, the verified model), a
copy of the service settings it is to run with, and ``release.json`` saying
what they are. Its id is the hash of that content, so re-applying the same
parts gives the same release and changes nothing.
``current`` points at the release in service and ``previous`` at the one
before, which is what a rollback switches back to. Older releases, and the
venvs, code and models only they used, are removed.
"""

from __future__ import annotations

import io
import json
import shlex
from collections.abc import Mapping
from typing import Any

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.facts.files import Directory, Link
from pyinfra.operations import files, server

from sd35_provision import layout
from sd35_provision.appbundle import service_bundle
from sd35_provision.facts.releases import ReleaseStore, ReleaseStoreContents
from sd35_provision.hostplan import HostPlan
from sd35_provision.hostscripts import render_script
from sd35_provision.operations import HostRecorder

STEP = "Release"


@deploy(STEP)
def release_layer(plan: HostPlan, recorder: HostRecorder) -> None:
    root = plan.settings.python.install_root
    manifest, rid = plan.release_manifest, plan.release_id
    releases = layout.releases_dir(root)
    release = f"{releases}/{rid}"

    cache_root = plan.settings.cache.root
    store = host.get_fact(ReleaseStoreContents, root=root, models=layout.models_dir(cache_root))
    leftovers = interrupted_leftovers(store, plan.venv_dir)
    if leftovers:
        names = ", ".join(path.removeprefix(f"{root}/").removeprefix(f"{cache_root}/") for path in leftovers)
        server.shell(
            name=f"Remove what an interrupted run left: {names}",
            commands=["\n".join(["set -eu", *(f"rm -rf {shlex.quote(path)}" for path in leftovers)])],
        )
    if store.previous_broken:
        server.shell(
            name=f"Remove the broken link previous ({store.previous} is gone: no rollback target)",
            commands=[f"rm -f {shlex.quote(layout.previous_link(root))}"],
        )

    files.directory(name="Releases directory", path=releases, user="root", group="root", mode="755")
    files.directory(name="Apps directory", path=layout.apps_dir(root), user="root", group="root", mode="755")
    if not host.get_fact(Directory, path=plan.app_dir):
        service_code_unpacked(name=f"Unpack service code {service_bundle()[1][:12]}", app=plan.app_dir)
    if not host.get_fact(Directory, path=release):
        server.shell(name=f"Create release {rid}", commands=[_create_script(releases, rid, manifest, plan.service_env)])

    target = plan.release_target
    link = host.get_fact(Link, path=layout.current_link(root))
    if not link or link.get("link_target") != target:
        switched = server.shell(name=f"Switch current to release {rid}", commands=[switch_script(root, target)])
        recorder.feeds_service("release", switched)

    stale = [path for path in stale_paths(store, target, set(manifest["links"].values())) if path not in leftovers]
    if stale:
        names = ", ".join(path.rsplit("/", 1)[-1] for path in stale)
        server.shell(name=f"Prune what no kept release uses: {names}", commands=[prune_script(cache_root, stale)])


def interrupted_leftovers(store: ReleaseStore, wanted_venv: str) -> list[str]:
    """What a run cut off in the middle left: staged releases, links and code (``.new``, ``.tar``),
    partial uploads and clones (``.partial``), venvs never stamped complete. The venv this plan
    wants is left to the Python environment layer, which builds it again."""
    return [*store.leftovers, *(venv for venv in store.unstamped if venv != wanted_venv)]


def stale_paths(store: ReleaseStore, target: str, target_parts: set[str]) -> list[str]:
    """Releases, venvs, code and models that neither the new release nor the one a rollback would
    go back to uses. Only two releases are kept: old venvs and models would fill the disk.
    The rollback target is never removed: with ``current`` gone (deleted by hand) it is ``previous``."""
    # The switch makes the old current the previous one.
    other = store.previous if store.current == target or store.current is None else store.current
    kept = {target} if other is None else {target, other}
    releases = [f"{store.root}/{release}" for release in sorted(store.releases) if release not in kept]
    used = store.referenced(kept) | target_parts
    return releases + [entry for entry in store.entries if entry not in used]


def prune_script(cache_root: str, stale: list[str]) -> str:
    lines = ["set -eu"]
    models = layout.models_dir(cache_root)
    for path in stale:
        lines.append(f"rm -rf {shlex.quote(path)}")
        if path.startswith(models + "/"):  # its manifest goes with it
            lines.append(f"rm -f {shlex.quote(layout.manifest_of(cache_root, path))}")
    return "\n".join(lines)


def switch_script(root: str, target: str) -> str:
    """Point ``current`` at ``target`` atomically (rename over the old link), keep the old one as ``previous``."""
    return render_script("release-switch.sh", root=root, target=target)


@operation()
def service_code_unpacked(app: str):
    """
    Upload the service package and unpack it into ``app`` (staged, then renamed into place).

    + app: the app directory of this code version
    """
    yield FileUploadCommand(io.BytesIO(service_bundle()[0]), f"{app}.tar")
    a, staging = shlex.quote(app), shlex.quote(f"{app}.new")
    yield (
        f"rm -rf {staging} && mkdir -m 755 {staging} && tar -xf {a}.tar -C {staging} --no-same-owner && "
        f"chmod -R a+rX {staging} && rm -f {a}.tar && mv -T {staging} {a}"
    )


def _create_script(releases: str, rid: str, manifest: Mapping[str, Any], service_env: str) -> str:
    links = manifest["links"]
    return render_script(
        "release-create.sh",
        staging=f"{releases}/.{rid}.new",
        release=f"{releases}/{rid}",
        venv=links["venv"],
        app=links["app"],
        model=links["model"],
        release_json=json.dumps(manifest, indent=2, sort_keys=True),
        service_env=service_env,
        service_env_copy=layout.RELEASE_SERVICE_ENV,
    )
