"""Facts gathered from each host before anything changes on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pyinfra.api.host import Host
from pyinfra.facts.server import LinuxDistribution

from sd35_provision.facts.host import FreeSpace, NvidiaGpus, NvidiaPciDevices, PythonVersions, StorageKind
from sd35_provision.spec.model import HostSettings

FP8_MIN_CAPABILITY = (8, 9)


@dataclass
class HostFacts:
    os_name: str
    os_version: str
    os_id: str
    python_versions: dict[str, str]
    cache_free: dict
    cache_storage: dict
    nvidia: dict
    nvidia_pci: list = field(default_factory=list)

    @property
    def gpus(self) -> list[dict]:
        return self.nvidia.get("gpus", [])

    @property
    def driver_version(self) -> str | None:
        return self.gpus[0]["driver_version"] if self.gpus else None

    @property
    def fp8_capable(self) -> bool:
        return bool(self.gpus) and all(tuple(g["compute_capability"]) >= FP8_MIN_CAPABILITY for g in self.gpus)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fp8_capable"] = self.fp8_capable
        data["driver_version"] = self.driver_version
        return data


def gather_host_facts(host: Host, settings: HostSettings) -> HostFacts:
    distro = host.get_fact(LinuxDistribution) or {}
    release = distro.get("release_meta", {})
    return HostFacts(
        os_name=distro.get("name") or "unknown",
        os_version=release.get("VERSION_ID") or str(distro.get("major") or ""),
        os_id=release.get("ID", "").lower(),
        python_versions=host.get_fact(PythonVersions),
        cache_free=host.get_fact(FreeSpace, path=settings.cache.root),
        cache_storage=host.get_fact(StorageKind, path=settings.cache.root),
        nvidia=host.get_fact(NvidiaGpus),
        nvidia_pci=host.get_fact(NvidiaPciDevices),
    )


__all__ = ["HostFacts", "gather_host_facts"]
