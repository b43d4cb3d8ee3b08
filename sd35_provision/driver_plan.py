"""What the NVIDIA driver step should do on a host, decided from facts.

Pure, so every OS/driver combination is unit-tested without a GPU; the deploy
(deploys/nvidia.py) turns the plan into pyinfra operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sd35_provision.cuda_compat import driver_satisfies, pick_flavour
from sd35_provision.spec.model import HostSettings

DEBIAN_NONFREE_LIST = "/etc/apt/sources.list.d/sd35-nvidia-nonfree.list"
UBUNTU_SUFFIX = {"default": "", "server": "-server", "open": "-open", "server-open": "-server-open"}


@dataclass
class DriverPlan:
    packages: list[str] = field(default_factory=list)
    apt_source: tuple[str, str] | None = None  # (path, content) to add before installing
    reboot: bool = False  # reboot after installing (allowed by the spec)
    notes: list[str] = field(default_factory=list)


def plan_driver(settings: HostSettings, os_id: str, os_codename: str, kernel: str,
                driver_version: str | None) -> DriverPlan:
    driver = settings.gpu.driver
    plan = DriverPlan()
    if settings.gpu.accelerator != "nvidia" or driver.mode == "skip":
        return plan
    flavour = settings.python.torch_flavour
    working = driver_version is not None and (
        pick_flavour(driver_version) is not None if flavour == "auto" else driver_satisfies(driver_version, flavour)
    )
    if working or driver.mode == "verify":
        return plan  # verify: preflight already refused a host without a usable driver

    if os_id == "ubuntu":
        plan.packages = [f"nvidia-driver-{driver.branch}{UBUNTU_SUFFIX[driver.flavor]}", f"linux-headers-{kernel}"]
    elif os_id == "debian":
        plan.apt_source = (
            DEBIAN_NONFREE_LIST,
            f"# Managed by sd35-provision: the NVIDIA driver lives in non-free.\n"
            f"deb http://deb.debian.org/debian {os_codename} non-free non-free-firmware\n"
            f"deb http://deb.debian.org/debian {os_codename}-updates non-free non-free-firmware\n",
        )
        plan.packages = ["nvidia-driver", "firmware-misc-nonfree", f"linux-headers-{kernel}"]
        plan.notes.append(
            f"Debian {os_codename} installs the driver branch its archive ships; "
            f"gpu.driver.branch {driver.branch} cannot be pinned there"
        )
    else:
        plan.notes.append(f"driver install is not supported on {os_id or 'this OS'}; install it by hand")
        return plan

    if driver.allow_reboot:
        plan.reboot = True
        plan.notes.append("rebooting to load the new NVIDIA driver")
    else:
        plan.notes.append("reboot required to load the new NVIDIA driver (gpu.driver.allow_reboot is false)")
    return plan
