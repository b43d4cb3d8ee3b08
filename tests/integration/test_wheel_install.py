"""The package as a user gets it: the wheel built from this tree, installed into a fresh venv with the
control side only (no torch, no checkout on the path), works from another directory: ``--version``,
``validate``, ``plan --help`` and a real ``plan`` against the session's test fleet.

pip reuses its cache, so after the first run the install costs seconds, not downloads.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sd35_provision.testfleet import Fleet
from tests.conftest import cpu_fleet_defaults

pytestmark = pytest.mark.fleet
REPO = Path(__file__).resolve().parents[2]
# What is not part of a source tree: build outputs, caches, the venv, other checkouts' state.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".whl",
    ".work",
)


def run(*argv: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    # No PYTHONPATH and a cwd outside the checkout: only what the wheel installed can be imported.
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of this tree (a build in the checkout would leave build/ and egg-info in it)."""
    work = tmp_path_factory.mktemp("wheel-build")
    source = work / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCE)
    # The venv's own setuptools when it has one: no download of a build environment.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", work / "dist", source, cwd=work)
    [built] = (work / "dist").glob("sd35_provision-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its dependencies (the control side); returns its bin directory."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=venv.parent)
    run(
        venv / "bin/python",
        "-m",
        "pip",
        "install",
        "-q",
        "--find-links",
        wheel.parent,
        "sd35-provision",
        cwd=venv.parent,
    )
    return venv / "bin"


def test_the_wheel_ships_the_package_data_and_no_top_level_deploys(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "sd35_provision/schemas/host-spec.schema.json" in names
    assert {f"sd35_provision/locks/{flavour}.txt" for flavour in ("cpu", "cu128", "cu130")} <= set(names)
    shipped = (REPO / "sd35_provision/hostside").iterdir()
    hostside = {f"sd35_provision/hostside/{path.name}" for path in shipped if path.is_file()}
    assert hostside and hostside <= set(names), hostside - set(names)
    assert any(name.startswith("sd35_provision/deploys/") for name in names)
    top_level = {name.split("/", 1)[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"sd35_provision"}, top_level


def test_installed_control_side_works_from_outside_the_checkout(
    installed: Path,
    test_fleet: Fleet,
    cpu_wheelhouse: Path,
    fleet_tiny_model: Path,
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = installed / "python"
    where = run(
        python,
        "-c",
        "import importlib.util as u, sd35_provision; print(sd35_provision.__file__); print(u.find_spec('torch'))",
        cwd=elsewhere,
    ).stdout.split()
    assert where[0].startswith(str(installed.parent)) and where[1] == "None", where  # the wheel's copy; no torch
    assert run(python, "-c", "import deploys", cwd=elsewhere, check=False).returncode != 0

    cli = installed / "sd35-provision"
    assert run(cli, "--version", cwd=elsewhere).stdout.strip().endswith("0.1.0")

    test_fleet.wheelhouse = cpu_wheelhouse
    spec = test_fleet.write_spec(
        elsewhere / "fleet.yaml", extra_defaults=cpu_fleet_defaults(test_fleet, fleet_tiny_model)
    )
    assert run(cli, "validate", spec.name, cwd=elsewhere).stdout.strip() == "ok: 2 host(s), 0 group(s)"
    bad = spec.with_name("bad.yaml")
    bad.write_text(spec.read_text().replace("min_free_gb: 1", "min_free_gb: -1"))
    invalid = run(cli, "validate", bad.name, cwd=elsewhere, check=False)
    assert invalid.returncode == 1 and "bad.yaml:" in invalid.stdout + invalid.stderr  # the schema is found

    assert "--limit" in run(cli, "plan", "--help", cwd=elsewhere).stdout
    plan = run(cli, "plan", spec.name, cwd=elsewhere)
    for host in ("node1", "node2"):
        assert f"== {host}:" in plan.stdout, plan.stdout
    assert "Python environment |" in plan.stdout and "Model |" in plan.stdout
