"""Rolling and canary updates: which hosts go in which wave, and when the rollout stops.

``apply --canary N`` updates the first N hosts (spec order) on their own;
``--batch N|P%`` updates the rest N hosts (or P% of all hosts, rounded up) at a
time. Every wave is a complete apply of its hosts, smoke test and rollback
included; the next wave starts only when the wave passed. Hosts of waves that
never start are not connected to at all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_BATCH = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


@dataclass(frozen=True)
class BatchSize:
    value: int
    percent: bool

    def hosts_per_batch(self, total: int) -> int:
        if not self.percent:
            return self.value
        return max(1, math.ceil(total * self.value / 100))

    def __str__(self) -> str:
        return f"{self.value}{'%' if self.percent else ''}"


def parse_batch(text: str) -> BatchSize:
    """``"2"`` or ``"25%"``; ValueError with what is accepted otherwise."""
    match = _BATCH.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a host count (e.g. 2) or a percentage of the hosts (e.g. 25%)")
    value, percent = int(match.group(1)), bool(match.group(2))
    if value < 1 or (percent and value > 100):
        raise ValueError(f"{text!r}: a batch is 1 or more hosts, or 1% to 100% of them")
    return BatchSize(value, percent)


@dataclass(frozen=True)
class Rollout:
    batch: BatchSize | None = None
    canary: int = 0

    @property
    def staged(self) -> bool:
        return self.batch is not None or self.canary > 0


@dataclass(frozen=True)
class Wave:
    label: str  # "canary", "batch 2/3"
    hosts: tuple[str, ...]
    canary: bool = False


def plan_waves(hosts: list[str], rollout: Rollout) -> list[Wave]:
    """Split ``hosts`` (in spec order) into the waves of ``rollout``; no empty wave."""
    waves: list[Wave] = []
    rest = list(hosts)
    if rollout.canary:
        waves.append(Wave("canary", tuple(rest[: rollout.canary]), canary=True))
        rest = rest[rollout.canary :]
    if rest:
        size = rollout.batch.hosts_per_batch(len(hosts)) if rollout.batch else len(rest)
        chunks = [tuple(rest[i : i + size]) for i in range(0, len(rest), size)]
        if rollout.batch is None:
            waves.append(Wave("rest", chunks[0]))
        else:
            waves += [Wave(f"batch {n}/{len(chunks)}", chunk) for n, chunk in enumerate(chunks, 1)]
    return waves


def stop_reason(
    wave: Wave, failed: list[str], failed_in_rollout: int, total: int, fail_percent: int | None
) -> str | None:
    """Why the rollout must stop after ``wave`` (None: go on to the next wave).

    A canary must pass on every host. A batch must too, unless ``--fail-percent``
    allows failures: then the rollout goes on while the failed hosts of the whole
    rollout stay within that share of all its hosts.
    """
    if not failed:
        return None
    names = ", ".join(failed)
    if wave.canary:
        return f"the canary failed ({names}); the rollout stopped before any other host"
    if fail_percent is not None and failed_in_rollout * 100 <= fail_percent * total:
        return None
    return f"{wave.label} failed ({names}); the rollout stopped before the next batch"
