"""The facts and preflight layer as run on the lent H100 over pyinfra's @local connector
(tests/fixtures/h100-local, issue #6): the recorded values, the raw nvidia-smi output
parsed again by today's fact, and preflight re-run on the recorded facts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sd35_provision.facts import HostFacts, NvidiaGpus
from sd35_provision.facts.disk import DiskInfo, FreeSpaceInfo, StorageInfo
from sd35_provision.facts.driver import NO_DRIVER
from sd35_provision.facts.nvidia import GpuInfo, NvidiaStatus, PciDevice
from sd35_provision.facts.python import PythonInterpreter
from sd35_provision.facts.table import facts_row, render_facts_table
from sd35_provision.hostspec.settings import CacheSettings, GpuSettings, HostSettings
from sd35_provision.preflight import check_preflight
from tests.facts.test_facts import jsonable

RECORDED = Path(__file__).parents[1] / "fixtures" / "h100-local"


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((RECORDED / "h100-facts.json").read_text())


def host_facts(data: dict) -> HostFacts:
    """HostFacts back from its ``to_dict()`` (the derived keys dropped)."""
    storage = dict(data["cache_storage"])
    storage["disks"] = tuple(DiskInfo(**d) for d in storage["disks"])
    storage["chain"] = tuple(storage["chain"])
    nvidia = dict(data["nvidia"])
    nvidia["gpus"] = tuple(
        GpuInfo(
            **{
                **{k: v for k, v in g.items() if k != "fp8_capable"},
                "compute_capability": tuple(g["compute_capability"]),
            }
        )
        for g in nvidia["gpus"]
    )
    return HostFacts(
        os_id=data["os_id"],
        os_name=data["os_name"],
        os_version=data["os_version"],
        os_codename=data["os_codename"],
        kernel=data["kernel"],
        pythons=tuple(PythonInterpreter(**p) for p in data["pythons"]),
        cache_free=FreeSpaceInfo(**data["cache_free"]),
        cache_storage=StorageInfo(**storage),
        nvidia=NvidiaStatus(**nvidia),
        nvidia_pci=tuple(PciDevice(**p) for p in data["nvidia_pci"]),
    )


def test_recorded_gpu_facts(recorded):
    facts = recorded["facts"]
    assert facts["nvidia"]["state"] == "ok"
    (gpu,) = facts["nvidia"]["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["memory_mib"] == 81559  # 80 GiB less what the driver keeps
    assert gpu["compute_capability"] == [9, 0]
    assert gpu["fp8_capable"] is True and facts["fp8_capable"] is True
    assert gpu["driver_version"].startswith("580.") and facts["driver_version"] == "580.159.04"
    assert facts["cuda_version"] == "13.0"
    assert facts["nvidia_pci"] == [
        {"slot": "0000:00:06.0", "pci_class": "0x030200", "device_id": "0x2330", "driver": "nvidia"}
    ]
    assert recorded["preflight"] == []


def test_recorded_nvidia_smi_parses_the_same_today(recorded):
    fact = NvidiaGpus()
    assert fact.command() == recorded["nvidia_gpus_command"]
    status = fact.process(recorded["nvidia_gpus_output"])
    assert status == host_facts(recorded["facts"]).nvidia
    assert [g.fp8_capable for g in status.gpus] == [True]


def test_rotational_virtual_disk_is_unknown_not_hdd(recorded):
    """The box's virtio disk says rotational=1 whatever backs it: the SSD fact answers unknown, not hdd."""
    storage = recorded["facts"]["cache_storage"]
    assert storage["kind"] == "unknown"
    (disk,) = storage["disks"]
    assert (disk["name"], disk["rotational"], disk["virtual"], disk["driver"]) == ("vda", True, "virtio", "virtio_blk")
    assert "docker container" in storage["reason"] and "/dev/vda" in storage["reason"]


@pytest.fixture
def settings() -> HostSettings:
    return HostSettings(
        name="@local",
        address="127.0.0.1",
        gpu=GpuSettings(accelerator="nvidia", require_fp8=True),
        cache=CacheSettings(root="/tmp", min_free_gb=1, require_ssd=False),
    )


def test_preflight_on_the_recorded_facts(recorded, settings):
    facts = host_facts(recorded["facts"])
    # Nothing lost in the round trip; the driver stack was not recorded then (the fact came later): its default.
    later = {"driver": jsonable(NO_DRIVER), "reboot_required": None}
    assert json.loads(json.dumps(facts.to_dict())) == {**recorded["facts"], **later}
    assert check_preflight(settings, facts) == []


def test_preflight_requiring_an_ssd_says_it_cannot_confirm_one(recorded, settings):
    facts = host_facts(recorded["facts"])
    failures = check_preflight(replace(settings, cache=replace(settings.cache, require_ssd=True)), facts)
    assert len(failures) == 1
    assert "cannot confirm an SSD" in failures[0] and "rotating" not in failures[0]


def test_preflight_space_uses_the_recorded_free_bytes(recorded, settings):
    facts = host_facts(recorded["facts"])
    free_gb = facts.cache_free.free_bytes / 1e9
    failures = check_preflight(replace(settings, cache=replace(settings.cache, min_free_gb=free_gb + 10)), facts)
    assert len(failures) == 1 and "GB free at /tmp" in failures[0]


def test_facts_table_row_as_printed_there(recorded):
    table = render_facts_table([facts_row("@local", host_facts(recorded["facts"]))])
    printed = (RECORDED / "facts.log").read_text().splitlines()
    assert table.splitlines() == printed[:2]
    assert printed[2] == "preflight: ok"
    row = printed[1]
    for word in ("Ubuntu 24.04", "1x NVIDIA H100 80GB HBM3 (80 GiB, cc 9.0)", "580.159.04", "13.0", "yes", "unknown"):
        assert word in row
