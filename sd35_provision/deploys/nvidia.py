"""NVIDIA driver layer: verify (default), install a pinned branch, or skip (gpu.driver).

- verify: the host must already have a working driver new enough for the CUDA
  build of torch; otherwise the host fails here with what is wrong and how to
  fix it (preflight says the same before anything runs; this covers plain
  ``pyinfra`` runs of deploys/site.py).
- install: nothing when a working driver is new enough, unless it is Ubuntu's
  package of another branch than gpu.driver.branch: then the old branch is
  unheld, the new one installed and held, and a reboot is needed (a working
  driver from elsewhere, a .run file or a container's host, is never
  replaced). Otherwise Ubuntu 22.04/24.04 get ``nvidia-driver-<branch>[-server][-open]``
  and the running kernel's headers (DKMS), or with Secure Boot on Canonical's
  signed ``linux-modules-nvidia-<branch>[...]-<kernel flavour>``; Debian 12 gets
  contrib/non-free/non-free-firmware enabled in its sources and
  ``nvidia-driver firmware-misc-nonfree linux-headers-<flavour>``, in the
  branch Debian ships (the pin cannot be honoured there, a note says so).
  A new driver needs the new kernel module loaded: the layer only says so, and
  with gpu.driver.allow_reboot (or ``apply --reboot``) the run reboots the host
  after its apply (drained, its driver, service and smoke test checked after
  it: sd35_provision/reboots.py), otherwise the report says "reboot required"
  on every run until it happens.
- skip: nothing.

Around a working driver (verify and install): its packages are held
(``apt-mark hold``; gpu.driver.hold) and listed in unattended-upgrades'
Package-Blacklist, so no nightly upgrade swaps the library under the loaded
module; ``nvidia-persistenced`` is enabled and running; an NVSwitch box gets
``nvidia-fabricmanager-<branch>`` of exactly the driver's version (install
mode), enabled and running. A host with gpu.accelerator: cpu only holds the
packages gpu.driver.packages names.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from pyinfra import host
from pyinfra.api import OperationError, deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import KernelVersion, LinuxDistribution
from pyinfra.operations import server, systemd

from sd35_provision import layout
from sd35_provision.cuda_compat import (
    AUTO_FLAVOURS,
    driver_install_problem,
    driver_satisfies,
    install_branch,
    min_driver_for,
    version_tuple,
)
from sd35_provision.driver_packages import (
    UBUNTU_SUFFIX,
    debian_headers_package,
    debian_packages,
    fabric_manager_package,
    installed_ubuntu_driver,
    ubuntu_packages,
    upstream_version,
)
from sd35_provision.errors import PreflightError
from sd35_provision.facts.driver import FABRIC_MANAGER, PERSISTENCED, DriverState, NvidiaDriverState
from sd35_provision.facts.nvidia import NvidiaGpus, NvidiaKernelModule, NvidiaStatus
from sd35_provision.hostplan import HostPlan
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.operations import HostRecorder, apt_held, apt_packages_present, apt_unheld, managed_file
from sd35_provision.preflight import secure_boot_problem

STEP = "NVIDIA driver"
__all__ = ["UBUNTU_SUFFIX", "DriverNotReady", "debian_headers_package", "nvidia_driver"]
# nvidia-driver is in non-free, its helpers (nvidia-support, glx-alternative-nvidia,
# nvidia-installer-cleanup) in contrib, the firmware in non-free-firmware.
DEBIAN_COMPONENTS = ("contrib", "non-free", "non-free-firmware")
DEBIAN_SOURCES = ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list")


class DriverNotReady(PreflightError, OperationError):
    """The host has no usable NVIDIA driver and this step will not (or cannot) give it one.

    A ``PreflightError`` for the sd35-provision runner (the host fails, nothing
    changed on it) and an ``OperationError`` so plain ``pyinfra`` prints the
    message instead of a traceback.
    """


def torch_flavours(settings: HostSettings) -> tuple[str, ...]:
    """The torch flavours the driver must run: the pinned one, or for "auto" any we ship."""
    flavour = settings.python.torch_flavour
    return AUTO_FLAVOURS if flavour == "auto" else (flavour,)


def driver_problem(status: NvidiaStatus, flavours: tuple[str, ...]) -> str | None:
    """What is wrong with the running driver for these torch flavours; None if nothing."""
    if not status.working:
        return status.problem
    version = status.driver_version
    if any(driver_satisfies(version, flavour) for flavour in flavours):
        return None
    needs = ", ".join(f"{flavour} needs {min_driver_for(flavour)}+" for flavour in flavours)
    return f"NVIDIA driver {version} is too old for torch ({needs})"


def _suite_matches(suite: str, codename: str) -> bool:
    return suite == codename or suite.startswith(f"{codename}-")


def enable_components_one_line(
    lines: list[str], codename: str, components: tuple[str, ...] = DEBIAN_COMPONENTS
) -> tuple[list[str], bool]:
    """Add ``components`` to each ``deb``/``deb-src`` line of Debian ``codename`` with "main".

    Returns the new lines and whether any such line was found.
    """
    out, found = [], False
    for line in lines:
        body, hash_, comment = line.partition("#")
        match = re.match(r"^(\s*deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?\S+\s+(\S+)\s+)(.*?)(\s*)$", body)
        if not match or not _suite_matches(match.group(2), codename) or "main" not in match.group(3).split():
            out.append(line)
            continue
        found = True
        present = match.group(3).split()
        missing = [c for c in components if c not in present]
        new_body = match.group(1) + " ".join(present + missing) + (match.group(4) if hash_ else "")
        out.append(new_body + (hash_ + comment if hash_ else ""))
    return out, found


def enable_components_deb822(
    lines: list[str], codename: str, components: tuple[str, ...] = DEBIAN_COMPONENTS
) -> tuple[list[str], bool]:
    """Add ``components`` to each enabled deb822 stanza of Debian ``codename`` with "main"."""
    out, found = list(lines), False
    stanza: dict[str, tuple[int, str]] = {}

    def finish() -> None:
        nonlocal found
        enabled = stanza.get("enabled", (0, "yes"))[1].lower() != "no"
        suites = stanza.get("suites", (0, ""))[1].split()
        if "components" not in stanza or not enabled or not any(_suite_matches(s, codename) for s in suites):
            return
        index, value = stanza["components"]
        present = value.split()
        if "main" not in present:
            return
        found = True
        missing = [c for c in components if c not in present]
        if missing:
            out[index] = out[index].rstrip() + " " + " ".join(missing)

    for index, line in enumerate([*lines, ""]):
        if not line.strip():
            finish()
            stanza = {}
        elif not line.startswith(("#", " ", "\t")) and ":" in line:
            key, value = line.split(":", 1)
            stanza[key.strip().lower()] = (index, value.strip())
    return out, found


def _enable_debian_components(codename: str, recorder: HostRecorder) -> None:
    found = False
    for path in DEBIAN_SOURCES:
        lines = host.get_fact(FileContents, path=path)
        if lines is None:
            continue
        edit = enable_components_deb822 if path.endswith(".sources") else enable_components_one_line
        new_lines, here = edit(lines, codename)
        found = found or here
        if new_lines != lines:
            managed_file(
                name=f"Enable {' '.join(DEBIAN_COMPONENTS)} in {path}",
                path=path,
                content="\n".join(new_lines) + "\n",
                user="root",
                group="root",
                mode="644",
                recorder=recorder,
            )
    if not found:
        raise DriverNotReady(
            host.name,
            STEP,
            (
                f"no Debian {codename} archive with 'main' in {' or '.join(DEBIAN_SOURCES)}; enable "
                f"{' '.join(DEBIAN_COMPONENTS)} for it by hand, then run again"
            ),
        )


def render_upgrade_blacklist(packages: list[str]) -> str:
    """unattended-upgrades' Package-Blacklist for the held driver packages (entries are regexes: anchored)."""
    # Package names are [a-z0-9+.-]: only "." and "+" mean something in a regex.
    entries = "".join(f'    "^{name.replace(".", "[.]").replace("+", "[+]")}$";\n' for name in packages)
    return (
        "// Managed by sd35-provision: the NVIDIA driver packages are held (apt-mark hold); unattended-upgrades\n"
        "// must not upgrade them either, or the user-space library no longer matches the loaded module.\n"
        f"Unattended-Upgrade::Package-Blacklist {{\n{entries}}};\n"
    )


def _hold(packages: list[str], recorder: HostRecorder, installing: bool = False) -> None:
    """Hold ``packages`` (those installed) and keep unattended-upgrades off them."""
    packages = list(dict.fromkeys(packages))
    apt_held(name=f"Hold {' '.join(packages)}", packages=packages, installing=installing)
    managed_file(
        name="Keep the NVIDIA driver out of unattended-upgrades",
        path=layout.DRIVER_UPGRADE_BLACKLIST,
        content=render_upgrade_blacklist(packages),
        user="root",
        group="root",
        mode="644",
        recorder=recorder,
    )


def _running_driver_packages(os_id: str, installed: dict, kernel: str, os_version: str) -> list[str]:
    """The packages of the driver installed now (Ubuntu's metapackage found, or Debian's)."""
    if os_id == "debian":
        return list(debian_packages(kernel).hold) if "nvidia-driver" in installed else []
    current = installed_ubuntu_driver(installed)
    if current is None:
        return []  # not from Ubuntu's packages (a .run file, a container's host): nothing of ours to hold
    # Both module packages: whichever is installed is held (apt_held holds installed ones only).
    branch, flavour = current
    return list(
        dict.fromkeys(
            ubuntu_packages(branch, flavour, kernel, os_version, secure_boot=False).hold
            + ubuntu_packages(branch, flavour, kernel, os_version, secure_boot=True).hold
        )
    )


def _fabric_manager(
    os_id: str, branch: str, version: str | None, state: DriverState, installed: dict, install: bool
) -> tuple[list[str], bool]:
    """On an NVSwitch box: Fabric Manager of exactly the driver's version (install mode), enabled and running.

    Returns the packages to hold with the driver, and whether this run installs
    one. The version is pinned by the driver's own version (``pkg=570.133.20-*``):
    Ubuntu's archive and NVIDIA's repository number their Debian revisions differently.
    """
    if not state.nvswitch_box:
        return [], False
    package = fabric_manager_package(branch)
    have = [upstream_version(v) for v in installed.get(package, ())]
    installing = bool(install and os_id == "ubuntu" and version and version not in have)
    if installing:
        pinned = f"{package}={version}-*"
        server.shell(
            name=f"Install {package} {version} (NVSwitch box: Fabric Manager of the driver's version)",
            commands=[
                "apt-get update",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades "
                f"--allow-change-held-packages {shlex.quote(pinned)}",
            ],
        )
    elif not state.fabric_manager.present and not have:
        raise DriverNotReady(
            host.name,
            STEP,
            (
                f"NVSwitch box ({state.nvswitches} NVSwitches) without {FABRIC_MANAGER}: CUDA fails with error 802 "
                f"'system not yet initialized'; install {package} of the driver's version {version or ''} and "
                f"run systemctl enable --now {FABRIC_MANAGER}"
            ),
        )
    systemd.service(
        name=f"Fabric Manager ({FABRIC_MANAGER}) enabled and running",
        service=f"{FABRIC_MANAGER}.service",
        running=True,
        enabled=True,
    )
    return [package], installing


def _persistence(os_id: str, state: DriverState, install: bool, recorder: HostRecorder) -> None:
    """nvidia-persistenced keeps the driver initialised between CUDA processes (no re-init on each start)."""
    if not state.persistenced.present:
        if not (install and os_id == "debian"):  # Ubuntu's driver ships it (nvidia-compute-utils)
            recorder.note(f"{PERSISTENCED} is not installed: each CUDA process start re-initialises the driver")
            return
        apt_packages_present(name=f"Install {PERSISTENCED}", packages=[PERSISTENCED])
    systemd.service(
        name=f"{PERSISTENCED} enabled and running",
        service=f"{PERSISTENCED}.service",
        running=True,
        enabled=True,
    )


def _around_working_driver(
    settings: HostSettings, status: NvidiaStatus, os_id: str, os_version: str, kernel: str, recorder: HostRecorder
) -> tuple[list[str], bool]:
    """Fabric Manager and persistence for a working driver: the driver's packages to hold, and whether
    this run installs one of them."""
    driver = settings.gpu.driver
    install = driver.mode == "install"
    state = host.get_fact(NvidiaDriverState)
    installed = host.get_fact(DebPackages) or {}
    branch = str(version_tuple(status.driver_version or "0")[0])
    fm, installing = _fabric_manager(os_id, branch, status.driver_version, state, installed, install)
    _persistence(os_id, state, install, recorder)
    return _running_driver_packages(os_id, installed, kernel, os_version) + fm, installing


def _os(distro: Mapping[str, Any]) -> tuple[str, str, str]:
    release = distro.get("release_meta") or {}
    return (release.get("ID") or "").lower(), release.get("VERSION_ID") or "", release.get("VERSION_CODENAME") or ""


@deploy(STEP)
def nvidia_driver(plan: HostPlan, recorder: HostRecorder) -> None:
    settings = plan.settings
    driver = settings.gpu.driver
    if driver.mode == "skip":
        return
    if settings.gpu.accelerator != "nvidia":
        if driver.hold and driver.packages:
            _hold(list(driver.packages), recorder)  # a CPU host with a driver: still not upgraded under its module
        return
    flavours = torch_flavours(settings)
    status = host.get_fact(NvidiaGpus)
    problem = driver_problem(status, flavours)

    if driver.mode == "verify":
        if problem:
            raise DriverNotReady(
                host.name,
                STEP,
                (f"{problem}; install a driver (branch {driver.branch} or newer), or set gpu.driver.mode: install"),
            )
        distro = host.get_fact(LinuxDistribution) or LinuxDistribution.default()
        os_id, os_version, _ = _os(distro)
        kernel = (host.get_fact(KernelVersion) or "").strip()
        held, installing = _around_working_driver(settings, status, os_id, os_version, kernel, recorder)
        if driver.hold and (held or driver.packages):
            _hold(held + list(driver.packages), recorder, installing)
        return

    distro = host.get_fact(LinuxDistribution) or LinuxDistribution.default()
    os_id, os_version, codename = _os(distro)
    kernel = (host.get_fact(KernelVersion) or "").strip()
    installed = host.get_fact(DebPackages) or {}
    if problem is None:
        current = installed_ubuntu_driver(installed) if os_id == "ubuntu" else None
        if current is not None and current[0] != driver.branch:
            _change_branch(settings, current, status, kernel, os_version, recorder)
            return
        major = str(version_tuple(status.driver_version or "0")[0])
        if major != driver.branch:
            recorder.note(
                f"NVIDIA driver {status.driver_version} works for torch; gpu.driver.branch {driver.branch} "
                "not applied (a working driver that is not Ubuntu's package of a branch is never replaced)"
            )
        held, installing = _around_working_driver(settings, status, os_id, os_version, kernel, recorder)
        if driver.hold and (held or driver.packages):
            _hold(held + list(driver.packages), recorder, installing)
        return

    cannot = driver_install_problem(
        os_id, os_version, driver.branch, settings.python.torch_flavour, distro.get("name") or ""
    )
    if cannot:
        raise DriverNotReady(host.name, STEP, f"{problem}; {cannot}")

    state = host.get_fact(NvidiaDriverState)
    secure_boot = state.secure_boot == "enabled"
    if os_id == "ubuntu":
        packages = ubuntu_packages(driver.branch, driver.flavour, kernel, os_version, secure_boot)
    else:
        if sb_problem := secure_boot_problem(os_id, state):
            raise DriverNotReady(host.name, STEP, f"{problem}; {sb_problem}")
        packages = debian_packages(kernel)
        branch = install_branch(os_id, os_version, driver.branch)
        if branch != driver.branch:
            recorder.note(
                f"Debian {os_version} installs its own NVIDIA driver branch ({branch}); "
                f"gpu.driver.branch {driver.branch} cannot be pinned there"
            )

    module = host.get_fact(NvidiaKernelModule)
    if any(package not in installed for package in packages.install):
        if os_id == "debian":
            _enable_debian_components(codename, recorder)
        apt_packages_present(name=f"Install {' '.join(packages.install)}", packages=list(packages.install))
        if driver.hold:
            _hold(list(packages.hold) + list(driver.packages), recorder, installing=True)
        loaded = f"module {module.loaded}" if module.loaded else "no nvidia module"
        reason = f"NVIDIA driver newly installed; {loaded} loaded now"
    elif module.reboot_needed:
        if driver.hold:
            _hold(list(packages.hold) + list(driver.packages), recorder)
        reason = f"nvidia module {module.installed} installed, {module.loaded or 'none'} loaded"
    else:
        raise DriverNotReady(
            host.name,
            STEP,
            (
                f"{problem}, although {', '.join(packages.install)} are installed and nvidia module "
                f"{module.loaded or 'none'} is loaded: see dmesg (Secure Boot may refuse an unsigned DKMS module)"
            ),
        )
    _needs_reboot(settings, reason, recorder)


def _change_branch(
    settings: HostSettings,
    current: tuple[str, str],
    status: NvidiaStatus,
    kernel: str,
    os_version: str,
    recorder: HostRecorder,
) -> None:
    """Ubuntu's driver of another branch than the spec's: unhold it, install the spec's, hold that, reboot."""
    driver = settings.gpu.driver
    state = host.get_fact(NvidiaDriverState)
    old_branch, old_flavour = current
    old = _running_driver_packages(
        "ubuntu", {f"nvidia-driver-{old_branch}{UBUNTU_SUFFIX[old_flavour]}": ()}, kernel, os_version
    )
    new = ubuntu_packages(driver.branch, driver.flavour, kernel, os_version, state.secure_boot == "enabled")
    fm = [fabric_manager_package(old_branch)] if state.nvswitch_box else []
    apt_unheld(name=f"Unhold the NVIDIA driver {old_branch} packages", packages=old + fm)
    apt_packages_present(
        name=f"Upgrade the NVIDIA driver {old_branch} -> {driver.branch}: install {' '.join(new.install)}",
        packages=list(new.install),
    )
    if driver.hold:
        _hold(list(new.hold) + list(driver.packages), recorder, installing=True)
    reason = f"NVIDIA driver branch {old_branch} -> {driver.branch} ({status.driver_version} loaded now)"
    if state.nvswitch_box:
        recorder.note(
            f"{fabric_manager_package(driver.branch)} of the new driver's version is installed by the run "
            "after the reboot"
        )
    _needs_reboot(settings, reason, recorder)


def _needs_reboot(settings: HostSettings, reason: str, recorder: HostRecorder) -> None:
    """Say that the new driver loads only after a reboot; the layer never reboots itself.

    The reboot fact sees what the install left (module installed but not loaded, a library not the
    loaded module's), so the run's after-apply reboot (``sd35_provision/reboots.py``) reboots the host
    when gpu.driver.allow_reboot or ``apply --reboot`` allows it: drained, under the run's lock, its
    driver, service and smoke test checked after it.
    """
    if settings.gpu.driver.allow_reboot:
        recorder.note(f"reboot after apply (gpu.driver.allow_reboot): {reason}")
    else:
        recorder.note(
            f"reboot required: {reason}; the new driver works only after a reboot (gpu.driver.allow_reboot is false)"
        )
