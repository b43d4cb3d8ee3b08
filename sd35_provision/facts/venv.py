"""Facts about the host venv and the wheels pushed for it."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from functools import cache

from pyinfra.api import FactBase

from sd35_provision import hostside

COMPLETE_STAMP = ".sd35-complete"


def _probe() -> str:
    """The interpreter's PEP 508 markers and installed distributions: sd35_provision/hostside/venv_probe.py."""
    return shlex.quote(hostside.source("venv_probe.py"))


@dataclass(frozen=True)
class VenvState:
    exists: bool
    complete: bool  # the build finished and stamped it
    environment: dict[str, str] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)


class Venv(FactBase[VenvState]):
    """
    Whether the venv at ``path`` was built to the end, its interpreter's
    marker environment and its installed distributions (``{name: version}``).
    """

    def command(self, path: str) -> str:
        venv = shlex.quote(path)
        return (
            f"if [ ! -d {venv} ]; then echo absent; "
            f"elif [ ! -f {venv}/{COMPLETE_STAMP} ] || [ ! -x {venv}/bin/python ]; then echo incomplete; "
            f"else echo complete; {venv}/bin/python -c {_probe()} || echo '{{}}'; fi"
        )

    def process(self, output: list[str]) -> VenvState:
        verdict = output[0].strip() if output else "absent"
        if verdict != "complete":
            return VenvState(exists=verdict == "incomplete", complete=False)
        try:
            probe = json.loads(output[1]) if len(output) > 1 else {}
        except json.JSONDecodeError:
            probe = {}
        return VenvState(
            exists=True,
            complete=bool(probe),  # a venv whose interpreter no longer runs needs rebuilding
            environment=probe.get("environment", {}),
            packages=probe.get("packages", {}),
        )

    @staticmethod
    def default() -> VenvState:
        return VenvState(exists=False, complete=False)


class InterpreterEnvironment(FactBase[dict[str, str]]):
    """The PEP 508 marker values of ``interpreter`` (the lock's pins depend on them)."""

    def command(self, interpreter: str) -> str:
        return f"{shlex.quote(interpreter)} -c {_probe()} markers"

    def process(self, output: list[str]) -> dict[str, str]:
        try:
            return json.loads("\n".join(output)).get("environment", {})
        except json.JSONDecodeError:
            return {}

    @staticmethod
    def default() -> dict[str, str]:
        return {}


class WheelHashes(FactBase[dict[str, str]]):
    """``{file name: sha256}`` of the wheels in ``directory`` (empty if there is none).

    Hashed on the host through a stat-keyed cache (sd35_provision/hostside/wheel_hashes.py):
    a no-op run reads no wheel again.
    """

    def command(self, directory: str) -> str:
        return f"python3 -c {shlex.quote(wheel_hashes_program())} {shlex.quote(directory)}"

    def process(self, output: list[str]) -> dict[str, str]:
        try:
            hashes = json.loads("\n".join(output))
        except json.JSONDecodeError:
            return {}
        return {str(name): str(digest) for name, digest in hashes.items()} if isinstance(hashes, dict) else {}

    @staticmethod
    def default() -> dict[str, str]:
        return {}


@cache
def wheel_hashes_program() -> str:
    return hostside.program("wheel_hashes.py", "manifests.py")
