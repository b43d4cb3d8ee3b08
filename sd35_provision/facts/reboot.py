"""Whether a host needs a reboot, and which boot it is in.

One fact reads everything a reboot decision needs (``RebootSignals``), and
``reboot_needed`` is the one place that decides from it: ``plan``, ``apply``
and ``status`` all ask it.

- ``/var/run/reboot-required``: Debian's and Ubuntu's flag for "an update needs
  a reboot" (written by the packages' postinst through update-notifier-common,
  unattended-upgrades, needrestart), with the packages in ``.pkgs`` beside it.
  /var/run is a tmpfs: the flag is gone after the reboot.
- the NVIDIA kernel module loaded now (``/proc/driver/nvidia/version``) against
  the user-space library installed (``libnvidia-ml.so.<version>``): an upgrade
  of the driver packages under a running module gives nvidia-smi's
  "Driver/library version mismatch" until the host reboots.
- the module installed for the running kernel (modinfo) against the loaded one:
  a new driver that only a reboot loads.
- the boot id (``/proc/sys/kernel/random/boot_id``), new on every boot: how the
  reboot orchestration knows the host really rebooted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyinfra.api import FactBase

REBOOT_REQUIRED_FILE = "/var/run/reboot-required"
_VERSION = re.compile(r"\s(\d+\.\d+(?:\.\d+)?)(?:\s|$)")
_LIBRARY = re.compile(r"libnvidia-ml\.so\.(\d+\.\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class RebootSignals:
    boot_id: str | None
    required_file: bool  # /var/run/reboot-required exists
    required_by: tuple[str, ...] = ()  # the packages in /var/run/reboot-required.pkgs
    module_loaded: str | None = None  # NVIDIA kernel module running now (/proc/driver/nvidia/version)
    module_installed: str | None = None  # the one modinfo finds for this kernel (what a reboot loads)
    library: str | None = None  # NVIDIA user-space library installed (libnvidia-ml.so.<version>)


class RebootState(FactBase[RebootSignals]):
    """Boot id, Debian's reboot-required flag and packages, NVIDIA module and library versions."""

    def command(self) -> str:
        return (
            'echo "boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"; '
            f'if [ -e {REBOOT_REQUIRED_FILE} ]; then echo "required=yes"; else echo "required="; fi; '
            f"[ -r {REBOOT_REQUIRED_FILE}.pkgs ] && sed 's/^/package=/' {REBOOT_REQUIRED_FILE}.pkgs; "
            'echo "module=$(head -n 1 /proc/driver/nvidia/version 2>/dev/null)"; '
            "m=$(command -v modinfo || echo /sbin/modinfo); "
            'echo "installed=$($m -F version nvidia 2>/dev/null | head -n 1)"; '
            "l=$( (command -v ldconfig >/dev/null && ldconfig -p || /sbin/ldconfig -p) 2>/dev/null "
            "| awk '/libnvidia-ml[.]so[.]1 /{print $NF; exit}'); "
            'echo "library=$([ -n "$l" ] && readlink -f "$l")"; true'
        )

    def process(self, output: list[str]) -> RebootSignals:
        values: dict[str, str] = {}
        packages: list[str] = []
        for line in output:
            key, _, value = line.partition("=")
            if key == "package":
                if value.strip() and value.strip() not in packages:
                    packages.append(value.strip())
            else:
                values[key] = value.strip()
        module = _VERSION.search(values.get("module", ""))
        library = _LIBRARY.search(values.get("library", ""))
        return RebootSignals(
            boot_id=values.get("boot_id") or None,
            required_file=values.get("required") == "yes",
            required_by=tuple(packages),
            module_loaded=module.group(1) if module else None,
            module_installed=values.get("installed") or None,
            library=library.group(1) if library else None,
        )

    @staticmethod
    def default() -> RebootSignals:
        return RebootSignals(boot_id=None, required_file=False)


def reboot_needed(signals: RebootSignals, driver_mismatch: str | None = None) -> str | None:
    """Why the host needs a reboot, in a few words; None when it does not.

    ``driver_mismatch``: what another check found that only a reboot mends
    (e.g. nvidia-smi's "Driver/library version mismatch"), added to the reasons.
    """
    reasons = []
    if signals.required_file:
        by = f" (for {', '.join(signals.required_by)})" if signals.required_by else ""
        reasons.append(f"{REBOOT_REQUIRED_FILE} exists{by}")
    loaded = signals.module_loaded
    if loaded and signals.library and signals.library != loaded:
        reasons.append(f"NVIDIA kernel module {loaded} is loaded, its library is {signals.library}")
    elif signals.module_installed and signals.module_installed != loaded:
        reasons.append(f"NVIDIA kernel module {signals.module_installed} is installed, {loaded or 'none'} is loaded")
    # The driver facts compare the same versions: their reason stands in only where ours found none.
    if driver_mismatch and len(reasons) == int(signals.required_file):
        reasons.append(driver_mismatch)
    return "; ".join(reasons) or None
