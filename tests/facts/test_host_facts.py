"""gather_host_facts over recorded facts, its JSON form, and the facts table."""

from __future__ import annotations

import json
from pathlib import Path

from sd35_provision.facts import HostFacts, gather_host_facts
from sd35_provision.facts.table import HEADER, facts_row, render_facts_table
from sd35_provision.hostspec.settings import CacheSettings, HostSettings
from tests.pyinfra_fakes import Output, RecordedHost, fact_case

FIXTURES = Path(__file__).parents[1] / "fixtures"


def gather(
    os: str = "ubuntu-24.04",
    root: str = "/var/lib/sd35",
    python: str = "h100_ubuntu2404_recorded",
    free: str = "h100_recorded",
    storage: str = "h100_container_root_recorded",
    gpus: str = "h100_recorded",
    pci: str = "h100_recorded",
    driver: str = "h100_container",
) -> tuple[RecordedHost, HostFacts]:
    host = RecordedHost(
        {
            "LinuxDistribution": Output((FIXTURES / os / "linux-distribution.txt").read_text().splitlines()),
            "KernelVersion": "6.8.0-49-generic",
            "PythonVersions": fact_case("PythonVersions", python),
            "FreeSpace": {f"path={root}": fact_case("FreeSpace", free)},
            "StorageKind": {f"path={root}": fact_case("StorageKind", storage)},
            "NvidiaGpus": fact_case("NvidiaGpus", gpus),
            "NvidiaPciDevices": fact_case("NvidiaPciDevices", pci),
            "NvidiaDriverState": fact_case("NvidiaDriverState", driver),
        }
    )
    settings = HostSettings(name="gpu-a1", address="10.0.0.1", cache=CacheSettings(root=root))
    return host, gather_host_facts(host, settings)


def test_gather_reads_each_fact_once_for_the_cache_root():
    host, _ = gather()
    assert host.recorded.read == [
        "server.LinuxDistribution",
        "server.KernelVersion",
        "sd35_provision.facts.python.PythonVersions",
        "sd35_provision.facts.disk.FreeSpace(path=/var/lib/sd35)",
        "sd35_provision.facts.disk.StorageKind(path=/var/lib/sd35)",
        "sd35_provision.facts.nvidia.NvidiaGpus",
        "sd35_provision.facts.nvidia.NvidiaPciDevices",
        "sd35_provision.facts.driver.NvidiaDriverState",
    ]


def test_h100_host_facts():
    _, facts = gather()
    assert (facts.os_id, facts.os_name, facts.os_version, facts.os_codename) == ("ubuntu", "Ubuntu", "24.04", "noble")
    assert facts.python_versions == {"python3": "3.12.3", "python3.12": "3.12.3"}
    [gpu] = facts.gpus
    assert (gpu.name, gpu.memory_mib, gpu.compute_capability) == ("NVIDIA H100 80GB HBM3", 81559, (9, 0))
    assert facts.fp8_capable and facts.driver_version == "580.159.04" and facts.cuda_version == "13.0"
    assert facts.cache_free.free_bytes == 66740988 * 1024 and facts.cache_free.nearest == "/var/lib"
    assert facts.cache_storage.kind == "unknown" and facts.pci_without_driver == ()


def test_json_form_keeps_the_fields_the_cli_and_its_tests_use():
    _, facts = gather()
    data = json.loads(json.dumps(facts.to_dict()))
    assert data["os_name"] == "Ubuntu" and data["os_version"] == "24.04"
    assert data["python_versions"]["python3"] == "3.12.3"
    assert data["fp8_capable"] is True and data["driver_version"] == "580.159.04" and data["cuda_version"] == "13.0"
    assert data["cache_storage"]["kind"] == "unknown" and data["cache_storage"]["reason"]
    assert data["cache_free"]["free_bytes"] == 66740988 * 1024
    assert data["nvidia"]["gpus"][0]["compute_capability"] == [9, 0]
    assert data["nvidia"]["gpus"][0]["fp8_capable"] is True
    assert data["nvidia_pci"] == [
        {"slot": "0000:00:06.0", "pci_class": "0x030200", "device_id": "0x2330", "driver": "nvidia"}
    ]


def test_facts_table():
    _, h100 = gather()
    _, bare = gather(
        os="debian-12",
        root="/mnt/nvme/sd35",
        python="debian12_recorded",
        free="nvme_data_disk",
        storage="nvme_partition",
        gpus="absent",
        pci="l40s_unbound_and_4090_on_nouveau",
    )
    _, cpu = gather(
        os="debian-12",
        root="/var/lib/sd35",
        python="debian12_recorded",
        free="lvm_nearly_full",
        storage="md_raid1_ssd_and_hdd",
        gpus="absent",
        pci="none",
    )
    rows = [facts_row("gpu-h100", h100), facts_row("gpu-new", bare), facts_row("cpu-1", cpu)]
    assert rows[0] == (
        "gpu-h100",
        "Ubuntu 24.04",
        "1x NVIDIA H100 80GB HBM3 (80 GiB, cc 9.0)",
        "580.159.04",
        "13.0",
        "yes",
        "68.3 GB (at /var/lib)",
        "unknown",
    )
    assert rows[1][2:] == ("2x NVIDIA on PCI, driver not working", "-", "-", "-", "2597.6 GB (at /mnt/nvme)", "yes")
    assert rows[2][2:] == ("none", "-", "-", "-", "9.0 GB", "no")
    table = render_facts_table(rows).splitlines()
    assert table[0].split() == ["HOST", "OS", "GPU", "DRIVER", "CUDA", "FP8", "CACHE", "FREE", "SSD"]
    assert len(HEADER) == 8
    columns = [line.index("580.159.04") if "580.159.04" in line else None for line in table]
    assert table[0].index("DRIVER") == columns[1]  # aligned under its header
    assert table[2].startswith("gpu-new ") and table[3].rstrip().endswith("no")
