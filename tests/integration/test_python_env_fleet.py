"""The locked venv over real SSH: fresh build from the pushed wheelhouse, no-op re-apply,
hand-made drift reverted, and a failed build (a lock with a bad hash) leaving the old venv serving.
Each test asks ``states`` for the host it starts from, so it runs alone or in any order.
"""

from __future__ import annotations

import functools
import http.server
import re
import threading
from pathlib import Path

import pytest

from sd35_provision.locks import load_lock
from tests.conftest import booted_fleet, cpu_fleet_defaults
from tests.integration.support import cli

pytestmark = pytest.mark.fleet
ROOT = "/opt/sd35"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, cpu_wheelhouse, fleet_tiny_model):
    with booted_fleet(1, tmp_path_factory.mktemp("venv-fleet")) as booted:
        booted.wheelhouse = cpu_wheelhouse
        booted.tiny_model = fleet_tiny_model
        yield booted


def write_spec(fleet, name: str, **python) -> Path:
    defaults = cpu_fleet_defaults(fleet, fleet.tiny_model, python=python)
    if "wheelhouse" not in python:  # pip gets its wheels elsewhere (find_links)
        del defaults["python"]["wheelhouse"]
    return fleet.write_spec(fleet.state_dir / name, extra_defaults=defaults)


def host_sh(fleet, command: str) -> str:
    result = fleet.run("node1", command)
    assert result.exit_status == 0, f"{command}: {result.stderr}"
    return result.stdout.strip()


def test_fresh_build_noop_reapply_and_drift(fleet, states):
    states.fresh()
    spec = write_spec(fleet, "venv.yaml", wheelhouse=str(fleet.wheelhouse))
    lock = load_lock("cpu")
    result = cli("apply", str(spec), check_exit=0)
    assert f"changed: Python environment | Build venv {lock.id}" in result.stderr  # live progress

    venv = f"{ROOT}/venvs/{lock.id}"
    assert host_sh(fleet, f"readlink -f {ROOT}/current/venv") == venv
    assert (
        host_sh(
            fleet,
            f"{ROOT}/current/venv/bin/python -c 'import torch, diffusers; "
            "print(torch.__version__, diffusers.__version__)'",
        )
        == "2.13.0+cpu 0.42.1"
    )
    pushed = set(host_sh(fleet, f"ls {ROOT}/wheelhouse").split())
    assert "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl" in pushed
    assert not any(".partial" in name for name in pushed)

    again = cli("apply", str(spec), check_exit=0)
    assert re.search(r"node1\s+unchanged\s+0", again.stdout), again.stdout

    # by hand: one package removed, one installed that the lock does not have
    host_sh(fleet, f"{venv}/bin/python -m pip uninstall --quiet --yes pillow")
    site = host_sh(fleet, f"{venv}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'")
    handmade = f"{site}/handmade-1.0.dist-info"
    host_sh(
        fleet,
        f"mkdir {handmade} && "
        f"printf 'Metadata-Version: 2.1\\nName: handmade\\nVersion: 1.0\\n' > {handmade}/METADATA && "
        "printf 'handmade-1.0.dist-info/METADATA,,\\nhandmade-1.0.dist-info/RECORD,,\\n' "
        f"> {handmade}/RECORD",
    )
    drift = cli("drift", str(spec), check_exit=2)
    assert "-handmade==1.0" in drift.stdout and "+pillow==13.0.0" in drift.stdout
    assert "pillow 13.0.0 is missing" in drift.stdout

    cli("apply", str(spec), check_exit=0)
    cli("drift", str(spec), check_exit=0)
    assert host_sh(fleet, f"{venv}/bin/python -c 'import PIL; print(PIL.__version__)'") == "13.0.0"
    assert "handmade" not in host_sh(fleet, f"{venv}/bin/python -m pip list --format=freeze")
    states.are(spec)


def test_failed_build_names_the_package_and_leaves_the_old_venv_serving(fleet, states, tmp_path):
    # The good venv is current; now a lock whose pillow hash is wrong, served by a mirror.
    good = load_lock("cpu")
    spec = write_spec(fleet, "good.yaml", wheelhouse=str(fleet.wheelhouse))
    states.converged(spec)
    release_before = host_sh(fleet, f"readlink {ROOT}/current")

    bad_lock = tmp_path / "bad-lock.txt"
    bad_lock.write_text(
        re.sub(
            r"(pillow==13\.0\.0 \\\n(?:    --hash=sha256:[0-9a-f]{64}.*\n)+)",
            lambda m: re.sub("[0-9a-f]{64}", "0" * 64, m.group(1)),
            good.text,
        )
    )
    assert bad_lock.read_text() != good.text
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(fleet.wheelhouse))
    address = fleet.host("node1").address.rsplit(".", 1)[0] + ".254"
    with http.server.ThreadingHTTPServer((address, 0), handler) as mirror:
        threading.Thread(target=mirror.serve_forever, daemon=True).start()
        try:
            spec = write_spec(
                fleet, "bad.yaml", lock_file=str(bad_lock), find_links=f"http://{address}:{mirror.server_address[1]}/"
            )
            result = cli("apply", str(spec), check_exit=1)
        finally:
            mirror.shutdown()
    assert (
        "wheels do not match the lock's hashes: pillow==13.0.0; the running environment is unchanged" in result.stdout
    )
    assert "Expected sha256 " + "0" * 64 in result.stdout + result.stderr
    assert host_sh(fleet, f"readlink {ROOT}/current") == release_before
    assert host_sh(fleet, f"ls {ROOT}/venvs") == good.id  # the half-built one is gone
    assert host_sh(fleet, f"{ROOT}/current/venv/bin/python -c 'import torch; print(torch.__version__)'") == "2.13.0+cpu"
