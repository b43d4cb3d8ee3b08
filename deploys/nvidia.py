"""NVIDIA driver layer: verify (default), install a pinned branch, or skip."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import KernelVersion, LinuxDistribution
from pyinfra.operations import server

from sd35_provision.driver_plan import plan_driver
from sd35_provision.facts.host import NvidiaGpus
from sd35_provision.operations import apt_packages_present, managed_file, record_note


@deploy("NVIDIA driver")
def nvidia_driver() -> None:
    settings = host.data.sd35
    if settings.gpu.accelerator != "nvidia" or settings.gpu.driver.mode == "skip":
        return
    distro = host.get_fact(LinuxDistribution) or {}
    release = distro.get("release_meta", {})
    gpus = host.get_fact(NvidiaGpus)["gpus"]
    plan = plan_driver(
        settings,
        os_id=release.get("ID", "").lower(),
        os_codename=release.get("VERSION_CODENAME", ""),
        kernel=host.get_fact(KernelVersion),
        driver_version=gpus[0]["driver_version"] if gpus else None,
    )
    for note in plan.notes:
        record_note(note)
    if plan.apt_source:
        path, content = plan.apt_source
        managed_file(name="Enable the non-free archive", path=path, content=content, mode="644")
    if plan.packages:
        apt_packages_present(name="Install the NVIDIA driver", packages=plan.packages)
    if plan.reboot:
        server.reboot(name="Reboot to load the NVIDIA driver", reboot_timeout=settings.gpu.driver.reboot_timeout_s)
