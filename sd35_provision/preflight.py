"""Preflight: refuse a host before any change when it cannot run the spec.

Pure: settings + gathered facts in, one clear line per failure out.
"""

from __future__ import annotations

from sd35_provision.cuda_compat import FLAVOUR_CUDA, min_driver_for, pick_flavour, version_tuple
from sd35_provision.facts import FP8_MIN_CAPABILITY, HostFacts
from sd35_provision.spec.model import HostSettings

GB = 1e9
SUPPORTED_OS = {"debian", "ubuntu"}


def check_preflight(settings: HostSettings, facts: HostFacts) -> list[str]:
    failures: list[str] = []
    failures += _os(facts)
    failures += _python(settings, facts)
    failures += _disk(settings, facts)
    if settings.gpu.accelerator == "nvidia":
        failures += _gpu(settings, facts)
    return failures


def _os(facts: HostFacts) -> list[str]:
    if facts.os_id and facts.os_id not in SUPPORTED_OS:
        return [f"{facts.os_name} {facts.os_version} is not supported (Debian or Ubuntu needed)"]
    return []


def _python(settings: HostSettings, facts: HostFacts) -> list[str]:
    wanted = version_tuple(settings.python.min_version)
    found = facts.python_versions.get("python3")
    if found is None:
        return [f"no python3 on the host; {settings.python.min_version}+ required (python.min_version)"]
    if version_tuple(found)[:2] < wanted:
        return [f"python3 is {found}, {settings.python.min_version}+ required (python.min_version)"]
    return []


def _disk(settings: HostSettings, facts: HostFacts) -> list[str]:
    failures = []
    free = facts.cache_free
    need = settings.cache.min_free_gb
    if free["free_bytes"] < need * GB:
        nearest = "" if free["path"] == settings.cache.root else f" (nearest existing: {free['path']})"
        failures.append(
            f"{free['free_bytes'] / GB:.1f} GB free at {settings.cache.root}{nearest}, "
            f"{need:g} GB required (cache.min_free_gb)"
        )
    storage = facts.cache_storage
    if settings.cache.require_ssd and storage["kind"] != "ssd":
        failures.append(
            f"cache root {settings.cache.root} is not known to be on an SSD "
            f"({storage['kind']}: {storage['reason']}); set cache.require_ssd: false to accept it"
        )
    return failures


def _gpu(settings: HostSettings, facts: HostFacts) -> list[str]:
    driver_mode = settings.gpu.driver.mode
    if not facts.gpus:
        unbound = [d for d in facts.nvidia_pci if d["driver"] in (None, "nouveau", "vfio-pci")]
        if unbound and driver_mode == "install":
            return []  # the driver step installs it
        detail = facts.nvidia.get("error") or "nvidia-smi found no GPU"
        if unbound:
            slots = ", ".join(f"{d['slot']} ({d['driver'] or 'no driver'})" for d in unbound)
            detail += f"; NVIDIA devices without a working driver: {slots} (gpu.driver.mode: install fixes this)"
        return [f"no working NVIDIA GPU ({detail}); set gpu.accelerator: cpu for CPU-only hosts"]

    failures = []
    flavour = settings.python.torch_flavour
    driver = facts.driver_version or "0"
    if flavour == "auto":
        if pick_flavour(driver) is None and driver_mode != "install":
            oldest = min((f for f in FLAVOUR_CUDA if FLAVOUR_CUDA[f]), key=lambda f: version_tuple(FLAVOUR_CUDA[f]))
            failures.append(
                f"NVIDIA driver {driver} is too old for every supported CUDA build of torch "
                f"(oldest: {oldest} needs {min_driver_for(oldest)})"
            )
    elif FLAVOUR_CUDA.get(flavour) and version_tuple(driver) < version_tuple(min_driver_for(flavour)) and driver_mode != "install":
        failures.append(
            f"NVIDIA driver {driver} is too old for torch {flavour} "
            f"(CUDA {FLAVOUR_CUDA[flavour]} needs {min_driver_for(flavour)}+)"
        )
    if settings.gpu.require_fp8 and not facts.fp8_capable:
        weakest = min(facts.gpus, key=lambda g: tuple(g["compute_capability"]))
        capability = ".".join(map(str, weakest["compute_capability"]))
        failures.append(
            f"{weakest['name']} has compute capability {capability}; FP8 needs "
            f"{'.'.join(map(str, FP8_MIN_CAPABILITY))}+ (gpu.require_fp8)"
        )
    return failures
