"""Which NVIDIA driver a CUDA build of PyTorch needs.

Minimum Linux driver per CUDA toolkit, from NVIDIA's CUDA release notes
("CUDA Toolkit and Corresponding Driver Versions", the GA driver of each
toolkit). We enforce the full toolkit driver, not the older minimum allowed by
minor-version compatibility: PTX JIT and some libraries (e.g. the cuBLAS
float8 paths) need it, and a too-old driver fails only at the first kernel.
"""

from __future__ import annotations

MIN_DRIVER_FOR_CUDA: dict[str, str] = {
    "11.8": "520.61.05",
    "12.1": "530.30.02",
    "12.4": "550.54.14",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}

# torch wheel flavours we ship locks for -> CUDA toolkit they are built with.
FLAVOUR_CUDA: dict[str, str | None] = {
    "cpu": None,
    "cu126": "12.6",
    "cu128": "12.8",
}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def min_driver_for(flavour: str) -> str | None:
    cuda = FLAVOUR_CUDA.get(flavour)
    return MIN_DRIVER_FOR_CUDA[cuda] if cuda else None


def driver_satisfies(driver_version: str, flavour: str) -> bool:
    needed = min_driver_for(flavour)
    return needed is None or version_tuple(driver_version) >= version_tuple(needed)


def pick_flavour(driver_version: str | None) -> str | None:
    """The newest CUDA flavour the driver runs; None if none (driver too old)."""
    if driver_version is None:
        return "cpu"
    for flavour in sorted((f for f in FLAVOUR_CUDA if FLAVOUR_CUDA[f]), key=lambda f: version_tuple(FLAVOUR_CUDA[f]), reverse=True):
        if driver_satisfies(driver_version, flavour):
            return flavour
    return None
