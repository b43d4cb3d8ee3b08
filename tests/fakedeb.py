"""A .deb with nothing in it but its name and version, built here with ``dpkg-deb``: a real package for apt and
dpkg on a test host (held, unheld, listed), standing in for one we cannot install there (the NVIDIA driver)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path


def build_fake_package(out_dir: Path, name: str, version: str) -> Path:
    """``<out_dir>/<name>_<version>_all.deb``: installs nothing, depends on nothing."""
    root = out_dir / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\n"
        f"Version: {version}\n"
        "Architecture: all\n"
        "Maintainer: sd35-provision tests <tests@localhost>\n"
        "Description: empty stand-in package for sd35-provision's tests\n"
    )
    deb = out_dir / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


def install_command(deb: Path) -> str:
    """A shell command that puts ``deb`` on a host and installs it with dpkg (the file travels in the command)."""
    data = base64.b64encode(deb.read_bytes()).decode()
    return f"echo {data} | base64 -d > /tmp/{deb.name} && dpkg -i /tmp/{deb.name} && rm /tmp/{deb.name}"
