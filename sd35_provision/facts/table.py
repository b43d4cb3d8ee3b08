"""The ``facts`` command's table: one row per host."""

from __future__ import annotations

from collections import Counter

from sd35_provision.facts.host import HostFacts
from sd35_provision.texttable import render_rows

HEADER = ("HOST", "OS", "GPU", "DRIVER", "CUDA", "FP8", "CACHE FREE", "SSD")
SSD_WORD = {"ssd": "yes", "hdd": "no", "unknown": "unknown"}


def _gpus(facts: HostFacts) -> str:
    if facts.gpus:
        counts = Counter(
            f"{gpu.name} ({gpu.memory_mib / 1024:.0f} GiB, cc {gpu.capability_text})"
            if gpu.memory_mib
            else f"{gpu.name} (cc {gpu.capability_text})"
            for gpu in facts.gpus
        )
        return ", ".join(f"{count}x {label}" for label, count in counts.items())
    if facts.pci_without_driver:
        return f"{len(facts.pci_without_driver)}x NVIDIA on PCI, driver not working"
    if facts.nvidia.state == "failed":
        return "nvidia-smi failed"
    return "none"


def facts_row(name: str, facts: HostFacts) -> tuple[str, ...]:
    """The table row of one host, in ``HEADER``'s order."""
    free = facts.cache_free
    where = "" if free.nearest == free.path else f" (at {free.nearest})"
    return (
        name,
        f"{facts.os_name} {facts.os_version}".strip(),
        _gpus(facts),
        facts.driver_version or "-",
        facts.cuda_version or "-",
        ("yes" if facts.fp8_capable else "no") if facts.gpus else "-",
        f"{free.free_bytes / 1e9:.1f} GB{where}",
        SSD_WORD.get(facts.cache_storage.kind, facts.cache_storage.kind),
    )


def render_facts_table(rows: list[tuple[str, ...]]) -> str:
    """Rows from ``facts_row`` as an aligned plain-text table with a header."""
    return render_rows([HEADER, *rows])
