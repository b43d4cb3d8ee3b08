"""The whole stack on one host over real SSH, tiny model on the CPU: fresh apply -> smoke passes ->
re-apply changes nothing -> each kind of drift is reported and repaired -> bad requests get 4xx and
the service keeps serving -> a release that cannot start is rolled back.

Each test starts from the state it needs (``states``: a fresh host, or the host applied with the
spec), so any one runs alone or in any order.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from sd35_provision.tinymodel import generate_tiny_pipeline
from tests.conftest import booted_fleet, cpu_fleet_defaults
from tests.integration.support import cli

pytestmark = pytest.mark.fleet
API_KEY = "fleet-test-key-0123456789abcdef"
UNIT = "sd35-inference@0.service"  # the one instance of a CPU host
UNIT_FILE = "/etc/systemd/system/sd35-inference@.service"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, cpu_wheelhouse):
    with booted_fleet(1, tmp_path_factory.mktemp("service-fleet")) as booted:
        model = booted.state_dir / "tiny-sd3"
        generate_tiny_pipeline(model)
        (booted.state_dir / "api-key").write_text(API_KEY + "\n")
        booted.wheelhouse = cpu_wheelhouse
        yield booted


@pytest.fixture
def spec(fleet, states) -> Path:
    """The service spec, applied to node1 (one apply, unless the test before left it so)."""
    applied = write_spec(fleet)
    states.converged(applied)
    return applied


def write_spec(fleet, name: str = "service.yaml", model: str = "tiny-sd3") -> Path:
    defaults = cpu_fleet_defaults(fleet, model, service={"precision": "fp32", "port": 8600, "api_key_file": "api-key"})
    return fleet.write_spec(fleet.state_dir / name, extra_defaults=defaults)


def sh(fleet, command: str) -> str:
    result = fleet.run("node1", command)
    assert result.exit_status == 0, f"{command}: {result.stderr}"
    return result.stdout.strip()


def url(fleet) -> str:
    return f"http://{fleet.host('node1').address}:8600"


def assert_smoke_ok(result) -> None:
    assert re.search(r"node1\s+\w+\s+\d+\s+.*smoke ok in", result.stdout), result.stdout + result.stderr


def test_fresh_apply_serves_and_reapply_is_a_no_op(fleet, states):
    states.fresh()
    spec = write_spec(fleet)
    result = cli("apply", str(spec), check_exit=0)
    assert_smoke_ok(result)
    assert sh(fleet, f"systemctl is-active {UNIT}") == "active"
    record = json.loads(sh(fleet, "cat /srv/sd35/smoke/last.json"))
    assert record["ok"] and (record["width"], record["height"]) == (64, 64)
    assert sh(fleet, "head -c 8 /srv/sd35/smoke/last.png | od -An -c | tr -d ' '") == "211PNG\\r\\n032\\n"
    assert sh(fleet, "ps -o user= -C python -o args= | grep sd35_provision.service | cut -d' ' -f1") == "sd35"

    again = cli("apply", str(spec), check_exit=0)
    assert re.search(r"node1\s+unchanged\s+0", again.stdout), again.stdout
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


def test_status_page_playground_and_edits_on_the_host(fleet, states, spec, tmp_path):
    import base64
    import io

    import openai
    from PIL import Image

    from tests.service.support import noise_png

    # status --html: the host's last smoke image comes back over status's own connection, as a thumbnail.
    page_path = tmp_path / "status.html"
    table = cli("status", str(spec), "--html", str(page_path), check_exit=0)
    assert table.stdout.splitlines()[0].startswith("HOST")
    page = page_path.read_text()
    assert page.count('<tr class="host"') == 1 and 'id="host-node1"' in page
    (data,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (64, 64)  # the smoke size, under 256

    # The deployed release serves the playground (its static files were shipped) and edits.
    auth = {"Authorization": f"Bearer {API_KEY}"}
    page = httpx.get(f"{url(fleet)}/", timeout=10)
    assert page.status_code == 200 and 'src="playground/playground.js"' in page.text
    assert httpx.get(f"{url(fleet)}/playground/playground.js", timeout=10).status_code == 200
    assert httpx.get(f"{url(fleet)}/playground/options", timeout=10).status_code == 401
    assert httpx.get(f"{url(fleet)}/playground/options", headers=auth, timeout=10).json()["sizes"][0] == "64x64"
    client = openai.OpenAI(base_url=f"{url(fleet)}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    edited = client.images.edit(
        image=("in.png", noise_png(96, 64)),
        prompt="the same at night",
        extra_body={"strength": 0.5, "num_inference_steps": 2, "seed": 1},
    )
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).size == (96, 64)
    with pytest.raises(openai.BadRequestError, match="not a PNG, JPEG, WEBP image"):
        client.images.edit(image=("in.png", b"not an image"), prompt="x")
    states.are(spec)  # reads and requests only


def test_prometheus_scrapes_every_instance_from_the_targets_file(fleet, states, spec, tmp_path):
    import subprocess

    from prometheus_client.parser import text_string_to_metric_families

    from sd35_provision.service.gpu_metrics import FAMILIES
    from tests.integration.support import prometheus_binary
    from tests.service.support import free_port

    targets = tmp_path / "targets.json"
    result = cli("prometheus", str(spec), "-o", str(targets), check_exit=0)
    assert result.stdout == (
        f"wrote {targets}: 1 target(s); /metrics wants the bearer key in {fleet.state_dir}/api-key "
        "(authorization.credentials_file)\n"
    )
    labels = {"job": "sd35", "host": "node1", "instance": "node1:8600"}  # a CPU host in no group: no gpu, group
    address = f"{fleet.host('node1').address}:8600"
    assert json.loads(targets.read_text()) == [{"targets": [address], "labels": labels}]

    # The target's /metrics is Prometheus's text format, with the key only; NVML is in the venv, but no driver.
    assert httpx.get(f"http://{address}/metrics", timeout=10).status_code == 401
    text = httpx.get(f"http://{address}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["sd35_model_ready"].samples[0].value == 1 and families["sd35_http_requests"].type == "counter"
    assert not set(families) & {*FAMILIES, "sd35_gpu_nvml_up", "sd35_gpu_xid_errors"}
    sh(fleet, "/opt/sd35/current/venv/bin/python -c 'import pynvml'")

    # Debian's Prometheus, configured as the README says (a faster interval), scrapes it.
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: sd35\n"
        f"    authorization: {{credentials_file: {fleet.state_dir}/api-key}}\n"
        f"    file_sd_configs: [{{files: [{targets}]}}]\n"
    )
    server = subprocess.Popen(
        [
            str(prometheus_binary()),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list = []
    try:
        deadline = time.monotonic() + 30
        while not found and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "sd35_model_ready"})
                found = answer.json()["data"]["result"]
            except httpx.TransportError:
                continue
        active = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets").json()["data"]["activeTargets"]
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert [(target["health"], target["lastError"]) for target in active] == [("up", "")], errors[-2000:]
    assert [(series["metric"], series["value"][1]) for series in found] == [
        ({"__name__": "sd35_model_ready", **labels}, "1")
    ]
    states.are(spec)  # reads only


@pytest.mark.parametrize(
    "damage, expect",
    [
        (
            f"sed -i 's/^ProtectHome=yes$/ProtectHome=no/' {UNIT_FILE} && systemctl daemon-reload",
            "-ProtectHome=no",
        ),
        (f"systemctl stop {UNIT}", f"{UNIT} enabled and running"),
        ("/opt/sd35/current/venv/bin/python -m pip uninstall --quiet --yes pillow", "+pillow==13.0.0"),
    ],
)
def test_drift_is_reported_and_apply_repairs_it(fleet, states, spec, damage, expect):
    sh(fleet, damage)
    drift = cli("drift", str(spec), check_exit=2)
    assert expect in drift.stdout
    assert_smoke_ok(cli("apply", str(spec), check_exit=0))
    assert sh(fleet, f"systemctl is-active {UNIT}") == "active"
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


def test_killed_service_is_restarted_by_systemd(fleet, states, spec):
    before = sh(fleet, f"systemctl show -p MainPID --value {UNIT}")
    sh(fleet, f"kill -9 {before}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = fleet.run("node1", f"systemctl is-active {UNIT}; systemctl show -p MainPID --value {UNIT}").stdout.split()
        if now[:1] == ["active"] and now[1:] != [before] and now[1:] != ["0"]:
            break
        time.sleep(1)
    else:
        pytest.fail(f"systemd did not bring {UNIT} back")
    assert_smoke_ok(cli("smoke", str(spec), check_exit=0))
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


@pytest.mark.parametrize(
    "headers, body, status",
    [
        ({}, {"prompt": "a cat", "size": "64x64"}, 401),
        ({"Authorization": "Bearer wrong-key-0123456789"}, {"prompt": "a cat", "size": "64x64"}, 401),
        (None, {"prompt": "a cat", "size": "0x0"}, 400),
        (None, {"prompt": "a cat", "size": "10000x10000"}, 400),
        (None, {"prompt": "a cat", "size": "64x64", "num_inference_steps": 1000}, 400),
        (None, {"prompt": "", "size": "64x64"}, 400),
        (None, "prompt=a cat", 415),
    ],
)
def test_bad_requests_get_4xx_and_the_service_keeps_serving(fleet, states, spec, headers, body, status):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    send_headers = auth if headers is None else headers
    if isinstance(body, str):
        response = httpx.post(
            f"{url(fleet)}/v1/images/generations",
            content=body,
            headers={**send_headers, "Content-Type": "text/plain"},
            timeout=30,
        )
    else:
        response = httpx.post(f"{url(fleet)}/v1/images/generations", json=body, headers=send_headers, timeout=30)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    assert httpx.get(f"{url(fleet)}/readyz", headers=auth, timeout=10).status_code == 200
    states.are(spec)


def test_api_key_never_leaves_its_file(fleet, states, spec):
    outputs = [cli(command, str(spec)) for command in ("plan", "drift", "apply")]
    assert all(API_KEY not in out.stdout + out.stderr for out in outputs)
    assert sh(fleet, "stat -c '%a %U' /etc/sd35/api-key") == "400 sd35"
    found = fleet.run("node1", f"grep -rl -e '{API_KEY}' /etc /opt /srv /var /tmp /root 2>/dev/null").stdout.split()
    assert found == ["/etc/sd35/api-key"]
    processes = sh(fleet, "ps -eo args")  # this command line holds no key
    assert API_KEY not in processes and "sd35_provision.service" in processes
    states.are(spec)


def test_a_release_that_cannot_start_is_rolled_back(fleet, spec):
    good = spec
    serving = sh(fleet, "readlink /opt/sd35/current")

    broken = fleet.state_dir / "tiny-broken"
    shutil.copytree(fleet.state_dir / "tiny-sd3", broken, dirs_exist_ok=True)
    (broken / "transformer" / "config.json").write_text("{ not json")
    result = cli("apply", str(write_spec(fleet, "broken.yaml", model="tiny-broken")), check_exit=1)
    assert f"rolled back to {serving.removeprefix('releases/')}" in result.stdout + result.stderr
    assert sh(fleet, "readlink /opt/sd35/current") == serving
    assert sh(fleet, f"systemctl is-active {UNIT}") == "active"
    assert_smoke_ok(cli("smoke", str(good), check_exit=0))


def test_two_instances_on_a_cpu_host_then_one(fleet, states, spec):
    """``service.instances: 2``: a second pinned process on port + 1 (the first is not restarted); a
    stopped instance is drift by name; back to one, the second is stopped, disabled and its files go."""
    two = fleet.write_spec(
        fleet.state_dir / "two-instances.yaml",
        extra_defaults=cpu_fleet_defaults(
            fleet, "tiny-sd3", service={"precision": "fp32", "port": 8600, "api_key_file": "api-key", "instances": 2}
        ),
    )
    first_pid = sh(fleet, f"systemctl show -p MainPID --value {UNIT}")
    applied = cli("apply", str(two), check_exit=0)
    assert re.search(r"node1\s+changed\s+\d+\s+.*smoke ok in \d+\.\ds \(2 instances\)", applied.stdout), applied.stdout
    assert sh(fleet, f"systemctl show -p MainPID --value {UNIT}") == first_pid  # its inputs did not change

    auth = {"Authorization": f"Bearer {API_KEY}"}
    for index, port in ((0, 8600), (1, 8601)):
        unit = f"sd35-inference@{index}.service"
        assert sh(fleet, f"systemctl is-active {unit}; systemctl is-enabled {unit}").split() == ["active", "enabled"]
        record = json.loads(sh(fleet, f"cat /run/sd35/{index}/running.json"))
        assert record["pid"] == int(sh(fleet, f"systemctl show -p MainPID --value {unit}"))
        environ = sh(fleet, f"tr '\\0' '\\n' < /proc/{record['pid']}/environ").splitlines()
        assert f"SD35_PORT={port}" in environ and not any(v.startswith("CUDA_VISIBLE_DEVICES=") for v in environ)
        assert f"/etc/sd35/instances/{index}.env" in record["files"]
        ready = httpx.get(f"http://{fleet.host('node1').address}:{port}/readyz", headers=auth, timeout=10)
        assert ready.status_code == 200 and ready.json()["running"]["pid"] == record["pid"]

    [host] = json.loads(cli("status", str(two), "--json", check_exit=0).stdout)["hosts"]
    assert [(i["index"], i["port"], i["gpu"], i["active"], i["ready"]) for i in host["instances"]] == [
        (0, 8600, "cpu", "active", "ready"),
        (1, 8601, "cpu", "active", "ready"),
    ]
    assert host["instances"][1]["smoke"]["ok"] is True and host["drift"] is False

    sh(fleet, "systemctl stop sd35-inference@1.service")  # by hand
    assert "sd35-inference@1.service enabled and running" in cli("drift", str(two), check_exit=2).stdout
    sh(fleet, "systemctl start sd35-inference@1.service")

    # Back to one instance: the second runs but is not in the spec any more.
    second_pid = sh(fleet, "systemctl show -p MainPID --value sd35-inference@1.service")
    back = cli("apply", str(spec), check_exit=0)
    assert_smoke_ok(back)
    assert "sd35-inference@1.service runs but the spec has no instance 1" in back.stdout
    gone = fleet.run(
        "node1",
        "systemctl is-active sd35-inference@1.service; systemctl is-enabled sd35-inference@1.service; "
        f"ls /etc/sd35/instances /run/sd35; kill -0 {second_pid}",
    )
    assert gone.stdout.split() == ["inactive", "disabled", "/etc/sd35/instances:", "0.env", "/run/sd35:", "0"]
    assert gone.exit_status != 0  # kill -0: no such process
    assert sh(fleet, f"systemctl show -p MainPID --value {UNIT}") == first_pid
    cli("drift", str(spec), check_exit=0)
    states.are(spec)


def test_a_converged_host_is_checked_and_reapplied_in_few_ssh_round_trips(fleet, states, spec, monkeypatch):
    """Each fact is read once and a layer's facts in one command (sd35_provision/onepass.py): on a WAN every
    SSH command costs a round trip. Counted where every command goes, paramiko's channel (the run lock and
    SFTP included); a count, not a time, so it is the same on a loaded machine."""
    import paramiko

    from sd35_provision import workflow
    from sd35_provision.hostspec import load_spec

    commands: list[str] = []
    exec_command, invoke_subsystem = paramiko.Channel.exec_command, paramiko.Channel.invoke_subsystem

    def counted_exec(channel, command):
        commands.append(command if isinstance(command, str) else command.decode())
        return exec_command(channel, command)

    def counted_subsystem(channel, subsystem):
        commands.append(f"subsystem {subsystem}")
        return invoke_subsystem(channel, subsystem)

    monkeypatch.setattr(paramiko.Channel, "exec_command", counted_exec)
    monkeypatch.setattr(paramiko.Channel, "invoke_subsystem", counted_subsystem)
    loaded = load_spec(spec)

    drift = workflow.plan(loaded)
    assert not drift.drifted and drift.ok, drift.hosts
    assert 1 <= len(commands) <= 12, "\n".join(command[:100] for command in commands)

    commands.clear()
    again = workflow.apply(loaded)
    assert again.ok and not again.drifted and again.hosts[0].smoke["ok"], again.hosts
    assert 1 <= len(commands) <= 20, "\n".join(command[:100] for command in commands)

    # Only the service user's line is read (sd35_provision/facts/users.py): a change to it is still drift.
    monkeypatch.undo()
    fleet.run("node1", "usermod --shell /bin/bash sd35")
    changed = workflow.plan(loaded)
    assert [op.name for op in changed.hosts[0].changes] == ["System | Create service user sd35"], changed.hosts
    fixed = workflow.apply(loaded, smoke=False)
    assert fixed.ok and [op.name for op in fixed.hosts[0].changes] == ["System | Create service user sd35"]
    assert fleet.run("node1", "getent passwd sd35").stdout.strip().endswith(":/usr/sbin/nologin")
    states.kept()
