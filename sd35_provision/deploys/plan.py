"""The per-host plan, read from a host in pyinfra's context (the pure part is sd35_provision/hostplan.py).

The runner passes the facts preflight gathered (``gathered``), so nothing is
read twice; ``deploys/site.py`` (plain ``pyinfra``) and the unit tests read
only the facts the plan needs.
"""

from __future__ import annotations

from dataclasses import replace

from pyinfra.api.host import Host
from pyinfra.facts.server import LinuxDistribution

from sd35_provision.facts.host import HostFacts
from sd35_provision.facts.nvidia import (
    MigDevice,
    NvidiaGpus,
    NvidiaMigDevices,
    NvidiaPciDevices,
    NvidiaStatus,
    PciDevice,
)
from sd35_provision.facts.python import PythonInterpreter, PythonVersions
from sd35_provision.facts.venv import InterpreterEnvironment
from sd35_provision.hostplan import (
    HostPlan,
    PlanFacts,
    build_host_plan,
    needs_gpu_facts,
    pick_interpreter,
)
from sd35_provision.hostspec.settings import HostSettings


def read_plan_facts(host: Host, settings: HostSettings) -> PlanFacts:
    """The facts the plan needs, and no others (a CPU host reads no GPU fact).

    An NVIDIA host's GPUs pick its service instances, and its torch flavour unless that is pinned.
    """
    pythons: list[PythonInterpreter] = host.get_fact(PythonVersions)
    facts = PlanFacts(pythons=tuple(pythons))
    if settings.gpu.accelerator != "nvidia":
        return facts
    status = host.get_fact(NvidiaGpus)
    facts = replace(facts, nvidia=status, mig_devices=read_mig_devices(host, settings, status))
    if not needs_gpu_facts(settings) or status.working or settings.gpu.driver.mode != "install":
        return facts
    devices: list[PciDevice] = host.get_fact(NvidiaPciDevices)
    pci = tuple(devices)
    if not pci:
        return replace(facts, nvidia_pci=pci)
    release = (host.get_fact(LinuxDistribution) or {}).get("release_meta") or {}
    return replace(
        facts, nvidia_pci=pci, os_id=(release.get("ID") or "").lower(), os_version=release.get("VERSION_ID") or ""
    )


def read_mig_devices(host: Host, settings: HostSettings, status: NvidiaStatus) -> tuple[MigDevice, ...]:
    """The MIG devices of an NVIDIA host whose GPUs work (none elsewhere: nothing to ask)."""
    if settings.gpu.accelerator != "nvidia" or not status.working:
        return ()
    devices: tuple[MigDevice, ...] = host.get_fact(NvidiaMigDevices)
    return devices


def plan_host(host: Host, settings: HostSettings, gathered: HostFacts | None = None) -> HostPlan:
    """``build_host_plan`` for ``host``: from ``gathered`` (preflight's facts) if given, else read here."""
    if gathered is not None:
        facts = PlanFacts.from_host_facts(gathered, mig_devices=read_mig_devices(host, settings, gathered.nvidia))
    else:
        facts = read_plan_facts(host, settings)
    if settings.python.wheelhouse is not None:
        # Which wheels fit depends on the interpreter that builds the venv (its PEP 508 markers).
        environment = host.get_fact(InterpreterEnvironment, interpreter=pick_interpreter(settings, facts))
        facts = replace(facts, interpreter_environment=environment)
    return build_host_plan(settings, facts)
