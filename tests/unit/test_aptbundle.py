"""Air-gapped apt: the bundle ``debs`` makes (a flat repository apt resolves from) and what the layers do with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pyinfra.api import deploy

from sd35_provision.aptbundle import SYSTEM_PACKAGES, AptBundleError, apt_options, find_bundle, sources, write_index
from sd35_provision.deploys.apt import install_packages
from sd35_provision.errors import HostError
from sd35_provision.hostspec.settings import GpuSettings, HostSettings, SystemSettings
from tests.pyinfra_fakes import Output, run_deploy
from tests.unit.test_nvidia_deploy import dpkg_l

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BUNDLE_ON_HOST = "/var/cache/sd35-apt-bundle/bookworm-amd64"


def fake_deb(directory: Path, name: str, depends: str | None = None) -> Path:
    """A real (empty) Debian package, built with dpkg-deb."""
    tree = directory / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    control = f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n"
    (tree / "DEBIAN" / "control").write_text(control + (f"Depends: {depends}\n" if depends else ""))
    deb = directory / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture
def bundle_root(tmp_path: Path) -> Path:
    directory = tmp_path / "debs" / "bookworm-amd64"
    directory.mkdir(parents=True)
    fake_deb(directory, "git", depends="liberror-perl")
    fake_deb(directory, "liberror-perl")
    fake_deb(directory, "git-lfs", depends="git")
    fake_deb(directory, "python3-venv")
    for tree in directory.glob("*-tree"):
        subprocess.run(["rm", "-rf", str(tree)], check=True)
    write_index(directory)
    return tmp_path / "debs"


def test_the_index_is_a_flat_repository_apt_resolves_dependencies_from(bundle_root, tmp_path):
    bundle = find_bundle(bundle_root, "bookworm", "amd64")
    assert bundle is not None and [path.name for path in bundle.debs][0] == "git-lfs_1.0_all.deb"
    assert find_bundle(bundle_root, "jammy", "amd64") is None
    index = (bundle.directory / "Packages").read_text()
    assert "Package: git-lfs\n" in index and "Filename: ./git-lfs_1.0_all.deb\n" in index and "SHA256: " in index
    # apt itself, in a throwaway root with nothing installed, reading only the bundle as the host will.
    root = tmp_path / "apt"
    for directory in ("etc/apt/sources.list.d", "etc/apt/preferences.d", "var/lib/apt/lists/partial", "var/lib/dpkg"):
        (root / directory).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    (root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{bundle.directory} ./\n")
    apt = ["apt-get", *apt_options(root, "amd64")]
    subprocess.run([*apt, "update"], check=True, capture_output=True)
    simulated = subprocess.run([*apt, "install", "--simulate", "git-lfs"], check=True, capture_output=True, text=True)
    assert {line.split()[1] for line in simulated.stdout.splitlines() if line.startswith("Inst ")} == {
        "git-lfs",
        "git",
        "liberror-perl",
    }


def test_sources_of_a_release_are_signed_by_its_archive_key():
    listing = sources("bookworm").splitlines()
    assert listing == [
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian "
        "bookworm-updates main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security "
        "bookworm-security main",
    ]
    with pytest.raises(AptBundleError, match="--release sid: not a release this knows"):
        sources("sid")


def host(bundle: Path | None) -> HostSettings:
    return HostSettings(
        name="node1", address="10.0.0.1", gpu=GpuSettings(accelerator="cpu"), system=SystemSettings(apt_bundle=bundle)
    )


@deploy("System")
def system_layer(plan, recorder) -> None:
    """The system layer's packages, as it installs them (sd35_provision/deploys/system.py)."""
    install_packages(plan, "Install git and git-lfs", SYSTEM_PACKAGES, "System", push=True)


def system(settings: HostSettings, installed: tuple[str, ...] = (), on_host: dict[str, str] | None = None):
    facts = {
        "LinuxDistribution": Output((FIXTURES / "debian-12" / "linux-distribution.txt").read_text().splitlines()),
        "DebArch": "amd64",
        "DebPackages": dpkg_l(*((name, "1.0") for name in installed)),
        "BundleHashes": {f"directory={BUNDLE_ON_HOST}": on_host or {}},
    }
    return run_deploy(system_layer, facts, settings)


def test_a_host_without_the_packages_gets_the_bundle_pushed_and_apt_installs_from_it(bundle_root):
    bundle = find_bundle(bundle_root, "bookworm", "amd64")
    assert bundle is not None
    files = dict(bundle.files())
    have = {"git_1.0_all.deb": files[bundle.directory / "git_1.0_all.deb"], "Packages": "stale"}
    run = system(host(bundle_root), on_host=have)
    push = run.commands("Push apt bundle bookworm-amd64")
    uploads = [command[2] for command in push if isinstance(command, list) and command[0] == "upload"]
    # Only what the host lacks or has with another hash: the index changed, git's package did not.
    assert sorted(uploads) == sorted(
        f"{BUNDLE_ON_HOST}/{name}.partial"
        for name in ("Packages", "git-lfs_1.0_all.deb", "liberror-perl_1.0_all.deb", "python3-venv_1.0_all.deb")
    )
    [install] = run.commands("Install git and git-lfs")
    assert f"bundle={BUNDLE_ON_HOST}\n" in install and "deb [trusted=yes] file:%s ./" in install
    assert install.rstrip().endswith("install --yes --no-install-recommends git git-lfs")
    assert "apt-get update" not in " ".join(map(str, run.commands()))  # never the host's own mirror

    # Everything installed: no push, no install (no drift from the bundle).
    done = system(host(bundle_root), installed=("git", "git-lfs", "python3-venv"))
    assert done.changes == []


def test_a_bundle_without_the_hosts_release_names_the_command_that_makes_it(tmp_path):
    (tmp_path / "debs").mkdir()
    with pytest.raises(HostError, match=r"has no bookworm-amd64 bundle.*sd35-provision debs .* --release bookworm"):
        system(host(tmp_path / "debs"))


def test_without_a_bundle_the_mirror_is_used_as_before():
    run = system(host(None))
    assert [op.name for op in run.changes][0] == "System | Install git and git-lfs"
    assert "apt-get update" in " ".join(map(str, run.commands("Install git and git-lfs")))
