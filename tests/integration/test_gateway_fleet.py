"""The gateway on the test fleet: 3 serving hosts (tiny model on the CPU) behind HAProxy on a 4th, over real SSH.

HAProxy is Debian's package, installed by the provisioner. One module fleet for every test: apply and
re-apply; the stock ``openai`` client through the gateway; a load loop that sees no failure while
``apply --batch 1`` restarts every instance (drained first) and while an instance is stopped by hand;
the gateway's own refusals (401, 429); a bad TLS pair refused by ``haproxy -c`` while the running
gateway keeps serving.
"""

from __future__ import annotations

import base64
import datetime
import io
import ipaddress
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from sd35_provision.tinymodel import generate_tiny_pipeline
from tests.conftest import booted_fleet, cpu_fleet_defaults
from tests.integration.support import cli

pytestmark = pytest.mark.fleet
BACKEND_KEY = "gateway-test-backend-key-0123456789"
LOAD_KEY = "gateway-test-client-load-key-0123"
TINY_KEY = "gateway-test-client-tiny-key-4567"
SERVING = ("node1", "node2", "node3")
GATEWAY = "node4"
PORT = 8443
UNIT = "sd35-inference@0.service"  # the first of each serving host's two instances (service.instances: 2)
TINY_RATE = 3


def tls_pair(directory: Path, name: str, address: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``address`` and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, cpu_wheelhouse):
    with booted_fleet(4, tmp_path_factory.mktemp("gateway-fleet")) as booted:
        generate_tiny_pipeline(booted.state_dir / "tiny-sd3")
        for name, key in (("backend-key", BACKEND_KEY), ("load-key", LOAD_KEY), ("tiny-key", TINY_KEY)):
            (booted.state_dir / name).write_text(key + "\n")
        tls_pair(booted.state_dir, "gateway", booted.host(GATEWAY).address)
        other_cert, _ = tls_pair(booted.state_dir, "other", booted.host(GATEWAY).address)
        other_cert.unlink()  # only its key: a key that does not match gateway.crt
        booted.wheelhouse = cpu_wheelhouse
        yield booted


def write_spec(fleet, name: str = "gateway.yaml", service: dict | None = None, tls_key: str = "gateway.key") -> Path:
    defaults = cpu_fleet_defaults(
        fleet,
        "tiny-sd3",
        service={"precision": "fp32", "port": 8600, "api_key_file": "backend-key", "instances": 2, **(service or {})},
    )
    path = fleet.state_dir / name
    document = yaml.safe_load(fleet.render_spec(extra_defaults=defaults, spec_dir=path.parent))
    document["gateway"] = {
        "hosts": [GATEWAY],
        "port": PORT,
        "tls": {"cert_file": "gateway.crt", "key_file": tls_key},
        "keys": {
            "load": {"file": "load-key", "rate_per_minute": 100000},
            "tiny": {"file": "tiny-key", "rate_per_minute": TINY_RATE},
        },
        "health_check_interval_s": 1,
        "drain_timeout_s": 120,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def spec(fleet, states) -> Path:
    """The gateway spec, applied to every host (one apply, unless the test before left them so)."""
    applied = write_spec(fleet)
    states.converged(applied)
    return applied


def base_url(fleet) -> str:
    return f"https://{fleet.host(GATEWAY).address}:{PORT}"


def client(fleet, key: str | None = LOAD_KEY, timeout: float = 120) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(
        base_url=base_url(fleet), verify=str(fleet.state_dir / "gateway.crt"), headers=headers, timeout=timeout
    )


def sh(fleet, host: str, command: str) -> str:
    result = fleet.run(host, command)
    assert result.exit_status == 0, f"{host}: {command}: {result.stderr}"
    return result.stdout.strip()


def haproxy_stat_once_down(fleet, server: str, within_s: float) -> str:
    """The gateway's server table as soon as `server` shows DOWN there, or the last one read after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        status = sh(fleet, GATEWAY, "echo 'show stat -1 4 -1' | socat stdio UNIX-CONNECT:/run/haproxy/admin.sock")
        if re.search(rf"^sd35,{re.escape(server)},.*,DOWN,", status, re.MULTILINE) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def served_per_server(fleet) -> dict[str, int]:
    """Requests each instance answered, from the gateway's own counters (``show stat``: stot)."""
    text = sh(fleet, GATEWAY, "echo 'show stat -1 4 -1' | socat stdio UNIX-CONNECT:/run/haproxy/admin.sock")
    header, *rows = text.splitlines()
    names = header.lstrip("# ").split(",")
    stats = [dict(zip(names, row.split(","), strict=False)) for row in rows if row]
    return {row["svname"]: int(row["stot"]) for row in stats if row["pxname"] == "sd35"}


class LoadLoop:
    """A few requests in flight through the gateway at all times, each result counted."""

    def __init__(self, fleet, in_flight: int = 2):
        self.fleet, self.in_flight = fleet, in_flight
        self.results: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(in_flight)]

    def _run(self) -> None:
        body = {"prompt": "a lighthouse", "size": "64x64", "num_inference_steps": 2, "response_format": "b64_json"}
        with client(self.fleet, timeout=300) as session:
            while not self._stop.is_set():
                try:
                    answer = session.post("/v1/images/generations", json=body)
                    self.results[str(answer.status_code)] += 1
                    if answer.status_code >= 500:
                        self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                except httpx.HTTPError as error:
                    self.results["error"] += 1
                    self.failures.append(f"{type(error).__name__}: {error}")

    def __enter__(self) -> LoadLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=300)

    def wait_for(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(self.results.values()) < count and time.monotonic() < deadline:
            time.sleep(0.2)


def test_apply_serves_through_the_gateway_and_reapply_is_a_no_op(fleet, states):
    import openai
    from PIL import Image

    spec = write_spec(fleet)
    states.converged(spec)  # fresh hosts: the first apply (haproxy from Debian's packages on node4)
    config = sh(fleet, GATEWAY, "cat /etc/haproxy/haproxy.cfg")
    servers = re.findall(r"^\s+server (\S+) (\S+)$", config, re.MULTILINE)
    backends = [f"{host}:{instance}" for host in SERVING for instance in (0, 1)]  # service.instances: 2
    assert [name for name, _ in servers] == backends
    assert BACKEND_KEY not in config and LOAD_KEY not in config
    assert sh(fleet, GATEWAY, "stat -c '%a %U' /etc/haproxy/sd35/client-keys.map /etc/haproxy/sd35/gateway.pem") == (
        "600 root\n600 root"
    )
    assert "haproxy" in sh(fleet, GATEWAY, "dpkg-query -W haproxy")

    again = cli("apply", str(spec), check_exit=0)
    for host in (*SERVING, GATEWAY):
        assert re.search(rf"^{host}\s+unchanged\s+0", again.stdout, re.MULTILINE), again.stdout
    cli("drift", str(spec), check_exit=0)

    # The gateway's own row: HAProxy's state and its servers up; its metrics need a client key.
    [gateway] = [
        h for h in json.loads(cli("status", str(spec), "--json", check_exit=0).stdout)["hosts"] if h["gateway"]
    ]
    assert gateway["name"] == GATEWAY and gateway["gateway"]["active"] == "active", gateway
    assert (gateway["gateway"]["servers"], gateway["gateway"]["servers_up"]) == (len(backends), len(backends))
    metrics_url = f"https://{fleet.host(GATEWAY).address}:8405/metrics"
    with client(fleet, key=None) as anonymous:
        assert anonymous.get(metrics_url).status_code == 401
    with client(fleet) as scraper:
        scraped = scraper.get(metrics_url)
    assert scraped.status_code == 200 and "haproxy_backend_" in scraped.text, scraped.text[:300]

    before = served_per_server(fleet)
    stock = openai.OpenAI(
        base_url=f"{base_url(fleet)}/v1",
        api_key=LOAD_KEY,
        max_retries=0,
        timeout=120,
        http_client=httpx.Client(verify=str(fleet.state_dir / "gateway.crt")),
    )
    made = stock.images.generate(prompt="a lighthouse", size="64x64", extra_body={"num_inference_steps": 2, "seed": 3})
    assert Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json))).size == (64, 64)
    # A few more at once: leastconn spreads them, so every instance of every host answers some.
    with LoadLoop(fleet, in_flight=3) as loop:
        loop.wait_for(12)
    assert not loop.failures, loop.failures
    after = served_per_server(fleet)
    assert all(after[name] > before[name] for name in backends), (before, after)

    out = fleet.state_dir / "generated.png"
    made_by_cli = cli(
        "generate", str(spec), "--prompt", "a boat", "--size", "64x64", "--steps", "2", "-o", str(out), check_exit=0
    )
    assert "gateway node4" in made_by_cli.stdout and out.read_bytes().startswith(b"\x89PNG")
    # One host's instance: the fleet binds it to the host's loopback address, so through an SSH tunnel.
    out.unlink()
    from_host = cli(
        "generate",
        str(spec),
        "--prompt",
        "a boat",
        "--size",
        "64x64",
        "--steps",
        "2",
        "-o",
        str(out),
        "--host",
        "node2",
        check_exit=0,
    )
    assert "node2 (SSH tunnel)" in from_host.stdout and out.read_bytes().startswith(b"\x89PNG")
    states.are(spec)


def test_the_gateway_refuses_missing_and_wrong_keys_and_limits_the_rate(fleet, states, spec):
    with client(fleet, key=None) as anonymous:
        missing = anonymous.get("/v1/models")
    with client(fleet, key="not-a-key-of-this-gateway") as stranger:
        wrong = stranger.get("/v1/models")
    for answer in (missing, wrong):
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "invalid_api_key"
    with client(fleet, key=TINY_KEY) as tiny:
        answers = [tiny.get("/v1/models") for _ in range(TINY_RATE + 1)]
    assert [answer.status_code for answer in answers] == [200] * TINY_RATE + [429]
    over = answers[-1]
    assert over.headers["content-type"] == "application/json" and over.headers["retry-after"] == "60"
    assert over.json()["error"]["code"] == "rate_limit_exceeded" and "tiny" in over.json()["error"]["message"]
    log = sh(fleet, GATEWAY, "journalctl -q --no-pager -t haproxy | tail -n 50")
    assert "key=tiny" in log and TINY_KEY not in log and LOAD_KEY not in log
    states.kept()


def test_a_stopped_instance_is_routed_around_named_by_drift_and_started_by_apply(fleet, states, spec):
    with LoadLoop(fleet, in_flight=2) as loop:
        loop.wait_for(2)
        sh(fleet, "node2", f"systemctl stop {UNIT}")
        # HAProxy marks the server DOWN after CHECK_FALL failed checks (1 s apart here); until then a request
        # that meets the stopped port is redispatched. Both must hold: no request fails, and it goes DOWN.
        status = haproxy_stat_once_down(fleet, "node2:0", within_s=30)
        loop.wait_for(sum(loop.results.values()) + 6)
    assert not loop.failures, loop.failures
    assert re.search(r"^sd35,node2:0,.*,DOWN,", status, re.MULTILINE), status

    drift = cli("drift", str(spec), check_exit=2)
    assert re.search(rf"node2:.*\n.*{re.escape(UNIT)} enabled and running", drift.stdout), drift.stdout
    cli("apply", str(spec), check_exit=0)
    assert sh(fleet, "node2", f"systemctl is-active {UNIT}") == "active"
    states.are(spec)


def test_a_bad_tls_pair_is_refused_by_haproxy_and_the_running_gateway_keeps_serving(fleet, states, spec):
    config_before = sh(fleet, GATEWAY, "sha256sum /etc/haproxy/haproxy.cfg /etc/haproxy/sd35/gateway.pem")
    bad = write_spec(fleet, "gateway-bad-tls.yaml", tls_key="other.key")
    planned = cli("plan", str(bad), "--limit", GATEWAY, check_exit=0)
    assert f"{GATEWAY}: 1 operation(s) would change" in planned.stdout, planned.stdout
    assert "/etc/haproxy/sd35/gateway.pem\n" in planned.stdout and "(secret file: content not shown)" in planned.stdout
    assert "PRIVATE KEY" not in planned.stdout + planned.stderr
    refused = cli("apply", str(bad), "--limit", GATEWAY, check_exit=1)
    output = refused.stdout + refused.stderr
    assert "haproxy -c refused the new gateway config" in output, output
    assert "/etc/haproxy/sd35/gateway.pem.new" in output and "other.key" in output, output
    assert sh(fleet, GATEWAY, "sha256sum /etc/haproxy/haproxy.cfg /etc/haproxy/sd35/gateway.pem") == config_before
    assert sh(fleet, GATEWAY, "ls /etc/haproxy/sd35") == "backend-key.map\nclient-keys.map\ngateway.pem"
    with client(fleet) as session:
        answer = session.get("/v1/models")
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.text)["data"]
    states.kept()


def test_a_rolling_apply_that_restarts_every_instance_drops_no_request(fleet, states, spec):
    changed = write_spec(fleet, "gateway-queue.yaml", service={"queue_size": 7})
    with LoadLoop(fleet, in_flight=3) as loop:
        loop.wait_for(3)
        rollout = cli("apply", str(changed), "--batch", "1", check_exit=0)
        loop.wait_for(sum(loop.results.values()) + 3)
    assert not loop.failures, (loop.failures, rollout.stderr)
    assert loop.results["200"] >= 6, loop.results
    for host in SERVING:
        assert re.search(rf"{GATEWAY}: draining {host}:0", rollout.stderr), rollout.stderr
        assert "SD35_QUEUE_SIZE=7" in sh(fleet, host, "cat /etc/sd35/service.env")
    assert "DRAIN" not in sh(
        fleet, GATEWAY, "echo 'show stat -1 4 -1' | socat stdio UNIX-CONNECT:/run/haproxy/admin.sock"
    )
    states.are(changed)
