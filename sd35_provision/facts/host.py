"""Everything preflight and the reports need to know about one host, gathered in one go."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pyinfra.api.host import Host
from pyinfra.facts.server import KernelVersion, LinuxDistribution, LinuxDistributionDict

from sd35_provision.cuda_compat import version_tuple
from sd35_provision.facts.disk import FreeSpace, FreeSpaceInfo, StorageInfo, StorageKind
from sd35_provision.facts.driver import NO_DRIVER, DriverState, NvidiaDriverState
from sd35_provision.facts.nvidia import GpuInfo, NvidiaGpus, NvidiaPciDevices, NvidiaStatus, PciDevice
from sd35_provision.facts.python import PythonInterpreter, PythonVersions
from sd35_provision.facts.reboot import RebootState
from sd35_provision.facts.runlock import RunLockHolder
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.onepass import FactRead, read_facts


@dataclass(frozen=True)
class HostFacts:
    os_id: str  # "ubuntu", "debian" ("" when unknown)
    os_name: str  # "Ubuntu"
    os_version: str  # "24.04"
    os_codename: str  # "noble"
    kernel: str  # uname -r
    pythons: tuple[PythonInterpreter, ...]
    cache_free: FreeSpaceInfo
    cache_storage: StorageInfo
    nvidia: NvidiaStatus
    nvidia_pci: tuple[PciDevice, ...] = ()
    driver: DriverState = NO_DRIVER  # read on NVIDIA hosts only (gpu.accelerator: nvidia)

    @property
    def python_versions(self) -> dict[str, str]:
        return {python.name: python.version for python in self.pythons}

    def python_for(self, min_version: str) -> PythonInterpreter | None:
        """The interpreter to build the venv with: python3 if new enough, else the newest python3.X that is."""
        usable = [python for python in self.pythons if python.at_least(min_version)]
        default = [python for python in usable if python.name == "python3"]
        if default:
            return default[0]
        return max(usable, key=lambda python: version_tuple(python.version), default=None)

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        return self.nvidia.gpus if self.nvidia.working else ()

    @property
    def driver_version(self) -> str | None:
        return self.nvidia.driver_version if self.nvidia.working else None

    @property
    def cuda_version(self) -> str | None:
        return self.nvidia.cuda_version if self.nvidia.working else None

    @property
    def fp8_capable(self) -> bool:
        """Every GPU has FP8 tensor cores (compute capability 8.9+); False without GPUs."""
        return bool(self.gpus) and all(gpu.fp8_capable for gpu in self.gpus)

    @property
    def pci_without_driver(self) -> tuple[PciDevice, ...]:
        """NVIDIA GPUs on PCI that the nvidia driver does not drive (none bound, nouveau, vfio-pci)."""
        return tuple(device for device in self.nvidia_pci if not device.working)

    def to_dict(self) -> dict:
        """JSON-able, for ``sd35-provision facts --json``."""
        data = asdict(self)
        data.update(
            python_versions=self.python_versions,
            driver_version=self.driver_version,
            cuda_version=self.cuda_version,
            fp8_capable=self.fp8_capable,
            reboot_required=self.driver.reboot_reason,  # why a reboot is needed, or null
        )
        for gpu, raw in zip(self.nvidia.gpus, data["nvidia"]["gpus"], strict=False):
            raw["fp8_capable"] = gpu.fp8_capable
        return data


PREFLIGHT_STEP = "preflight"


def preflight_reads(settings: HostSettings) -> list[FactRead]:
    """The facts ``gather_host_facts`` reads, to read them in one round trip first (sd35_provision/onepass.py)."""
    root = settings.cache.root
    return [
        FactRead(PREFLIGHT_STEP, LinuxDistribution),
        FactRead(PREFLIGHT_STEP, KernelVersion),
        FactRead(PREFLIGHT_STEP, PythonVersions),
        FactRead(PREFLIGHT_STEP, FreeSpace, {"path": root}),
        FactRead(PREFLIGHT_STEP, StorageKind, {"path": root}),
        FactRead(PREFLIGHT_STEP, NvidiaGpus),
        FactRead(PREFLIGHT_STEP, NvidiaPciDevices),
        FactRead(PREFLIGHT_STEP, RebootState),  # plan, drift and status say when a host needs a reboot
        FactRead(PREFLIGHT_STEP, RunLockHolder),  # ... and when another run holds it (no round trip of its own)
        *([FactRead(PREFLIGHT_STEP, NvidiaDriverState)] if settings.gpu.accelerator == "nvidia" else []),
    ]


def os_name_version(distro: LinuxDistributionDict) -> tuple[str, str]:
    """("Ubuntu", "24.04") from pyinfra's ``LinuxDistribution`` fact."""
    release = distro.get("release_meta") or {}
    return distro.get("name") or release.get("NAME") or "unknown", release.get("VERSION_ID") or str(
        distro.get("major") or ""
    )


def gather_host_facts(host: Host, settings: HostSettings) -> HostFacts:
    """Read every fact preflight needs from ``host`` (pyinfra facts; changes nothing)."""
    read_facts(host, preflight_reads(settings))
    distro = host.get_fact(LinuxDistribution) or LinuxDistribution.default()
    release = distro.get("release_meta") or {}
    root = settings.cache.root
    # Read into annotated names, in the order the host is asked: inside tuple() mypy would infer the fact's
    # type from tuple's Iterable argument and reject the fact class.
    kernel = (host.get_fact(KernelVersion) or "").strip()
    pythons: list[PythonInterpreter] = host.get_fact(PythonVersions)
    cache_free = host.get_fact(FreeSpace, path=root)
    cache_storage = host.get_fact(StorageKind, path=root)
    nvidia = host.get_fact(NvidiaGpus)
    nvidia_pci: list[PciDevice] = host.get_fact(NvidiaPciDevices)
    driver = host.get_fact(NvidiaDriverState) if settings.gpu.accelerator == "nvidia" else NO_DRIVER
    os_name, os_version = os_name_version(distro)
    return HostFacts(
        os_id=(release.get("ID") or "").lower(),
        os_name=os_name,
        os_version=os_version,
        os_codename=release.get("VERSION_CODENAME") or "",
        kernel=kernel,
        pythons=tuple(pythons),
        cache_free=cache_free,
        cache_storage=cache_storage,
        nvidia=nvidia,
        nvidia_pci=tuple(nvidia_pci),
        driver=driver,
    )
