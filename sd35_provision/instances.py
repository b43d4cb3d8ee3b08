"""Which service instances a host runs, from ``service.instances`` and the host's GPUs.

Pure: the spec's setting and the NvidiaGpus and NvidiaMigDevices facts in, the instances out.
``auto`` is one instance per device the facts found: per GPU, or per MIG
device of a GPU in MIG mode, and one on a CPU host (or an NVIDIA host whose
GPUs nvidia-smi cannot name yet: it runs unpinned, as before instances, until
the driver works). ``N`` is the first N of those devices (N unpinned processes
on a CPU host); a list names GPU indexes, GPU UUIDs or MIG UUIDs.

Each instance is pinned by UUID (``CUDA_VISIBLE_DEVICES=GPU-…`` or ``MIG-…``),
never by index, so a reboot that enumerates the GPUs in another order cannot
swap two instances' devices. Instance ``i`` listens on ``service.port + i``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sd35_provision import layout
from sd35_provision.errors import Sd35Error
from sd35_provision.facts.nvidia import MigDevice, NvidiaStatus

# "auto", a number of instances, or GPU indexes / "GPU-…" / "MIG-…" UUIDs (the spec's service.instances).
InstancesSetting = str | int | tuple[int | str, ...]
FIELD = "service.instances"


class InstanceSelectionError(Sd35Error):
    """The host does not have what ``service.instances`` asks for (a preflight failure)."""


@dataclass(frozen=True)
class Device:
    """A GPU, or a MIG device, an instance can be pinned to."""

    uuid: str  # "GPU-…" or "MIG-…": what CUDA_VISIBLE_DEVICES gets
    label: str  # "GPU 3", "GPU 0 MIG 3g.40gb #1"
    gpu_uuid: str  # the physical GPU's UUID (itself for a whole GPU)


@dataclass(frozen=True)
class Instance:
    """One inference service process on a host: its number, its port and the device it is pinned to.

    ``device`` is a GPU or MIG UUID (``CUDA_VISIBLE_DEVICES``), None when it is not pinned (CPU).
    """

    index: int
    port: int
    device: str | None = None
    gpu: str = "cpu"  # what it runs on, for people: "GPU 3", "GPU 0 MIG 3g.40gb #1", "cpu"

    @property
    def unit(self) -> str:
        """``sd35-inference@<index>.service``."""
        return layout.instance_unit(self.index)

    @property
    def env_file(self) -> str:
        return layout.instance_env_file(self.index)

    @property
    def running_record(self) -> str:
        return layout.running_record(self.index)


def host_devices(nvidia: NvidiaStatus | None, mig_devices: tuple[MigDevice, ...] = ()) -> tuple[Device, ...]:
    """What instances can be pinned to: each GPU, or each MIG device of a GPU in MIG mode."""
    if nvidia is None or not nvidia.working:
        return ()
    devices: list[Device] = []
    for gpu in nvidia.gpus:
        slices = [mig for mig in mig_devices if mig.gpu_uuid == gpu.uuid]
        if slices:
            devices += [Device(mig.uuid, f"GPU {gpu.index} MIG {mig.profile} #{mig.index}", gpu.uuid) for mig in slices]
        else:
            devices.append(Device(gpu.uuid, f"GPU {gpu.index}", gpu.uuid))
    return tuple(devices)


def select_instances(
    setting: InstancesSetting,
    base_port: int,
    accelerator: str,
    nvidia: NvidiaStatus | None,
    mig_devices: tuple[MigDevice, ...] = (),
) -> tuple[Instance, ...]:
    """The instances of one host. Raises ``InstanceSelectionError`` naming the field and what the host has."""
    devices = () if accelerator == "cpu" else host_devices(nvidia, mig_devices)
    pins: list[Device | None]
    if setting == "auto":
        pins = list(devices) or [None]
    elif isinstance(setting, int):
        if devices and setting > len(devices):
            raise InstanceSelectionError(
                f"{FIELD}: {setting} instances, but the host has {_count(devices)} to pin them to ({_has(devices)})"
            )
        if not devices and accelerator != "cpu":
            raise InstanceSelectionError(
                f"{FIELD}: {setting} instances need GPUs that nvidia-smi names, and it names none on this host "
                f"({_no_gpu(nvidia)}); use auto until the driver works"
            )
        pins = list(devices[:setting]) if devices else [None] * setting
    else:
        pins = list(_listed(tuple(setting), accelerator, nvidia, devices))
    return tuple(
        Instance(
            index=index,
            port=base_port + index,
            device=pin.uuid if pin else None,
            gpu=pin.label if pin else "cpu",
        )
        for index, pin in enumerate(pins)
    )


def _listed(
    entries: tuple[int | str, ...], accelerator: str, nvidia: NvidiaStatus | None, devices: tuple[Device, ...]
) -> list[Device]:
    if accelerator == "cpu":
        raise InstanceSelectionError(f"{FIELD}: lists GPUs, but gpu.accelerator is cpu; give a number of instances")
    if not devices:
        raise InstanceSelectionError(
            f"{FIELD}: lists {', '.join(map(str, entries))}, but nvidia-smi names no GPU on this host "
            f"({_no_gpu(nvidia)})"
        )
    assert nvidia is not None
    gpus_by_index = {gpu.index: gpu for gpu in nvidia.gpus}
    gpus_by_uuid = {gpu.uuid: gpu for gpu in nvidia.gpus}
    by_uuid = {device.uuid: device for device in devices}
    chosen: list[Device] = []
    for entry in entries:
        if isinstance(entry, int) or entry.startswith("GPU-"):
            gpu = gpus_by_index.get(entry) if isinstance(entry, int) else gpus_by_uuid.get(entry)
            what = f"GPU {entry}" if isinstance(entry, int) else entry
            if gpu is None:
                raise InstanceSelectionError(f"{FIELD}: {what} is not on this host; it has {_has(devices)}")
            if gpu.uuid not in by_uuid:  # in MIG mode: its slices are the devices
                migs = ", ".join(device.uuid for device in devices if device.gpu_uuid == gpu.uuid)
                raise InstanceSelectionError(
                    f"{FIELD}: {what} is in MIG mode, so it cannot run one instance whole; list its MIG devices "
                    f"instead ({migs})"
                )
            device = by_uuid[gpu.uuid]
        else:
            found = by_uuid.get(entry)
            if found is None:
                raise InstanceSelectionError(f"{FIELD}: {entry} is not on this host; it has {_has(devices)}")
            device = found
        if device in chosen:
            raise InstanceSelectionError(f"{FIELD}: {device.label} ({device.uuid}) is listed twice")
        chosen.append(device)
    return chosen


def _count(devices: tuple[Device, ...]) -> str:
    kind = "MIG devices and GPUs" if any(d.uuid.startswith("MIG-") for d in devices) else "GPUs"
    return f"{len(devices)} {kind}"


def _has(devices: tuple[Device, ...]) -> str:
    return ", ".join(f"{device.label} ({device.uuid})" for device in devices)


def _no_gpu(nvidia: NvidiaStatus | None) -> str:
    return "not read" if nvidia is None else nvidia.problem
