"""``sd35-provision prometheus``: a Prometheus file_sd targets file for the fleet's services.

One target per service instance (``address:port``, its metrics at ``/metrics``)
and per gateway host (HAProxy's exporter on ``gateway.metrics_port``), each
with the labels ``job``, ``host``, ``group`` and ``instance`` (``gpu`` too on
NVIDIA hosts), so a stock Prometheus scrapes the fleet with
``file_sd_configs`` (README, "Monitoring").

Which instances a host has is the plan's answer (``hostplan.plan_instances``),
worked out from the host's facts as ``apply`` works it out: read over SSH, so a
host whose instances follow its GPUs (``auto``) gets the right targets without
the spec listing them. A host that cannot be read fails the command, and no file
is written: a targets file silently short of a host would hide it from the
monitoring meant to notice it (``--limit`` leaves hosts out on purpose).
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra.api.host import Host

from sd35_provision.errors import Sd35Error
from sd35_provision.hostplan import Instance, plan_instances
from sd35_provision.hostspec.settings import FleetSpec, HostSettings
from sd35_provision.inventory import select_hosts
from sd35_provision.report import RunReport
from sd35_provision.runner import FleetRun, RunOptions

SERVICE_JOB = "sd35"
GATEWAY_JOB = "sd35-gateway"
STEP = "instances"


class TargetsFileError(Sd35Error):
    """The targets file cannot be written where asked."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One ``host:port`` Prometheus scrapes, with the labels its series get."""

    address: str
    labels: Mapping[str, str]
    api_key_file: Path | None = field(default=None, compare=False)  # the bearer key it wants, if any


def scrape_address(address: str, port: int) -> str:
    """``host:port``, IPv6 addresses in brackets as Prometheus reads them."""
    try:
        if ipaddress.ip_address(address.strip("[]")).version == 6:
            return f"[{address.strip('[]')}]:{port}"
    except ValueError:
        pass  # a host name
    return f"{address}:{port}"


def gpu_label(instance: Instance) -> str:
    """The GPU index an instance is pinned to ("GPU 3" -> "3", "GPU 0 MIG 3g.40gb #1" -> "0"), as the
    service's own ``sd35_gpu_*`` series label it; an unpinned instance (a driver not working yet) runs on
    whatever CUDA calls device 0 of its process, so its index stands in."""
    if instance.device is None or not instance.gpu.startswith("GPU "):
        return str(instance.index)
    return instance.gpu.split()[1]


def instance_targets(settings: HostSettings, instances: Sequence[Instance]) -> list[ScrapeTarget]:
    """The targets of one host's service instances."""
    targets = []
    for instance in instances:
        labels = {"job": SERVICE_JOB, "host": settings.name, "instance": f"{settings.name}:{instance.port}"}
        if settings.groups:  # Prometheus drops empty labels anyway
            labels["group"] = ",".join(settings.groups)
        if settings.gpu.accelerator == "nvidia":
            labels["gpu"] = gpu_label(instance)
        targets.append(
            ScrapeTarget(
                scrape_address(settings.address, instance.port),
                labels,
                settings.service.api_key_file,
            )
        )
    return targets


def gateway_targets(spec: FleetSpec, hosts: Sequence[HostSettings]) -> list[ScrapeTarget]:
    """The targets of the gateways among ``hosts`` (job ``sd35-gateway``): HAProxy's own exporter on
    ``gateway.metrics_port``, where the gateway listens (the host's address when it listens on every
    address), over HTTPS when the gateway terminates TLS. Its ``/metrics`` wants one of ``gateway.keys``."""
    gateway = spec.gateway
    if gateway is None or not gateway.metrics_port:
        return []
    port = gateway.metrics_port
    targets = []
    for settings in hosts:
        if not settings.runs_gateway:
            continue
        labels = {"job": GATEWAY_JOB, "host": settings.name, "instance": f"{settings.name}:{port}"}
        if settings.groups:
            labels["group"] = ",".join(settings.groups)
        if gateway.tls is not None:
            labels["__scheme__"] = "https"  # file_sd sets the scheme per target
        address = settings.address if gateway.bind in ("0.0.0.0", "::") else gateway.bind
        targets.append(ScrapeTarget(scrape_address(address, port), labels))
    return targets


def render_targets(targets: Sequence[ScrapeTarget]) -> str:
    """The file_sd JSON: one entry per target, as Prometheus's ``file_sd_configs`` reads it."""
    entries = [{"targets": [target.address], "labels": dict(target.labels)} for target in targets]
    return json.dumps(entries, indent=2) + "\n"


def check_output(path: Path) -> None:
    """TargetsFileError when ``path`` cannot be the targets file (checked before any host is asked)."""
    if not path.parent.is_dir():
        raise TargetsFileError(f"{path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise TargetsFileError(f"{path}: is a directory; give a file name")


def write_targets(path: Path, text: str) -> None:
    """Write atomically (Prometheus re-reads the file when it changes: never half a file)."""
    check_output(path)
    directory = path.parent
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        with os.fdopen(handle, "w", encoding="utf-8") as written:
            written.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        raise TargetsFileError(f"{path}: cannot write: {error.strerror or error}") from None


def fleet_targets(
    spec: FleetSpec, limit: tuple[str, ...] = (), options: RunOptions | None = None
) -> tuple[list[ScrapeTarget], RunReport]:
    """Every target of the chosen hosts (spec order), read from the hosts; the run's report says who failed."""
    from sd35_provision.deploys.plan import read_plan_facts

    hosts = select_hosts(spec, limit)
    found: dict[str, list[ScrapeTarget]] = {}

    def read(host: Host, settings: HostSettings) -> None:
        if settings.runs_gateway:
            return  # it serves no model: no instance to scrape
        found[host.name] = instance_targets(settings, plan_instances(settings, read_plan_facts(host, settings)))

    run = FleetRun(hosts, options)
    run.connect()
    run.for_each_active_host(STEP, read)
    run.disconnect()
    targets = [target for host in hosts for target in found.get(host.name, [])]
    return [*targets, *gateway_targets(spec, hosts)], run.report("prometheus")


def unreachable_from_outside(settings: HostSettings) -> str | None:
    """The setting that keeps a Prometheus elsewhere from scraping ``settings``'s targets, as
    ``field is value`` (a service, or a gateway, that listens on loopback only); None: none does."""
    field_name, bind = (
        ("gateway.bind", settings.gateway.bind) if settings.gateway else ("service.bind", settings.service.bind)
    )
    try:
        loopback = ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        loopback = bind == "localhost"
    return f"{field_name} is {bind}" if loopback else None
