"""The cached Debian 12 root filesystem every test host is copied from.

Built once per recipe with debootstrap and kept under the cache directory as
``rootfs-bookworm-<digest>``; the digest covers everything that shapes the
tree, so changing the recipe builds a new one and an unchanged recipe never
rebuilds. A build goes into a temporary directory that is renamed into place
only when complete, so an interrupted build never leaves a half cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from sd35_provision.testfleet.errors import TestFleetError
from sd35_provision.testfleet.system import mounts_under, overlay_lower_dirs, run_tool, unmount_all

SUITE = "bookworm"
# What a fresh minimal Debian cloud box has and the tests rely on: systemd as
# PID 1, sshd, python3 for pyinfra's facts, sudo, and an apt that can fetch
# over https.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "procps",
    "ca-certificates",
    "curl",
)
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
HOST_CERT_DIRS = (Path("/etc/ssl/certs"), Path("/usr/local/share/ca-certificates"))
DEBIAN_CERTS = Path("/usr/share/ca-certificates")
HOST_PIP_CONF = Path("/etc/pip.conf")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bump when finish_rootfs() changes what it writes into the tree.
RECIPE_VERSION = 3


def default_cache_dir() -> Path:
    return Path(os.environ.get("SD35_ROOTFS_CACHE", "/var/cache/sd35-provision"))


@dataclass(frozen=True)
class RootfsRecipe:
    """Everything that shapes the cached tree; its digest names the cache entry."""

    suite: str
    packages: tuple[str, ...]
    mirror: str
    apt_sources: str  # deb822 text for /etc/apt/sources.list.d/debian.sources
    # This machine's trust settings, so hosts reach HTTPS registries as it does
    # (e.g. through a TLS-inspecting proxy): extra CA certificates (name, PEM)
    # and /etc/pip.conf.
    extra_ca_certs: tuple[tuple[str, str], ...] = ()
    pip_conf: str | None = None
    version: int = RECIPE_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def parse_mirror(sources_text: str, suite: str = SUITE) -> str | None:
    """The first URI of a deb822 stanza serving ``suite`` itself (not -security/-updates)."""
    for stanza in sources_text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None


def default_apt_sources(mirror: str, suite: str = SUITE) -> str:
    return (
        f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def extra_ca_certs(cert_dirs: tuple[Path, ...] = HOST_CERT_DIRS) -> tuple[tuple[str, str], ...]:
    """CA certificates this machine trusts beyond Debian's own bundle (name, PEM), sorted by name."""
    found: dict[str, str] = {}
    for directory in cert_dirs:
        if not directory.is_dir():
            continue
        for path in sorted([*directory.glob("*.pem"), *directory.glob("*.crt")]):
            target = path.resolve()
            if (
                not target.is_file() or DEBIAN_CERTS in target.parents or path.name == "ca-certificates.crt"
            ):  # the generated bundle itself
                continue
            text = target.read_text(errors="replace")
            if "BEGIN CERTIFICATE" in text:
                found.setdefault(target.stem, text)
    return tuple(sorted(found.items()))


def default_recipe(host_sources: Path = HOST_SOURCES) -> RootfsRecipe:
    """The recipe for this machine: its Debian mirror and apt sources, its extra CAs and pip.conf."""
    text = host_sources.read_text() if host_sources.is_file() else ""
    mirror = parse_mirror(text) if text else None
    apt_sources = text if mirror else default_apt_sources(DEFAULT_MIRROR)
    return RootfsRecipe(
        SUITE,
        PACKAGES,
        mirror or DEFAULT_MIRROR,
        apt_sources,
        extra_ca_certs=extra_ca_certs(),
        pip_conf=HOST_PIP_CONF.read_text() if HOST_PIP_CONF.is_file() else None,
    )


def ensure_tools() -> None:
    """Install debootstrap and systemd-nspawn with apt-get when they are missing."""
    wanted = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "ssh-keygen": "openssh-client"}
    missing = sorted({package for tool, package in wanted.items() if shutil.which(tool) is None})
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_tool(["apt-get", "update", "-qq"], what="apt-get update", env=env)
    run_tool(["apt-get", "install", "-y", "-qq", *missing], what=f"apt-get install {' '.join(missing)}", env=env)


def ensure_rootfs(
    recipe: RootfsRecipe | None = None, cache_dir: Path | None = None, progress: Callable[[str], None] | None = None
) -> Path:
    """The cached rootfs for ``recipe``, built first when absent (about a minute)."""
    recipe = recipe or default_recipe()
    cache_dir = cache_dir or default_cache_dir()
    rootfs = cache_dir / f"rootfs-{recipe.suite}-{recipe.digest()}"
    if rootfs.is_dir():
        return rootfs
    ensure_tools()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache_dir):
        if rootfs.is_dir():  # built by someone else while we waited
            return rootfs
        _remove_stale_builds(cache_dir)
        building = cache_dir / f"building-{recipe.digest()}"
        log = cache_dir / f"build-{recipe.digest()}.log"
        if progress:
            progress(f"building the {recipe.suite} rootfs with debootstrap (about a minute; log: {log})")
        try:
            run_tool(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(recipe.packages)}",
                    recipe.suite,
                    str(building),
                    recipe.mirror,
                ],
                what="debootstrap",
                log=log,
            )
            finish_rootfs(building, recipe)
        except BaseException:
            _remove_tree(building)
            raise
        building.rename(rootfs)
        _remove_old_caches(cache_dir, keep=rootfs)
    return rootfs


def finish_rootfs(root: Path, recipe: RootfsRecipe) -> None:
    """Turn a debootstrap tree into the shared base: per-host identity removed, apt usable."""
    for needed in ("usr/sbin/sshd", "lib/systemd/systemd", "usr/bin/python3"):
        if not (root / needed).exists():
            raise TestFleetError(f"debootstrap left no /{needed} in {root}; see the build log beside it")
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(recipe.apt_sources)
    # Each host gets its own host keys and machine id at `up`.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    if recipe.extra_ca_certs:
        local_certs = root / "usr/local/share/ca-certificates"
        local_certs.mkdir(parents=True, exist_ok=True)
        for name, pem in recipe.extra_ca_certs:
            (local_certs / f"{name}.crt").write_text(pem)
        run_tool(["chroot", str(root), "update-ca-certificates"], what="update-ca-certificates in the new rootfs")
    if recipe.pip_conf is not None:
        (root / "etc/pip.conf").write_text(recipe.pip_conf)


@contextmanager
def _build_lock(cache_dir: Path) -> Iterator[None]:
    # Two test runs starting at once build the rootfs once.
    with open(cache_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_stale_builds(cache_dir: Path) -> None:
    # Under the build lock, any building-* directory is left over from an interrupted build.
    for stale in cache_dir.glob("building-*"):
        _remove_tree(stale)


def _remove_old_caches(cache_dir: Path, keep: Path) -> None:
    # An older recipe's tree stays while a host's disk still sits on top of it.
    in_use = overlay_lower_dirs()
    for old in cache_dir.glob(f"rootfs-{SUITE}-*"):
        if old != keep and old.is_dir() and str(old) not in in_use:
            _remove_tree(old)
    kept = {path.name.rsplit("-", 1)[1] for path in cache_dir.glob(f"rootfs-{SUITE}-*")}
    for log in cache_dir.glob("build-*.log"):
        if log.stem.split("-", 1)[1] not in kept:
            log.unlink()


def _remove_tree(path: Path) -> None:
    """Delete a tree, unmounting first what debootstrap may have left mounted in it."""
    if not path.exists():
        return
    unmount_all(path)
    if mounts_under(path):
        raise TestFleetError(f"{path} still has mounts ({', '.join(mounts_under(path))}); unmount them and retry")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
