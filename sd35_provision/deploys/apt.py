"""Where the layers' apt packages come from: the host's mirror, or the pushed apt bundle (``system.apt_bundle``)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.deb import DebArch
from pyinfra.facts.server import LinuxDistribution

from sd35_provision import layout
from sd35_provision.aptbundle import APT_PACKAGES, find_bundle
from sd35_provision.errors import HostError
from sd35_provision.hostplan import HostPlan
from sd35_provision.operations import apt_bundle_pushed, apt_packages_present, missing_packages


def install_packages(plan: HostPlan, name: str, packages: tuple[str, ...], step: str, push: bool = False) -> None:
    """Install the missing ones of ``packages``: from the host's mirror, or the apt bundle.

    ``push``: this layer pushes the bundle (the first to need it, for every layer's packages:
    the layers are prepared before any runs, so a second push would send it all again).
    """
    if push:
        push_bundle(plan, step)
    apt_packages_present(name=name, packages=list(packages), bundle=bundle_on_host(plan))


def bundle_on_host(plan: HostPlan) -> str | None:
    """The bundle's directory on the host for apt to install from; None: the host's own mirror."""
    if plan.settings.system.apt_bundle is None:
        return None
    release, arch = _release_and_arch()
    return layout.apt_bundle_dir(release, arch)


def push_bundle(plan: HostPlan, step: str) -> None:
    """Push the bundle of the host's release when the host lacks one of the layers' packages (else nothing)."""
    root = plan.settings.system.apt_bundle
    if root is None or not missing_packages(APT_PACKAGES):
        return
    release, arch = _release_and_arch()
    bundle = find_bundle(root, release, arch)
    if bundle is None:
        raise HostError(
            host.name,
            step,
            f"system.apt_bundle {root} has no {release}-{arch} bundle, which this host needs: "
            f"sd35-provision debs {root} --release {release} --arch {arch}",
        )
    apt_bundle_pushed(
        name=f"Push apt bundle {release}-{arch}",
        files=[(str(path), digest) for path, digest in bundle.files()],
        directory=layout.apt_bundle_dir(release, arch),
    )


def _release_and_arch() -> tuple[str, str]:
    distro = host.get_fact(LinuxDistribution) or {}
    release = (distro.get("release_meta") or {}).get("VERSION_CODENAME") or "unknown"
    return release, (host.get_fact(DebArch) or "unknown").strip()
