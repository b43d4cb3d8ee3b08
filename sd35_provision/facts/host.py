"""Facts about a host that decide whether it can run SD3.5: Python, disk, GPU.

Each fact is one shell command and a pure parser of its output, unit-tested on
recorded outputs (tests/facts/).
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

PYTHON_CANDIDATES = ("python3", "python3.9", "python3.10", "python3.11", "python3.12", "python3.13", "python3.14")


def _nearest_existing(path: str) -> str:
    # The cache root may not exist before the first apply: measure its parent.
    return f'p={shlex.quote(path)}; while [ ! -e "$p" ]; do p=$(dirname "$p"); done'


class PythonVersions(FactBase[dict[str, str]]):
    """``{"python3": "3.11.2", "python3.11": "3.11.2"}`` for the interpreters on PATH."""

    def command(self) -> str:
        probe = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
        return (
            f"for p in {' '.join(PYTHON_CANDIDATES)}; do "
            f'command -v "$p" >/dev/null 2>&1 && echo "$p $("$p" -c "{probe}" 2>/dev/null)"; '
            "done; true"
        )

    def process(self, output: list[str]) -> dict[str, str]:
        versions = {}
        for line in output:
            parts = line.split()
            if len(parts) == 2 and parts[1][0].isdigit():
                versions[parts[0]] = parts[1]
        return versions

    @staticmethod
    def default() -> dict[str, str]:
        return {}


class FreeSpace(FactBase[dict]):
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""

    def command(self, path: str) -> str:
        return f'{_nearest_existing(path)}; echo "path=$p"; df -P -B1 "$p" | tail -n 1'

    def process(self, output: list[str]) -> dict:
        nearest = output[0].split("=", 1)[1]
        fields = output[-1].split()
        # Filesystem 1-blocks Used Available Capacity Mounted-on
        return {"path": nearest, "source": fields[0], "free_bytes": int(fields[3]), "mount": fields[5]}


STORAGE_SCRIPT = r"""
__NEAREST__
echo "path=$p"
findmnt -n -o SOURCE,FSTYPE --target "$p" | tail -n 1 | while read src fs; do echo "source=$src"; echo "fstype=$fs"; done
dev_of() { case "$1" in /dev/*) basename "$(readlink -f "$1")";; esac; }
walk() {
  d=$1
  if [ -e "/sys/class/block/$d/partition" ]; then d=$(basename "$(dirname "$(readlink -f /sys/class/block/$d)")"); fi
  if [ -f "/sys/block/$d/loop/backing_file" ]; then
    b=$(cat "/sys/block/$d/loop/backing_file"); echo "loop=$d backing=$b"
    s=$(findmnt -n -o SOURCE --target "$b" | tail -n 1); n=$(dev_of "$s"); [ -n "$n" ] && walk "$n"; return
  fi
  slaves=$(ls "/sys/block/$d/slaves" 2>/dev/null)
  if [ -n "$slaves" ]; then for s in $slaves; do walk "$s"; done; return; fi
  [ -d "/sys/block/$d" ] || { echo "nodisk=$d"; return; }
  link=$(readlink -f "/sys/block/$d/device" 2>/dev/null)
  vendor=$(cat "/sys/block/$d/device/vendor" 2>/dev/null | tr -d ' ')
  echo "disk=$d rotational=$(cat /sys/block/$d/queue/rotational) vendor=${vendor:--} device=${link:--}"
}
n=$(dev_of "$(findmnt -n -o SOURCE --target "$p" | tail -n 1)")
[ -n "$n" ] && walk "$n"
true
"""

VIRTUAL_MARKERS = ("virtio", "QEMU", "VMware", "Msft", "Xen", "xen-vbd", "Google", "Amazon", "/vmbus")
UNKNOWN_FILESYSTEMS = {"overlay", "tmpfs", "nfs", "nfs4", "cifs", "fuse", "9p", "virtiofs", "zfs", "btrfs-multi"}


class StorageKind(FactBase[dict]):
    """
    Whether the disk under ``path`` is an SSD: ``{"kind": "ssd"|"hdd"|"unknown", "reason": ...}``.

    Follows partitions, device-mapper and md members and loop devices down to
    /sys/block/*/queue/rotational. Virtual disks (virtio, VMware, Hyper-V...)
    report ``rotational=1`` whatever backs them, so they are "unknown", not "hdd".
    """

    def command(self, path: str) -> str:
        return STORAGE_SCRIPT.replace("__NEAREST__", _nearest_existing(path)).strip()

    def process(self, output: list[str]) -> dict:
        values: dict[str, str] = {}
        disks: list[dict[str, str]] = []
        for line in output:
            if line.startswith("disk="):
                disks.append(dict(part.split("=", 1) for part in line.split()))
            elif "=" in line:
                key, value = line.split("=", 1)
                values.setdefault(key, value)
        fstype = values.get("fstype", "")
        base = {"path": values.get("path"), "source": values.get("source"), "fstype": fstype,
                "disks": [d["disk"] for d in disks]}
        if fstype in UNKNOWN_FILESYSTEMS or not disks:
            what = f"{fstype} filesystem" if fstype else "no filesystem"
            return {**base, "kind": "unknown", "reason": f"{what} on {values.get('source') or '?'}: no local block device to inspect"}
        virtual = [d["disk"] for d in disks if any(m in d.get("vendor", "") + d.get("device", "") for m in VIRTUAL_MARKERS)]
        rotational = [d["disk"] for d in disks if d["rotational"] == "1"]
        if rotational and virtual and set(rotational) <= set(virtual):
            return {**base, "kind": "unknown",
                    "reason": f"virtual disk {', '.join(virtual)} reports rotational=1 whatever backs it"}
        if rotational:
            return {**base, "kind": "hdd", "reason": f"{', '.join(rotational)} is rotational"}
        return {**base, "kind": "ssd", "reason": f"{', '.join(d['disk'] for d in disks)} non-rotational"}


NVIDIA_QUERY = "index,name,memory.total,compute_cap,driver_version,pci.bus_id"


class NvidiaGpus(FactBase[dict]):
    """
    ``{"gpus": [{"index", "name", "memory_mib", "compute_capability", "driver_version"}],
    "cuda_version": "12.8", "error": None}``; no nvidia-smi gives no GPUs.
    """

    def requires_command(self) -> str:
        return "nvidia-smi"

    def command(self) -> str:
        return (
            f"nvidia-smi --query-gpu={NVIDIA_QUERY} --format=csv,noheader,nounits 2>&1; "
            "nvidia-smi -q 2>/dev/null | grep -m1 'CUDA Version' || true"
        )

    def process(self, output: list[str]) -> dict:
        result: dict = {"gpus": [], "cuda_version": None, "error": None}
        for line in output:
            if "CUDA Version" in line:
                result["cuda_version"] = line.split(":", 1)[1].strip()
            elif "NVIDIA-SMI has failed" in line or "couldn't communicate" in line or "No devices were found" in line:
                result["error"] = line.strip()
            elif line.count(",") >= 5:
                index, name, memory, capability, driver, bus = (part.strip() for part in line.split(",")[:6])
                major, _, minor = capability.partition(".")
                result["gpus"].append({
                    "index": int(index), "name": name, "memory_mib": int(float(memory)),
                    "compute_capability": [int(major), int(minor or 0)],
                    "driver_version": driver, "pci_bus_id": bus,
                })
        return result

    @staticmethod
    def default() -> dict:
        return {"gpus": [], "cuda_version": None, "error": None}


class NvidiaPciDevices(FactBase[list]):
    """NVIDIA display/3D controllers on PCI with the kernel driver bound to each (None if unbound)."""

    def command(self) -> str:
        return (
            "for d in /sys/bus/pci/devices/*; do [ -r \"$d/vendor\" ] || continue; "
            "[ \"$(cat $d/vendor)\" = 0x10de ] || continue; c=$(cat $d/class); "
            "case $c in 0x03*) drv=-; [ -e $d/driver ] && drv=$(basename \"$(readlink $d/driver)\"); "
            "echo \"$(basename $d) $c $(cat $d/device) $drv\";; esac; done; true"
        )

    def process(self, output: list[str]) -> list:
        devices = []
        for line in output:
            parts = line.split()
            if len(parts) == 4:
                devices.append({"slot": parts[0], "class": parts[1], "device_id": parts[2],
                                "driver": None if parts[3] == "-" else parts[3]})
        return devices

    @staticmethod
    def default() -> list:
        return []
