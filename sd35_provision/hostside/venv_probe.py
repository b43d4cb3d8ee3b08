"""The PEP 508 marker values of this interpreter and what is installed in it, as one JSON line.

Run on hosts as ``<python> -c <this file>`` by the Venv and
InterpreterEnvironment facts (sd35_provision/facts/venv.py): the lock's pins
depend on the markers, and the venv is checked against the lock. Standard
library only, Python 3.8+.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys


def marker_environment() -> dict[str, str]:
    """The markers the lock's pins may name (as packaging.markers.default_environment spells them)."""
    return {
        "implementation_name": sys.implementation.name,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "python_full_version": platform.python_version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def installed() -> dict[str, str | None]:
    """``{distribution name: version}`` of what this interpreter can import.

    Read from each distribution's header lines: ``Distribution.metadata`` parses
    the whole file as an email, long descriptions included (torch's), ten times
    slower, and a no-op ``drift`` runs this on every host.
    """
    found: dict[str, str | None] = {}
    for distribution in importlib.metadata.distributions():
        name, version = _name_and_version(distribution)
        if name:
            found[name] = version
    return found


def _name_and_version(distribution: importlib.metadata.Distribution) -> tuple[str | None, str | None]:
    text = distribution.read_text("METADATA") or distribution.read_text("PKG-INFO") or ""
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line
        key, _, value = line.partition(":")
        if key == "Name" and name is None:
            name = value.strip() or None
        elif key == "Version" and version is None:
            version = value.strip()
    return name, version


if __name__ == "__main__":
    # "markers": the interpreter's markers only (InterpreterEnvironment), not what is installed in it.
    if sys.argv[1:] == ["markers"]:
        print(json.dumps({"environment": marker_environment()}))
    else:
        print(json.dumps({"environment": marker_environment(), "packages": installed()}))
