"""NVIDIA facts: GPUs through nvidia-smi, devices on PCI, the kernel module."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyinfra.api import FactBase

FP8_MIN_CAPABILITY = (8, 9)  # Ada (8.9) and Hopper (9.0) onwards have FP8 tensor cores

MARK = "#sd35 "  # our own lines between the tools' output
GPU_QUERY = "index,name,memory.total,compute_cap,driver_version,pci.bus_id,uuid"
# nvidia-smi before R510 does not know compute_cap: ask without it rather than fail.
GPU_QUERY_OLD = "index,name,memory.total,driver_version,pci.bus_id,uuid"


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_mib: int | None
    compute_capability: tuple[int, int] | None
    driver_version: str
    pci_bus_id: str
    uuid: str

    @property
    def fp8_capable(self) -> bool:
        return self.compute_capability is not None and self.compute_capability >= FP8_MIN_CAPABILITY

    @property
    def capability_text(self) -> str:
        return ".".join(map(str, self.compute_capability)) if self.compute_capability else "unknown"


@dataclass(frozen=True)
class NvidiaStatus:
    """What nvidia-smi says: ``state`` "absent" (not installed), "ok" or "failed" (with ``error``)."""

    state: str
    gpus: tuple[GpuInfo, ...] = ()
    cuda_version: str | None = None  # the newest CUDA the driver supports ("CUDA Version" of nvidia-smi -q)
    error: str | None = None

    @property
    def working(self) -> bool:
        return self.state == "ok" and bool(self.gpus)

    @property
    def driver_version(self) -> str | None:
        return self.gpus[0].driver_version if self.gpus else None

    @property
    def problem(self) -> str:
        """Why there is no working GPU, in a few words."""
        if self.state == "absent":
            return "nvidia-smi is not installed"
        if self.state == "failed":
            if self.error and "version mismatch" in self.error:
                return f"nvidia-smi failed: {self.error} (the driver changed since the last boot: reboot the host)"
            return f"nvidia-smi failed: {self.error}"
        return "nvidia-smi lists no GPU"


def _int_or_none(text: str) -> int | None:
    return int(float(text)) if text.replace(".", "", 1).isdigit() else None


def _capability(text: str) -> tuple[int, int] | None:
    major, _, minor = text.partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() and (minor or "0").isdigit() else None


class NvidiaGpus(FactBase[NvidiaStatus]):
    """
    GPUs from ``nvidia-smi --query-gpu`` (index, name, memory MiB, compute
    capability, driver, PCI bus id, UUID) and the driver's CUDA version from
    ``nvidia-smi -q``. No nvidia-smi: state "absent"; nvidia-smi failing (e.g.
    "couldn't communicate with the NVIDIA driver", "Driver/library version
    mismatch"): state "failed" with its message.
    """

    def command(self) -> str:
        smi = "nvidia-smi --query-gpu=$q --format=csv,noheader,nounits 2>&1"
        return (
            f"command -v nvidia-smi >/dev/null 2>&1 || {{ echo '{MARK}nvidia-smi=absent'; exit 0; }}; "
            f"q={GPU_QUERY}; out=$({smi}); rc=$?; "
            f"case \"$out\" in *'not a valid field'*) q={GPU_QUERY_OLD}; out=$({smi}); rc=$?;; esac; "
            f'echo "{MARK}query=$q rc=$rc"; printf \'%s\\n\' "$out"; '
            "if [ $rc = 0 ]; then nvidia-smi -q 2>/dev/null | grep -m 1 'CUDA Version'; fi; true"
        )

    def process(self, output: list[str]) -> NvidiaStatus:
        fields: list[str] = GPU_QUERY.split(",")
        rc = "0"
        gpus: list[GpuInfo] = []
        errors: list[str] = []
        cuda = None
        for line in output:
            if line.startswith(MARK):
                values = dict(part.split("=", 1) for part in line[len(MARK) :].split())
                if values.get("nvidia-smi") == "absent":
                    return NvidiaStatus(state="absent")
                fields, rc = values.get("query", GPU_QUERY).split(","), values.get("rc", "0")
            elif line.strip().startswith("CUDA Version"):
                cuda = line.split(":", 1)[1].strip() or None
            elif rc == "0" and line.count(",") == len(fields) - 1:
                row = dict(zip(fields, (part.strip() for part in line.split(",")), strict=False))
                gpus.append(
                    GpuInfo(
                        index=int(row["index"]),
                        name=row["name"],
                        memory_mib=_int_or_none(row["memory.total"]),
                        compute_capability=_capability(row.get("compute_cap", "")),
                        driver_version=row["driver_version"],
                        pci_bus_id=row["pci.bus_id"],
                        uuid=row["uuid"],
                    )
                )
            elif line.strip():
                errors.append(line.strip())
        if rc != "0" or (errors and not gpus):
            return NvidiaStatus(state="failed", error=errors[0] if errors else f"exit status {rc}")
        return NvidiaStatus(state="ok", gpus=tuple(gpus), cuda_version=cuda)

    @staticmethod
    def default() -> NvidiaStatus:
        return NvidiaStatus(state="absent")


@dataclass(frozen=True)
class MigDevice:
    """One MIG device (a slice of a GPU in MIG mode) as ``nvidia-smi -L`` lists it."""

    gpu_uuid: str  # the GPU it is a slice of
    index: int  # its number on that GPU ("Device  1")
    profile: str  # "3g.40gb"
    uuid: str  # "MIG-..."; CUDA_VISIBLE_DEVICES takes it


# "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-...)", then one line per MIG device of that GPU,
# "  MIG 3g.40gb     Device  0: (UUID: MIG-...)" (R470 and later). Only -L names the MIG devices.
_LIST_GPU = re.compile(r"^GPU \d+: .*\(UUID: (GPU-[^)\s]+)\)\s*$")
_LIST_MIG = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)\s]+)\)\s*$")


class NvidiaMigDevices(FactBase[tuple[MigDevice, ...]]):
    """The MIG devices of GPUs in MIG mode, from ``nvidia-smi -L``; none without MIG (or without nvidia-smi)."""

    def command(self) -> str:
        return "nvidia-smi -L 2>/dev/null; true"

    def process(self, output: list[str]) -> tuple[MigDevice, ...]:
        devices: list[MigDevice] = []
        gpu: str | None = None
        for line in output:
            listed = _LIST_GPU.match(line)
            if listed:
                gpu = listed.group(1)
                continue
            mig = _LIST_MIG.match(line)
            if mig and gpu is not None:
                devices.append(MigDevice(gpu, int(mig.group(2)), mig.group(1), mig.group(3)))
        return tuple(devices)

    @staticmethod
    def default() -> tuple[MigDevice, ...]:
        return ()


@dataclass(frozen=True)
class PciDevice:
    slot: str  # "0000:18:00.0"
    pci_class: str  # "0x030200": 3D controller
    device_id: str  # "0x2330"
    driver: str | None  # the kernel driver bound to it, None if none

    @property
    def working(self) -> bool:
        return self.driver == "nvidia"

    @property
    def problem(self) -> str:
        if self.driver is None:
            return "no driver bound"
        if self.driver == "nouveau":
            return "bound to nouveau"
        if self.driver.startswith("vfio"):
            return f"bound to {self.driver} (reserved for VM passthrough)"
        return f"bound to {self.driver}"

    @property
    def label(self) -> str:
        return f"{self.slot} [10de:{self.device_id.removeprefix('0x')}]"


class NvidiaPciDevices(FactBase[list[PciDevice]]):
    """NVIDIA (vendor 0x10de) display/3D controllers on PCI and the kernel driver bound to each."""

    def command(self) -> str:
        return (
            "for d in /sys/bus/pci/devices/*; do "
            '[ "$(cat "$d/vendor" 2>/dev/null)" = 0x10de ] || continue; c=$(cat "$d/class"); '
            "case $c in 0x03*) ;; *) continue;; esac; "
            'drv=-; [ -e "$d/driver" ] && drv=$(readlink "$d/driver") && drv=${drv##*/}; '
            'echo "${d##*/} $c $(cat "$d/device") $drv"; done; true'
        )

    def process(self, output: list[str]) -> list[PciDevice]:
        devices = []
        for line in output:
            parts = line.split()
            if len(parts) == 4:
                devices.append(
                    PciDevice(
                        slot=parts[0],
                        pci_class=parts[1],
                        device_id=parts[2],
                        driver=None if parts[3] == "-" else parts[3],
                    )
                )
        return devices

    @staticmethod
    def default() -> list[PciDevice]:
        return []


@dataclass(frozen=True)
class NvidiaModule:
    loaded: str | None  # version of the nvidia module in the running kernel
    installed: str | None  # version modinfo finds for the running kernel (what a reboot loads)
    nouveau_loaded: bool

    @property
    def reboot_needed(self) -> bool:
        """An installed module that is not the one running: only a reboot swaps it in."""
        return self.installed is not None and self.installed != self.loaded


class NvidiaKernelModule(FactBase[NvidiaModule]):
    """The nvidia kernel module: the version loaded now and the version installed for this kernel."""

    def command(self) -> str:
        return (
            'echo "loaded=$(cat /sys/module/nvidia/version 2>/dev/null)"; '
            "m=$(command -v modinfo || echo /sbin/modinfo); "
            'echo "installed=$($m -F version nvidia 2>/dev/null | head -n 1)"; '
            'if [ -d /sys/module/nouveau ]; then echo "nouveau=loaded"; else echo "nouveau="; fi'
        )

    def process(self, output: list[str]) -> NvidiaModule:
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return NvidiaModule(
            loaded=values.get("loaded") or None,
            installed=values.get("installed") or None,
            nouveau_loaded=values.get("nouveau") == "loaded",
        )

    @staticmethod
    def default() -> NvidiaModule:
        return NvidiaModule(loaded=None, installed=None, nouveau_loaded=False)
