"""The validated host spec as typed, immutable settings.

The JSON Schema (sd35_provision/schemas/host-spec.schema.json) is the single source of the
defaults: the loader fills them in before these dataclasses are built, so the
defaults below only matter for code that builds settings by hand (unit tests).
The service's own settings (``service.*`` that reach the service) take their
types and defaults from sd35_provision/service/config.py, the one definition
of the service's contract; a test keeps the schema equal to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd35_provision.service import config as service_config

SECTIONS = ("ssh", "gpu", "cache", "python", "model", "service", "smoke", "system")


@dataclass(frozen=True)
class SshSettings:
    user: str = "root"
    port: int = 22
    key: Path | None = None
    known_hosts: Path | None = None
    sudo: bool = False
    connect_timeout: int = 10


@dataclass(frozen=True)
class DriverSettings:
    mode: str = "verify"  # verify | install | skip
    branch: str = "570"
    flavour: str = "default"  # default | server | open | server-open
    allow_reboot: bool = False
    reboot_timeout_s: int = 600
    hold: bool = True  # apt-mark hold the driver packages, blacklist them for unattended-upgrades
    packages: tuple[str, ...] = ()  # driver packages installed some other way, held as well


@dataclass(frozen=True)
class GpuSettings:
    accelerator: str = "nvidia"  # nvidia | cpu
    require_fp8: bool = False
    driver: DriverSettings = field(default_factory=DriverSettings)


@dataclass(frozen=True)
class CacheSettings:
    root: str = "/var/lib/sd35"
    require_ssd: bool = False
    min_free_gb: float = 25.0

    @property
    def hf_home(self) -> str:
        return f"{self.root}/huggingface"

    @property
    def torch_home(self) -> str:
        return f"{self.root}/torch"

    @property
    def pip_cache(self) -> str:
        return f"{self.root}/pip"


@dataclass(frozen=True)
class PythonSettings:
    min_version: str = "3.11"
    torch_flavour: str = "auto"  # auto | cpu | cu128 | cu130
    wheelhouse: Path | None = None
    lock_file: Path | None = None
    find_links: str | None = None
    install_root: str = "/opt/sd35"


@dataclass(frozen=True)
class ModelSettings:
    source: str = "hf"  # hf | git | push
    repo: str = "stabilityai/stable-diffusion-3.5-large"
    revision: str | None = None
    endpoint: str | None = None
    token_file: Path | None = None
    url: str | None = None
    path: Path | None = None


@dataclass(frozen=True)
class ServiceSettings:
    user: str = "sd35"
    bind: str = service_config.BIND.default
    port: int = service_config.PORT.default
    api_key_file: Path | None = None  # on the control machine; the host copy is layout.API_KEY_FILE
    precision: service_config.Precision = service_config.PRECISION.default
    compile: service_config.CompileMode = service_config.COMPILE.default
    queue_size: int = service_config.QUEUE_SIZE.default
    max_side: int = service_config.MAX_SIDE.default
    max_steps: int = service_config.MAX_STEPS.default
    max_n: int = service_config.MAX_N.default
    start_timeout_s: int = 900
    playground: bool = service_config.PLAYGROUND.default
    max_batch: int = service_config.MAX_BATCH.default
    gpu_memory_gib: float = service_config.GPU_MEMORY_GIB.default  # 0: the whole GPU
    # "auto", a number, or GPU indexes / GPU-… / MIG-… UUIDs (sd35_provision/instances.py picks the devices)
    instances: str | int | tuple[int | str, ...] = "auto"


@dataclass(frozen=True)
class SmokeSettings:
    enabled: bool = True
    size: str = "512x512"
    steps: int = 4
    prompt: str = "a lighthouse on a cliff at sunset, photograph"
    timeout_s: int = 600

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])


@dataclass(frozen=True)
class SystemSettings:
    apt_bundle: Path | None = None  # `sd35-provision debs` directory: apt installs from it, not a mirror


@dataclass(frozen=True)
class GatewayKey:
    """One client's API key: its name (in logs and limits) and the local file holding it."""

    name: str
    file: Path
    rate_per_minute: int = 60


@dataclass(frozen=True)
class GatewayTls:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class GatewaySettings:
    """The spec's ``gateway:`` section: HAProxy on ``hosts`` in front of every other host's instances."""

    hosts: tuple[str, ...]  # the hosts that run it (``gateway.hosts`` and ``gateway.group``), in spec order
    keys: tuple[GatewayKey, ...]
    bind: str = "0.0.0.0"
    port: int = 8443
    metrics_port: int | None = 8405  # HAProxy's Prometheus exporter; None: off (the spec's 0 or null)
    tls: GatewayTls | None = None
    max_body_mb: int = 25
    connect_timeout_s: int = 5
    request_timeout_s: int = 600
    queue_timeout_s: int = 60
    health_check_interval_s: int = 2
    drain_timeout_s: int = 900
    # The hosts that serve behind it (every other host of the spec), in spec order.
    serving: tuple[HostSettings, ...] = field(default=(), repr=False)

    @property
    def backend_key_file(self) -> Path | None:
        """The serving hosts' ``service.api_key_file`` (one for all: the loader checks it)."""
        return self.serving[0].service.api_key_file if self.serving else None


@dataclass(frozen=True)
class HostSettings:
    """Everything one host should look like, after defaults < groups < host."""

    name: str
    address: str
    groups: tuple[str, ...] = ()
    ssh: SshSettings = field(default_factory=SshSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    python: PythonSettings = field(default_factory=PythonSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    smoke: SmokeSettings = field(default_factory=SmokeSettings)
    system: SystemSettings = field(default_factory=SystemSettings)
    # Set on the hosts that run the gateway (and only there): such a host serves no model.
    gateway: GatewaySettings | None = field(default=None, repr=False)

    @property
    def runs_gateway(self) -> bool:
        return self.gateway is not None


@dataclass(frozen=True)
class FleetSpec:
    """A loaded, validated spec file."""

    path: Path
    hosts: tuple[HostSettings, ...]
    groups: dict[str, tuple[str, ...]]  # group name -> host names, in spec order
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    # "FILE:LINE: python.venv_root is deprecated: use python.install_root", one per old key
    # in the file; every command that loads a spec prints them on stderr.
    warnings: tuple[str, ...] = ()
    gateway: GatewaySettings | None = None

    @property
    def gateway_hosts(self) -> tuple[HostSettings, ...]:
        """The hosts that run the gateway (none without a ``gateway:`` section)."""
        return tuple(host for host in self.hosts if host.runs_gateway)

    def host(self, name: str) -> HostSettings:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)
