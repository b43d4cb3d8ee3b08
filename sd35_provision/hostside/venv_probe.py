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


def installed() -> dict[str, str]:
    """``{distribution name: version}`` of what this interpreter can import."""
    return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}


if __name__ == "__main__":
    print(json.dumps({"environment": marker_environment(), "packages": installed()}))
