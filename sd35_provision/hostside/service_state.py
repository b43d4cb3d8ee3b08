"""What the inference service on this host is doing, as one JSON line (the ServiceState fact).

Run by the host's own ``python3`` (standard library only, Python 3.8+) as
``python3 -c <this file> UNIT INSTALL_ROOT SMOKE_RECORD URL API_KEY_FILE``:
systemd's view of the unit (None when it was never installed), /readyz
through the loopback (with the API key when the service has one; it stays on
the host), the release ``current`` points at, its ``release.json`` and the
last smoke test's record. sd35_provision/facts/service.py parses the line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request


def unit_state(unit: str) -> str | None:
    """systemd's ActiveState of ``unit``; None when there is no such unit."""
    try:
        shown = subprocess.run(
            ["systemctl", "show", unit, "--property=LoadState", "--property=ActiveState"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    states = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    # A unit that was never installed is "inactive" to is-active: say it is not there.
    return None if states.get("LoadState", "not-found") == "not-found" else states.get("ActiveState")


def read_json(path: str) -> object:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def readiness(url: str, key_file: str) -> dict:
    """``ready_status`` (None: nothing answered), ``ready_phase`` and, with no answer, ``ready_error``."""
    out: dict = {}
    request = urllib.request.Request(url + "/readyz")
    try:
        with open(key_file) as handle:
            request.add_header("Authorization", "Bearer " + handle.read().strip())
    except OSError:
        pass
    try:
        with urllib.request.urlopen(request, timeout=3) as answer:
            out["ready_status"], body = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        out["ready_status"], body = error.code, error.read()
    except Exception as error:  # noqa: BLE001 - whatever went wrong, the probe still answers
        out["ready_status"], body = None, b""
        out["ready_error"] = str(getattr(error, "reason", error))
    try:
        out["ready_phase"] = json.loads(body or b"{}").get("status")
    except (ValueError, AttributeError):  # not JSON, or not an object
        out["ready_phase"] = None
    return out


def service_state(unit: str, install_root: str, smoke_record: str, url: str, key_file: str) -> dict:
    current = os.path.join(install_root, "current")
    return {
        "active": unit_state(unit),
        "release": os.readlink(current) if os.path.islink(current) else None,
        "release_info": read_json(os.path.join(current, "release.json")),
        "smoke": read_json(smoke_record),
        **readiness(url, key_file),
    }


def main(argv: list[str]) -> int:
    unit, install_root, smoke_record, url, key_file = argv[:5]
    print(json.dumps(service_state(unit, install_root, smoke_record, url, key_file)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
