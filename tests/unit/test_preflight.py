"""Preflight verdicts from recorded facts: one clear line per failure."""

from __future__ import annotations

from dataclasses import replace

from sd35_provision.cuda_compat import driver_satisfies, pick_flavour
from sd35_provision.facts import HostFacts
from sd35_provision.preflight import check_preflight
from sd35_provision.spec.model import CacheSettings, GpuSettings, HostSettings, PythonSettings

H100 = {"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "compute_capability": [9, 0],
                  "driver_version": "570.124.06", "pci_bus_id": "0"}], "cuda_version": "12.8", "error": None}
A100_OLD = {"gpus": [{"index": 0, "name": "NVIDIA A100-SXM4-40GB", "memory_mib": 40960, "compute_capability": [8, 0],
                      "driver_version": "535.183.01", "pci_bus_id": "0"}], "cuda_version": "12.2", "error": None}


def facts(**overrides) -> HostFacts:
    base = HostFacts(
        os_name="Ubuntu", os_version="24.04", os_id="ubuntu",
        python_versions={"python3": "3.12.3"},
        cache_free={"path": "/mnt/nvme/sd35", "free_bytes": 500 * 10**9, "mount": "/mnt/nvme", "source": "/dev/nvme0n1"},
        cache_storage={"kind": "ssd", "reason": "nvme0n1 non-rotational"},
        nvidia=H100, nvidia_pci=[],
    )
    return replace(base, **overrides)


def settings(**sections) -> HostSettings:
    return HostSettings(name="gpu-a1", address="10.0.0.1", **sections)


def test_good_h100_host_passes():
    assert check_preflight(settings(gpu=GpuSettings(require_fp8=True)), facts()) == []


def test_low_disk_names_numbers_and_field():
    failures = check_preflight(settings(cache=CacheSettings(root="/mnt/nvme/sd35", min_free_gb=40)),
                               facts(cache_free={"path": "/mnt/nvme", "free_bytes": 12 * 10**9}))
    assert failures == ["12.0 GB free at /mnt/nvme/sd35 (nearest existing: /mnt/nvme), 40 GB required (cache.min_free_gb)"]


def test_old_python_and_unknown_ssd():
    failures = check_preflight(
        settings(cache=CacheSettings(require_ssd=True, min_free_gb=1)),
        facts(python_versions={"python3": "3.9.2"}, cache_storage={"kind": "unknown", "reason": "virtual disk vda"}),
    )
    assert "python3 is 3.9.2, 3.10+ required (python.min_version)" in failures
    assert any("not known to be on an SSD (unknown: virtual disk vda)" in f for f in failures)


def test_gpu_checks_and_cpu_hosts_skip_them():
    no_gpu = facts(nvidia={"gpus": [], "cuda_version": None, "error": None},
                   nvidia_pci=[{"slot": "0000:01:00.0", "class": "0x030200", "device_id": "0x26b9", "driver": None}])
    [failure] = check_preflight(settings(), no_gpu)
    assert "no working NVIDIA GPU" in failure and "0000:01:00.0 (no driver)" in failure
    assert check_preflight(settings(gpu=GpuSettings(driver=replace(GpuSettings().driver, mode="install"))), no_gpu) == []
    assert check_preflight(settings(gpu=GpuSettings(accelerator="cpu")), no_gpu) == []


def test_driver_too_old_for_pinned_cuda_and_fp8_missing():
    failures = check_preflight(
        settings(gpu=GpuSettings(require_fp8=True), python=PythonSettings(torch_flavour="cu128")), facts(nvidia=A100_OLD)
    )
    assert "NVIDIA driver 535.183.01 is too old for torch cu128 (CUDA 12.8 needs 570.26+)" in failures
    assert "NVIDIA A100-SXM4-40GB has compute capability 8.0; FP8 needs 8.9+ (gpu.require_fp8)" in failures


def test_cuda_table():
    assert pick_flavour("570.124.06") == "cu128"
    assert pick_flavour("560.35.03") == "cu126"
    assert pick_flavour("535.183.01") is None
    assert driver_satisfies("570.26", "cu128") and not driver_satisfies("570.9", "cu128")
