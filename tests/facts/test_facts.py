"""Every fact parser against recorded outputs: tests/facts/<Fact>/<case>.json.

A case holds ``arg`` (the fact's arguments), ``output`` (the command's stdout
lines, recorded), ``fact`` (the expected value, as JSON) and optionally
``command`` (the exact command). Dicts in ``fact`` name only the keys that
matter to the case, so a reason can be reworded without touching every case;
lists must match item for item.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import sd35_provision.facts as facts

CASES = sorted(Path(__file__).parent.glob("*/*.json"))


def jsonable(value: Any) -> Any:
    """Dataclasses to dicts, tuples to lists: the value as the case's JSON spells it."""

    def default(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
        raise TypeError(f"{obj!r} is not JSON-able")

    return json.loads(json.dumps(value, default=default))


def matches(actual: Any, expected: Any, where: str = "fact") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing from {actual!r}"
            matches(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=False)):
            matches(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("case_path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_fact_parses_recorded_output(case_path: Path) -> None:
    case = json.loads(case_path.read_text())
    fact = getattr(facts, case_path.parent.name)()
    command = fact.command(**case.get("arg", {}))
    if "command" in case:
        assert command == case["command"]
    matches(jsonable(fact.process(case["output"])), case["fact"])


@pytest.mark.parametrize(
    "fact_class, arg",
    [
        (facts.StorageKind, {"path": "{tmp}/not/yet"}),
        (facts.FreeSpace, {"path": "{tmp}/not yet/there"}),
        (facts.PythonVersions, {}),
        (facts.NvidiaGpus, {}),
        (facts.NvidiaPciDevices, {}),
        (facts.NvidiaKernelModule, {}),
        (facts.RebootState, {}),
        (facts.GatewayState, {}),
    ],
)
def test_commands_run_under_sh_here(tmp_path: Path, fact_class: type, arg: dict[str, str]) -> None:
    """Each command is valid POSIX sh, exits 0 and gives its parser something it understands."""
    fact = fact_class()
    command = fact.command(**{key: value.format(tmp=tmp_path) for key, value in arg.items()})
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    value = fact.process(result.stdout.splitlines())
    if fact_class in (facts.StorageKind, facts.FreeSpace):
        assert str(tmp_path) in (value.path, getattr(value, "nearest", None))
    if fact_class is facts.StorageKind:
        assert value.kind in {"ssd", "hdd", "unknown"} and value.reason


FIXTURES = Path(__file__).parents[1] / "fixtures"
RECORDED_SMI = sorted(
    d for d in FIXTURES.iterdir() if (d / "nvidia-smi-q.txt").exists() and (d / "nvidia-smi-query-gpu.txt").exists()
)


def fake_nvidia_smi(tmp_path: Path, query: str, q: str, status: int = 0) -> dict[str, str]:
    """A PATH with an nvidia-smi that replays recorded outputs (stdout, exit status)."""
    (tmp_path / "query.txt").write_text(query)
    (tmp_path / "q.txt").write_text(q)
    script = tmp_path / "nvidia-smi"
    script.write_text(
        f'#!/bin/sh\ncase "$*" in *--query-gpu*) cat {tmp_path}/query.txt;; *-q*) cat {tmp_path}/q.txt;; '
        f"esac\nexit {status}\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{tmp_path}:/usr/bin:/bin"}


@pytest.mark.parametrize("recorded", RECORDED_SMI, ids=[d.name for d in RECORDED_SMI])
def test_nvidia_gpus_command_on_recorded_nvidia_smi(tmp_path: Path, recorded: Path) -> None:
    """The whole command, run against nvidia-smi outputs recorded on a real H100 host."""
    env = fake_nvidia_smi(
        tmp_path, (recorded / "nvidia-smi-query-gpu.txt").read_text(), (recorded / "nvidia-smi-q.txt").read_text()
    )
    fact = facts.NvidiaGpus()
    result = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True, check=True, env=env)
    status = fact.process(result.stdout.splitlines())
    assert status.state == "ok" and status.cuda_version
    # The directory names the card: h100* recorded on the lent H100, h200* on the lent 2 x H200.
    name, min_mib = {"h100": ("NVIDIA H100", 80_000), "h200": ("NVIDIA H200", 140_000)}[recorded.name[:4]]
    for gpu in status.gpus:
        assert gpu.name.startswith(name) and gpu.compute_capability == (9, 0) and gpu.fp8_capable
        assert gpu.memory_mib and gpu.memory_mib > min_mib and gpu.driver_version[:3].isdigit()
    if recorded.name == "h200":
        assert [g.index for g in status.gpus] == [0, 1] and len({g.uuid for g in status.gpus}) == 2


def test_nvidia_gpus_command_when_the_driver_is_not_loaded(tmp_path: Path) -> None:
    message = (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.\n"
    )
    env = fake_nvidia_smi(tmp_path, message, message, status=9)
    fact = facts.NvidiaGpus()
    result = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True, check=True, env=env)
    status = fact.process(result.stdout.splitlines())
    assert (status.state, status.error) == ("failed", message.strip())


def test_nvidia_gpus_command_without_nvidia_smi(tmp_path: Path) -> None:
    fact = facts.NvidiaGpus()
    result = subprocess.run(
        ["/bin/sh", "-c", fact.command()], capture_output=True, text=True, check=True, env={"PATH": str(tmp_path)}
    )
    assert fact.process(result.stdout.splitlines()).state == "absent"
