"""Preflight: refuse a host before anything changes on it when it cannot run the spec.

Pure: settings and gathered facts in, one line per failure out, each naming
the numbers and the spec field to change. The runner raises
``PreflightError(host, "preflight", "\\n".join(failures))`` when there are any.

Decisions:
- cache.require_ssd needs an SSD we can see: "unknown" (virtual disks,
  containers, network and overlay filesystems) fails it too, with the reason
  and the override (cache.require_ssd: false for that host).
- The driver must fully support the CUDA build of torch (see cuda_compat: no
  reliance on minor-version compatibility).
- With gpu.driver.mode: install, a GPU on PCI without a working driver, or a
  driver too old, is not a failure when the pinned branch fixes it: the driver
  step installs it. FP8 is checked once nvidia-smi can name the GPUs.
- gpu.accelerator: cpu skips every GPU check.
- A driver that only a reboot makes work (NVML's "Driver/library version
  mismatch" after an upgrade, or a new module installed but not loaded) is
  "reboot required", with what to do, unless the run reboots it: the driver
  step with gpu.driver.mode: install (it reboots with gpu.driver.allow_reboot,
  else says so), or ``rebooting`` (the caller reboots such hosts first).
- An NVSwitch box (HGX/DGX) needs Fabric Manager running, or CUDA fails with
  error 802 while nvidia-smi looks fine; gpu.driver.mode: install puts it there
  on Ubuntu, anything else fails here with the command that does.
- Debian with Secure Boot on loads only modules signed by an enrolled key:
  installing the driver there waits for DKMS's key to be enrolled (MOK).
"""

from __future__ import annotations

from sd35_provision.cuda_compat import (
    AUTO_FLAVOURS,
    cuda_for,
    driver_install_problem,
    driver_satisfies,
    min_driver_for,
    pick_flavour,
)
from sd35_provision.facts.driver import DKMS_MOK, FABRIC_MANAGER, MISMATCH, DriverState
from sd35_provision.facts.host import HostFacts
from sd35_provision.facts.nvidia import FP8_MIN_CAPABILITY
from sd35_provision.hostspec.settings import HostSettings

GB = 1e9
SUPPORTED_OS = {"debian": "Debian", "ubuntu": "Ubuntu"}


def check_preflight(settings: HostSettings, facts: HostFacts, *, rebooting: bool = False) -> list[str]:
    """One line per reason the host cannot take the spec; empty when it can.

    ``rebooting``: the caller reboots hosts whose driver needs it before applying, so that is no failure.
    """
    failures = _os(facts) + _python(settings, facts) + _disk(settings, facts)
    if settings.gpu.accelerator == "nvidia":
        reboot = reboot_reason(facts)
        if reboot and not rebooting and settings.gpu.driver.mode != "install" and not facts.gpus:
            failures.append(
                f"reboot required: {reboot} ({facts.nvidia.problem}); reboot the host "
                "(sd35-provision apply --reboot), or set gpu.driver.mode: install with gpu.driver.allow_reboot: true"
            )
        elif not (reboot and rebooting):
            failures += _gpu(settings, facts)
    return failures


def reboot_reason(facts: HostFacts) -> str | None:
    """Why the NVIDIA driver works only after a reboot; None when a reboot would not help."""
    if facts.driver.reboot_reason:
        return facts.driver.reboot_reason
    if facts.nvidia.state == "failed" and MISMATCH in (facts.nvidia.error or ""):
        return "NVIDIA driver/library version mismatch"
    return None


def _os(facts: HostFacts) -> list[str]:
    if not facts.os_id:
        return ["cannot tell the OS (no /etc/os-release?); Debian or Ubuntu needed"]
    if facts.os_id not in SUPPORTED_OS:
        return [f"{facts.os_name} {facts.os_version} is not supported; Debian or Ubuntu needed"]
    return []


def _python(settings: HostSettings, facts: HostFacts) -> list[str]:
    wanted = settings.python.min_version
    if facts.python_for(wanted) is not None:
        return []
    found = ", ".join(f"{python.name} {python.version}" for python in facts.pythons) or "no python3 on PATH"
    return [f"Python {wanted}+ required (python.min_version); found {found}"]


def _disk(settings: HostSettings, facts: HostFacts) -> list[str]:
    failures = []
    root = settings.cache.root
    free, need = facts.cache_free, settings.cache.min_free_gb
    if free.free_bytes < need * GB:
        nearest = "" if free.nearest == root else f" (nearest existing: {free.nearest})"
        failures.append(
            f"{free.free_bytes / GB:.1f} GB free at {root}{nearest}, {need:.1f} GB required (cache.min_free_gb)"
        )
    storage = facts.cache_storage
    if settings.cache.require_ssd and storage.kind != "ssd":
        if storage.kind == "hdd":
            failures.append(f"cache root {root} is on a rotating disk: {storage.reason} (cache.require_ssd)")
        else:
            failures.append(
                f"cache root {root}: cannot confirm an SSD: {storage.reason} (cache.require_ssd; "
                "set cache.require_ssd: false for this host if its storage is known to be fast)"
            )
    return failures


def _gpu(settings: HostSettings, facts: HostFacts) -> list[str]:
    if not facts.gpus:
        return _no_gpu(settings, facts)
    failures = []
    flavour = settings.python.torch_flavour
    version = facts.driver_version
    # With gpu.driver.mode: install, a driver too old is the driver step's to replace.
    fixable = settings.gpu.driver.mode == "install" and _install_problem(settings, facts) is None
    if flavour == "auto":
        if pick_flavour(version) == "cpu" and not fixable:
            needs = ", ".join(f"{f} needs {min_driver_for(f)}+" for f in AUTO_FLAVOURS)
            failures.append(
                f"NVIDIA driver {version} is too old for every CUDA build of torch we ship "
                f"({needs}); {_upgrade_hint(settings, facts)}"
            )
    elif not driver_satisfies(version, flavour) and not fixable:
        failures.append(
            f"NVIDIA driver {version} is too old for torch {flavour} (CUDA {cuda_for(flavour)} "
            f"needs {min_driver_for(flavour)}+; python.torch_flavour); {_upgrade_hint(settings, facts)}"
        )
    failures += _fabric_manager(settings, facts)
    if settings.gpu.require_fp8:
        without: dict[tuple[str, str], list[str]] = {}
        for gpu in facts.gpus:
            if not gpu.fp8_capable:
                without.setdefault((gpu.name, gpu.capability_text), []).append(str(gpu.index))
        for (name, capability), indexes in without.items():
            which = f"GPU {indexes[0]}" if len(indexes) == 1 else f"GPUs {', '.join(indexes)}"
            failures.append(
                f"{which} ({name}) {'has' if len(indexes) == 1 else 'have'} compute capability {capability}; "
                f"FP8 needs {'.'.join(map(str, FP8_MIN_CAPABILITY))}+ (Ada, Hopper or newer) (gpu.require_fp8)"
            )
    return failures


def _no_gpu(settings: HostSettings, facts: HostFacts) -> list[str]:
    driver = settings.gpu.driver
    on_pci = facts.pci_without_driver
    passthrough = [device for device in on_pci if device.driver and device.driver.startswith("vfio")]
    if driver.mode == "install" and facts.nvidia_pci and not passthrough:
        problem = _install_problem(settings, facts) or secure_boot_problem(facts.os_id, facts.driver)
        return [problem] if problem else []  # the driver step installs the driver, or reboots into it
    detail = facts.nvidia.problem
    if on_pci:
        devices = ", ".join(f"{device.label} ({device.problem})" for device in on_pci)
        detail += f"; NVIDIA GPU on PCI without a working driver: {devices}"
        if passthrough:
            detail += "; unbind vfio-pci from it first"
        elif driver.mode != "install":
            detail += f"; gpu.driver.mode: install would install driver branch {driver.branch}"
    elif facts.nvidia.state == "absent":
        detail += " and no NVIDIA GPU is on PCI"
    return [f"no working NVIDIA GPU ({detail}); set gpu.accelerator: cpu for a CPU-only host"]


def secure_boot_problem(os_id: str, driver: DriverState) -> str | None:
    """Debian builds the module with DKMS; with Secure Boot on it loads only once DKMS's key is enrolled."""
    if os_id != "debian" or driver.secure_boot != "enabled" or driver.mok_enrolled:
        return None
    return (
        "Secure Boot is on and Debian's DKMS-built nvidia module would not load: enrol DKMS's signing key first: "
        f"apt-get install dkms && dkms generate_mok (if {DKMS_MOK} is missing), mokutil --import {DKMS_MOK} "
        "(choose a one-time password), reboot, choose 'Enroll MOK' in the blue MOK manager at the console and "
        "enter that password; then apply again (or turn Secure Boot off in the firmware)"
    )


def _fabric_manager(settings: HostSettings, facts: HostFacts) -> list[str]:
    """An NVSwitch box without Fabric Manager: nvidia-smi works, CUDA does not (error 802)."""
    state = facts.driver
    if not state.nvswitch_box or state.fabric_manager.present:
        return []  # a stopped one is started by the driver step
    if settings.gpu.driver.mode == "install" and facts.os_id == "ubuntu":
        return []  # the driver step installs it
    branch = (facts.driver_version or settings.gpu.driver.branch).split(".")[0]
    version = facts.driver_version or "<driver version>"
    how = (
        "Debian packages no Fabric Manager: install NVIDIA's CUDA repository's "
        if facts.os_id == "debian"
        else "set gpu.driver.mode: install, or install "
    )
    return [
        f"NVSwitch box ({state.nvswitches} NVSwitches) without {FABRIC_MANAGER}: CUDA fails with error 802 "
        f"'system not yet initialized' although nvidia-smi lists the GPUs; {how}nvidia-fabricmanager-{branch} of "
        f"the driver's version (apt-get install nvidia-fabricmanager-{branch}={version}-*) and run "
        f"systemctl enable --now {FABRIC_MANAGER}"
    ]


def _install_problem(settings: HostSettings, facts: HostFacts) -> str | None:
    return driver_install_problem(
        facts.os_id, facts.os_version, settings.gpu.driver.branch, settings.python.torch_flavour, facts.os_name
    )


def _upgrade_hint(settings: HostSettings, facts: HostFacts) -> str:
    if settings.gpu.driver.mode != "install":
        return "upgrade the driver, or set gpu.driver.mode: install"
    return _install_problem(settings, facts) or "upgrade the driver"
