"""The running record: what the service states it runs, in /run and on /readyz (digests, never content)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import threading
from pathlib import Path

from fastapi.testclient import TestClient

from sd35_provision.service.app import create_app
from sd35_provision.service.config import load_config
from sd35_provision.service.running import running_record, write_running_record
from sd35_provision.service.unit import render_unit
from tests.service.support import FakeEngine, base_env, make_config, write_key_file
from tests.service.test_app import wait_ready


def test_record_names_the_release_and_each_file_digest_never_content(tmp_path: Path) -> None:
    (tmp_path / "releases" / "abc-123").mkdir(parents=True)
    (tmp_path / "current").symlink_to("releases/abc-123")
    env = tmp_path / "service.env"
    env.write_text("SD35_QUEUE_SIZE=4\n")
    key = write_key_file(tmp_path)
    record = running_record(str(tmp_path / "current"), [str(env), str(key), str(tmp_path / "absent")], pid=42)
    assert record["release"] == "abc-123" and record["pid"] == 42
    assert record["files"] == {
        str(env): hashlib.sha256(env.read_bytes()).hexdigest(),
        str(key): hashlib.sha256(key.read_bytes()).hexdigest(),
        str(tmp_path / "absent"): None,
    }
    assert key.read_text().strip() not in json.dumps(record)

    path = tmp_path / "running.json"
    write_running_record(str(path), record)
    assert json.loads(path.read_text()) == record and not (tmp_path / "running.json.new").exists()
    assert running_record(None, [])["release"] is None and running_record(str(tmp_path / "nope"), [])["release"] is None


def test_config_reads_what_the_unit_says_to_record(tmp_path: Path, tiny_model_dir: Path) -> None:
    unit = render_unit(
        "/opt/sd35/current/venv",
        "/opt/sd35/current/app",
        ["/srv/sd35"],
        "/etc/sd35/service.env",
        running_record="/run/sd35/running.json",
        release_link="/opt/sd35/current",
        unit_path="/etc/systemd/system/sd35-inference.service",
    )
    assert "RuntimeDirectory=sd35" in unit and "RuntimeDirectoryMode=0755" in unit
    # As systemd reads Environment= lines: assignments split at unquoted spaces.
    assignments = [
        word
        for line in unit.splitlines()
        if line.startswith("Environment=")
        for word in shlex.split(line.removeprefix("Environment="))
    ]
    environment = dict(word.split("=", 1) for word in assignments if word.startswith("SD35_"))
    assert environment == {
        "SD35_RUNNING_RECORD": "/run/sd35/running.json",
        "SD35_RELEASE_LINK": "/opt/sd35/current",
        "SD35_RUNNING_FILES": "/etc/systemd/system/sd35-inference.service /etc/sd35/env /etc/sd35/service.env",
    }
    config = load_config({**base_env(tiny_model_dir), **environment})
    assert config.running_record == "/run/sd35/running.json" and config.release_link == "/opt/sd35/current"
    assert config.running_files == (
        "/etc/systemd/system/sd35-inference.service",
        "/etc/sd35/env",
        "/etc/sd35/service.env",
    )
    try:
        render_unit("/v", "/w", ["/c"], running_record="/var/run.json")
    except ValueError as error:
        assert "is not /run/<directory>/<file>" in str(error)
    else:
        raise AssertionError("a record outside /run/<dir>/ was accepted")


def test_readyz_states_what_the_process_runs_while_loading_and_when_ready(tiny_model_dir: Path) -> None:
    record = {"version": 1, "pid": os.getpid(), "release": "abc-123", "files": {"/etc/sd35/env": "0" * 64}}
    gate = threading.Event()
    app = create_app(make_config(tiny_model_dir), load_engine=FakeEngine().loader(gate), running=record)
    with TestClient(app) as client:
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["running"] == record
        gate.set()
        wait_ready(client)
        assert client.get("/readyz").json()["running"] == record
