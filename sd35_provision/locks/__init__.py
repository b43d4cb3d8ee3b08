"""The hash-locked requirements of the host venv, one file per torch flavour.

``<flavour>.txt`` is generated from ``<flavour>.in`` by ``scripts/lock.sh``
(uv, ``--generate-hashes``); hosts install it with ``pip --require-hashes``.
A lock's id is the hash of its text: the venv built from it lives in
``venvs/<id>`` so a changed lock always means a new venv beside the old one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from sd35_provision.errors import Sd35Error

FLAVOURS: tuple[str, ...] = ("cpu", "cu128", "cu130")

# Installed by ``python -m venv`` itself, not part of what we lock.
VENV_TOOLING = frozenset({"pip", "setuptools", "wheel"})


class LockError(Sd35Error):
    """A lock file is missing or malformed."""


@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503) name
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies_to(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


@dataclass(frozen=True)
class Lock:
    flavour: str
    text: str
    pins: tuple[Pin, ...]

    @property
    def id(self) -> str:
        """Names the venv built from this lock: same text, same venv."""
        return f"{self.flavour}-{hashlib.sha256(self.text.encode()).hexdigest()[:12]}"

    @property
    def hashes(self) -> frozenset[str]:
        return frozenset(digest for pin in self.pins for digest in pin.hashes)

    def expected(self, environment: dict[str, str]) -> dict[str, str]:
        """``{name: version}`` the venv must hold on a host with these PEP 508 marker values."""
        return {pin.name: pin.version for pin in self.pins if pin.applies_to(environment)}


@cache
def load_lock(flavour: str) -> Lock:
    if flavour not in FLAVOURS:
        raise LockError(f"no lock for torch flavour {flavour!r}; shipped: {', '.join(FLAVOURS)}")
    path = resources.files(__name__) / f"{flavour}.txt"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LockError(f"lock file {path} is missing; run scripts/lock.sh {flavour}") from None
    return Lock(flavour=flavour, text=text, pins=parse_lock(text, f"{flavour}.txt"))


def load_lock_file(path) -> Lock:
    """A user's own lock (``python.lock_file``); its venvs are named ``custom-<hash>``."""
    text = path.read_text()
    return Lock(flavour="custom", text=text, pins=parse_lock(text, str(path)))


def parse_lock(text: str, source: str) -> tuple[Pin, ...]:
    """Pins of a ``pip-compile``/``uv pip compile --generate-hashes`` file; every one must be ``==`` and hashed."""
    pins = []
    for line_number, logical in _logical_lines(text):
        requirement_text, *options = logical.split(" --")
        hashes = tuple(opt.split("=", 1)[1].removeprefix("sha256:") for opt in options if opt.startswith("hash="))
        try:
            requirement = Requirement(requirement_text.strip())
        except InvalidRequirement as error:
            raise LockError(f"{source}:{line_number}: not a requirement: {error}") from None
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise LockError(f"{source}:{line_number}: {requirement.name} is not pinned with ==")
        if not hashes:
            raise LockError(f"{source}:{line_number}: {requirement.name} has no --hash")
        pins.append(Pin(canonicalize_name(requirement.name), specifiers[0].version, requirement.marker, hashes))
    return tuple(pins)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each requirement, continuation lines joined, comments dropped."""
    start = 0
    parts: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line and not parts:
            continue
        if not parts:
            start = number
        parts.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            yield start, " ".join(part for part in parts if part)
            parts = []
    if parts:
        yield start, " ".join(part for part in parts if part)


def compare_installed(lock: Lock, environment: dict[str, str], installed: dict[str, str]) -> list[str]:
    """How ``installed`` ({name: version}) differs from the lock, one readable line per package."""
    expected = lock.expected(environment)
    have: dict[str, str] = {canonicalize_name(name): version for name, version in installed.items()}
    problems = []
    for name, version in sorted(expected.items()):
        if name not in have:
            problems.append(f"{name} {version} is missing")
        elif have[name] != version:
            problems.append(f"{name} is {have[name]}, the lock pins {version}")
    for name in unlocked_packages(lock, environment, installed):
        problems.append(f"{name} {have[name]} is installed but not in the lock")
    return problems


def unlocked_packages(lock: Lock, environment: dict[str, str], installed: dict[str, str]) -> list[str]:
    """Installed distributions the lock does not have (pip, setuptools and wheel aside)."""
    have = {canonicalize_name(name) for name in installed}
    return sorted(have - set(lock.expected(environment)) - VENV_TOOLING)
