"""The gateway: its spec section (errors at FILE:LINE), its HAProxy config, its layer, and the drain protocol."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from sd35_provision import layout
from sd35_provision.drain import (
    Drain,
    parse_show_stat,
    runtime_shell,
    servers_of,
    set_state_command,
)
from sd35_provision.errors import SpecError
from sd35_provision.gatewayplan import (
    LOG_FORMAT,
    GatewayFiles,
    Server,
    build_gateway_plan,
    render_backend_key,
    render_client_keys,
    render_haproxy_config,
)
from sd35_provision.hostplan import Instance
from sd35_provision.hostspec import load_spec

BACKEND_KEY = "backend-key-0123456789abcdef"
SPEC = """\
defaults:
  gpu: {accelerator: cpu}
  model: {source: git, url: file:///srv/tiny.git, revision: 0123456789abcdef0123456789abcdef01234567}
  smoke: {size: 64x64}
  service: {bind: 0.0.0.0, port: 8600, api_key_file: backend.key}
hosts:
  gpu1: {address: 10.0.0.1}
  gpu2: {address: 10.0.0.2, service: {port: 8700}}
  lb1: {address: 10.0.0.9}
gateway:
  hosts: [lb1]
  tls: {cert_file: gw.crt, key_file: gw.key}
  keys:
    alice: {file: alice.key, rate_per_minute: 30}
    ci: {file: ci.key}
"""


def write(tmp_path: Path, text: str = SPEC, **files: str) -> Path:
    contents = {
        "backend.key": BACKEND_KEY,
        "alice.key": "alice-key-0123456789abcdef",
        "ci.key": "ci-key-0123456789abcdef0",
        "gw.crt": "-----BEGIN CERTIFICATE-----\n",
        "gw.key": "-----BEGIN PRIVATE KEY-----\n",
        **files,
    }
    for name, content in contents.items():
        (tmp_path / name.replace("_", ".")).write_text(content + "\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str, **files: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, text, **files))
    return caught.value.problems


# -- the spec section ----------------------------------------------------------------------


def test_the_gateway_section_names_its_hosts_and_the_rest_serve_behind_it(tmp_path):
    spec = load_spec(write(tmp_path))
    gateway = spec.gateway
    assert gateway is not None and gateway.hosts == ("lb1",)
    assert [host.name for host in spec.gateway_hosts] == ["lb1"]
    assert [host.name for host in gateway.serving] == ["gpu1", "gpu2"]
    assert not spec.host("gpu1").runs_gateway and spec.host("lb1").gateway == gateway
    assert [(key.name, key.file, key.rate_per_minute) for key in gateway.keys] == [
        ("alice", tmp_path / "alice.key", 30),
        ("ci", tmp_path / "ci.key", 60),  # the schema's default
    ]
    assert gateway.tls is not None and gateway.tls.cert_file == tmp_path / "gw.crt"
    assert (gateway.port, gateway.bind, gateway.backend_key_file) == (8443, "0.0.0.0", tmp_path / "backend.key")


def test_a_group_names_the_gateway_hosts(tmp_path):
    text = SPEC.replace("  hosts: [lb1]", "  group: edge").replace(
        "  lb1: {address: 10.0.0.9}", "  lb1: {address: 10.0.0.9, groups: [edge]}"
    )
    spec = load_spec(write(tmp_path, "groups:\n  edge: {}\n" + text))
    assert spec.gateway is not None and spec.gateway.hosts == ("lb1",)


@pytest.mark.parametrize(
    "change, files, expected",
    [
        (("  hosts: [lb1]", "  hosts: [lb9]"), {}, r"fleet.yaml:11: gateway.hosts\[0\]: unknown host 'lb9'"),
        (("  hosts: [lb1]\n", ""), {}, r"fleet.yaml:10: gateway: name the hosts that run the gateway"),
        (("    ci: {file: ci.key}", "    ci: {file: nope.key}"), {}, r":15: gateway.keys.ci.file: .*nope.key does not"),
        ((), {"ci_key": "short"}, r":15: gateway.keys.ci.file: .* holds a key of 5 characters; at least 16"),
        ((), {"ci_key": "alice-key-0123456789abcdef"}, r":15: gateway.keys.ci.file: holds the same key as keys.alice"),
        ((), {"ci_key": BACKEND_KEY}, r":15: gateway.keys.ci.file: holds the backends' key"),
        (("key_file: gw.key", "key_file: gone.key"), {}, r":12: gateway.tls.key_file: .*gone.key does not exist"),
        (
            (
                "  gpu2: {address: 10.0.0.2, service: {port: 8700}}",
                "  gpu2: {address: 10.0.0.2, service: {bind: 127.0.0.1}}",
            ),
            {},
            r":10: gateway: host gpu2 binds its service to 127.0.0.1, which the gateway cannot reach",
        ),
        (
            ("    alice: {file: alice.key, rate_per_minute: 30}", "    alice: {file: alice.key, rate_per_minute: 0}"),
            {},
            r":14: gateway.keys.alice.rate_per_minute: 0 is below 1",
        ),
        (("  hosts: [lb1]", "  hosts: [gpu1, gpu2, lb1]"), {}, r":10: gateway: every host runs the gateway"),
    ],
)
def test_bad_gateway_settings_are_named_at_their_line(tmp_path, change, files, expected):
    text = SPEC.replace(*change) if change else SPEC
    found = problems(tmp_path, text, **files)
    assert any(re.search(expected, problem) for problem in found), found


def test_hosts_behind_the_gateway_must_share_one_backend_key(tmp_path):
    text = SPEC.replace(
        "  gpu2: {address: 10.0.0.2, service: {port: 8700}}",
        "  gpu2: {address: 10.0.0.2, service: {port: 8700, api_key_file: other.key}}",
    )
    found = problems(tmp_path, text, other_key="another-backend-key-0123456789")
    assert any("use different service.api_key_file keys (gpu1; gpu2)" in problem for problem in found), found


def test_the_example_gateway_spec_is_valid():
    spec = load_spec(Path(__file__).resolve().parents[2] / "inventory" / "gateway.yaml", check_local_files=False)
    assert spec.gateway is not None and spec.gateway.hosts == ("edge-lb1",)
    assert len(spec.gateway.serving) == 4


# -- the HAProxy config ---------------------------------------------------------------------


class _Plan:
    def __init__(self, instances):
        self.instances = instances


def plan_of(tmp_path: Path):
    spec = load_spec(write(tmp_path))
    plans = {
        "gpu1": _Plan((Instance(0, 8600), Instance(1, 8601))),  # two instances: one server each
        "gpu2": _Plan((Instance(0, 8700),)),
    }
    return build_gateway_plan(spec.host("lb1"), plans)


def lines_of(config: str, section: str) -> list[str]:
    block = config.split(f"\n{section}\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines()]


def test_one_server_per_instance_of_every_serving_host_with_health_checks(tmp_path):
    plan = plan_of(tmp_path)
    backend = lines_of(plan.config, "backend sd35")
    assert [line for line in backend if line.startswith("server ")] == [
        "server gpu1:0 10.0.0.1:8600",
        "server gpu1:1 10.0.0.1:8601",
        "server gpu2:0 10.0.0.2:8700",
    ]
    assert [server.host for server in plan.servers] == ["gpu1", "gpu1", "gpu2"]
    assert "balance leastconn" in backend
    assert "http-check expect status 200" in backend
    assert any(line.startswith("http-check send meth GET uri /readyz hdr Authorization") for line in backend)
    assert "default-server check inter 2s fall 2 rise 2" in backend
    assert "retry-on conn-failure empty-response" in backend and "option redispatch 1" in backend


def test_the_backend_key_is_injected_from_a_map_and_no_secret_is_in_the_config(tmp_path):
    plan = plan_of(tmp_path)
    backend = lines_of(plan.config, "backend sd35")
    assert f'http-request set-header Authorization "Bearer %[str(backend),map_str({layout.GATEWAY_BACKEND_KEY})]"' in (
        backend
    )
    for secret in (BACKEND_KEY, "alice-key-0123456789abcdef", "ci-key-0123456789abcdef0"):
        assert secret not in plan.config and secret not in plan.candidate_config
    assert render_backend_key(BACKEND_KEY) == f"backend {BACKEND_KEY}\n"
    assert render_client_keys({"alice": "k1" * 8, "ci": "k2" * 8}) == f"{'k1' * 8} alice\n{'k2' * 8} ci\n"


def test_client_keys_are_checked_and_each_has_its_rate_with_a_json_429(tmp_path):
    frontend = lines_of(plan_of(tmp_path).config, "frontend sd35")
    assert f"http-request set-var(txn.client) http_auth_bearer,map_str({layout.GATEWAY_CLIENT_KEYS})" in frontend
    (unauthorized,) = [line for line in frontend if "status 401" in line]
    assert unauthorized.endswith("unless { var(txn.client) -m found }")
    assert "content-type application/json" in unauthorized and '"code": "invalid_api_key"' in unauthorized
    assert "http-request track-sc0 var(txn.client)" in frontend
    assert "stick-table type string len 64 size 10k expire 2m store http_req_rate(60s)" in frontend
    limits = [line for line in frontend if "status 429" in line]
    assert [re.search(r"-m str (\S+) \} \{ sc_http_req_rate\(0\) gt (\d+) \}$", line).groups() for line in limits] == [
        ("alice", "30"),
        ("ci", "60"),
    ]
    assert all("hdr Retry-After 60" in line and '"code": "rate_limit_exceeded"' in line for line in limits)
    # 401 and 429 are answered before anything reaches a backend
    assert frontend.index(unauthorized) < frontend.index(limits[0]) < frontend.index("default_backend sd35")


def test_tls_body_limit_timeouts_and_the_admin_socket(tmp_path):
    config = plan_of(tmp_path).config
    frontend = lines_of(config, "frontend sd35")
    assert f"bind 0.0.0.0:8443 ssl crt {layout.GATEWAY_PEM} alpn http/1.1" in frontend
    (too_large,) = [line for line in frontend if "status 413" in line]
    assert too_large.endswith("if { req.hdr_val(content-length) gt 26214400 }")
    defaults = lines_of(config, "defaults")
    # A 1024x1024 image at many steps, behind a queue: minutes, not HAProxy's usual seconds.
    assert {"timeout server 600s", "timeout client 660s", "timeout queue 60s", "timeout connect 5s"} <= set(defaults)
    assert f"stats socket {layout.HAPROXY_ADMIN_SOCKET} mode 660 level admin" in lines_of(config, "global")


def test_without_tls_the_gateway_binds_plain_http(tmp_path):
    text = SPEC.replace("  tls: {cert_file: gw.crt, key_file: gw.key}\n", "")
    spec = load_spec(write(tmp_path, text))
    assert spec.gateway is not None
    config = render_haproxy_config(spec.gateway, (Server("gpu1:0", "gpu1", "10.0.0.1", 8600),))
    assert "    bind 0.0.0.0:8443\n" in config and "ssl crt" not in config


def test_the_gateway_serves_its_metrics_behind_the_client_keys_on_its_own_port(tmp_path):
    config = plan_of(tmp_path).config
    metrics = lines_of(config, "frontend metrics")
    # Where the API listens, with its TLS: on loopback only when the gateway itself listens there.
    assert metrics[0] == f"bind 0.0.0.0:8405 ssl crt {layout.GATEWAY_PEM} alpn http/1.1"
    # The same key check as the API's frontend, before the exporter answers; no rate counting.
    api = lines_of(config, "frontend sd35")
    key_check = [line for line in api if "txn.client" in line and "track-sc0" not in line and "status 429" not in line]
    assert len(key_check) == 2 and metrics[1:3] == key_check
    assert metrics[3:] == [
        "http-request use-service prometheus-exporter if { path /metrics }",
        "http-request deny deny_status 404",
    ]
    assert not any("track-sc0" in line or "stick-table" in line for line in metrics)


@pytest.mark.parametrize("setting", ["metrics_port: 0", "metrics_port: null"])
def test_metrics_port_0_or_null_renders_no_metrics_frontend(tmp_path, setting):
    spec = load_spec(write(tmp_path, SPEC + f"  {setting}\n"))
    assert spec.gateway is not None and spec.gateway.metrics_port is None
    config = render_haproxy_config(spec.gateway, (Server("gpu1:0", "gpu1", "10.0.0.1", 8600),))
    assert "frontend metrics" not in config and "prometheus-exporter" not in config


def test_a_gateway_on_loopback_serves_its_metrics_on_loopback(tmp_path):
    spec = load_spec(write(tmp_path, SPEC + "  bind: 127.0.0.1\n  metrics_port: 9101\n"))
    assert spec.gateway is not None
    config = render_haproxy_config(spec.gateway, (Server("gpu1:0", "gpu1", "10.0.0.1", 8600),))
    assert lines_of(config, "frontend metrics")[0].startswith("bind 127.0.0.1:9101 ssl crt ")


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("metrics_port: 8443", r"fleet.yaml:16: gateway.metrics_port: 8443 is gateway.port; the metrics need a port"),
        ("metrics_port: 70000", r"fleet.yaml:16: gateway.metrics_port: 70000 is above 65535"),
    ],
)
def test_a_bad_metrics_port_is_named_at_its_line(tmp_path, setting, expected):
    found = problems(tmp_path, SPEC + f"  {setting}\n")
    assert any(re.search(expected, problem) for problem in found), found


def test_the_access_log_never_holds_a_header(tmp_path):
    config = plan_of(tmp_path).config
    assert f'log-format "{LOG_FORMAT}"' in config
    assert "key=%[var(txn.client)]" in LOG_FORMAT  # the key's name, not the key
    assert "%hr" not in LOG_FORMAT and "%hrl" not in LOG_FORMAT and "capture request header" not in config
    assert "Authorization" not in LOG_FORMAT


def test_the_candidate_config_names_the_new_files(tmp_path):
    plan = plan_of(tmp_path)
    candidate = GatewayFiles.candidate()
    assert candidate.pem == layout.GATEWAY_PEM + ".new"
    assert plan.candidate_config == plan.config.replace(layout.GATEWAY_PEM, candidate.pem).replace(
        layout.GATEWAY_CLIENT_KEYS, candidate.client_keys
    ).replace(layout.GATEWAY_BACKEND_KEY, candidate.backend_key)


# -- the drain protocol ------------------------------------------------------------------------

# `show stat -1 4 -1` of HAProxy 2.6 (columns cut after status for brevity; the parser reads by name).
SHOW_STAT = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight
sd35,gpu1:0,0,0,2,3,,41,135,161,,0,,0,0,0,0,DRAIN,1
sd35,gpu1:1,1,1,0,1,,40,270,322,,0,,0,0,0,0,UP,1
sd35,gpu2:0,0,0,0,1,,39,270,322,,0,,0,0,0,0,DOWN,1
stats,gpu1:0,0,0,9,9,,9,0,0,,0,,0,0,0,0,UP,1

"""


def test_show_stat_is_parsed_per_server():
    stats = parse_show_stat(SHOW_STAT)
    assert [(s.backend, s.server, s.host, s.sessions, s.queued, s.status) for s in stats[:3]] == [
        ("sd35", "gpu1:0", "gpu1", 2, 0, "DRAIN"),
        ("sd35", "gpu1:1", "gpu1", 0, 1, "UP"),
        ("sd35", "gpu2:0", "gpu2", 0, 0, "DOWN"),
    ]
    mine = servers_of(stats, ["gpu1"])
    assert [s.server for s in mine] == ["gpu1:0", "gpu1:1"]  # the other backend's server of that name is not ours
    assert [s.busy for s in mine] == [2, 1]  # in flight and queued: both must reach 0
    assert servers_of(stats, ["gpu9"]) == []


def test_an_answer_that_is_not_show_stat_is_refused():
    with pytest.raises(ValueError, match="not the output of show stat"):
        parse_show_stat("Unknown command. Please enter one of the following commands only :\n")


def test_runtime_commands_reach_the_admin_socket_without_a_shell_injection():
    assert set_state_command("gpu1:0", "drain") == "set server sd35/gpu1:0 state drain"
    with pytest.raises(ValueError):
        set_state_command("gpu1:0", "up; shutdown")
    line = runtime_shell([set_state_command("gpu1:0", "drain"), set_state_command("gpu1:1", "drain")], sudo=True)
    assert line == (
        "printf '%s\\n' 'set server sd35/gpu1:0 state drain;set server sd35/gpu1:1 state drain' | "
        f"sudo -n socat -t 10 stdio UNIX-CONNECT:{layout.HAPROXY_ADMIN_SOCKET}"
    )


def test_drained_keeps_failed_hosts_out(monkeypatch):
    """The protocol against a stand-in runtime API: drain, wait for 0 sessions, ready again but for a kept host."""
    from sd35_provision import drain as draining
    from sd35_provision.hostspec.settings import GatewayKey, GatewaySettings, HostSettings

    sent: list[str] = []
    busy = {"gpu1:0": [2, 1, 0], "gpu2:0": [0]}

    class FakeApi:
        def __init__(self, settings):
            self.settings = settings

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def stats(self):
            rows = ["# pxname,svname,qcur,scur,status"]
            for server, counts in busy.items():
                rows.append(f"sd35,{server},0,{counts.pop(0) if len(counts) > 1 else counts[0]},UP")
            return parse_show_stat("\n".join(rows))

        def send(self, *commands):
            sent.extend(commands)
            return "\n"

    monkeypatch.setattr(draining, "RuntimeApi", FakeApi)
    monkeypatch.setattr(draining, "POLL_S", 0)
    gateway = GatewaySettings(hosts=("lb1",), keys=(GatewayKey("a", Path("/k")),), drain_timeout_s=30)
    lb1 = HostSettings(name="lb1", address="10.0.0.9", gateway=gateway)
    said: list[str] = []
    with draining.drained([lb1], ["gpu1", "gpu2"], said.append) as drain:
        assert isinstance(drain, Drain)
        assert busy["gpu1:0"] == [0]  # waited until its sessions were 0
        drain.keep("gpu2")
    assert sent == [
        "set server sd35/gpu1:0 state drain",
        "set server sd35/gpu2:0 state drain",
        "set server sd35/gpu1:0 state ready",
    ]
    assert said == ["lb1: draining gpu1:0, gpu2:0", "lb1: gpu2 stay drained (their change failed)"]


# -- the gateway layer, on recorded facts ----------------------------------------------------------


def gateway_facts(plan, files: dict[str, str | None]):
    from tests.pyinfra_fakes import existing_files, merge_facts

    unit = layout.HAPROXY_UNIT
    absent: dict[str, str | None] = {f"{path}.new": None for path in files}
    absent[f"{layout.GATEWAY_DIR}/check.cfg"] = None
    return merge_facts(
        existing_files(absent),
        existing_files(files, mode=600),
        {
            "DebPackages": {"haproxy": ["2.6.12-1+deb12u3"], "socat": ["1.7.4.4-2"]},
            "Directory": {f"path={layout.GATEWAY_DIR}": {"mode": 700, "user": "root", "group": "root"}},
            "SystemdStatus": {f"machine=None, services=['{unit}'], user_mode=False, user_name=None": {unit: True}},
            "SystemdEnabled": {f"machine=None, services=['{unit}'], user_mode=False, user_name=None": {unit: True}},
        },
    )


def wanted_files(plan) -> dict[str, str]:
    from sd35_provision.deploys.gateway import gateway_files

    return {item.path: item.content for item in gateway_files(plan)}


def test_the_layer_changes_nothing_on_a_gateway_that_runs_the_spec(tmp_path):
    from sd35_provision.deploys.gateway import gateway_layer
    from tests.pyinfra_fakes import run_deploy

    plan = plan_of(tmp_path)
    run = run_deploy(gateway_layer, gateway_facts(plan, wanted_files(plan)), plan=plan)
    assert run.changes == [] and run.diffs == []


def test_a_changed_config_is_checked_by_haproxy_before_it_replaces_the_running_one(tmp_path):
    from sd35_provision.deploys.gateway import gateway_layer
    from tests.pyinfra_fakes import run_deploy

    plan = plan_of(tmp_path)
    files = wanted_files(plan)
    old_config = files[layout.HAPROXY_CONFIG].replace("server gpu2:0 10.0.0.2:8700\n", "")
    run = run_deploy(
        gateway_layer,
        gateway_facts(plan, {**files, layout.HAPROXY_CONFIG: old_config, layout.GATEWAY_CLIENT_KEYS: "old\n"}),
        plan=plan,
    )
    [change] = run.changes
    assert change.name == "Gateway | Gateway config (checked by haproxy -c, then reloaded)"
    # The diff: the config's lines, the secret file as changed without content.
    [diff] = run.diffs
    assert "+    server gpu2:0 10.0.0.2:8700" in diff
    keys = layout.GATEWAY_CLIENT_KEYS
    assert f"--- {keys}\n+++ {keys}\n(secret file: content not shown)" in diff
    # Every file goes up as .new (0600 for the secrets), then one script checks and switches.
    uploads = [command for command in change.commands if isinstance(command, list) and command[0] == "upload"]
    assert [command[2] for command in uploads] == [
        f"{layout.GATEWAY_CLIENT_KEYS}.new",
        f"{layout.GATEWAY_BACKEND_KEY}.new",
        f"{layout.GATEWAY_PEM}.new",
        f"{layout.HAPROXY_CONFIG}.new",
        f"{layout.GATEWAY_DIR}/check.cfg",
    ]
    assert uploads[-1][1] == plan.candidate_config
    script = change.commands[-1]
    assert isinstance(script, str)
    check = script.index(f"haproxy -c -f {layout.GATEWAY_DIR}/check.cfg")
    assert check < script.index(f"mv -f {layout.HAPROXY_CONFIG}.new {layout.HAPROXY_CONFIG}")
    assert script.index("mv -f") < script.index(f"systemctl reload {layout.HAPROXY_UNIT}")
    assert "systemctl restart" in script  # only when HAProxy is not running at all
    for secret in (BACKEND_KEY, "alice-key-0123456789abcdef", "ci-key-0123456789abcdef0"):
        assert all(secret not in str(command) for command in change.commands if not isinstance(command, list))
        assert secret not in diff


def test_haproxy_is_installed_from_the_distribution_when_missing(tmp_path):
    from sd35_provision.deploys.gateway import gateway_layer
    from tests.pyinfra_fakes import run_deploy

    plan = plan_of(tmp_path)
    facts = gateway_facts(plan, wanted_files(plan))
    facts["DebPackages"] = {}
    run = run_deploy(gateway_layer, facts, plan=plan)
    commands = run.commands("Install haproxy and socat")
    assert commands[0] == "apt-get update"
    assert "install haproxy socat" in commands[1]


# -- generate ---------------------------------------------------------------------------------


@pytest.fixture
def fake_service():
    """A local stand-in for the images API: answers what the test sets, records what it got."""
    import base64
    import http.server
    import json
    import threading

    got: list[dict] = []
    answer: dict = {"status": 200, "body": {"created": 1, "data": [{"b64_json": ""}]}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers["Content-Length"])
            got.append(
                {"path": self.path, "auth": self.headers["Authorization"], "body": json.loads(self.rfile.read(length))}
            )
            payload = json.dumps(answer["body"]).encode()
            self.send_response(answer["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    png = b"\x89PNG\r\n\x1a\n" + b"rest"
    answer["body"]["data"][0]["b64_json"] = base64.b64encode(png).decode()
    yield server.server_address[1], got, answer, png
    server.shutdown()


def test_generate_writes_the_png_and_sends_the_key_as_a_header(tmp_path, fake_service, monkeypatch):
    from sd35_provision.generate import Request, Target, generate

    port, got, _, png = fake_service
    out = tmp_path / "out.png"
    result = generate(Target("gateway lb1", "127.0.0.1", port, "k" * 20), Request("a boat", "64x64", 2, 7), out)
    assert out.read_bytes() == png and result["where"] == "gateway lb1"
    assert got == [
        {
            "path": "/v1/images/generations",
            "auth": f"Bearer {'k' * 20}",
            "body": {
                "prompt": "a boat",
                "size": "64x64",
                "n": 1,
                "response_format": "b64_json",
                "num_inference_steps": 2,
                "seed": 7,
            },
        }
    ]


def test_generate_says_a_refusal_in_one_line(tmp_path, fake_service):
    from sd35_provision.generate import GenerateError, Request, Target, generate

    port, _, answer, _ = fake_service
    answer.update(
        status=429, body={"error": {"message": "Rate limit reached for key ci", "code": "rate_limit_exceeded"}}
    )
    with pytest.raises(GenerateError) as caught:
        generate(Target("gateway lb1", "127.0.0.1", port, "k" * 20), Request("x"), tmp_path / "out.png")
    assert str(caught.value) == "gateway lb1: HTTP 429: Rate limit reached for key ci"
    assert not (tmp_path / "out.png").exists()


def test_generate_takes_the_gateway_key_from_the_environment_or_the_named_key_file(tmp_path, monkeypatch):
    from sd35_provision.generate import KEY_ENV, GenerateError, gateway_target, host_target

    spec = load_spec(write(tmp_path))
    monkeypatch.delenv(KEY_ENV, raising=False)
    target = gateway_target(spec)
    assert (target.where, target.address, target.port, target.key) == (
        "gateway lb1",
        "10.0.0.9",
        8443,
        "alice-key-0123456789abcdef",
    )
    assert target.tls_trust == tmp_path / "gw.crt"
    assert gateway_target(spec, "ci").key == "ci-key-0123456789abcdef0"
    with pytest.raises(GenerateError, match=r"gateway.keys has no key 'bob' \(keys: alice, ci\)"):
        gateway_target(spec, "bob")
    monkeypatch.setenv(KEY_ENV, "from-the-environment-0123")
    assert gateway_target(spec, "ci").key == "from-the-environment-0123"
    with pytest.raises(GenerateError, match="lb1 runs the gateway and serves no model"):
        host_target(spec, "lb1")
    assert host_target(spec, "gpu2").port == 8700 and host_target(spec, "gpu2").tunnel_through is None


def test_generate_tunnels_to_a_service_bound_to_loopback(tmp_path, monkeypatch):
    from sd35_provision.generate import KEY_ENV, host_target

    monkeypatch.delenv(KEY_ENV, raising=False)
    text = SPEC.replace("\ngateway:", "\nignored:").split("\nignored:")[0] + "\n"
    text = text.replace("bind: 0.0.0.0", "bind: 127.0.0.1")
    spec = load_spec(write(tmp_path, text))
    target = host_target(spec, "gpu1")
    assert target.tunnel_through is spec.host("gpu1") and (target.address, target.port) == ("127.0.0.1", 8600)
    assert target.key == BACKEND_KEY


def test_generate_on_the_command_line_refuses_host_and_gateway_together(tmp_path):
    from click.testing import CliRunner

    from sd35_provision.cli import cli

    path = write(tmp_path)
    result = CliRunner().invoke(cli, ["generate", str(path), "--prompt", "x", "--host", "gpu1", "--gateway"])
    assert result.exit_code == 64 and "--host and --gateway: choose one" in result.output
