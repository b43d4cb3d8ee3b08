"""The Python 3 interpreters a host has on PATH."""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import FactBase

from sd35_provision.cuda_compat import version_tuple


@dataclass(frozen=True)
class PythonInterpreter:
    name: str  # "python3", "python3.11"
    path: str  # "/usr/bin/python3.11"
    version: str  # "3.11.2"

    def at_least(self, minimum: str) -> bool:
        return version_tuple(self.version)[: len(version_tuple(minimum))] >= version_tuple(minimum)


class PythonVersions(FactBase[list[PythonInterpreter]]):
    """
    ``python3`` and ``python3.X`` on PATH with their versions, in PATH order;
    a name found in several PATH directories counts once (the first, as the
    shell would run it).
    """

    def command(self) -> str:
        probe = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
        return (
            "echo \"$PATH\" | tr ':' '\\n' | while read -r d; do "
            'for f in "$d"/python3 "$d"/python3.[0-9] "$d"/python3.[0-9][0-9]; do '
            '[ -f "$f" ] && [ -x "$f" ] || continue; '
            f'v=$("$f" -c "{probe}" 2>/dev/null) || continue; '
            'echo "${f##*/} $f $v"; '
            "done; done; true"
        )

    def process(self, output: list[str]) -> list[PythonInterpreter]:
        found: dict[str, PythonInterpreter] = {}
        for line in output:
            parts = line.split()
            if len(parts) < 3 or not parts[-1][:1].isdigit():
                continue
            name, path, version = parts[0], " ".join(parts[1:-1]), parts[-1]
            found.setdefault(name, PythonInterpreter(name=name, path=path, version=version))
        return list(found.values())

    @staticmethod
    def default() -> list[PythonInterpreter]:
        return []
