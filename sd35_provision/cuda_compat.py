"""Which NVIDIA driver a CUDA build of PyTorch needs, and which build a driver can run.

The numbers are the Linux x86_64 "Toolkit Driver Version" of each toolkit's GA
release, from NVIDIA's CUDA Toolkit release notes ("CUDA Toolkit and
Corresponding Driver Versions").

What we enforce: the full toolkit driver (``TOOLKIT_DRIVER``). NVIDIA's CUDA
minor-version compatibility lets a CUDA 12.x runtime start on any driver
>= 525.60.13 (``MINOR_COMPAT_DRIVER``), but without the features that need the
newer driver: PTX JIT of kernels built with the newer toolkit fails with
CUDA_ERROR_UNSUPPORTED_PTX_VERSION, and that shows only when the first such
kernel runs (torch.compile/Triton, or a GPU the wheel has no SASS for), long
after provisioning said "ok". So preflight and the driver step use the strict
numbers; ``minor_compat=True`` is there for callers that want to say "would
only run under minor-version compatibility" in a message.
"""

from __future__ import annotations

import re

# CUDA toolkit (major.minor) -> minimum Linux driver of its GA release.
TOOLKIT_DRIVER: dict[str, str] = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}

# CUDA major -> oldest driver that runs any toolkit of that major under
# minor-version compatibility (same release notes, "Driver Range for Minor
# Version Compatibility"; 11.x needs the 450.80.02 Tesla driver).
MINOR_COMPAT_DRIVER: dict[int, str] = {
    11: "450.80.02",
    12: "525.60.13",
    13: "580",
}

# PyTorch wheel flavour (the suffix of download.pytorch.org/whl/<flavour>) ->
# the CUDA toolkit it is built with; "cpu" needs no driver.
FLAVOUR_CUDA: dict[str, str | None] = {
    "cpu": None,
    "cu118": "11.8",
    "cu121": "12.1",
    "cu124": "12.4",
    "cu126": "12.6",
    "cu128": "12.8",
    "cu129": "12.9",
    "cu130": "13.0",
}

# The CUDA flavours we ship locks for (the spec's python.torch_flavour enum),
# newest first: what "auto" may pick.
AUTO_FLAVOURS: tuple[str, ...] = ("cu130", "cu128")

_VERSION = re.compile(r"^\d+(\.\d+)*$")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"570.124.06"`` -> ``(570, 124, 6)``: compare versions numerically, never as text."""
    text = version.strip()
    if not _VERSION.match(text):
        raise ValueError(f"not a numeric version: {version!r}")
    return tuple(int(part) for part in text.split("."))


def version_at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def cuda_for(flavour: str) -> str | None:
    """The CUDA toolkit a torch flavour is built with (None for "cpu")."""
    try:
        return FLAVOUR_CUDA[flavour]
    except KeyError:
        known = ", ".join(FLAVOUR_CUDA)
        raise ValueError(f"unknown torch flavour {flavour!r} (known: {known})") from None


def min_driver_for(flavour: str, *, minor_compat: bool = False) -> str | None:
    """Minimum Linux driver for a torch flavour; None when it needs none ("cpu")."""
    cuda = cuda_for(flavour)
    if cuda is None:
        return None
    if minor_compat:
        return MINOR_COMPAT_DRIVER[version_tuple(cuda)[0]]
    return TOOLKIT_DRIVER[cuda]


def driver_satisfies(driver_version: str | None, flavour: str, *, minor_compat: bool = False) -> bool:
    """Whether a driver (None: no working driver) can run a torch flavour."""
    needed = min_driver_for(flavour, minor_compat=minor_compat)
    if needed is None:
        return True
    return driver_version is not None and version_at_least(driver_version, needed)


def pick_flavour(driver_version: str | None, candidates: tuple[str, ...] = AUTO_FLAVOURS) -> str:
    """The newest of ``candidates`` the driver runs; "cpu" when none (or no driver).

    "cpu" for a GPU host means the driver is too old: preflight reports that
    rather than letting a GPU host quietly get CPU torch.
    """
    runnable = [f for f in candidates if FLAVOUR_CUDA[f] and driver_satisfies(driver_version, f)]
    if not runnable:
        return "cpu"
    return max(runnable, key=lambda f: version_tuple(FLAVOUR_CUDA[f] or "0"))


def wanted_flavour(torch_flavour: str, accelerator: str, driver_version: str | None) -> str:
    """The flavour a host gets: the pinned one, or for "auto" what its driver runs."""
    if torch_flavour != "auto":
        return torch_flavour
    if accelerator != "nvidia":
        return "cpu"
    return pick_flavour(driver_version)


def branch_satisfies(branch: str, flavour: str) -> bool:
    """Whether the newest release of a driver branch ("570") runs ``flavour``.

    A branch's releases only go up (570.86 < 570.124 < 570.195), and apt
    installs the newest, so the branch number against the minimum's major
    number decides.
    """
    needed = min_driver_for(flavour)
    return needed is None or version_tuple(branch)[0] >= version_tuple(needed)[0]


def pick_flavour_for_branch(branch: str, candidates: tuple[str, ...] = AUTO_FLAVOURS) -> str:
    """What "auto" will pick once driver ``branch`` is installed (the driver step's plan)."""
    runnable = [f for f in candidates if FLAVOUR_CUDA[f] and branch_satisfies(branch, f)]
    if not runnable:
        return "cpu"
    return max(runnable, key=lambda f: version_tuple(FLAVOUR_CUDA[f] or "0"))


# Where gpu.driver.mode: install knows how to install the driver: (os-release ID, VERSION_ID).
DRIVER_INSTALL_OS: frozenset[tuple[str, str]] = frozenset({("ubuntu", "22.04"), ("ubuntu", "24.04"), ("debian", "12")})

# Debian ships one driver branch per release in its own nvidia-driver package
# (bookworm stays on the 535 long-term branch); gpu.driver.branch cannot pick another.
DEBIAN_DRIVER_BRANCH: dict[str, str] = {"12": "535"}


def install_branch(os_id: str, os_version: str, pinned: str) -> str:
    """The driver branch gpu.driver.mode: install actually gets on this OS."""
    if os_id == "debian":
        return DEBIAN_DRIVER_BRANCH.get(os_version, pinned)
    return pinned


def driver_install_problem(
    os_id: str, os_version: str, pinned_branch: str, torch_flavour: str, os_name: str = ""
) -> str | None:
    """Why gpu.driver.mode: install cannot give this host a driver for ``torch_flavour``; None if it can."""
    if (os_id, os_version) not in DRIVER_INSTALL_OS:
        name = f"{os_name or os_id or 'an unknown OS'} {os_version}".strip()
        return (
            f"gpu.driver.mode: install supports Ubuntu 22.04/24.04 and Debian 12, not {name}; "
            "install the driver by hand and use gpu.driver.mode: verify"
        )
    branch = install_branch(os_id, os_version, pinned_branch)
    wanted = AUTO_FLAVOURS if torch_flavour == "auto" else (torch_flavour,)
    if any(branch_satisfies(branch, flavour) for flavour in wanted):
        return None
    needs = ", ".join(f"{flavour} needs {min_driver_for(flavour)}+" for flavour in wanted)
    if os_id == "debian":
        return (
            f"gpu.driver.mode: install gets Debian {os_version}'s own NVIDIA driver, branch {branch} "
            f"(gpu.driver.branch cannot be pinned there), too old for torch ({needs})"
        )
    return f"gpu.driver.branch {branch} is too old for torch ({needs})"
