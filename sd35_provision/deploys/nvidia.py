"""NVIDIA driver layer: verify (default), install a pinned branch, or skip (gpu.driver).

- verify: the host must already have a working driver new enough for the CUDA
  build of torch; otherwise the host fails here with what is wrong and how to
  fix it (preflight says the same before anything runs; this covers plain
  ``pyinfra`` runs of deploys/site.py).
- install: nothing when a working driver is new enough (a working driver is
  never replaced, even from another branch). Otherwise Ubuntu 22.04/24.04
  get ``nvidia-driver-<branch>[-server][-open]`` and the running kernel's
  headers; Debian 12 gets contrib/non-free/non-free-firmware enabled in its
  sources and ``nvidia-driver firmware-misc-nonfree linux-headers-<flavour>``,
  in the branch Debian ships (the pin cannot be honoured there, a note says so).
  A new driver needs the new kernel module loaded: with gpu.driver.allow_reboot
  the host reboots (and the driver is checked after it), otherwise the report
  says "reboot required" on every run until it happens.
- skip: nothing.
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import OperationError, deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import KernelVersion, LinuxDistribution
from pyinfra.operations import server

from sd35_provision.cuda_compat import (
    AUTO_FLAVOURS,
    driver_install_problem,
    driver_satisfies,
    install_branch,
    min_driver_for,
    version_tuple,
)
from sd35_provision.errors import PreflightError
from sd35_provision.facts.nvidia import NvidiaGpus, NvidiaKernelModule, NvidiaStatus
from sd35_provision.hostplan import HostPlan
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.operations import HostRecorder, apt_packages_present, managed_file

STEP = "NVIDIA driver"
UBUNTU_SUFFIX = {"default": "", "server": "-server", "open": "-open", "server-open": "-server-open"}
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


def debian_headers_package(kernel: str) -> str:
    """The headers metapackage of the running kernel's flavour: 6.1.0-28-cloud-amd64 -> linux-headers-cloud-amd64.

    The metapackage follows kernel upgrades, so DKMS keeps building the module
    for the kernel the next reboot boots.
    """
    match = re.match(r"^\d+\.\d+\.\d+-\d+-(.+)$", kernel)
    return f"linux-headers-{match.group(1)}" if match else f"linux-headers-{kernel}"


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


def _check_after_reboot(flavours: tuple[str, ...]) -> str:
    minimum = min((driver for f in flavours if (driver := min_driver_for(f))), key=version_tuple, default="0")
    return (
        "v=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -n 1); "
        'case "$v" in [0-9]*) ;; *) echo "NVIDIA driver not working after the reboot: $v" >&2; exit 1;; esac; '
        f'[ "$(printf \'%s\\n\' {minimum} "$v" | sort -V | head -n 1)" = {minimum} ] || '
        f'{{ echo "NVIDIA driver $v is running; torch needs {minimum}+" >&2; exit 1; }}'
    )


@deploy(STEP)
def nvidia_driver(plan: HostPlan, recorder: HostRecorder) -> None:
    settings = plan.settings
    driver = settings.gpu.driver
    if settings.gpu.accelerator != "nvidia" or driver.mode == "skip":
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
        return
    if problem is None:
        major = str(version_tuple(status.driver_version or "0")[0])
        if major != driver.branch:
            recorder.note(
                f"NVIDIA driver {status.driver_version} works for torch; gpu.driver.branch {driver.branch} "
                "not applied (a working driver is never replaced)"
            )
        return

    distro = host.get_fact(LinuxDistribution) or LinuxDistribution.default()
    release = distro.get("release_meta") or {}
    os_id, os_version = (release.get("ID") or "").lower(), release.get("VERSION_ID") or ""
    cannot = driver_install_problem(
        os_id, os_version, driver.branch, settings.python.torch_flavour, distro.get("name") or ""
    )
    if cannot:
        raise DriverNotReady(host.name, STEP, f"{problem}; {cannot}")

    kernel = (host.get_fact(KernelVersion) or "").strip()
    if os_id == "ubuntu":
        packages = [f"nvidia-driver-{driver.branch}{UBUNTU_SUFFIX[driver.flavour]}", f"linux-headers-{kernel}"]
    else:
        packages = ["nvidia-driver", "firmware-misc-nonfree", debian_headers_package(kernel)]
        branch = install_branch(os_id, os_version, driver.branch)
        if branch != driver.branch:
            recorder.note(
                f"Debian {os_version} installs its own NVIDIA driver branch ({branch}); "
                f"gpu.driver.branch {driver.branch} cannot be pinned there"
            )

    installed = host.get_fact(DebPackages) or {}
    module = host.get_fact(NvidiaKernelModule)
    if any(package not in installed for package in packages):
        if os_id == "debian":
            _enable_debian_components(release.get("VERSION_CODENAME") or "", recorder)
        apt_packages_present(name=f"Install {' '.join(packages)}", packages=packages)
        loaded = f"module {module.loaded}" if module.loaded else "no nvidia module"
        reason = f"NVIDIA driver newly installed; {loaded} loaded now"
    elif module.reboot_needed:
        reason = f"nvidia module {module.installed} installed, {module.loaded or 'none'} loaded"
    else:
        raise DriverNotReady(
            host.name,
            STEP,
            (
                f"{problem}, although {', '.join(packages)} are installed and nvidia module "
                f"{module.loaded or 'none'} is loaded: see dmesg (Secure Boot may refuse an unsigned DKMS module)"
            ),
        )

    if driver.allow_reboot:
        recorder.note(f"rebooting: {reason}")
        server.reboot(name="Reboot to load the NVIDIA driver", reboot_timeout=driver.reboot_timeout_s)
        server.shell(name="Check the NVIDIA driver after the reboot", commands=[_check_after_reboot(flavours)])
    else:
        recorder.note(
            f"reboot required: {reason}; the new driver works only after a reboot (gpu.driver.allow_reboot is false)"
        )
