"""CUDA build <-> NVIDIA driver rules, against NVIDIA's release-notes table."""

from __future__ import annotations

import pytest

from sd35_provision.cuda_compat import (
    AUTO_FLAVOURS,
    FLAVOUR_CUDA,
    TOOLKIT_DRIVER,
    branch_satisfies,
    driver_install_problem,
    driver_satisfies,
    install_branch,
    min_driver_for,
    pick_flavour,
    pick_flavour_for_branch,
    version_tuple,
    wanted_flavour,
)


def test_table_holds_the_release_notes_numbers():
    assert TOOLKIT_DRIVER["11.8"] == "520.61.05"
    assert TOOLKIT_DRIVER["12.1"] == "530.30.02"
    assert TOOLKIT_DRIVER["12.4"] == "550.54.14"
    assert TOOLKIT_DRIVER["12.6"] == "560.28.03"
    assert TOOLKIT_DRIVER["12.8"] == "570.26"
    assert TOOLKIT_DRIVER["13.0"] == "580.65.06"
    for flavour, cuda in FLAVOUR_CUDA.items():
        assert cuda is None or cuda in TOOLKIT_DRIVER, flavour


@pytest.mark.parametrize(
    "flavour, cuda, driver",
    [
        ("cu118", "11.8", "520.61.05"),
        ("cu126", "12.6", "560.28.03"),
        ("cu128", "12.8", "570.26"),
        ("cu130", "13.0", "580.65.06"),
        ("cpu", None, None),
    ],
)
def test_flavour_to_cuda_and_minimum_driver(flavour, cuda, driver):
    assert FLAVOUR_CUDA[flavour] == cuda
    assert min_driver_for(flavour) == driver


def test_versions_compare_as_numbers_not_text():
    assert version_tuple("570.124.06") == (570, 124, 6)
    assert version_tuple("570.124.06") > version_tuple("570.26")  # "570.124.06" < "570.26" as text
    assert driver_satisfies("570.124.06", "cu128")
    assert not driver_satisfies("570.9", "cu128")
    assert driver_satisfies("570.26", "cu128")
    assert driver_satisfies("1000.1", "cu130")
    with pytest.raises(ValueError, match="not a numeric version"):
        version_tuple("570.xx")


def test_no_driver_runs_only_cpu():
    assert not driver_satisfies(None, "cu126")
    assert driver_satisfies(None, "cpu")
    assert pick_flavour(None) == "cpu"


def test_minor_version_compatibility_is_known_but_not_the_default():
    # A 535 driver (CUDA 12.2) starts a CUDA 12.8 runtime only under minor-version compatibility.
    assert not driver_satisfies("535.183.01", "cu128")
    assert driver_satisfies("535.183.01", "cu128", minor_compat=True)
    assert min_driver_for("cu126", minor_compat=True) == "525.60.13"
    assert min_driver_for("cu118", minor_compat=True) == "450.80.02"
    assert not driver_satisfies("575.64", "cu130", minor_compat=True)


@pytest.mark.parametrize(
    "driver, flavour",
    [
        ("580.159.04", "cu130"),  # the H100 box
        ("580.65.06", "cu130"),
        ("575.57.08", "cu128"),
        ("570.133.20", "cu128"),
        ("570.26", "cu128"),
        ("565.57.01", "cpu"),  # cu126 runs there, but we ship no cu126 lock
        ("560.28.02", "cpu"),
        ("535.183.01", "cpu"),
    ],
)
def test_pick_flavour_takes_the_newest_the_driver_runs(driver, flavour):
    assert pick_flavour(driver) == flavour


def test_pick_among_other_candidates():
    assert pick_flavour("580.65.06", ("cu130", "cu128", "cu126")) == "cu130"
    assert pick_flavour("535.183.01", ("cu128", "cu121", "cu118")) == "cu121"


def test_wanted_flavour():
    assert wanted_flavour("cu126", "nvidia", "580.65.06") == "cu126"
    assert wanted_flavour("auto", "nvidia", "570.133.20") == "cu128"
    assert wanted_flavour("auto", "cpu", "570.133.20") == "cpu"


def test_branches():
    assert branch_satisfies("570", "cu128") and branch_satisfies("575", "cu128")
    assert not branch_satisfies("565", "cu128") and branch_satisfies("565", "cu126")
    assert pick_flavour_for_branch("570") == "cu128"
    assert pick_flavour_for_branch("580") == "cu130"
    assert pick_flavour_for_branch("560") == "cpu"
    assert pick_flavour_for_branch("535") == "cpu"
    assert install_branch("ubuntu", "24.04", "570") == "570"
    assert install_branch("debian", "12", "570") == "535"
    assert AUTO_FLAVOURS == ("cu130", "cu128")


def test_driver_install_problem():
    assert driver_install_problem("ubuntu", "22.04", "570", "auto") is None
    assert driver_install_problem("ubuntu", "24.04", "560", "cu126") is None
    assert driver_install_problem("ubuntu", "24.04", "560", "cu128") == (
        "gpu.driver.branch 560 is too old for torch (cu128 needs 570.26+)"
    )
    assert driver_install_problem("ubuntu", "20.04", "570", "auto", "Ubuntu") == (
        "gpu.driver.mode: install supports Ubuntu 22.04/24.04 and Debian 12, not Ubuntu 20.04; "
        "install the driver by hand and use gpu.driver.mode: verify"
    )
    assert driver_install_problem("debian", "12", "570", "auto") == (
        "gpu.driver.mode: install gets Debian 12's own NVIDIA driver, branch 535 (gpu.driver.branch cannot be "
        "pinned there), too old for torch (cu130 needs 580.65.06+, cu128 needs 570.26+)"
    )
    assert driver_install_problem("debian", "12", "570", "cu121") is None
