"""The programs that run on hosts (sd35_provision/hostside/), as ordinary modules and as the hosts run them."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.markers import default_environment

from sd35_provision import hostside
from sd35_provision.facts import StorageKind
from sd35_provision.facts.model import modelcheck_source
from sd35_provision.facts.service import ServiceState
from sd35_provision.facts.venv import InterpreterEnvironment
from sd35_provision.hostside import manifests, modelcheck, service_state, venv_probe

HOSTSIDE = Path(hostside.__file__).parent
PROGRAMS = sorted(p for p in HOSTSIDE.glob("*.py") if p.name != "__init__.py")
# Linux refuses one argv string longer than MAX_ARG_STRLEN (32 pages, 128 KiB); a fact's whole
# command is one such string (`sh -c <command>`), and a pushed model's manifest may ride along.
ARGV_BUDGET = 64 * 1024


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.name for p in PROGRAMS])
def test_host_programs_need_only_python_3_8_and_its_standard_library(path: Path) -> None:
    """A host may have only its distribution's python3 (Ubuntu 20.04: 3.8) and nothing installed yet."""
    tree = ast.parse(path.read_text(), str(path), feature_version=(3, 8))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            in_function = node.col_offset > 0  # hf-fetch imports huggingface_hub when it runs, in the host venv
            assert (
                top in sys.stdlib_module_names
                or name.startswith("sd35_provision.hostside.")
                or (in_function and top == "huggingface_hub")
            ), f"{path.name}:{node.lineno}: imports {name}"
    calls = {
        node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not calls & {"removeprefix", "removesuffix"}  # str methods from 3.9


def test_the_modelcheck_program_carries_its_library_and_runs_alone(tmp_path: Path) -> None:
    """Isolated as on a host (-I -S: no site-packages, no cwd on sys.path): the library travels inside."""
    model = tmp_path / "model"
    (model / "vae").mkdir(parents=True)
    (model / "model_index.json").write_text("{}\n")
    (model / "vae" / "w.safetensors").write_bytes(b"\0" * 4096)
    manifests.write_json(str(tmp_path / "m.json"), manifests.directory_manifest(str(model)))
    args = ["verify", "--dir", str(model), "--manifest", str(tmp_path / "m.json")]

    alone = subprocess.run(
        [sys.executable, "-I", "-S", "-c", hostside.source("modelcheck.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert alone.returncode == 1 and "No module named 'sd35_provision'" in alone.stderr  # so -I really isolates

    shipped = subprocess.run(
        [sys.executable, "-I", "-S", "-c", modelcheck_source(), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shipped.stdout) | {"rehashed": 0} == {
        "directory": True,
        "manifest": True,
        "files": 2,
        "bytes": 4099,
        "rehashed": 0,
        "broken": [],
    }


def test_what_travels_in_argv_stays_small_and_is_code_only() -> None:
    commands = {
        "modelcheck": modelcheck_source(),
        "service state": ServiceState().command(
            "sd35-inference.service",
            "/opt/sd35",
            "/var/lib/sd35/smoke/last.json",
            "http://127.0.0.1:8000",
            "/etc/sd35/api-key",
        ),
        "interpreter": InterpreterEnvironment().command("/usr/bin/python3"),
        "storage": StorageKind().command("/var/lib/sd35"),
    }
    for name, command in commands.items():
        assert len(command.encode()) < ARGV_BUDGET, f"{name}: {len(command.encode())} bytes"
        assert "api-key" not in command or name == "service state"  # a path to the key, never a key


def test_modelcheck_main_in_process_refuses_a_full_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}\n")
    manifest = {
        "source": "push",
        "files": {
            "model_index.json": {"size": 3, "sha256": "0" * 64},
            "big.safetensors": {"size": 10**18, "sha256": "0" * 64},
        },
    }
    manifests.write_json(str(tmp_path / "m.json"), manifest)
    code = modelcheck.main(["space", "--dir", str(model), "--manifest", str(tmp_path / "m.json"), "--why", " (x2)"])
    assert code == modelcheck.EXIT_NO_SPACE
    assert capsys.readouterr().err.startswith(
        f"not enough disk space for the model at {model}: 1000000000.00 GB needed (x2)"
    )
    manifest["files"].pop("big.safetensors")
    manifests.write_json(str(tmp_path / "m.json"), manifest)
    assert modelcheck.main(["space", "--dir", str(model), "--manifest", str(tmp_path / "m.json")]) == 0


@pytest.fixture
def readyz() -> Iterator[tuple[str, list[str | None]]]:
    """A /readyz that wants ``Bearer sesame``: 200 with it, 401 without; the Authorization headers seen."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            status, body = (200, {"status": "ready"}) if seen[-1] == "Bearer sesame" else (401, {"status": "denied"})
            self.send_response(status)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_service_state_reads_the_release_smoke_record_and_readyz(tmp_path: Path, readyz) -> None:
    url, seen = readyz
    root = tmp_path / "opt-sd35"
    (root / "releases" / "abc").mkdir(parents=True)
    (root / "releases" / "abc" / "release.json").write_text('{"model_revision": "r1"}')
    os.symlink("releases/abc", root / "current")
    (tmp_path / "last.json").write_text("{not json")
    key = tmp_path / "api-key"
    key.write_text("sesame\n")

    state = service_state.service_state("sd35-nosuch.service", str(root), str(tmp_path / "last.json"), url, str(key))
    assert state == {
        "active": None,
        "release": "releases/abc",
        "release_info": {"model_revision": "r1"},
        "smoke": None,
        "ready_status": 200,
        "ready_phase": "ready",
    }
    without_key = service_state.readiness(url, str(tmp_path / "no-key"))
    assert without_key == {"ready_status": 401, "ready_phase": "denied"}
    assert seen == ["Bearer sesame", None]


def test_venv_probe_speaks_pep_508_as_packaging_does() -> None:
    ours, theirs = venv_probe.marker_environment(), default_environment()
    assert ours == {key: theirs[key] for key in ours}
    assert venv_probe.installed()["pytest"] == importlib.metadata.version("pytest")
    shipped = subprocess.run(
        ["sh", "-c", InterpreterEnvironment().command(sys.executable)], capture_output=True, text=True, check=True
    )
    assert InterpreterEnvironment().process(shipped.stdout.splitlines()) == ours
    assert json.loads(shipped.stdout) == {"environment": ours}  # the markers only: not what is installed


def test_venv_probe_reads_names_and_versions_as_importlib_metadata_does() -> None:
    # From the header lines only (a no-op drift runs it on every host): the same as the parsed metadata says.
    parsed = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    assert len(parsed) > 20
    assert venv_probe.installed() == parsed


def test_storage_kind_script_runs_as_a_file(tmp_path: Path) -> None:
    script = HOSTSIDE / "storage_kind.sh"
    result = subprocess.run(
        ["sh", str(script), str(tmp_path / "not" / "yet")], capture_output=True, text=True, check=True
    )
    info = StorageKind().process(result.stdout.splitlines())
    assert info.path == str(tmp_path) and info.kind in {"ssd", "hdd", "unknown"} and info.reason
