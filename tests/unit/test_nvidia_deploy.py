"""The NVIDIA driver layer per OS and state, run through pyinfra against recorded facts.

OS facts are the outputs recorded in tests/fixtures/<os>/; the NVIDIA state
comes from the fact cases in tests/facts/ (nvidia-smi, kernel module).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sd35_provision.deploys.nvidia import (
    UBUNTU_SUFFIX,
    DriverNotReady,
    debian_headers_package,
    enable_components_deb822,
    enable_components_one_line,
    nvidia_driver,
    render_upgrade_blacklist,
)
from sd35_provision.errors import PreflightError
from sd35_provision.hostspec.settings import DriverSettings, GpuSettings, HostSettings, PythonSettings
from sd35_provision.layout import DRIVER_UPGRADE_BLACKLIST
from tests.pyinfra_fakes import DeployRun, Output, existing_files, fact_case, merge_facts, run_deploy

FIXTURES = Path(__file__).parents[1] / "fixtures"
LOCK_FILE = Path(__file__).parents[2] / "sd35_provision" / "locks" / "cpu.txt"
APT_INSTALL = (
    'DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::="--force-confdef" '
    '-o Dpkg::Options::="--force-confold" install'
)
KERNELS = {
    "ubuntu-22.04": "5.15.0-126-generic",
    "ubuntu-24.04": "6.8.0-49-generic",
    "ubuntu-20.04": "5.4.0-200-generic",
    "debian-12": "6.1.0-28-amd64",
}
DPKG_HEADER = [
    "Desired=Unknown/Install/Remove/Purge/Hold",
    "| Status=Not/Inst/Conf-files/Unpacked/halF-conf/Half-inst/trig-aWait/Trig-pend",
    "|/ Err?=(none)/Reinst-required (Status,Err: uppercase=bad)",
    "||/ Name                           Version                        Architecture Description",
    "+++-==============================-==============================-============-==============================",
]


def dpkg_l(*packages: tuple[str, str]) -> Output:
    """``dpkg -l`` as it prints these (name, version) packages."""
    return Output(DPKG_HEADER + [f"ii  {name:<30} {version:<30} amd64        {name}" for name, version in packages])


BASE_PACKAGES = (("adduser", "3.137ubuntu1"), ("apt", "2.7.14build2"), ("bash", "5.2.21-2ubuntu4"))


def spec(
    mode: str = "install",
    driver_flavour: str = "default",
    allow_reboot: bool = False,
    branch: str = "570",
    flavour: str = "auto",
    accelerator: str = "nvidia",
) -> HostSettings:
    return HostSettings(
        name="gpu-a1",
        address="10.0.0.1",
        gpu=GpuSettings(
            accelerator=accelerator,
            driver=DriverSettings(mode=mode, branch=branch, flavour=driver_flavour, allow_reboot=allow_reboot),
        ),
        # The plan's lock is the Python layer's business; a named lock file keeps flavours we ship no lock for
        # (cu121, which Debian 12's driver runs) plannable here.
        python=PythonSettings(torch_flavour=flavour, lock_file=LOCK_FILE),
    )


def deploy(
    settings: HostSettings,
    os: str = "ubuntu-22.04",
    gpus: str = "absent",
    module: str = "none",
    packages: tuple[tuple[str, str], ...] = BASE_PACKAGES,
    driver: str = "cpu_host_here",
    holds: str = "none",
    blacklist: str | None = None,
    **extra,
) -> DeployRun:
    facts = merge_facts(
        {
            "LinuxDistribution": Output((FIXTURES / os / "linux-distribution.txt").read_text().splitlines()),
            "KernelVersion": KERNELS[os],
            "NvidiaGpus": fact_case("NvidiaGpus", gpus),
            "NvidiaKernelModule": fact_case("NvidiaKernelModule", module),
            "NvidiaDriverState": fact_case("NvidiaDriverState", driver),
            "AptHolds": fact_case("AptHolds", holds),
            "DebPackages": dpkg_l(*packages),
        },
        existing_files({DRIVER_UPGRADE_BLACKLIST: blacklist}),
        extra,
    )
    return run_deploy(nvidia_driver, facts, settings)


HOLD_ONCE_INSTALLED = (
    "dpkg-query -W -f='${{db:Status-Abbrev}} ${{Package}}\\n' {} 2>/dev/null "
    "| awk '$1 ~ /^.i/ {{print $2}}' | xargs -r apt-mark hold"
)
KEEP_OUT = "NVIDIA driver | Keep the NVIDIA driver out of unattended-upgrades"


@pytest.mark.parametrize(
    "os, driver_flavour, expected, held",
    [
        (
            "ubuntu-22.04",
            "default",
            ["nvidia-driver-570", "linux-headers-5.15.0-126-generic"],
            ["nvidia-driver-570", "libnvidia-compute-570", "nvidia-utils-570", "nvidia-dkms-570"],
        ),
        (
            "ubuntu-22.04",
            "server",
            ["nvidia-driver-570-server", "linux-headers-5.15.0-126-generic"],
            [
                "nvidia-driver-570-server",
                "libnvidia-compute-570-server",
                "nvidia-utils-570-server",
                "nvidia-dkms-570-server",
            ],
        ),
        (
            "ubuntu-24.04",
            "open",
            ["nvidia-driver-570-open", "linux-headers-6.8.0-49-generic"],
            ["nvidia-driver-570-open", "libnvidia-compute-570", "nvidia-utils-570", "nvidia-dkms-570-open"],
        ),
        (
            "ubuntu-24.04",
            "server-open",
            ["nvidia-driver-570-server-open", "linux-headers-6.8.0-49-generic"],
            [
                "nvidia-driver-570-server-open",
                "libnvidia-compute-570-server",
                "nvidia-utils-570-server",
                "nvidia-dkms-570-server-open",
            ],
        ),
    ],
)
def test_ubuntu_installs_the_pinned_branch_and_running_kernels_headers(os, driver_flavour, expected, held):
    run = deploy(spec(driver_flavour=driver_flavour), os=os)
    assert [op.name for op in run.changes] == [
        f"NVIDIA driver | Install {' '.join(expected)}",
        f"NVIDIA driver | Hold {' '.join(held)}",
        KEEP_OUT,
    ]
    assert run.commands("Install") == ["apt-get update", f"{APT_INSTALL} {' '.join(expected)}"]
    # Held once installed: which of them the metapackage pulls in is known when it ran.
    assert run.commands("Hold") == [HOLD_ONCE_INSTALLED.format(" ".join(held))]
    upload, _, _ = run.commands("unattended-upgrades")
    assert upload[2] == DRIVER_UPGRADE_BLACKLIST
    assert "Unattended-Upgrade::Package-Blacklist {\n" in upload[1]
    assert [line.strip() for line in upload[1].splitlines() if line.startswith("    ")] == [
        f'"^{name}$";' for name in held
    ]
    assert run.notes == [
        "reboot required: NVIDIA driver newly installed; no nvidia module loaded now; the new "
        "driver works only after a reboot (gpu.driver.allow_reboot is false)"
    ]


def test_ubuntu_install_with_allow_reboot_leaves_the_reboot_to_the_run():
    run = deploy(
        spec(driver_flavour="server-open", allow_reboot=True),
        os="ubuntu-24.04",
        gpus="driver_not_loaded",
        module="installed_nouveau_running",
        packages=BASE_PACKAGES + (("nvidia-driver-535", "535.216.01"),),
    )
    # No reboot inside the layer: the run's after-apply reboot does it, drained and under its lock
    # (sd35_provision/reboots.py); the reboot fact sees the module installed but not loaded.
    assert [op.name for op in run.changes] == [
        "NVIDIA driver | Install nvidia-driver-570-server-open linux-headers-6.8.0-49-generic",
        "NVIDIA driver | Hold nvidia-driver-570-server-open libnvidia-compute-570-server nvidia-utils-570-server "
        "nvidia-dkms-570-server-open",
        KEEP_OUT,
    ]
    assert not [op.name for op in run.operations if "reboot" in op.name.lower()]
    assert not [command for command in run.commands() if "reboot" in str(command)]
    assert run.notes == [
        "reboot after apply (gpu.driver.allow_reboot): NVIDIA driver newly installed; no nvidia module loaded now"
    ]


def test_debian_12_enables_contrib_non_free_and_installs_debians_driver():
    sources = (FIXTURES / "debian-12" / "debian.sources").read_text()
    run = deploy(
        spec(flavour="cu121"),
        os="debian-12",
        **existing_files({"/etc/apt/sources.list.d/debian.sources": sources, "/etc/apt/sources.list": None}),
    )
    assert [op.name for op in run.changes] == [
        "NVIDIA driver | Enable contrib non-free non-free-firmware in /etc/apt/sources.list.d/debian.sources",
        "NVIDIA driver | Install nvidia-driver firmware-misc-nonfree linux-headers-amd64",
        "NVIDIA driver | Hold nvidia-driver nvidia-kernel-dkms nvidia-driver-libs libcuda1 libnvidia-ml1",
        KEEP_OUT,
    ]
    upload, chown, chmod = run.commands("Enable contrib")
    assert upload[0] == "upload" and upload[2] == "/etc/apt/sources.list.d/debian.sources"
    assert upload[1] == sources.replace("Components: main\n", "Components: main contrib non-free non-free-firmware\n")
    assert (chown, chmod) == (
        "chown root:root /etc/apt/sources.list.d/debian.sources",
        "chmod 644 /etc/apt/sources.list.d/debian.sources",
    )
    assert run.commands("Install") == [
        "apt-get update",
        f"{APT_INSTALL} nvidia-driver firmware-misc-nonfree linux-headers-amd64",
    ]
    assert "+Components: main contrib non-free non-free-firmware" in run.diffs[0]
    assert run.notes[0] == (
        "Debian 12 installs its own NVIDIA driver branch (535); gpu.driver.branch 570 cannot be pinned there"
    )
    assert run.notes[1].startswith("reboot required: NVIDIA driver newly installed")


def test_debian_12_with_a_one_line_sources_list_already_enabled():
    enabled = (
        (FIXTURES / "debian-12" / "sources.list")
        .read_text()
        .replace("main non-free-firmware", "main contrib non-free non-free-firmware")
    )
    run = deploy(
        spec(flavour="cu121"),
        os="debian-12",
        **existing_files({"/etc/apt/sources.list.d/debian.sources": None, "/etc/apt/sources.list": enabled}),
    )
    assert [op.name for op in run.changes] == [
        "NVIDIA driver | Install nvidia-driver firmware-misc-nonfree linux-headers-amd64",
        "NVIDIA driver | Hold nvidia-driver nvidia-kernel-dkms nvidia-driver-libs libcuda1 libnvidia-ml1",
        KEEP_OUT,
    ]


def test_debian_12_without_a_debian_archive_to_extend_fails_clearly():
    with pytest.raises(DriverNotReady, match=r"no Debian bookworm archive with 'main' in "):
        deploy(
            spec(flavour="cu121"),
            os="debian-12",
            **existing_files({"/etc/apt/sources.list.d/debian.sources": None, "/etc/apt/sources.list": None}),
        )


def test_debian_12_driver_is_too_old_for_the_torch_builds_we_ship():
    with pytest.raises(DriverNotReady) as raised:
        deploy(spec(), os="debian-12")
    assert raised.value.message == (
        "nvidia-smi is not installed; gpu.driver.mode: install gets Debian 12's own NVIDIA driver, branch 535 "
        "(gpu.driver.branch cannot be pinned there), too old for torch (cu130 needs 580.65.06+, cu128 needs 570.26+)"
    )


UBUNTU_570 = BASE_PACKAGES + (
    ("nvidia-driver-570", "570.133.20-0ubuntu0.22.04.1"),
    ("libnvidia-compute-570", "570.133.20-0ubuntu0.22.04.1"),
    ("nvidia-utils-570", "570.133.20-0ubuntu0.22.04.1"),
    ("nvidia-dkms-570", "570.133.20-0ubuntu0.22.04.1"),
)
UBUNTU_570_HELD = ["nvidia-driver-570", "libnvidia-compute-570", "nvidia-utils-570", "nvidia-dkms-570"]


def units(**running: bool) -> dict:
    """systemd.service's facts for units (name without .service: running and enabled alike)."""
    facts: dict = {"SystemdStatus": {}, "SystemdEnabled": {}}
    for name, state in running.items():
        unit = f"{name.replace('_', '-')}.service"
        key = f"machine=None, services=['{unit}'], user_mode=False, user_name=None"
        facts["SystemdStatus"][key] = {unit: state}
        facts["SystemdEnabled"][key] = {unit: state}
    return facts


def blacklist_of(packages: list[str]) -> str:
    return render_upgrade_blacklist(packages)


def test_nothing_to_do_when_the_driver_works():
    run = deploy(
        spec(),
        os="ubuntu-22.04",
        gpus="eight_h100_sxm",
        module="loaded_is_installed",
        driver="single_gpu_ok",
        packages=UBUNTU_570,
        holds="ubuntu_driver_570_held",
        blacklist=blacklist_of(UBUNTU_570_HELD + ["linux-modules-nvidia-570-generic"]),
        **units(nvidia_persistenced=True),
    )
    assert run.changes == [] and run.notes == []
    assert [op.name for op in run.operations] == [
        "NVIDIA driver | nvidia-persistenced enabled and running",
        "NVIDIA driver | Hold nvidia-driver-570 libnvidia-compute-570 nvidia-utils-570 nvidia-dkms-570 "
        "linux-modules-nvidia-570-generic",
        KEEP_OUT,
    ]


def test_an_unheld_driver_package_is_drift_and_gets_held():
    """Someone ran apt-mark unhold (or an old install never held it): plan/drift name it, apply holds it."""
    run = deploy(
        spec(mode="verify"),
        os="ubuntu-24.04",
        gpus="eight_h100_sxm",
        driver="single_gpu_ok",
        packages=UBUNTU_570,
        holds="none",
        blacklist=blacklist_of(UBUNTU_570_HELD + ["linux-modules-nvidia-570-generic"]),
        **units(nvidia_persistenced=True),
    )
    [hold] = run.changes
    assert hold.commands == [f"apt-mark hold {' '.join(UBUNTU_570_HELD)}"]  # installed ones only


def test_debian_12_holds_its_driver_and_writes_the_blacklist():
    debian = (
        ("nvidia-driver", "535.216.01-1~deb12u1"),
        ("nvidia-kernel-dkms", "535.216.01-1~deb12u1"),
        ("libcuda1", "535.216.01-1~deb12u1"),
        ("libnvidia-ml1", "535.216.01-1~deb12u1"),
    )
    run = deploy(
        spec(mode="verify", flavour="cu121"),
        os="debian-12",
        gpus="two_a100_driver_535",
        driver="single_gpu_ok",
        packages=BASE_PACKAGES + debian,
        holds="multiarch_names",  # nvidia-driver and libcuda1:amd64 held
        **units(nvidia_persistenced=True),
    )
    assert [op.name for op in run.changes] == [
        "NVIDIA driver | Hold nvidia-driver nvidia-kernel-dkms nvidia-driver-libs libcuda1 libnvidia-ml1",
        KEEP_OUT,
    ]
    assert run.commands("Hold") == ["apt-mark hold nvidia-kernel-dkms libnvidia-ml1"]
    assert "+++ /etc/apt/apt.conf.d/51sd35-nvidia-driver (wanted)" in run.diffs[0]
    assert '+    "^nvidia-kernel-dkms$";' in run.diffs[0]


def test_persistence_daemon_is_enabled_and_started():
    run = deploy(
        spec(mode="verify"),
        os="ubuntu-22.04",
        gpus="eight_h100_sxm",
        driver="persistenced_disabled",
        **units(nvidia_persistenced=False),
    )
    assert run.commands("nvidia-persistenced") == [
        "systemctl start nvidia-persistenced.service",
        "systemctl enable nvidia-persistenced.service",
    ]


def test_debian_installs_the_persistence_daemon_ubuntu_says_it_is_missing():
    debian = deploy(
        spec(flavour="cu121"), os="debian-12", gpus="two_a100_driver_535", **units(nvidia_persistenced=False)
    )
    assert debian.commands("Install nvidia-persistenced") == ["apt-get update", f"{APT_INSTALL} nvidia-persistenced"]
    ubuntu = deploy(spec(mode="verify"), os="ubuntu-22.04", gpus="eight_h100_sxm")
    assert ubuntu.notes == ["nvidia-persistenced is not installed: each CUDA process start re-initialises the driver"]


def test_a_working_driver_of_another_branch_is_kept_and_said():
    run = deploy(
        spec(), os="ubuntu-24.04", gpus="h100_recorded", module="h100_container_recorded", driver="h100_container"
    )
    assert run.changes == []  # not from Ubuntu's packages: nothing of ours to hold either
    assert run.notes == [
        "NVIDIA driver 580.159.04 works for torch; gpu.driver.branch 570 not applied "
        "(a working driver that is not Ubuntu's package of a branch is never replaced)",
        "nvidia-persistenced is not installed: each CUDA process start re-initialises the driver",
    ]


def test_a_branch_change_unholds_upgrades_holds_and_needs_a_reboot():
    run = deploy(
        spec(branch="580"),
        os="ubuntu-22.04",
        gpus="eight_h100_sxm",
        module="loaded_is_installed",
        driver="single_gpu_ok",
        packages=UBUNTU_570,
        holds="ubuntu_driver_570_held",
        blacklist=blacklist_of(UBUNTU_570_HELD + ["linux-modules-nvidia-570-generic"]),
    )
    held_580 = ["nvidia-driver-580", "libnvidia-compute-580", "nvidia-utils-580", "nvidia-dkms-580"]
    assert [op.name for op in run.changes] == [
        "NVIDIA driver | Unhold the NVIDIA driver 570 packages",
        "NVIDIA driver | Upgrade the NVIDIA driver 570 -> 580: install nvidia-driver-580 "
        "linux-headers-5.15.0-126-generic",
        f"NVIDIA driver | Hold {' '.join(held_580)}",
        KEEP_OUT,
    ]
    assert run.commands("Unhold") == [f"apt-mark unhold {' '.join(UBUNTU_570_HELD)}"]
    assert run.commands("Upgrade") == [
        "apt-get update",
        f"{APT_INSTALL} nvidia-driver-580 linux-headers-5.15.0-126-generic",
    ]
    assert run.commands("Hold") == [HOLD_ONCE_INSTALLED.format(" ".join(held_580))]
    assert run.notes == [
        "reboot required: NVIDIA driver branch 570 -> 580 (570.133.20 loaded now); the new driver works only "
        "after a reboot (gpu.driver.allow_reboot is false)"
    ]


def test_installed_but_not_rebooted_holds_and_says_reboot_required():
    installed = BASE_PACKAGES + (
        ("nvidia-driver-570-server", "570.133.20-0ubuntu0.22.04.1"),
        ("linux-headers-5.15.0-126-generic", "5.15.0-126.136"),
    )
    run = deploy(
        spec(driver_flavour="server"),
        os="ubuntu-22.04",
        gpus="driver_library_mismatch",
        module="upgraded_not_rebooted",
        packages=installed,
    )
    # Installed by hand (or by a run before holds): the driver is held, nothing else changes.
    assert [op.name for op in run.changes] == [
        "NVIDIA driver | Hold nvidia-driver-570-server libnvidia-compute-570-server nvidia-utils-570-server "
        "nvidia-dkms-570-server",
        KEEP_OUT,
    ]
    assert run.commands("Hold") == ["apt-mark hold nvidia-driver-570-server"]
    assert run.notes == [
        "reboot required: nvidia module 570.133.20 installed, 550.127.05 loaded; the new driver "
        "works only after a reboot (gpu.driver.allow_reboot is false)"
    ]
    rebooting = deploy(
        spec(driver_flavour="server", allow_reboot=True),
        os="ubuntu-22.04",
        gpus="driver_library_mismatch",
        module="upgraded_not_rebooted",
        packages=installed,
    )
    assert [op.name for op in rebooting.changes] == [op.name for op in run.changes]  # the same, and no reboot
    assert rebooting.notes == [
        "reboot after apply (gpu.driver.allow_reboot): nvidia module 570.133.20 installed, 550.127.05 loaded"
    ]


def test_installed_and_loaded_but_not_working_points_at_the_kernel_log():
    installed = BASE_PACKAGES + (
        ("nvidia-driver-570", "570.133.20-0ubuntu0.22.04.1"),
        ("linux-headers-5.15.0-126-generic", "5.15.0-126.136"),
    )
    with pytest.raises(DriverNotReady, match="see dmesg"):
        deploy(spec(), os="ubuntu-22.04", gpus="no_devices", module="loaded_is_installed", packages=installed)


def test_too_old_driver_is_replaced_by_the_pinned_branch():
    run = deploy(
        spec(flavour="cu128"),
        os="ubuntu-22.04",
        gpus="two_a100_driver_535",
        module="driver_535_running",
        packages=BASE_PACKAGES + (("nvidia-driver-535", "535.183.01-0ubuntu0.22.04.1"),),
    )
    assert run.commands("Install") == [
        "apt-get update",
        f"{APT_INSTALL} nvidia-driver-570 linux-headers-5.15.0-126-generic",
    ]
    assert run.notes == [
        "reboot required: NVIDIA driver newly installed; module 535.183.01 loaded now; the new "
        "driver works only after a reboot (gpu.driver.allow_reboot is false)"
    ]


def test_pinned_branch_too_old_for_the_torch_build_is_refused():
    with pytest.raises(DriverNotReady, match=r"gpu.driver.branch 560 is too old for torch \(cu128 needs 570.26\+\)"):
        deploy(spec(branch="560", flavour="cu128"), os="ubuntu-24.04")


def test_install_on_an_unsupported_release_is_refused():
    with pytest.raises(DriverNotReady, match="supports Ubuntu 22.04/24.04 and Debian 12, not Ubuntu 20.04"):
        deploy(spec(), os="ubuntu-20.04")


def test_verify_fails_the_host_with_what_is_wrong():
    with pytest.raises(DriverNotReady) as raised:
        deploy(spec(mode="verify"), gpus="two_a100_driver_535")
    error = raised.value
    assert isinstance(error, PreflightError) and error.host == "testhost" and error.step == "NVIDIA driver"
    assert error.message == (
        "NVIDIA driver 535.183.01 is too old for torch (cu130 needs 580.65.06+, cu128 needs "
        "570.26+); install a driver (branch 570 or newer), or set gpu.driver.mode: install"
    )
    with pytest.raises(DriverNotReady, match="nvidia-smi failed: NVIDIA-SMI has failed because it couldn't"):
        deploy(spec(mode="verify"), gpus="driver_not_loaded")


def test_verify_passes_a_good_driver_and_skip_or_cpu_read_nothing():
    assert deploy(spec(mode="verify"), gpus="eight_h100_sxm").operations == []
    for settings in (spec(mode="skip"), spec(accelerator="cpu")):
        run = deploy(settings, gpus="absent")
        assert run.operations == [] and run.facts_read == []


def test_one_line_sources_get_the_components_on_every_debian_line_with_main():
    lines = (FIXTURES / "debian-12" / "sources.list").read_text().splitlines()
    new, found = enable_components_one_line(lines, "bookworm")
    assert found
    changed = [(old, line) for old, line in zip(lines, new, strict=False) if old != line]
    assert [line for _, line in changed] == [
        "deb http://deb.debian.org/debian/ bookworm main non-free-firmware contrib non-free",
        "deb-src http://deb.debian.org/debian/ bookworm main non-free-firmware contrib non-free",
        "deb http://security.debian.org/debian-security bookworm-security main non-free-firmware contrib non-free",
        "deb-src http://security.debian.org/debian-security bookworm-security main non-free-firmware contrib non-free",
        "deb http://deb.debian.org/debian/ bookworm-updates main non-free-firmware contrib non-free",
        "deb-src http://deb.debian.org/debian/ bookworm-updates main non-free-firmware contrib non-free",
    ]
    assert new[0].startswith("#deb cdrom:")  # comments stay as they are
    assert enable_components_one_line(new, "bookworm") == (new, True)  # idempotent
    assert enable_components_one_line(lines, "trixie") == (lines, False)


def test_one_line_sources_keep_options_and_trailing_comments():
    lines = [
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian "
        "bookworm main  # local mirror"
    ]
    new, found = enable_components_one_line(lines, "bookworm")
    assert found and new == [
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.example/debian bookworm main contrib non-free non-free-firmware"
        "  # local mirror"
    ]


def test_deb822_sources_skip_disabled_and_foreign_stanzas():
    lines = (FIXTURES / "debian-12" / "debian.sources").read_text().splitlines() + [
        "",
        "Types: deb",
        "URIs: https://download.docker.com/linux/debian",
        "Suites: bookworm",
        "Components: stable",
        "",
        "Types: deb",
        "URIs: http://deb.debian.org/debian",
        "Suites: bookworm-backports",
        "Components: main",
        "Enabled: no",
    ]
    new, found = enable_components_deb822(lines, "bookworm")
    assert found
    assert [line for line in new if line.startswith("Components:")] == [
        "Components: main contrib non-free non-free-firmware",
        "Components: main contrib non-free non-free-firmware",
        "Components: stable",
        "Components: main",
    ]
    assert enable_components_deb822(new, "bookworm") == (new, True)


@pytest.mark.parametrize(
    "kernel, package",
    [
        ("6.1.0-28-amd64", "linux-headers-amd64"),
        ("6.1.0-28-cloud-amd64", "linux-headers-cloud-amd64"),
        ("6.1.0-28-arm64", "linux-headers-arm64"),
        ("6.1.0-28-rt-amd64", "linux-headers-rt-amd64"),
        ("6.12.9+bpo-amd64", "linux-headers-6.12.9+bpo-amd64"),
    ],
)
def test_debian_headers_follow_the_running_kernels_flavour(kernel, package):
    assert debian_headers_package(kernel) == package


@pytest.mark.parametrize(
    "os, kernel, flavour, modules",
    [
        ("ubuntu-22.04", "5.15.0-126-generic", "default", "linux-modules-nvidia-570-generic"),
        ("ubuntu-22.04", "6.8.0-49-generic", "server", "linux-modules-nvidia-570-server-generic-hwe-22.04"),
        ("ubuntu-24.04", "6.8.0-1019-aws", "open", "linux-modules-nvidia-570-open-aws"),
        ("ubuntu-24.04", "6.8.0-1017-azure", "server-open", "linux-modules-nvidia-570-server-open-azure"),
    ],
)
def test_ubuntu_with_secure_boot_installs_the_signed_prebuilt_modules(os, kernel, flavour, modules, monkeypatch):
    monkeypatch.setitem(KERNELS, os, kernel)
    run = deploy(spec(driver_flavour=flavour), os=os, driver="secure_boot_no_driver")
    meta = f"nvidia-driver-570{UBUNTU_SUFFIX[flavour]}"
    assert run.commands("Install") == ["apt-get update", f"{APT_INSTALL} {modules} {meta}"]  # no DKMS, no headers
    [hold] = run.commands("Hold")
    assert hold.split("' ")[1].split(" 2>")[0].split() == [
        meta,
        f"libnvidia-compute-570{'-server' if 'server' in flavour else ''}",
        f"nvidia-utils-570{'-server' if 'server' in flavour else ''}",
        modules,
    ]


def test_debian_with_secure_boot_refuses_a_module_that_would_not_load():
    with pytest.raises(DriverNotReady) as raised:
        deploy(spec(flavour="cu121"), os="debian-12", driver="secure_boot_mok_not_enrolled")
    assert "mokutil --import /var/lib/dkms/mok.pub" in raised.value.message
    assert "Enroll MOK" in raised.value.message and "reboot" in raised.value.message
    # once DKMS's key is enrolled, DKMS signs the module and it loads: the install goes ahead
    sources = (FIXTURES / "debian-12" / "debian.sources").read_text()
    run = deploy(
        spec(flavour="cu121"),
        os="debian-12",
        driver="secure_boot_mok_enrolled",
        **existing_files({"/etc/apt/sources.list.d/debian.sources": sources, "/etc/apt/sources.list": None}),
    )
    assert (
        run.commands("Install nvidia-driver")[-1]
        == f"{APT_INSTALL} nvidia-driver firmware-misc-nonfree linux-headers-amd64"
    )


def test_nvswitch_box_gets_fabric_manager_of_the_drivers_version_enabled_and_running():
    run = deploy(
        spec(),
        os="ubuntu-22.04",
        gpus="eight_h100_sxm",
        module="loaded_is_installed",
        driver="hgx_h100_fabric_manager_missing",
        packages=UBUNTU_570,
        holds="ubuntu_driver_570_held",
        **units(nvidia_persistenced=True, nvidia_fabricmanager=False),
    )
    assert [op.name for op in run.changes] == [
        "NVIDIA driver | Install nvidia-fabricmanager-570 570.133.20 (NVSwitch box: Fabric Manager of the "
        "driver's version)",
        "NVIDIA driver | Fabric Manager (nvidia-fabricmanager) enabled and running",
        f"NVIDIA driver | Hold {' '.join(UBUNTU_570_HELD)} linux-modules-nvidia-570-generic nvidia-fabricmanager-570",
        KEEP_OUT,
    ]
    assert run.commands("Install nvidia-fabricmanager") == [
        "apt-get update",
        "DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades --allow-change-held-packages "
        "'nvidia-fabricmanager-570=570.133.20-*'",
    ]
    assert run.commands("Hold") == [
        HOLD_ONCE_INSTALLED.format("linux-modules-nvidia-570-generic nvidia-fabricmanager-570")
    ]
    assert run.commands("Fabric Manager (") == [
        "systemctl start nvidia-fabricmanager.service",
        "systemctl enable nvidia-fabricmanager.service",
    ]
    # of another version (the driver was upgraded, Fabric Manager not): replaced by the driver's
    other = deploy(
        spec(),
        os="ubuntu-22.04",
        gpus="eight_h100_sxm",
        driver="hgx_h100_fabric_manager_running",
        packages=UBUNTU_570 + (("nvidia-fabricmanager-570", "570.124.06-1"),),
        holds="ubuntu_driver_570_held",
        **units(nvidia_persistenced=True, nvidia_fabricmanager=True),
    )
    assert "'nvidia-fabricmanager-570=570.133.20-*'" in other.commands("Install nvidia-fabricmanager")[-1]
    # of the driver's version and running: nothing
    fine = deploy(
        spec(),
        os="ubuntu-22.04",
        gpus="eight_h100_sxm",
        driver="hgx_h100_fabric_manager_running",
        packages=UBUNTU_570 + (("nvidia-fabricmanager-570", "570.133.20-1"),),
        holds="ubuntu_driver_570_held",
        **units(nvidia_persistenced=True, nvidia_fabricmanager=True),
    )
    assert [op.name for op in fine.changes if "Fabric" in op.name or "fabricmanager" in op.name] == [
        f"NVIDIA driver | Hold {' '.join(UBUNTU_570_HELD)} linux-modules-nvidia-570-generic nvidia-fabricmanager-570"
    ]
    assert fine.commands("Hold") == ["apt-mark hold nvidia-fabricmanager-570"]


def test_nvswitch_box_without_fabric_manager_in_verify_mode_fails_with_error_802():
    with pytest.raises(DriverNotReady, match="error 802 'system not yet initialized'"):
        deploy(
            spec(mode="verify"),
            os="ubuntu-22.04",
            gpus="eight_h100_sxm",
            driver="hgx_h100_fabric_manager_missing",
            packages=UBUNTU_570,
            **units(nvidia_persistenced=True),
        )


def test_a_cpu_host_holds_only_the_driver_packages_its_spec_names():
    settings = spec(accelerator="cpu")
    settings = replace(
        settings, gpu=replace(settings.gpu, driver=replace(settings.gpu.driver, packages=("nvidia-driver",)))
    )
    run = deploy(settings, os="debian-12", packages=BASE_PACKAGES + (("nvidia-driver", "1.0"),))
    assert [op.name for op in run.changes] == ["NVIDIA driver | Hold nvidia-driver", KEEP_OUT]
    assert run.commands("Hold") == ["apt-mark hold nvidia-driver"]
    assert "sd35_provision.facts.nvidia.NvidiaGpus" not in run.facts_read  # no GPU is looked for
    held = deploy(
        settings,
        os="debian-12",
        packages=BASE_PACKAGES + (("nvidia-driver", "1.0"),),
        holds="multiarch_names",
        blacklist=blacklist_of(["nvidia-driver"]),
    )
    assert held.changes == []
    off = replace(settings, gpu=replace(settings.gpu, driver=replace(settings.gpu.driver, hold=False)))
    assert deploy(off, os="debian-12").operations == []
