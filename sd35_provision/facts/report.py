"""The `facts` command's table."""

from __future__ import annotations

from sd35_provision.facts import HostFacts


def facts_row(name: str, facts: HostFacts) -> tuple[str, ...]:
    gpus = ", ".join(f"{g['name']} ({g['memory_mib'] // 1024} GiB, cc {'.'.join(map(str, g['compute_capability']))})"
                     for g in facts.gpus) or "none"
    return (
        name,
        f"{facts.os_name} {facts.os_version}".strip(),
        facts.python_versions.get("python3", "-"),
        gpus,
        facts.driver_version or "-",
        facts.nvidia.get("cuda_version") or "-",
        "yes" if facts.fp8_capable else "no",
        f"{facts.cache_free['free_bytes'] / 1e9:.1f} GB",
        facts.cache_storage["kind"],
    )


def render_facts_table(rows: list[tuple[str, ...]]) -> str:
    header = ("HOST", "OS", "PYTHON", "GPU", "DRIVER", "CUDA", "FP8", "CACHE FREE", "SSD")
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table)
