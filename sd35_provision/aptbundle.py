"""Debian packages for hosts without a mirror: ``sd35-provision debs`` and ``system.apt_bundle``.

The layers install a few packages with apt (``APT_PACKAGES``). An air-gapped
host has no mirror, so ``debs`` downloads them, with every dependency, for a
host's OS release and architecture into ``DIR/<release>-<arch>/`` on this
machine, and writes the ``Packages`` index of a flat apt repository beside
them. With ``system.apt_bundle: DIR`` in the spec, the system layer pushes
that directory to a host that lacks one of the packages and apt installs from
it as a ``file:`` repository, resolving dependencies against what the host
already has (only what is missing is installed; no other source is read).

Dependencies are resolved in a throwaway apt root with an empty package
database (``-o Dir=...``), so the bundle holds everything the packages need,
whatever the host has; the release's own archive keys check what is
downloaded (``/usr/share/keyrings``).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sd35_provision.errors import Sd35Error

# What the layers install with apt, by layer (the one definition: the deploys use these).
SYSTEM_PACKAGES = ("git", "git-lfs")
PYTHON_PACKAGES = ("python3-venv",)
APT_PACKAGES = (*SYSTEM_PACKAGES, *PYTHON_PACKAGES)

INDEX = "Packages"

# Where each release's packages come from, and the key that signs them.
DEBIAN_RELEASES = ("bullseye", "bookworm", "trixie")
UBUNTU_RELEASES = ("jammy", "noble")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
KEYRINGS = {
    "debian": Path("/usr/share/keyrings/debian-archive-keyring.gpg"),
    "ubuntu": Path("/usr/share/keyrings/ubuntu-archive-keyring.gpg"),
}


class AptBundleError(Sd35Error):
    """The bundle could not be made (no apt here, an unknown release, the mirror refused)."""


@dataclass(frozen=True)
class Bundle:
    """One release's bundle on this machine: ``DIR/<release>-<arch>/``."""

    directory: Path
    release: str
    arch: str

    @property
    def debs(self) -> list[Path]:
        return sorted(self.directory.glob("*.deb"))

    def files(self) -> list[tuple[Path, str]]:
        """(local file, sha256) of what goes to the host: every .deb and the index."""
        return [(path, _sha256(path)) for path in [*self.debs, self.directory / INDEX]]


def bundle_directory(root: Path, release: str, arch: str) -> Path:
    return root / f"{release}-{arch}"


def find_bundle(root: Path, release: str, arch: str) -> Bundle | None:
    """The bundle of ``release``/``arch`` under ``root``; None when it was not downloaded."""
    directory = bundle_directory(root, release, arch)
    if not (directory / INDEX).is_file() or not any(directory.glob("*.deb")):
        return None
    return Bundle(directory, release, arch)


def sources(release: str, mirror: str | None = None) -> str:
    """The throwaway apt root's sources.list for ``release`` (main, updates, security)."""
    if release in DEBIAN_RELEASES:
        keyring, base = KEYRINGS["debian"], mirror or DEBIAN_MIRROR
        lines = [f"{base} {release} main", f"{base} {release}-updates main"]
        if mirror is None:
            lines.append(f"{DEBIAN_SECURITY} {release}-security main")
    elif release in UBUNTU_RELEASES:
        keyring, base = KEYRINGS["ubuntu"], mirror or UBUNTU_MIRROR
        lines = [f"{base} {suite} main universe" for suite in (release, f"{release}-updates", f"{release}-security")]
    else:
        known = ", ".join((*DEBIAN_RELEASES, *UBUNTU_RELEASES))
        raise AptBundleError(f"--release {release}: not a release this knows ({known})")
    if not keyring.is_file():
        raise AptBundleError(f"{keyring} is missing: the archive key to check {release}'s packages with")
    return "".join(f"deb [signed-by={keyring}] {line}\n" for line in lines)


def apt_options(root: Path, arch: str) -> list[str]:
    """apt-get options for a throwaway root: its own lists, cache, empty package database and lock."""
    return [
        "-o",
        f"Dir={root}",
        "-o",
        f"Dir::State::status={root}/var/lib/dpkg/status",
        "-o",
        f"Dir::Etc::SourceList={root}/etc/apt/sources.list",
        "-o",
        f"Dir::Etc::SourceParts={root}/etc/apt/sources.list.d",
        "-o",
        f"Dir::Etc::Preferences={root}/etc/apt/preferences",
        "-o",
        f"Dir::Etc::PreferencesParts={root}/etc/apt/preferences.d",
        "-o",
        "Debug::NoLocking=1",
        "-o",
        f"APT::Architecture={arch}",
        "-o",
        f"APT::Architectures={arch}",
        "-o",
        "APT::Install-Recommends=0",
        "-o",
        "Acquire::Languages=none",
    ]


def download_bundle(
    root: Path,
    release: str,
    arch: str,
    packages: tuple[str, ...] = APT_PACKAGES,
    mirror: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Bundle:
    """Download ``packages`` and their dependencies for ``release``/``arch`` into ``root/<release>-<arch>/``."""
    say = progress or (lambda line: None)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise AptBundleError("debs needs apt-get and dpkg-deb on this machine (a Debian or Ubuntu control machine)")
    target = bundle_directory(root, release, arch)
    listing = sources(release, mirror)
    with tempfile.TemporaryDirectory(prefix="sd35-apt-") as scratch:
        apt_root = Path(scratch)
        for directory in (
            "etc/apt/sources.list.d",
            "etc/apt/preferences.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
        ):
            (apt_root / directory).mkdir(parents=True)
        (apt_root / "var/lib/dpkg/status").write_text("")
        (apt_root / "etc/apt/sources.list").write_text(listing)
        options = apt_options(apt_root, arch)
        say(f"{release}-{arch}: reading the package lists")
        _apt(["apt-get", *options, "update"], f"{release}: apt-get update")
        say(f"{release}-{arch}: downloading {', '.join(packages)} and their dependencies")
        _apt(
            ["apt-get", *options, "install", "--download-only", "--yes", *packages],
            f"{release}: apt-get install --download-only",
        )
        downloaded = sorted((apt_root / "var/cache/apt/archives").glob("*.deb"))
        if target.exists():
            shutil.rmtree(target)  # a bundle is one resolution: no package of an older one stays
        target.mkdir(parents=True)
        for deb in downloaded:
            shutil.copy2(deb, target / deb.name)
    write_index(target)
    bundle = Bundle(target, release, arch)
    size = sum(path.stat().st_size for path in bundle.debs)
    say(f"{release}-{arch}: {len(bundle.debs)} packages, {size / 1e6:.1f} MB in {target}")
    return bundle


def write_index(directory: Path) -> None:
    """The ``Packages`` file of a flat repository (``deb [trusted=yes] file:DIR ./``) of the .deb files in it."""
    stanzas = []
    for deb in sorted(directory.glob("*.deb")):
        control = subprocess.run(
            ["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=False, timeout=60
        )
        if control.returncode != 0:
            raise AptBundleError(f"{deb}: not a Debian package ({control.stderr.strip()})")
        fields = control.stdout.rstrip("\n")
        stanzas.append(f"{fields}\nFilename: ./{deb.name}\nSize: {deb.stat().st_size}\nSHA256: {_sha256(deb)}\n")
    (directory / INDEX).write_text("\n".join(stanzas))


def _apt(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    output = result.stdout + result.stderr
    # apt-get update exits 0 when a source failed ("W: Failed to fetch"): that is a failure here.
    failed = result.returncode != 0 or any(
        line.startswith(("W: Failed to fetch", "E: ")) for line in output.splitlines()
    )
    if failed:
        from sd35_provision.report import failure_cause

        raise AptBundleError(f"{what} failed: {failure_cause(output)}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
