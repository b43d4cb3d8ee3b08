"""Disk facts for the cache root: free space, and whether it sits on an SSD.

The cache root may not exist before the first apply, so both facts measure the
nearest existing parent and say which one that was.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from pyinfra.api import FactBase

from sd35_provision import hostside


def _nearest_existing(path: str) -> str:
    return f'p={shlex.quote(path)}; while [ ! -e "$p" ]; do p=$(dirname "$p"); done'


@dataclass(frozen=True)
class FreeSpaceInfo:
    path: str  # the path asked about
    nearest: str  # the nearest existing path, measured instead
    mount: str
    source: str
    total_bytes: int
    free_bytes: int  # available to unprivileged users (df's "Available")


class FreeSpace(FactBase[FreeSpaceInfo]):
    """Bytes available on the filesystem that holds ``path`` (or its nearest existing parent)."""

    def command(self, path: str) -> str:
        return f'echo "path="{shlex.quote(path)}; {_nearest_existing(path)}; echo "nearest=$p"; df -P -k "$p"'

    def process(self, output: list[str]) -> FreeSpaceInfo:
        values = dict(line.split("=", 1) for line in output if line.startswith(("path=", "nearest=")))
        # df -P: "Filesystem 1024-blocks Used Available Capacity Mounted on", one line per filesystem.
        fields = output[-1].split() if output else []
        capacity = next((i for i, field in enumerate(fields) if field.endswith("%") and i >= 4), None)
        if capacity is None or "nearest" not in values:
            raise ValueError(f"FreeSpace: unexpected output of df: {output!r}")
        return FreeSpaceInfo(
            path=values["path"],
            nearest=values["nearest"],
            mount=" ".join(fields[capacity + 1 :]),
            source=" ".join(fields[: capacity - 3]),
            total_bytes=int(fields[capacity - 3]) * 1024,
            free_bytes=int(fields[capacity - 1]) * 1024,
        )


# Filesystems with no local block device of their own to inspect.
NO_BLOCK_DEVICE = {
    "tmpfs": "memory-backed (tmpfs), not a disk",
    "ramfs": "memory-backed (ramfs), not a disk",
    "overlay": "an overlay filesystem (container image layers) whose upper layer lives on the container host",
    "nfs": "a network filesystem (nfs)",
    "nfs4": "a network filesystem (nfs4)",
    "cifs": "a network filesystem (cifs)",
    "smb3": "a network filesystem (smb3)",
    "ceph": "a network filesystem (ceph)",
    "glusterfs": "a network filesystem (glusterfs)",
    "9p": "shared from the hypervisor host (9p)",
    "virtiofs": "shared from the hypervisor host (virtiofs)",
    "zfs": "a ZFS dataset (its pool's disks are not inspected)",
}

# Virtual block storage that lives on the network: its rotational flag says
# nothing either way (an EBS st1 volume is spinning disks behind a "non-rotational" NVMe).
NETWORK_DISK_MODELS = ("Amazon Elastic Block Store", "PersistentDisk")


@dataclass(frozen=True)
class DiskInfo:
    name: str
    rotational: bool | None
    vendor: str
    model: str
    driver: str
    device: str  # the /sys/devices path of the disk's device
    virtual: str | None  # what shows it is a virtual disk, if it is one

    @property
    def kind(self) -> str:
        if self.rotational is None or any(m in self.model for m in NETWORK_DISK_MODELS):
            return "unknown"
        if self.rotational:
            return "unknown" if self.virtual else "hdd"
        return "ssd"


@dataclass(frozen=True)
class StorageInfo:
    kind: str  # "ssd" | "hdd" | "unknown"
    reason: str
    path: str  # the nearest existing path, inspected
    mount: str
    source: str
    fstype: str
    container: str | None
    chain: tuple[str, ...]  # how the mount was followed down to disks
    disks: tuple[DiskInfo, ...]

    @property
    def disk_names(self) -> list[str]:
        return [disk.name for disk in self.disks]


def _virtual_marker(name: str, attrs: dict[str, str]) -> str | None:
    vendor, model, driver, device = attrs["vendor"], attrs["model"], attrs["driver"], attrs["device"]
    if vendor == "0x1af4" or "virtio" in device or driver.startswith("virtio"):
        return "virtio"
    if name.startswith("xvd") or "/xen" in device or "vbd" in driver or vendor == "Xen":
        return "Xen"
    if vendor == "Msft" or "vmbus" in device.lower():
        return "Hyper-V"
    if vendor.startswith("VMware") or model.startswith("VMware"):
        return "VMware"
    if vendor == "QEMU" or model.startswith("QEMU"):
        return "QEMU"
    if vendor == "VBOX" or "VBOX" in model:
        return "VirtualBox"
    if vendor == "Google" or any(m in model for m in NETWORK_DISK_MODELS):
        return "cloud block storage"
    if name.startswith("vd"):
        return "paravirtual"
    return None


def _parse_disk(line: str) -> DiskInfo:
    head, _, model = line.partition(" model=")
    attrs = dict(part.split("=", 1) for part in head.split())
    attrs["model"] = model.strip()
    attrs = {key: ("" if value == "-" else value) for key, value in attrs.items()}
    name = attrs["disk"]
    rotational = {"0": False, "1": True}.get(attrs.get("rotational", ""))
    return DiskInfo(
        name=name,
        rotational=rotational,
        vendor=attrs.get("vendor", ""),
        model=attrs["model"],
        driver=attrs.get("driver", ""),
        device=attrs.get("device", ""),
        virtual=_virtual_marker(name, attrs),
    )


def _names(disks: list[DiskInfo]) -> str:
    names = ", ".join(disk.name for disk in disks)
    return f"{names} {'is' if len(disks) == 1 else 'are'}"


def _verdict(values: dict[str, str], unresolved: list[str], disks: list[DiskInfo]) -> tuple[str, str]:
    source, fstype, container = values.get("source", "?"), values.get("fstype", ""), values.get("container")
    where = f"{values.get('path')} is on {source}"
    if container and container != "none":
        return "unknown", f"inside a {container} container: {where}, storage the container host decides"
    if fstype in NO_BLOCK_DEVICE or fstype.startswith("fuse"):
        return "unknown", f"{where}: {NO_BLOCK_DEVICE.get(fstype, f'a FUSE filesystem ({fstype})')}"
    if unresolved or not disks:
        what = ", ".join(unresolved) or source
        return "unknown", f"{where} ({fstype or 'unknown filesystem'}): could not follow {what} to a disk"
    hdd = [d for d in disks if d.kind == "hdd"]
    if hdd:  # a member on spinning disk makes the whole array as slow as that disk
        return "hdd", f"{_names(hdd)} rotational"
    unknown = [d for d in disks if d.kind == "unknown"]
    if unknown:
        network = [d for d in unknown if any(m in d.model for m in NETWORK_DISK_MODELS)]
        if network:
            return "unknown", f"{_names(network)} network block storage ({network[0].model}): may be HDD-backed"
        virtual = [d for d in unknown if d.virtual]
        if virtual:
            return "unknown", (
                f"{_names(virtual)} a virtual disk ({virtual[0].virtual}) reporting rotational=1 whatever backs it"
            )
        return "unknown", f"{_names(unknown)} not reporting whether it rotates"
    virtual_note = " (virtual disk: as its hypervisor reports it)" if any(d.virtual for d in disks) else ""
    return "ssd", f"{_names(disks)} non-rotational{virtual_note}"


class StorageKind(FactBase[StorageInfo]):
    """
    Whether the disk under ``path`` is an SSD: ``kind`` "ssd", "hdd" or
    "unknown", with a ``reason``.

    Follows partitions, device-mapper, md members and loop devices down to
    /sys/block/*/queue/rotational. Honest about what cannot be known:
    overlay/tmpfs/network filesystems, container roots and virtual disks
    (virtio, Xen, Hyper-V, VMware... report rotational=1 whatever backs them)
    are "unknown", not "hdd". An array with one rotational member is "hdd".
    The walk is sd35_provision/hostside/storage_kind.sh.
    """

    def command(self, path: str) -> str:
        # The script reads the path as $1: `set --` gives it one without a second shell.
        return f"set -- {shlex.quote(path)}\n{hostside.source('storage_kind.sh')}"

    def process(self, output: list[str]) -> StorageInfo:
        values: dict[str, str] = {}
        chain: list[str] = []
        unresolved: list[str] = []
        disks: list[DiskInfo] = []
        for line in output:
            key, _, value = line.partition("=")
            if key == "disk":
                disks.append(_parse_disk(line))
            elif key == "partition":
                name, _, disk = value.partition(" disk=")
                chain.append(f"{name}: partition of {disk}")
            elif key == "holder":
                name, _, slaves = value.partition(" slaves=")
                chain.append(f"{name}: on {slaves.replace(',', ', ')}")
            elif key == "loop":
                name, _, backing = value.partition(" backing=")
                chain.append(f"{name}: loop device backed by {backing}")
            elif key == "unresolved":
                unresolved.append(value.split()[0] if value else "?")
            elif key:
                values.setdefault(key, value)
        kind, reason = _verdict(values, unresolved, disks)
        container = values.get("container")
        return StorageInfo(
            kind=kind,
            reason=reason,
            path=values.get("path", ""),
            mount=values.get("mount", "").replace("\\040", " "),
            source=values.get("source", ""),
            fstype=values.get("fstype", ""),
            container=None if container in (None, "none") else container,
            chain=tuple(chain),
            disks=tuple(disks),
        )
