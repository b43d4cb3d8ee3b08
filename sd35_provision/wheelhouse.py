"""Wheelhouses on the control machine: which of their wheels a lock needs, and filling one.

A host with ``python.wheelhouse`` gets only the wheels whose sha256 is in its
lock, pushed once, and pip installs offline from them. Hashing a 500 MB torch
wheel takes a while (a CUDA wheelhouse is 3-4 GB, read again by every ``plan``
and ``drift``), so a wheelhouse's hashes are kept between runs in a stat-keyed
cache (size, mtime, ctime, inode: hostside/manifests.py's HashCache, as the
model push keeps its own), under ``$XDG_CACHE_HOME/sd35-provision/wheel-hashes``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from sd35_provision import localcache
from sd35_provision.errors import Sd35Error
from sd35_provision.hostside.manifests import HashCache
from sd35_provision.locks import Lock


class WheelhouseError(Sd35Error):
    """The wheelhouse cannot serve the lock."""


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str
    name: str  # canonical
    version: str


def hash_cache_path(directory: Path) -> Path:
    """Where the hashes of ``directory``'s wheels are kept between runs."""
    return localcache.hash_cache_path(directory, "wheel-hashes")


def wheels_in(directory: Path) -> list[Wheel]:
    cache_path = hash_cache_path(directory)
    cache = HashCache(str(cache_path))
    wheels = []
    for path in sorted(directory.glob("*.whl")):
        try:
            name, version, _, _ = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        digest = cache.digests(path.name, str(path), path.stat(), ("sha256",))["sha256"]
        wheels.append(Wheel(path, digest, canonicalize_name(name), str(version)))
    present = {wheel.path.name for wheel in wheels}
    if set(cache.entries) - present:  # wheels gone from the wheelhouse: forgotten
        cache.entries = {name: entry for name, entry in cache.entries.items() if name in present}
        cache.changed = True
    try:
        cache.save()
    except OSError:
        pass  # an unwritable cache only costs the hashing again next run
    return wheels


def wheels_for(directory: Path, lock: Lock, environment: dict[str, str]) -> list[Wheel]:
    """The wheels of ``directory`` the lock installs on a host with this marker environment.

    Raises ``WheelhouseError`` naming every pin without a hash-matching wheel,
    so the host fails before anything is pushed.
    """
    if not directory.is_dir():
        raise WheelhouseError(f"python.wheelhouse {directory} is not a directory")
    available = wheels_in(directory)
    chosen, missing = [], []
    for pin in lock.pins:
        if not pin.applies_to(environment):
            continue
        matching = [wheel for wheel in available if wheel.sha256 in pin.hashes]
        if matching:
            chosen.extend(matching)
        else:
            missing.append(f"{pin.name}=={pin.version}")
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise WheelhouseError(
            f"python.wheelhouse {directory} has no wheel matching lock {lock.flavour}'s hashes for {shown}; "
            f"fill it with: sd35-provision wheelhouse {directory} --flavour {lock.flavour} "
            f"--python {environment.get('python_version', '3.11')}"
        )
    return chosen


def fill_wheelhouse(directory: Path, lock: Lock, python_version: str, platform: str = "manylinux_2_28_x86_64") -> None:
    """Download every wheel of ``lock`` for CPython ``python_version`` on ``platform`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    requirements = directory / f".{lock.id}.txt"
    requirements.write_text(lock.text)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--platform",
        platform,
        "--platform",
        "linux_x86_64",
        *[arg for tag in ("2_17", "2_24", "2_27") for arg in ("--platform", f"manylinux_{tag}_x86_64")],
        "--platform",
        "manylinux2014_x86_64",
        "-d",
        str(directory),
        "-r",
        str(requirements),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    requirements.unlink(missing_ok=True)
    if result.returncode != 0:
        raise WheelhouseError(f"pip download for lock {lock.flavour} failed:\n{result.stderr.strip()[-2000:]}")


CACHE_ROOT = Path("/var/cache/sd35-provision")


def cached_wheelhouse(lock: Lock, python_version: str = "3.11") -> Path:
    """A wheelhouse for ``lock`` kept between runs (the demo and the tests push it to the test fleet)."""
    directory = CACHE_ROOT / f"wheelhouse-{lock.id}-py{python_version}"
    stamp = directory / ".complete"
    if not stamp.exists():
        fill_wheelhouse(directory, lock, python_version)
        stamp.touch()
    return directory
