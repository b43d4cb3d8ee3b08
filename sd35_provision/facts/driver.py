"""The NVIDIA driver stack around the GPUs: reboot needed, Secure Boot, NVSwitch, its services, apt holds.

``NvidiaDriverState`` reads in one command what the driver layer and
preflight need beyond nvidia-smi's GPU list: the kernel module loaded now
(/proc/driver/nvidia/version) and installed for this kernel (modinfo), the
user-space NVML library's version, nvidia-smi's error when NVML cannot start,
Secure Boot (``mokutil --sb-state``) and whether DKMS's signing key is
enrolled, NVSwitch devices on PCI, the GPUs' fabric state (``nvidia-smi -q``)
and the persistence and Fabric Manager services. ``DriverState.reboot_required``
(with ``reboot_reason``) is what a reboot fixes: a library that is not the
loaded module's (NVML's "Driver/library version mismatch"), or a module
installed for this kernel that is not the one loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyinfra.api import FactBase

MISMATCH = "Driver/library version mismatch"
# Fabric states (nvidia-smi -q, GPU "Fabric" section) of a GPU still waiting for Fabric Manager.
FABRIC_WAITING = ("Not Started", "In Progress")
PERSISTENCED = "nvidia-persistenced"
FABRIC_MANAGER = "nvidia-fabricmanager"
DKMS_MOK = "/var/lib/dkms/mok.pub"  # the key Debian's dkms signs modules with
# The version in /proc/driver/nvidia/version's first line, proprietary ("NVIDIA UNIX x86_64 Kernel Module  550.127.05
# Tue Oct ...") and open ("NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ..."): the dotted
# number before two spaces (not the 86 of x86_64, nor a time).
LOADED_MODULE_SED = r"s/^NVRM version:.* \([0-9][0-9]*\.[0-9][0-9.]*\)  .*/\1/p"
_SECUREBOOT_EFIVAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


@dataclass(frozen=True)
class UnitState:
    """A systemd unit: ``enabled`` as ``systemctl is-enabled`` says it ("" when there is no such unit)."""

    enabled: str
    active: str

    @property
    def present(self) -> bool:
        return bool(self.enabled)

    @property
    def running(self) -> bool:
        return self.active == "active"


@dataclass(frozen=True)
class DriverState:
    loaded_module: str | None  # version of the nvidia module in the running kernel
    installed_module: str | None  # what modinfo finds for the running kernel (what a reboot loads)
    library_version: str | None  # libnvidia-ml.so.<version>: the user-space side
    nvml_error: str | None  # nvidia-smi's first line when NVML cannot start
    secure_boot: str  # "enabled", "disabled" or "unknown"
    mok_enrolled: bool | None  # DKMS's signing key enrolled (None: no key, or cannot tell)
    nvswitches: int  # NVSwitch devices on PCI: an HGX/DGX box whose fabric this host's Fabric Manager runs
    fabric_states: tuple[str, ...]  # per GPU, "Completed", "In Progress", "N/A"...
    persistenced: UnitState
    fabric_manager: UnitState

    @property
    def library_mismatch(self) -> bool:
        """NVML cannot start because the library is not the loaded module's version (upgraded, not rebooted)."""
        if self.nvml_error and MISMATCH in self.nvml_error:
            return True
        return bool(self.loaded_module and self.library_version and self.loaded_module != self.library_version)

    @property
    def module_pending(self) -> bool:
        """A module is installed for this kernel that is not the loaded one: only a reboot swaps it in."""
        return bool(self.installed_module and self.loaded_module and self.installed_module != self.loaded_module)

    @property
    def reboot_required(self) -> bool:
        return self.library_mismatch or self.module_pending

    @property
    def reboot_reason(self) -> str | None:
        """Why a reboot is needed, with the versions; None when it is not."""
        loaded = self.loaded_module or "none"
        if self.library_mismatch:
            library = self.library_version or "another version"
            return f"NVIDIA driver/library version mismatch: nvidia module {loaded} loaded, library {library} installed"
        if self.module_pending:
            return f"nvidia module {self.installed_module} installed, {loaded} loaded"
        return None

    @property
    def nvswitch_box(self) -> bool:
        return self.nvswitches > 0

    @property
    def fabric_waiting(self) -> bool:
        """A GPU waits for its NVLink fabric: CUDA fails with error 802 "system not yet initialized"."""
        return any(state in FABRIC_WAITING for state in self.fabric_states)


NO_UNIT = UnitState(enabled="", active="")
NO_DRIVER = DriverState(
    loaded_module=None,
    installed_module=None,
    library_version=None,
    nvml_error=None,
    secure_boot="unknown",
    mok_enrolled=None,
    nvswitches=0,
    fabric_states=(),
    persistenced=NO_UNIT,
    fabric_manager=NO_UNIT,
)


def parse_secure_boot(text: str) -> str:
    """``mokutil --sb-state`` (or our efivar/no-EFI line) -> "enabled", "disabled" or "unknown"."""
    if "SecureBoot enabled" in text or text == "efivar 1":
        return "enabled"
    if "SecureBoot disabled" in text or text == "efivar 0":
        return "disabled"
    if "doesn't support Secure Boot" in text or "EFI variables are not supported" in text or text == "no EFI":
        return "disabled"  # legacy BIOS boot: nothing checks module signatures
    return "unknown"


def _unit(text: str) -> UnitState:
    enabled, _, active = text.partition("/")
    return UnitState(enabled=enabled.strip(), active=active.strip() if enabled.strip() else "")


class NvidiaDriverState(FactBase[DriverState]):
    """The driver stack beyond the GPU list (see the module's docstring); one ``key=value`` line each."""

    def command(self) -> str:
        return (
            f"m=$(sed -n '{LOADED_MODULE_SED}' /proc/driver/nvidia/version "
            '2>/dev/null | head -n 1); [ -n "$m" ] || m=$(cat /sys/module/nvidia/version 2>/dev/null); '
            'echo "loaded=$m"; '
            "mi=$(command -v modinfo || echo /sbin/modinfo); "
            'echo "installed=$($mi -F version nvidia 2>/dev/null | head -n 1)"; '
            "lib=$(ls /usr/lib/*-linux-gnu/libnvidia-ml.so.*.* /usr/lib64/libnvidia-ml.so.*.* 2>/dev/null "
            '| head -n 1); echo "library=${lib##*.so.}"; '
            "if command -v nvidia-smi >/dev/null 2>&1; then "
            "if e=$(nvidia-smi -L 2>&1); then nvidia-smi -q 2>/dev/null | awk '/^ *Fabric *$/ {f=1; next} "
            'f && /^ *State/ {sub(/^[^:]*: */, ""); print "fabric=" $0; f=0}\'; '
            'else echo "nvml=$(printf \'%s\\n\' "$e" | head -n 1)"; fi; fi; '
            "if command -v mokutil >/dev/null 2>&1; then "
            'echo "sb=$(mokutil --sb-state 2>&1 | head -n 1)"; '
            f'[ -f {DKMS_MOK} ] && echo "mok=$(mokutil --test-key {DKMS_MOK} 2>&1 | head -n 1)"; '
            f"elif [ -e {_SECUREBOOT_EFIVAR} ]; then "
            f"echo \"sb=efivar $(od -An -tu1 {_SECUREBOOT_EFIVAR} | awk '{{print $NF}}')\"; "
            'elif [ ! -d /sys/firmware/efi ]; then echo "sb=no EFI"; else echo "sb="; fi; '
            "n=0; for d in /sys/bus/pci/devices/*; do "
            '[ "$(cat "$d/vendor" 2>/dev/null)" = 0x10de ] && [ "$(cat "$d/class" 2>/dev/null)" = 0x068000 ] '
            '&& n=$((n + 1)); done; echo "nvswitches=$n"; '
            f"for u in {PERSISTENCED} {FABRIC_MANAGER}; do "
            'echo "$u=$(systemctl is-enabled $u 2>/dev/null)/$(systemctl is-active $u 2>/dev/null)"; done; true'
        )

    def process(self, output: list[str]) -> DriverState:
        values: dict[str, str] = {}
        fabric: list[str] = []
        for line in output:
            key, sep, value = line.partition("=")
            if not sep:
                continue
            if key == "fabric":
                fabric.append(value.strip())
            else:
                values.setdefault(key, value.strip())
        mok = values.get("mok", "")
        version = re.compile(r"^\d+(\.\d+)+$")
        library = values.get("library", "")
        return DriverState(
            loaded_module=values.get("loaded") or None,
            installed_module=values.get("installed") or None,
            library_version=library if version.match(library) else None,
            nvml_error=values.get("nvml") or None,
            secure_boot=parse_secure_boot(values.get("sb", "")),
            mok_enrolled=True if "already enrolled" in mok else (False if "not enrolled" in mok else None),
            nvswitches=int(values.get("nvswitches", "0") or 0),
            fabric_states=tuple(fabric),
            persistenced=_unit(values.get(PERSISTENCED, "")),
            fabric_manager=_unit(values.get(FABRIC_MANAGER, "")),
        )

    @staticmethod
    def default() -> DriverState:
        return NO_DRIVER


class AptHolds(FactBase[list[str]]):
    """Packages on hold (``apt-mark showhold``): apt leaves them at their version."""

    def command(self) -> str:
        return "apt-mark showhold 2>/dev/null; true"

    def process(self, output: list[str]) -> list[str]:
        return sorted({line.strip().split(":")[0] for line in output if line.strip()})

    @staticmethod
    def default() -> list[str]:
        return []
