"""The NVIDIA driver step per OS, from recorded facts (no GPU needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sd35_provision.driver_plan import DEBIAN_NONFREE_LIST, plan_driver
from sd35_provision.spec.model import DriverSettings, GpuSettings, HostSettings


def host(mode="install", flavor="default", allow_reboot=False, accelerator="nvidia", branch="570") -> HostSettings:
    driver = DriverSettings(mode=mode, branch=branch, flavor=flavor, allow_reboot=allow_reboot)
    return HostSettings(name="gpu-a1", address="10.0.0.1", gpu=GpuSettings(accelerator=accelerator, driver=driver))


@pytest.mark.parametrize(
    "codename, kernel, flavor, expected",
    [
        ("jammy", "5.15.0-125-generic", "server", ["nvidia-driver-570-server", "linux-headers-5.15.0-125-generic"]),
        ("noble", "6.8.0-51-generic", "server-open", ["nvidia-driver-570-server-open", "linux-headers-6.8.0-51-generic"]),
        ("noble", "6.8.0-51-generic", "default", ["nvidia-driver-570", "linux-headers-6.8.0-51-generic"]),
    ],
)
def test_ubuntu_installs_pinned_branch_with_headers(codename, kernel, flavor, expected):
    plan = plan_driver(host(flavor=flavor), "ubuntu", codename, kernel, driver_version=None)
    assert plan.packages == expected
    assert plan.apt_source is None
    assert not plan.reboot
    assert "reboot required to load the new NVIDIA driver (gpu.driver.allow_reboot is false)" in plan.notes


def test_debian_12_enables_non_free_and_says_branch_is_not_pinned():
    plan = plan_driver(host(allow_reboot=True), "debian", "bookworm", "6.1.0-28-amd64", driver_version=None)
    assert plan.packages == ["nvidia-driver", "firmware-misc-nonfree", "linux-headers-6.1.0-28-amd64"]
    path, content = plan.apt_source
    assert path == DEBIAN_NONFREE_LIST
    assert "deb http://deb.debian.org/debian bookworm non-free non-free-firmware" in content
    assert plan.reboot
    assert any("cannot be pinned" in note for note in plan.notes)


def test_nothing_to_do_when_driver_is_new_enough_or_mode_says_so():
    assert plan_driver(host(), "ubuntu", "noble", "6.8.0-51-generic", "570.124.06").packages == []
    assert plan_driver(host(mode="verify"), "ubuntu", "noble", "6.8.0-51-generic", None).packages == []
    assert plan_driver(host(mode="skip"), "ubuntu", "noble", "6.8.0-51-generic", None).packages == []
    assert plan_driver(host(accelerator="cpu"), "debian", "bookworm", "6.1.0-28-amd64", None).packages == []


def test_too_old_driver_is_upgraded():
    plan = plan_driver(host(), "ubuntu", "jammy", "5.15.0-125-generic", "535.183.01")
    assert plan.packages[0] == "nvidia-driver-570"


def test_unsupported_os_says_so():
    plan = plan_driver(host(), "rocky", "", "5.14.0", None)
    assert plan.packages == [] and "not supported on rocky" in plan.notes[0]
