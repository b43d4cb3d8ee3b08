"""System layer: git-lfs, the service user, SSD cache directories, env file."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from sd35_provision import layout
from sd35_provision.aptbundle import SYSTEM_PACKAGES
from sd35_provision.deploys.apt import install_packages
from sd35_provision.facts.gitlfs import GitLfsSystemInstalled
from sd35_provision.hostplan import HostPlan
from sd35_provision.operations import HostRecorder, managed_file


@deploy("System")
def system_layer(plan: HostPlan, recorder: HostRecorder) -> None:
    settings = plan.settings
    service_user = settings.service.user

    install_packages(plan, "Install git and git-lfs", SYSTEM_PACKAGES, "System", push=True)

    # `git lfs install --system` writes the lfs filter into /etc/gitconfig; without
    # it every clone on the host silently gives pointer files instead of weights.
    if not host.get_fact(GitLfsSystemInstalled):
        server.shell(name="Enable git-lfs for every user", commands=["git lfs install --system --skip-repo"])

    server.user(
        name=f"Create service user {service_user}",
        user=service_user,
        system=True,
        home=settings.cache.root,
        shell="/usr/sbin/nologin",
        ensure_home=False,
        comment="sd35 inference service",
    )

    for directory in layout.cache_directories(settings.cache):
        files.directory(
            name=f"Cache directory {directory}",
            path=directory,
            user=service_user,
            group=service_user,
            mode="750",
        )

    files.directory(name="Config directory", path=layout.CONFIG_DIR, user="root", group="root", mode="755")
    managed_file(
        name="Cache environment file",
        path=layout.ENV_FILE,
        content=layout.render_env_file(settings.cache),
        user="root",
        group="root",
        mode="644",
        recorder=recorder,
    )
    managed_file(
        name="Shell profile snippet",
        path=layout.PROFILE_SNIPPET,
        content=layout.render_profile_snippet(),
        user="root",
        group="root",
        mode="644",
        recorder=recorder,
    )
