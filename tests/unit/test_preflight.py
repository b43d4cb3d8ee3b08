"""Preflight verdicts on hosts made of recorded facts: one clear line per failure.

Each host is gathered by ``gather_host_facts`` from the outputs recorded in
tests/facts/<Fact>/<case>.json and tests/fixtures/<os>/, so these tests go
through the same parsers as a real run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sd35_provision.facts import HostFacts, gather_host_facts
from sd35_provision.hostspec.settings import CacheSettings, DriverSettings, GpuSettings, HostSettings, PythonSettings
from sd35_provision.preflight import check_preflight
from tests.pyinfra_fakes import Output, RecordedHost, fact_case

FIXTURES = Path(__file__).parents[1] / "fixtures"
NVME_ROOT = "/mnt/nvme/sd35"


def settings(
    root: str = NVME_ROOT,
    min_free_gb: float = 25.0,
    require_ssd: bool = False,
    accelerator: str = "nvidia",
    require_fp8: bool = False,
    mode: str = "verify",
    flavour: str = "auto",
    min_python: str = "3.10",
    branch: str = "570",
) -> HostSettings:
    return HostSettings(
        name="gpu-a1",
        address="10.0.0.1",
        gpu=GpuSettings(
            accelerator=accelerator, require_fp8=require_fp8, driver=DriverSettings(mode=mode, branch=branch)
        ),
        cache=CacheSettings(root=root, require_ssd=require_ssd, min_free_gb=min_free_gb),
        python=PythonSettings(min_version=min_python, torch_flavour=flavour),
    )


def host(
    spec: HostSettings,
    os: str = "ubuntu-24.04",
    python: str = "ubuntu2204_deadsnakes",
    free: str = "nvme_data_disk",
    storage: str = "nvme_partition",
    gpus: str = "eight_h100_sxm",
    pci: str = "h100_bound_to_nvidia",
    driver: str = "single_gpu_ok",
) -> HostFacts:
    root = f"path={spec.cache.root}"
    recorded = {
        "LinuxDistribution": Output((FIXTURES / os / "linux-distribution.txt").read_text().splitlines()),
        "KernelVersion": "6.8.0-49-generic",
        "PythonVersions": fact_case("PythonVersions", python),
        "FreeSpace": {root: fact_case("FreeSpace", free)},
        "StorageKind": {root: fact_case("StorageKind", storage)},
        "NvidiaGpus": fact_case("NvidiaGpus", gpus),
        "NvidiaPciDevices": fact_case("NvidiaPciDevices", pci),
        "NvidiaDriverState": fact_case("NvidiaDriverState", driver),
    }
    return gather_host_facts(RecordedHost(recorded), spec)


def test_h100_host_on_nvme_passes_everything():
    spec = settings(require_ssd=True, require_fp8=True)
    assert check_preflight(spec, host(spec)) == []


def test_low_disk_names_numbers_place_and_field():
    spec = settings(root="/var/lib/sd35")
    assert check_preflight(spec, host(spec, free="lvm_nearly_full")) == [
        "9.0 GB free at /var/lib/sd35, 25.0 GB required (cache.min_free_gb)"
    ]


def test_low_disk_on_a_cache_root_that_does_not_exist_yet():
    spec = settings(root="/var/lib/sd35/none", min_free_gb=100)
    assert check_preflight(spec, host(spec, free="missing_path_recorded")) == [
        "82.0 GB free at /var/lib/sd35/none (nearest existing: /var/lib), 100.0 GB required (cache.min_free_gb)"
    ]


def test_python_too_old_or_missing():
    spec = settings()
    assert check_preflight(spec, host(spec, python="debian11_old")) == [
        "Python 3.10+ required (python.min_version); found python3 3.9.2, python3.9 3.9.2"
    ]
    assert check_preflight(spec, host(spec, python="none")) == [
        "Python 3.10+ required (python.min_version); found no python3 on PATH"
    ]


def test_a_newer_python3_x_beside_an_old_python3_is_enough():
    spec = settings(min_python="3.11")
    facts = host(spec, python="ubuntu2204_deadsnakes")
    assert check_preflight(spec, facts) == []
    assert facts.python_for("3.11").path == "/usr/bin/python3.11"
    assert facts.python_for("3.10").name == "python3"


def test_require_ssd_fails_on_a_virtual_disk_and_says_how_to_accept_it():
    spec = settings(root="/var/lib/sd35", require_ssd=True)
    assert check_preflight(spec, host(spec, storage="kvm_virtio_vm")) == [
        "cache root /var/lib/sd35: cannot confirm an SSD: vda is a virtual disk (virtio) reporting rotational=1 "
        "whatever backs it (cache.require_ssd; set cache.require_ssd: false for this host if its storage is "
        "known to be fast)"
    ]


def test_require_ssd_fails_on_an_array_with_a_spinning_member():
    spec = settings(root="/data/sd35", require_ssd=True)
    assert check_preflight(spec, host(spec, storage="md_raid1_ssd_and_hdd")) == [
        "cache root /data/sd35 is on a rotating disk: sdb is rotational (cache.require_ssd)"
    ]


def test_unknown_storage_is_fine_without_require_ssd():
    spec = settings(root="/var/lib/sd35")
    assert check_preflight(spec, host(spec, storage="overlay_in_podman")) == []


def test_unsupported_os():
    spec = settings()
    assert check_preflight(spec, host(spec, os="rocky-9")) == [
        "Rocky Linux 9.4 is not supported; Debian or Ubuntu needed"
    ]


def test_gpu_on_pci_without_driver_fails_verify_and_names_the_fix():
    spec = settings()
    assert check_preflight(spec, host(spec, gpus="absent", pci="l40s_unbound_and_4090_on_nouveau")) == [
        "no working NVIDIA GPU (nvidia-smi is not installed; NVIDIA GPU on PCI without a working driver: "
        "0000:01:00.0 [10de:26b9] (no driver bound), 0000:02:00.0 [10de:2684] (bound to nouveau); "
        "gpu.driver.mode: install would install driver branch 570); set gpu.accelerator: cpu for a CPU-only host"
    ]


def test_gpu_on_pci_without_driver_is_the_driver_steps_job_in_install_mode():
    spec = settings(mode="install")
    assert check_preflight(spec, host(spec, gpus="absent", pci="l40s_unbound_and_4090_on_nouveau")) == []
    # ... unless the install could not give torch a driver it runs
    spec = settings(mode="install", branch="560", flavour="cu128")
    assert check_preflight(spec, host(spec, gpus="absent", pci="l40s_unbound_and_4090_on_nouveau")) == [
        "gpu.driver.branch 560 is too old for torch (cu128 needs 570.26+)"
    ]


def test_install_mode_on_debian_12_gets_debians_535_driver():
    spec = settings(mode="install")
    assert check_preflight(spec, host(spec, os="debian-12", gpus="absent", pci="l40s_unbound_and_4090_on_nouveau")) == [
        "gpu.driver.mode: install gets Debian 12's own NVIDIA driver, branch 535 (gpu.driver.branch cannot be "
        "pinned there), too old for torch (cu130 needs 580.65.06+, cu128 needs 570.26+)"
    ]


def test_install_mode_where_the_driver_step_cannot_install():
    spec = settings(mode="install")
    facts = host(spec, os="ubuntu-20.04", gpus="absent", pci="l40s_unbound_and_4090_on_nouveau")
    assert check_preflight(spec, facts) == [
        "gpu.driver.mode: install supports Ubuntu 22.04/24.04 and Debian 12, not Ubuntu 20.04; "
        "install the driver by hand and use gpu.driver.mode: verify"
    ]


def test_gpu_reserved_for_passthrough_is_not_installable():
    spec = settings(mode="install")
    assert check_preflight(spec, host(spec, gpus="absent", pci="a100_on_vfio")) == [
        "no working NVIDIA GPU (nvidia-smi is not installed; NVIDIA GPU on PCI without a working driver: "
        "0000:41:00.0 [10de:20b5] (bound to vfio-pci (reserved for VM passthrough)); unbind vfio-pci from it "
        "first); set gpu.accelerator: cpu for a CPU-only host"
    ]


def test_no_gpu_at_all_and_cpu_hosts():
    spec = settings()
    assert check_preflight(spec, host(spec, gpus="absent", pci="none")) == [
        "no working NVIDIA GPU (nvidia-smi is not installed and no NVIDIA GPU is on PCI); "
        "set gpu.accelerator: cpu for a CPU-only host"
    ]
    cpu = settings(accelerator="cpu", require_fp8=True)
    assert check_preflight(cpu, host(cpu, gpus="absent", pci="none")) == []


def test_driver_library_mismatch_says_reboot():
    spec = settings()
    [failure] = check_preflight(spec, host(spec, gpus="driver_library_mismatch"))
    assert (
        "nvidia-smi failed: Failed to initialize NVML: Driver/library version mismatch (the driver changed "
        "since the last boot: reboot the host)" in failure
    )
    # install mode: the driver step sees the installed module is not the loaded one and reboots (or says so)
    install = settings(mode="install")
    assert check_preflight(install, host(install, gpus="driver_library_mismatch")) == []


def test_driver_too_old_for_the_pinned_cuda_build():
    spec = settings(flavour="cu128")
    assert check_preflight(spec, host(spec, gpus="two_a100_driver_535", pci="none")) == [
        "NVIDIA driver 535.183.01 is too old for torch cu128 (CUDA 12.8 needs 570.26+; python.torch_flavour); "
        "upgrade the driver, or set gpu.driver.mode: install"
    ]


def test_driver_too_old_for_every_build_auto_could_pick():
    spec = settings()
    assert check_preflight(spec, host(spec, gpus="two_a100_driver_535", pci="none")) == [
        "NVIDIA driver 535.183.01 is too old for every CUDA build of torch we ship (cu130 needs 580.65.06+, "
        "cu128 needs 570.26+); upgrade the driver, or set gpu.driver.mode: install"
    ]
    assert check_preflight(settings(mode="install"), host(spec, gpus="two_a100_driver_535", pci="none")) == []


def test_fp8_needs_ada_or_hopper():
    spec = settings(require_fp8=True)
    assert check_preflight(
        spec,
        host(
            spec,
            gpus="two_a100_driver_535",
            pci="none",
        ),
    ) == [
        "NVIDIA driver 535.183.01 is too old for every CUDA build of torch we ship (cu130 needs 580.65.06+, "
        "cu128 needs 570.26+); upgrade the driver, or set gpu.driver.mode: install",
        "GPUs 0, 1 (NVIDIA A100-SXM4-40GB) have compute capability 8.0; FP8 needs 8.9+ (Ada, Hopper or newer) "
        "(gpu.require_fp8)",
    ]
    l4 = settings(require_fp8=True, flavour="cu128")  # Ada (8.9) is FP8-capable; only its driver 560 is old
    assert check_preflight(l4, host(l4, gpus="l4_ada", pci="none")) == [
        "NVIDIA driver 560.35.03 is too old for torch cu128 (CUDA 12.8 needs 570.26+; python.torch_flavour); "
        "upgrade the driver, or set gpu.driver.mode: install"
    ]


def test_every_failure_is_reported_at_once():
    spec = settings(root="/var/lib/sd35", require_ssd=True, require_fp8=True, flavour="cu128")
    failures = check_preflight(
        spec,
        host(
            spec,
            python="debian11_old",
            free="lvm_nearly_full",
            storage="sata_hdd",
            gpus="two_a100_driver_535",
            pci="none",
        ),
    )
    assert len(failures) == 5
    assert [f.split(" ")[0] for f in failures] == ["Python", "9.0", "cache", "NVIDIA", "GPUs"]


def test_facts_are_plain_values():
    spec = settings()
    facts = host(spec)
    assert facts.os_id == "ubuntu" and facts.os_version == "24.04" and facts.os_codename == "noble"
    assert facts.driver_version == "570.133.20" and facts.cuda_version == "12.8" and facts.fp8_capable
    assert replace(facts, nvidia_pci=()).pci_without_driver == ()


def test_library_newer_than_the_loaded_module_is_reboot_required_with_what_to_do():
    spec = settings()
    facts = host(spec, gpus="driver_library_mismatch", driver="upgraded_not_rebooted")
    assert facts.driver.reboot_required
    [failure] = check_preflight(spec, facts)
    assert failure.startswith(
        "reboot required: NVIDIA driver/library version mismatch: nvidia module 550.127.05 loaded, "
        "library 570.133.20 installed (nvidia-smi failed: Failed to initialize NVML: Driver/library version mismatch"
    )
    assert failure.endswith(
        "reboot the host (sd35-provision apply --reboot), or set gpu.driver.mode: install with "
        "gpu.driver.allow_reboot: true"
    )
    assert "gpu.accelerator: cpu" not in failure  # the GPU is fine: only the reboot is missing
    assert check_preflight(spec, facts, rebooting=True) == []  # the caller reboots it first


def test_nvswitch_box_without_fabric_manager_names_cuda_error_802_and_the_fix():
    spec = settings()
    [failure] = check_preflight(spec, host(spec, driver="hgx_h100_fabric_manager_missing"))
    assert failure == (
        "NVSwitch box (4 NVSwitches) without nvidia-fabricmanager: CUDA fails with error 802 'system not yet "
        "initialized' although nvidia-smi lists the GPUs; set gpu.driver.mode: install, or install "
        "nvidia-fabricmanager-570 of the driver's version (apt-get install nvidia-fabricmanager-570=570.133.20-*) "
        "and run systemctl enable --now nvidia-fabricmanager"
    )
    install = settings(mode="install")
    assert check_preflight(install, host(install, driver="hgx_h100_fabric_manager_missing")) == []
    debian = host(install, os="debian-12", driver="hgx_h100_fabric_manager_missing")
    [failure] = check_preflight(install, debian)
    assert "Debian packages no Fabric Manager: install NVIDIA's CUDA repository's nvidia-fabricmanager-570" in failure
    # installed but stopped: the driver step starts it
    assert check_preflight(spec, host(spec, driver="hgx_h100_fabric_manager_stopped")) == []
    assert check_preflight(spec, host(spec, driver="hgx_h100_fabric_manager_running")) == []


def test_debian_with_secure_boot_needs_the_mok_enrolled_before_installing():
    spec = settings(mode="install", flavour="cu121")
    facts = host(
        spec,
        os="debian-12",
        gpus="absent",
        pci="l40s_unbound_and_4090_on_nouveau",
        driver="secure_boot_mok_not_enrolled",
    )
    [failure] = check_preflight(spec, facts)
    assert failure.startswith("Secure Boot is on and Debian's DKMS-built nvidia module would not load")
    assert "mokutil --import /var/lib/dkms/mok.pub" in failure and "'Enroll MOK'" in failure
    enrolled = host(
        spec, os="debian-12", gpus="absent", pci="l40s_unbound_and_4090_on_nouveau", driver="secure_boot_mok_enrolled"
    )
    assert check_preflight(spec, enrolled) == []
    # Ubuntu installs Canonical's signed modules instead: Secure Boot is no obstacle there
    ubuntu = host(spec, gpus="absent", pci="l40s_unbound_and_4090_on_nouveau", driver="secure_boot_no_driver")
    assert check_preflight(settings(mode="install"), ubuntu) == []
