"""Facts gathered from each host before anything changes on it.

Each fact is a pyinfra ``FactBase``: one shell command and a pure parser of its
output, tested on recorded outputs (tests/facts/<Fact>/<case>.json).
``gather_host_facts`` reads them all into one ``HostFacts`` for preflight and
the ``facts`` command.
"""

from __future__ import annotations

from sd35_provision.facts.disk import DiskInfo, FreeSpace, FreeSpaceInfo, StorageInfo, StorageKind
from sd35_provision.facts.driver import AptHolds, DriverState, NvidiaDriverState
from sd35_provision.facts.gateway import GatewayState, HaproxyState
from sd35_provision.facts.host import HostFacts, gather_host_facts
from sd35_provision.facts.nvidia import (
    FP8_MIN_CAPABILITY,
    GpuInfo,
    MigDevice,
    NvidiaGpus,
    NvidiaKernelModule,
    NvidiaMigDevices,
    NvidiaModule,
    NvidiaPciDevices,
    NvidiaStatus,
    PciDevice,
)
from sd35_provision.facts.python import PythonInterpreter, PythonVersions
from sd35_provision.facts.reboot import RebootSignals, RebootState, reboot_needed
from sd35_provision.facts.releases import ReleaseStoreContents
from sd35_provision.facts.runlock import RunLockHolder
from sd35_provision.facts.service import RunningService

__all__ = [
    "AptHolds",
    "FP8_MIN_CAPABILITY",
    "DiskInfo",
    "DriverState",
    "FreeSpace",
    "FreeSpaceInfo",
    "GatewayState",
    "GpuInfo",
    "HaproxyState",
    "HostFacts",
    "MigDevice",
    "NvidiaDriverState",
    "NvidiaGpus",
    "NvidiaKernelModule",
    "NvidiaMigDevices",
    "NvidiaModule",
    "NvidiaPciDevices",
    "NvidiaStatus",
    "PciDevice",
    "PythonInterpreter",
    "PythonVersions",
    "RebootSignals",
    "RebootState",
    "ReleaseStoreContents",
    "RunLockHolder",
    "RunningService",
    "StorageInfo",
    "StorageKind",
    "gather_host_facts",
    "reboot_needed",
]
