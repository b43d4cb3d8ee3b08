"""``sd35-provision prometheus``: the file_sd targets of a spec's instances, the file, the command's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sd35_provision.cli import EXIT_FAILED, EXIT_USAGE, cli
from sd35_provision.hostplan import Instance, PlanFacts, plan_instances
from sd35_provision.hostspec import load_spec
from sd35_provision.report import HostOutcome, RunReport
from sd35_provision.scrape_targets import (
    TargetsFileError,
    gateway_targets,
    instance_targets,
    render_targets,
    scrape_address,
    write_targets,
)

REVISION = "ceddf0a7fdf2064ea28e2213e3b84e4afa170a0f"
SPEC = f"""\
defaults:
  model: {{source: hf, repo: stabilityai/stable-diffusion-3.5-large, revision: {REVISION}}}
  service: {{bind: 0.0.0.0, api_key_file: api-key}}
groups:
  h200: {{service: {{port: 8600}}}}
  eu: {{}}
  cpu: {{gpu: {{accelerator: cpu}}, service: {{bind: 127.0.0.1}}}}
hosts:
  gpu-a1: {{address: 10.0.0.1, groups: [h200, eu]}}
  gpu-a2: {{address: "fd00::2", groups: [h200]}}
  edge1: {{address: edge1.example.net, groups: [cpu]}}
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "api-key").write_text("k" * 32 + "\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(SPEC)
    return path


def targets_of(spec: Path):
    fleet = load_spec(spec)
    return [
        target for host in fleet.hosts for target in instance_targets(host, plan_instances(host, PlanFacts(pythons=())))
    ]


def test_each_instance_is_a_target_with_its_host_group_gpu_and_instance(spec):
    rendered = json.loads(render_targets(targets_of(spec)))
    assert rendered == [
        {
            "targets": ["10.0.0.1:8600"],
            "labels": {"job": "sd35", "host": "gpu-a1", "instance": "gpu-a1:8600", "group": "h200,eu", "gpu": "0"},
        },
        {
            "targets": ["[fd00::2]:8600"],
            "labels": {"job": "sd35", "host": "gpu-a2", "instance": "gpu-a2:8600", "group": "h200", "gpu": "0"},
        },
        {  # a CPU host has no gpu label
            "targets": ["edge1.example.net:8000"],
            "labels": {"job": "sd35", "host": "edge1", "instance": "edge1:8000", "group": "cpu"},
        },
    ]


def test_every_instance_of_a_host_is_a_target(spec):
    host = load_spec(spec).host("gpu-a1")
    targets = instance_targets(host, [Instance(index=0, port=8600), Instance(index=1, port=8601)])
    assert [(t.address, t.labels["gpu"], t.labels["instance"]) for t in targets] == [
        ("10.0.0.1:8600", "0", "gpu-a1:8600"),
        ("10.0.0.1:8601", "1", "gpu-a1:8601"),
    ]


def test_the_gpu_label_is_the_pinned_gpu_not_the_instance_number(spec):
    host = load_spec(spec).host("gpu-a1")
    pinned = [
        Instance(index=0, port=8600, device="GPU-c", gpu="GPU 3"),
        Instance(index=1, port=8601, device="MIG-a", gpu="GPU 5 MIG 3g.71gb #1"),
    ]
    assert [t.labels["gpu"] for t in instance_targets(host, pinned)] == ["3", "5"]


@pytest.mark.parametrize(
    "address, expected",
    [("10.0.0.1", "10.0.0.1:80"), ("fd00::2", "[fd00::2]:80"), ("[fd00::2]", "[fd00::2]:80"), ("a.b", "a.b:80")],
)
def test_addresses_as_prometheus_reads_them(address, expected):
    assert scrape_address(address, 80) == expected


def test_the_file_is_replaced_whole_and_missing_directories_are_named(tmp_path):
    path = tmp_path / "targets.json"
    path.write_text("old")
    write_targets(path, "[]\n")
    assert path.read_text() == "[]\n" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"]  # no temporary left
    with pytest.raises(TargetsFileError, match=r"^.*/nope/targets.json: directory .*/nope does not exist$"):
        write_targets(tmp_path / "nope" / "targets.json", "[]\n")


@pytest.fixture
def fake_hosts(monkeypatch):
    """``fleet_targets`` without SSH: the instances planned from the spec alone; ``failing`` hosts fail."""
    from sd35_provision import scrape_targets

    failing: list[str] = []

    def fleet_targets(fleet, limit, options):
        from sd35_provision.inventory import select_hosts

        hosts = select_hosts(fleet, limit)
        outcomes = [
            HostOutcome(h.name, failed=h.name in failing, step="instances", error="SSH connection refused")
            for h in hosts
        ]
        targets = [
            t
            for h in hosts
            if h.name not in failing and not h.runs_gateway  # as fleet_targets: a gateway serves no model
            for t in scrape_targets.instance_targets(h, plan_instances(h, PlanFacts(pythons=())))
        ]
        return [*targets, *scrape_targets.gateway_targets(fleet, hosts)], RunReport(mode="prometheus", hosts=outcomes)

    monkeypatch.setattr(scrape_targets, "fleet_targets", fleet_targets)
    monkeypatch.setattr("gevent.monkey.patch_all", lambda *a, **k: None)
    monkeypatch.setattr("gevent.monkey.is_module_patched", lambda name: True)
    return failing


def test_the_command_writes_the_file_and_says_what_prometheus_needs(spec, tmp_path, fake_hosts):
    out = tmp_path / "targets.json"
    result = CliRunner().invoke(cli, ["prometheus", str(spec), "-o", str(out), "-l", "gpu-a1,edge1"])
    assert result.exit_code == 0, result.output
    assert [entry["labels"]["host"] for entry in json.loads(out.read_text())] == ["gpu-a1", "edge1"]
    assert result.stderr.splitlines() == [
        "edge1: service.bind is 127.0.0.1: only a Prometheus on the host itself can scrape it"
    ]
    assert result.stdout == (
        f"wrote {out}: 2 target(s); /metrics wants the bearer key in {tmp_path}/api-key "
        "(authorization.credentials_file)\n"
    )
    assert "k" * 32 not in result.output


def test_a_host_that_cannot_be_read_writes_nothing(spec, tmp_path, fake_hosts):
    out = tmp_path / "targets.json"
    out.write_text("[]\n")
    fake_hosts.append("gpu-a2")
    result = CliRunner().invoke(cli, ["prometheus", str(spec), "-o", str(out)])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr.splitlines() == [
        "gpu-a2: instances:",
        "  SSH connection refused",
        f"{out} not written: every host must be read for a complete targets file",
    ]
    assert out.read_text() == "[]\n"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["-o", "{tmp}"], EXIT_FAILED, "error: {tmp}: is a directory; give a file name"),
        (["-o", "{tmp}/t.json", "-l", "nope"], EXIT_USAGE, "error: {spec}: --limit nope: no such host or group"),
        (["-o", "{tmp}/no/t.json"], EXIT_FAILED, "error: {tmp}/no/t.json: directory {tmp}/no does not exist"),
    ],
)
def test_command_line_mistakes_are_one_line(spec, tmp_path, fake_hosts, args, code, message):
    args = [arg.format(tmp=tmp_path) for arg in args]
    result = CliRunner().invoke(cli, ["prometheus", str(spec), *args])
    expected = message.format(tmp=tmp_path, spec=spec)
    assert result.exit_code == code
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(expected), result.stderr
    assert not (tmp_path / "t.json").exists()


def test_output_is_required():
    result = CliRunner().invoke(cli, ["prometheus", "x.yaml"])
    assert result.exit_code == EXIT_USAGE and "Missing option '-o'" in result.output


GATEWAY_SPEC = f"""\
defaults:
  model: {{source: hf, repo: stabilityai/stable-diffusion-3.5-large, revision: {REVISION}}}
  service: {{bind: 0.0.0.0, api_key_file: api-key}}
groups:
  edge: {{}}
hosts:
  gpu-a1: {{address: 10.0.0.1}}
  lb1: {{address: 10.0.0.9, groups: [edge]}}
  lb2: {{address: "fd00::9", groups: [edge]}}
gateway:
  group: edge
  keys:
    prometheus: {{file: prometheus.key}}
"""


def gateway_spec(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "api-key").write_text("k" * 32 + "\n")
    (tmp_path / "prometheus.key").write_text("p" * 32 + "\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(GATEWAY_SPEC + extra)
    return path


def test_each_gateway_host_is_a_target_of_its_own_job(tmp_path):
    fleet = load_spec(gateway_spec(tmp_path))
    assert json.loads(render_targets(gateway_targets(fleet, fleet.hosts))) == [
        {
            "targets": ["10.0.0.9:8405"],
            "labels": {"job": "sd35-gateway", "host": "lb1", "instance": "lb1:8405", "group": "edge"},
        },
        {
            "targets": ["[fd00::9]:8405"],
            "labels": {"job": "sd35-gateway", "host": "lb2", "instance": "lb2:8405", "group": "edge"},
        },
    ]
    assert gateway_targets(fleet, [fleet.host("gpu-a1"), fleet.host("lb2")])[0].labels["host"] == "lb2"  # --limit


def test_a_gateway_with_tls_is_scraped_over_https_where_it_listens(tmp_path):
    (tmp_path / "gw.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "gw.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    extra = "  tls: {cert_file: gw.crt, key_file: gw.key}\n  bind: 10.1.1.1\n  metrics_port: 9101\n"
    fleet = load_spec(gateway_spec(tmp_path, extra))
    (first, _) = gateway_targets(fleet, fleet.hosts)
    assert first.address == "10.1.1.1:9101" and first.labels["__scheme__"] == "https"


def test_no_gateway_target_without_a_metrics_port(tmp_path):
    fleet = load_spec(gateway_spec(tmp_path, "  metrics_port: 0\n"))
    assert gateway_targets(fleet, fleet.hosts) == []
    serving_only = load_spec(gateway_spec(tmp_path))
    assert gateway_targets(serving_only, [serving_only.host("gpu-a1")]) == []  # --limit without the gateways


def test_the_command_writes_the_gateways_beside_the_instances(tmp_path, fake_hosts):
    spec, out = gateway_spec(tmp_path, "  bind: 127.0.0.1\n"), tmp_path / "targets.json"
    result = CliRunner().invoke(cli, ["prometheus", str(spec), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [
        (entry["labels"]["job"], entry["labels"]["host"], entry["targets"]) for entry in json.loads(out.read_text())
    ] == [
        ("sd35", "gpu-a1", ["10.0.0.1:8000"]),
        ("sd35-gateway", "lb1", ["127.0.0.1:8405"]),
        ("sd35-gateway", "lb2", ["127.0.0.1:8405"]),
    ]
    assert result.stderr.splitlines() == [
        f"{name}: gateway.bind is 127.0.0.1: only a Prometheus on the host itself can scrape it"
        for name in ("lb1", "lb2")
    ]
    assert result.stdout == (
        f"wrote {out}: 3 target(s); /metrics wants the bearer key in {tmp_path}/api-key "
        "(authorization.credentials_file); the gateways' /metrics want one of gateway.keys (job sd35-gateway)\n"
    )
    assert "p" * 32 not in result.output
