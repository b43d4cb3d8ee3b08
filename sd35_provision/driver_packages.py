"""Which apt packages make up an NVIDIA driver on Ubuntu and Debian: what to install, what to hold.

Ubuntu (restricted archive), branch B and flavour suffix S ("", "-server",
"-open", "-server-open"): the metapackage ``nvidia-driver-B{S}`` pulls the
user-space library (``libnvidia-compute-B``, ``-server`` builds for the server
flavours), NVML and nvidia-smi (``nvidia-utils-B``) and the kernel module,
built by DKMS (``nvidia-dkms-B{S}``) or, for Secure Boot, Canonical's signed
prebuilt ``linux-modules-nvidia-B{S}-<kernel flavour>`` (installed with the
metapackage in one transaction, so apt takes it for the module). Debian 12:
``nvidia-driver`` from non-free with ``nvidia-kernel-dkms``, ``libcuda1``,
``libnvidia-ml1`` (NVML) and ``nvidia-driver-libs``. These are what must stay
at one version together: a library upgraded under a loaded module is NVML's
"Driver/library version mismatch".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

UBUNTU_SUFFIX = {"default": "", "server": "-server", "open": "-open", "server-open": "-server-open"}
UBUNTU_METAPACKAGE = re.compile(r"^nvidia-driver-(\d{3})(-server)?(-open)?$")
# The kernel each Ubuntu LTS released with: a newer one there is the HWE kernel, whose modules are "-hwe-<release>".
UBUNTU_GA_KERNEL = {"22.04": "5.15", "24.04": "6.8"}
DEBIAN_DRIVER = ("nvidia-driver", "nvidia-kernel-dkms", "nvidia-driver-libs", "libcuda1", "libnvidia-ml1")


@dataclass(frozen=True)
class DriverPackages:
    install: tuple[str, ...]  # what apt installs for this driver
    hold: tuple[str, ...]  # what stays at its version once installed


def kernel_flavour(kernel: str) -> str:
    """``uname -r``'s flavour: 5.15.0-126-generic -> generic, 6.8.0-1019-aws -> aws."""
    match = re.match(r"^\d+\.\d+\.\d+-\d+-(.+)$", kernel)
    return match.group(1) if match else kernel


def ubuntu_signed_modules(branch: str, flavour: str, kernel: str, os_version: str) -> str:
    """Canonical's signed module metapackage for the running kernel's flavour (follows its kernel upgrades)."""
    kflavour = kernel_flavour(kernel)
    ga = UBUNTU_GA_KERNEL.get(os_version)
    if kflavour == "generic" and ga and not kernel.startswith(f"{ga}."):
        kflavour = f"generic-hwe-{os_version}"
    return f"linux-modules-nvidia-{branch}{UBUNTU_SUFFIX[flavour]}-{kflavour}"


def ubuntu_packages(branch: str, flavour: str, kernel: str, os_version: str, secure_boot: bool) -> DriverPackages:
    suffix = UBUNTU_SUFFIX[flavour]
    library = f"{branch}-server" if "server" in flavour else branch
    meta = f"nvidia-driver-{branch}{suffix}"
    if secure_boot:
        module = ubuntu_signed_modules(branch, flavour, kernel, os_version)
        install: tuple[str, ...] = (module, meta)
    else:
        module = f"nvidia-dkms-{branch}{suffix}"
        install = (meta, f"linux-headers-{kernel}")
    return DriverPackages(
        install=install, hold=(meta, f"libnvidia-compute-{library}", f"nvidia-utils-{library}", module)
    )


def debian_headers_package(kernel: str) -> str:
    """The headers metapackage of the running kernel's flavour: 6.1.0-28-cloud-amd64 -> linux-headers-cloud-amd64.

    The metapackage follows kernel upgrades, so DKMS keeps building the module
    for the kernel the next reboot boots.
    """
    match = re.match(r"^\d+\.\d+\.\d+-\d+-(.+)$", kernel)
    return f"linux-headers-{match.group(1)}" if match else f"linux-headers-{kernel}"


def debian_packages(kernel: str) -> DriverPackages:
    return DriverPackages(
        install=("nvidia-driver", "firmware-misc-nonfree", debian_headers_package(kernel)), hold=DEBIAN_DRIVER
    )


def installed_ubuntu_driver(installed: Mapping[str, object]) -> tuple[str, str] | None:
    """(branch, flavour) of the installed ``nvidia-driver-*`` metapackage; None when there is none."""
    found = []
    for name in installed:
        if match := UBUNTU_METAPACKAGE.match(name):
            parts = [word for word, there in (("server", match.group(2)), ("open", match.group(3))) if there]
            found.append((match.group(1), "-".join(parts) or "default"))
    return max(found) if found else None


def upstream_version(deb_version: str) -> str:
    """The driver's own version in a package version: 570.133.20-0ubuntu0.22.04.1 -> 570.133.20."""
    return deb_version.split(":", 1)[-1].rsplit("-", 1)[0]


def fabric_manager_package(branch: str) -> str:
    return f"nvidia-fabricmanager-{branch}"
