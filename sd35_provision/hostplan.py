"""One plan per host: everything the layers do, worked out once from settings + facts.

``build_host_plan(settings, facts)`` is pure: the settings of one host and
the few facts read from it before anything changes (``PlanFacts``: its
Pythons, GPUs, OS and, with a wheelhouse, its interpreter's environment)
give a frozen ``HostPlan``: which interpreter and lock, where the venv,
model, code and release live, what the service's settings and unit say.
The runner builds it after preflight (from the facts preflight gathered),
``deploys/site.py`` builds it for plain ``pyinfra``; the layers take it as
an argument and only compare it with the host and yield the difference.

Nothing here reads a secret: the plan says whether the service has an API
key, never what it is (the service layer reads the key file when it puts it
on the host).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api.exceptions import OperationError

from sd35_provision import layout
from sd35_provision.appbundle import service_bundle
from sd35_provision.cuda_compat import (
    install_branch,
    pick_flavour_for_branch,
    version_tuple,
    wanted_flavour,
)
from sd35_provision.errors import HostError, PreflightError
from sd35_provision.facts.host import HostFacts
from sd35_provision.facts.nvidia import MigDevice, NvidiaStatus, PciDevice
from sd35_provision.facts.python import PythonInterpreter
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.instances import Instance, InstanceSelectionError, select_instances
from sd35_provision.locks import Lock, load_lock, load_lock_file
from sd35_provision.modelstore import ModelSourceError, push_manifest
from sd35_provision.service.policy import ServicePlan, gpu_device, mig_memory_mib, plan_service
from sd35_provision.service.unit import render_unit
from sd35_provision.service_settings import (
    render_instance_env,
    render_service_env,
    service_env_digest,
)
from sd35_provision.wheelhouse import Wheel, WheelhouseError, wheels_for

PYTHON_STEP = "Python environment"
MODEL_STEP = "Model"


class EnvironmentNotReady(PreflightError, OperationError):
    """This host cannot get its locked venv (no interpreter, wheelhouse short of a wheel).

    An ``OperationError`` too, so plain ``pyinfra`` prints the message instead of a traceback.
    """


class InstancesNotAvailable(PreflightError, OperationError):
    """The host lacks a GPU or MIG device ``service.instances`` names (or has fewer than it asks for)."""


class ModelNotReady(HostError, OperationError):
    """The model cannot be put on this host as the spec says (too little disk, unusable source)."""


@dataclass(frozen=True)
class PlanFacts:
    """What the plan needs to know about the host (read before anything changes on it)."""

    pythons: tuple[PythonInterpreter, ...]
    nvidia: NvidiaStatus | None = None  # None: not read (CPU host, or a pinned torch flavour)
    nvidia_pci: tuple[PciDevice, ...] = ()
    mig_devices: tuple[MigDevice, ...] = ()  # of GPUs in MIG mode (nvidia-smi -L); each can run an instance
    os_id: str = ""  # "ubuntu", "debian"
    os_version: str = ""  # "24.04"
    interpreter_environment: Mapping[str, str] | None = None  # PEP 508 markers; read only with a wheelhouse

    @classmethod
    def from_host_facts(
        cls,
        facts: HostFacts,
        interpreter_environment: Mapping[str, str] | None = None,
        mig_devices: tuple[MigDevice, ...] = (),
    ) -> PlanFacts:
        """The plan's share of what preflight gathered (no second read), and the MIG devices (read for the plan)."""
        return cls(
            pythons=facts.pythons,
            mig_devices=mig_devices,
            nvidia=facts.nvidia,
            nvidia_pci=facts.nvidia_pci,
            os_id=facts.os_id,
            os_version=facts.os_version,
            interpreter_environment=interpreter_environment,
        )


@dataclass(frozen=True)
class HostPlan:
    """What every layer does on one host, decided before any of them runs."""

    settings: HostSettings = field(repr=False)
    interpreter: str  # builds the venv
    torch_flavour: str  # "cu130", "cu128", "cpu"
    lock: Lock = field(repr=False)
    venv_dir: str
    lock_path: str
    wheelhouse_dir: str | None  # None: pip reaches an index (python.wheelhouse not set)
    wheels: tuple[Wheel, ...] = field(repr=False)  # to push into wheelhouse_dir
    model_dir: str
    model_manifest_path: str
    model_manifest: Mapping[str, Any] | None = field(repr=False)  # push only: computed here
    model_manifest_text: str | None = field(repr=False)
    app_dir: str
    release_manifest: Mapping[str, Any] = field(repr=False)
    release_id: str
    service_env: str = field(repr=False)
    service_env_digest: str
    unit: str = field(repr=False)
    # SHA-256 per file every instance reads, but the API key (the service layer adds its digest) and
    # the instance's own settings file (``running_files_of``): what it states in its running record.
    running_files: Mapping[str, str] = field(repr=False)
    has_api_key: bool  # whether service.api_key_file is set; the key itself is never in the plan
    # The service processes, in order (sd35_provision/instances.py): each one's number, port, device, unit.
    instances: tuple[Instance, ...]
    instance_envs: Mapping[int, str] = field(repr=False)  # each instance's settings file, by its index
    # The precision and memory plan the service will pick on the host's GPU (from its facts): its
    # first instance's; None where no GPU facts were read (a CPU host, a pinned torch flavour).
    service_plan: ServicePlan | None = None
    # Each instance's own, by index: on its device, a MIG slice having only its share of the memory.
    instance_plans: Mapping[int, ServicePlan] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def venv_python(self) -> str:
        """The interpreter of the locked venv (runs huggingface_hub on the host too)."""
        return f"{self.venv_dir}/bin/python"

    @property
    def release_target(self) -> str:
        """What ``current`` points at once this plan's release is switched in."""
        return layout.release_target(self.release_id)

    def differing_instance_plans(self) -> list[dict[str, Any]]:
        """Each instance's plan as the report shows it, where they differ (MIG slices, mixed GPUs); else none."""
        if len({each.line() for each in self.instance_plans.values()}) < 2:
            return []
        return [
            {"instance": instance.index, "device": instance.gpu, "plan": {**each.to_json(), "line": each.line()}}
            for instance in self.instances
            if (each := self.instance_plans.get(instance.index)) is not None
        ]

    def running_files_of(self, instance: Instance) -> dict[str, str]:
        """What ``instance`` states it read when it runs this plan (the API key's digest aside)."""
        return {**self.running_files, instance.env_file: sha256_text(self.instance_envs[instance.index])}


def build_host_plan(settings: HostSettings, facts: PlanFacts) -> HostPlan:
    """The plan of one host. Raises ``EnvironmentNotReady``/``ModelNotReady`` naming the host and what to fix."""
    root = settings.python.install_root
    interpreter = pick_interpreter(settings, facts)
    lock = host_lock(settings, facts)
    venv = layout.venv_dir(root, lock.id)
    wheels: tuple[Wheel, ...] = ()
    wheelhouse = None
    if settings.python.wheelhouse is not None:
        if facts.interpreter_environment is None:
            raise ValueError(f"{settings.name}: a wheelhouse plan needs the interpreter's environment")
        try:
            wheels = tuple(wheels_for(settings.python.wheelhouse, lock, dict(facts.interpreter_environment)))
        except WheelhouseError as error:
            raise EnvironmentNotReady(settings.name, PYTHON_STEP, str(error)) from None
        wheelhouse = layout.wheelhouse_dir(root)

    model = model_location(settings)
    model_dir = model.directory

    app = layout.app_dir(root, service_bundle()[1])
    env, digest = render_service_env(settings), service_env_digest(settings)
    unit = render_service_unit(settings)
    instances = plan_instances(settings, facts)
    plans = instance_service_plans(settings, facts, instances)
    release = release_manifest(lock, {"venv": venv, "app": app, "model": model_dir}, settings.model.revision, digest)
    return HostPlan(
        settings=settings,
        interpreter=interpreter,
        torch_flavour=lock.flavour,
        lock=lock,
        venv_dir=venv,
        lock_path=layout.lock_path(root, lock.id),
        wheelhouse_dir=wheelhouse,
        wheels=wheels,
        model_dir=model_dir,
        model_manifest_path=model.manifest_path,
        model_manifest=model.manifest,
        model_manifest_text=model.manifest_text,
        app_dir=app,
        release_manifest=release,
        release_id=release_id(release),
        service_env=env,
        service_env_digest=digest,
        unit=unit,
        running_files={
            layout.UNIT_PATH: sha256_text(unit),
            layout.ENV_FILE: sha256_text(layout.render_env_file(settings.cache)),
            layout.SERVICE_ENV_FILE: sha256_text(env),
        },
        has_api_key=settings.service.api_key_file is not None,
        instances=instances,
        instance_envs={instance.index: render_instance_env(instance) for instance in instances},
        service_plan=(plans[instances[0].index] if plans else service_plan(settings, facts)),
        instance_plans=plans,
    )


def service_plan(settings: HostSettings, facts: PlanFacts, device: str | None = None) -> ServicePlan | None:
    """What the service will run on ``device`` (a GPU or MIG UUID; None: the host's first GPU).

    A MIG device has the compute capability of its GPU and only the memory its profile names.
    """
    if facts.nvidia is None or not facts.nvidia.working:
        return None
    gpus = {gpu.uuid: gpu for gpu in facts.nvidia.gpus}
    mig = next((each for each in facts.mig_devices if each.uuid == device), None)
    gpu = gpus.get(mig.gpu_uuid if mig else device or "") or facts.nvidia.gpus[0]
    name, memory_mib = gpu.name, gpu.memory_mib
    if mig is not None:
        name = f"{gpu.name} MIG {mig.profile}"
        slice_mib = mig_memory_mib(mig.profile)
        memory_mib = slice_mib if memory_mib is None or slice_mib is None else min(memory_mib, slice_mib)
    service = settings.service
    return plan_service(
        service.precision,
        service.compile,
        gpu_device(name, gpu.compute_capability, memory_mib),
        settings.model.repo,
        max(service.max_n, service.max_batch),
        gpu_memory_gib=service.gpu_memory_gib or None,
    )


def instance_service_plans(
    settings: HostSettings, facts: PlanFacts, instances: tuple[Instance, ...]
) -> dict[int, ServicePlan]:
    """Each GPU instance's plan on its own device, by index; empty without GPU facts."""
    plans = {instance.index: service_plan(settings, facts, instance.device) for instance in instances}
    return {index: plan for index, plan in plans.items() if plan is not None}


def plan_instances(settings: HostSettings, facts: PlanFacts) -> tuple[Instance, ...]:
    """The host's service instances: what the service layer runs and ``sd35-provision prometheus`` scrapes.

    Raises ``InstancesNotAvailable`` (a preflight failure) naming the host, ``service.instances`` and what it has.
    """
    try:
        return select_instances(
            settings.service.instances, settings.service.port, settings.gpu.accelerator, facts.nvidia, facts.mig_devices
        )
    except InstanceSelectionError as error:
        raise InstancesNotAvailable(settings.name, "preflight", str(error)) from None


@dataclass(frozen=True)
class ModelLocation:
    directory: str  # what the service loads
    manifest_path: str  # what its files must hash to, on the host
    manifest: Mapping[str, Any] | None = field(default=None, repr=False)  # push: computed here
    manifest_text: str | None = field(default=None, repr=False)


def model_location(settings: HostSettings) -> ModelLocation:
    """Where the model goes on the host; for ``push``, the manifest of ``model.path`` too (it names the directory)."""
    manifest, text, digest = None, None, None
    if settings.model.source == "push":
        try:
            manifest, text = push_manifest(settings)
        except ModelSourceError as error:
            raise ModelNotReady(settings.name, MODEL_STEP, str(error)) from None
        digest = hashlib.sha256(text.encode()).hexdigest()
    directory = layout.model_dir(settings.cache, settings.model, digest)
    return ModelLocation(
        directory, layout.model_manifest_path(settings.cache, settings.model, directory), manifest, text
    )


def pick_interpreter(settings: HostSettings, facts: PlanFacts) -> str:
    """python3 if new enough, else the newest python3.X that is (as preflight checks)."""
    wanted = settings.python.min_version
    usable = [python for python in facts.pythons if python.at_least(wanted)]
    default = [python for python in usable if python.name == "python3"]
    chosen = default[0] if default else max(usable, key=lambda python: version_tuple(python.version), default=None)
    if chosen is None:
        raise EnvironmentNotReady(
            settings.name, PYTHON_STEP, f"no Python {wanted}+ on the host to build the venv with (python.min_version)"
        )
    return chosen.path


def host_flavour(settings: HostSettings, facts: PlanFacts) -> str:
    """The lock this host gets: pinned, or what its driver runs (or will, once the driver step installs it)."""
    pinned = settings.python.torch_flavour
    if not needs_gpu_facts(settings):
        return wanted_flavour(pinned, settings.gpu.accelerator, None)
    status = facts.nvidia
    if status is not None and status.working:
        return wanted_flavour("auto", "nvidia", status.driver_version)
    if settings.gpu.driver.mode == "install" and facts.nvidia_pci:
        return pick_flavour_for_branch(install_branch(facts.os_id, facts.os_version, settings.gpu.driver.branch))
    return "cpu"


def needs_gpu_facts(settings: HostSettings) -> bool:
    """Whether the torch flavour depends on the host's GPUs (auto on an NVIDIA host)."""
    return settings.python.torch_flavour == "auto" and settings.gpu.accelerator == "nvidia"


def host_lock(settings: HostSettings, facts: PlanFacts) -> Lock:
    """``python.lock_file`` if the spec names one, else the shipped lock of the host's flavour."""
    if settings.python.lock_file is not None:
        return load_lock_file(settings.python.lock_file)
    return load_lock(host_flavour(settings, facts))


def release_manifest(
    lock: Lock, links: Mapping[str, str], model_revision: str | None, service_settings_digest: str
) -> dict[str, Any]:
    """What a release is: the lock, what its links point at, the model revision, the settings' digest."""
    return {
        "lock": lock.id,
        "torch_flavour": lock.flavour,
        "links": dict(links),
        "model_revision": model_revision,
        "service_settings": service_settings_digest,
    }


def release_id(manifest: Mapping[str, Any]) -> str:
    """``<build>-<settings>``: the build part (venv, code, model) is the same on every host that runs
    the same software, so a fleet's releases can be compared; the settings part is per host."""
    build = {key: value for key, value in manifest.items() if key != "service_settings"}
    build_id = hashlib.sha256(json.dumps(build, sort_keys=True).encode()).hexdigest()[:12]
    return f"{build_id}-{manifest['service_settings'][:6]}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def render_service_unit(settings: HostSettings) -> str:
    """The template unit: the ``current`` release's venv and code, the shared and the instance's settings files."""
    current = layout.current_link(settings.python.install_root)
    return render_unit(
        description="Stable Diffusion 3.5 inference service, instance %i",
        venv_dir=f"{current}/venv",
        working_dir=f"{current}/app",
        cache_dirs=[settings.cache.root],
        service_env_file=layout.SERVICE_ENV_FILE,
        env_file=layout.ENV_FILE,
        user=settings.service.user,
        timeout_start_s=settings.service.start_timeout_s,
        running_record=layout.running_record("%i"),
        release_link=current,
        unit_path=layout.UNIT_PATH,
        instance_env_file=layout.instance_env_file("%i"),
    )
