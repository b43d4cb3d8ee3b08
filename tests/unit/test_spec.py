"""The spec loader: precedence, defaults, and every bad input named by file:line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from sd35_provision.errors import SpecError
from sd35_provision.hostspec import load_spec
from sd35_provision.hostspec.rules import SCHEMA_PATH

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
defaults:
  ssh:
    user: root
  model:
    source: git
    url: file:///srv/mirror/tiny.git
    revision: 0123456789abcdef0123456789abcdef01234567
  smoke:
    size: 64x64
groups:
  fast:
    service:
      queue_size: 9
  lan:
    service:
      bind: 0.0.0.0
      api_key_file: key.txt
hosts:
  a1:
    address: 10.0.0.1
    groups: [fast]
  a2:
    address: gpu-2.example.com
    groups: [fast, lan]
    service:
      queue_size: 2
"""


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    (tmp_path / "key.txt").write_text("not-a-real-key-0123456789\n")
    return path


def problems_of(tmp_path: Path, text: str, **kwargs) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path, **kwargs)
    return caught.value.problems


def test_schema_is_valid_2020_12_and_every_field_is_described():
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")

    undocumented = []

    def walk(node, where):
        if isinstance(node, dict):
            if "properties" in node:
                for key, sub in node["properties"].items():
                    if "description" not in sub and "$ref" not in sub:
                        undocumented.append(f"{where}.{key}")
                    walk(sub, f"{where}.{key}")
            for key in ("$defs", "additionalProperties"):
                if isinstance(node.get(key), dict):
                    walk(node[key], f"{where}.{key}")
            if "$defs" in node:
                for key, sub in node["$defs"].items():
                    walk(sub, f"{where}.{key}")

    walk(schema, "")
    assert undocumented == []


def test_precedence_host_over_groups_over_defaults(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    a1, a2 = spec.host("a1"), spec.host("a2")
    assert a1.service.queue_size == 9  # group
    assert a2.service.queue_size == 2  # host beats group
    assert a1.service.bind == "127.0.0.1"  # schema default
    assert a2.service.bind == "0.0.0.0"
    assert a2.service.api_key_file == tmp_path / "key.txt"  # relative to the spec file
    assert a1.ssh.port == 22 and a1.ssh.user == "root"
    assert a1.cache.root == "/var/lib/sd35"
    assert spec.groups == {"fast": ("a1", "a2"), "lan": ("a2",)}


def test_example_inventory_is_valid():
    spec = load_spec(REPO / "inventory" / "example.yaml", check_local_files=False)
    assert len(spec.hosts) >= 3
    assert all(host.gpu.accelerator == "nvidia" for host in spec.hosts)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hosts:\n  a: {address: 10.0.0.1\n", "fleet.yaml:2: YAML syntax error"),
        (
            "hosts:\n  a:\n    address: 10.0.0.1\n  a:\n    address: 10.0.0.2\n",
            "fleet.yaml:4: hosts.a: duplicate key (first defined on line 2)",
        ),
        (
            "hosts:\n  a:\n    address: 10.0.0.1\n    ssh:\n      port: 70000\n",
            "fleet.yaml:5: hosts.a.ssh.port: 70000 is above 65535",
        ),
        (
            "hosts:\n  a:\n    address: 10.0.0.1\n    ssh:\n      prot: 22\n",
            "fleet.yaml:5: hosts.a.ssh.prot: unknown key "
            "(allowed: connect_timeout, key, known_hosts, port, sudo, user)",
        ),
        (
            "hosts:\n  a:\n    address: 10.0.0.300\n",
            "fleet.yaml:3: hosts.a.address: '10.0.0.300' is not a host name or IP address",
        ),
        (
            "hosts:\n  a:\n    address: bad_host!\n",
            "fleet.yaml:3: hosts.a.address: 'bad_host!' is not a host name or IP address",
        ),
        (
            "hosts:\n  a:\n    address: 10.0.0.1\n    groups: [nope]\n",
            "fleet.yaml:4: hosts.a.groups[0]: unknown group 'nope' (groups: none defined)",
        ),
        ("hosts: {}\n", "fleet.yaml:1: hosts: {} should be non-empty"),
        (
            "defaults:\n  gpu:\n    accelerator: tpu\nhosts:\n  a: {address: 10.0.0.1}\n",
            "fleet.yaml:3: defaults.gpu.accelerator: 'tpu' is not one of: nvidia, cpu",
        ),
        ("", "fleet.yaml:1: (top level): the file is empty"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, text, expected):
    problems = problems_of(tmp_path, text)
    assert any(expected in problem for problem in problems), problems


def test_conflicting_groups_are_reported_on_the_host(tmp_path):
    text = """\
    defaults:
      model: {source: hf, revision: 0123456789abcdef0123456789abcdef01234567}
    groups:
      g1:
        service: {port: 8000}
      g2:
        service: {port: 8001}
    hosts:
      a:
        address: 10.0.0.1
        groups: [g1, g2]
    """
    problems = problems_of(tmp_path, text)
    assert any(
        "fleet.yaml:11: hosts.a.groups: groups 'g1' and 'g2' set service.port differently (8000 vs 8001)" in p
        for p in problems
    ), problems
    # The host choosing resolves the conflict.
    path = write(tmp_path, textwrap.dedent(text) + "    service: {port: 8002}\n")
    assert load_spec(path, check_local_files=False).host("a").service.port == 8002


def test_semantic_rules(tmp_path):
    text = """\
    defaults:
      service: {bind: 10.1.1.1}
      smoke: {size: 100x64}
      model: {source: push}
    hosts:
      a: {address: 10.0.0.1}
      b: {address: 10.0.0.1}
    """
    problems = "\n".join(problems_of(tmp_path, text))
    assert (
        "fleet.yaml:2: defaults.service.bind: 10.1.1.1 is not loopback, so service.api_key_file is required "
        "(all 2 hosts)"
    ) in problems
    assert "fleet.yaml:3: defaults.smoke.size: 100x64 is not a multiple of 16" in problems
    assert "fleet.yaml:4: defaults.model.source: source 'push' needs model.path (all 2 hosts)" in problems
    assert "fleet.yaml:7: hosts.b.address: 10.0.0.1:22 is already host 'a'" in problems


def test_a_problem_in_defaults_is_reported_once_at_its_line(tmp_path):
    text = """\
    defaults:
      model: {source: push, path: weights/}
    groups:
      g: {}
    hosts:
      a: {address: 10.0.0.1, groups: [g]}
      b: {address: 10.0.0.2}
      c: {address: 10.0.0.3, model: {source: push, path: /}}
    """
    problems = problems_of(tmp_path, text)
    assert problems == [
        f"{tmp_path}/fleet.yaml:2: defaults.model.path: {tmp_path}/weights does not exist on this machine (hosts a, b)",
        f"{tmp_path}/fleet.yaml:8: hosts.c.model.path: / has no model_index.json: not a diffusers pipeline directory "
        "(host c)",
    ], problems


def test_missing_local_file_is_an_error_unless_skipped(tmp_path):
    text = "defaults:\n  model: {source: push, path: weights/}\nhosts:\n  a: {address: 10.0.0.1}\n"
    problems = problems_of(tmp_path, text)
    assert any(f"fleet.yaml:2: defaults.model.path: {tmp_path}/weights does not exist" in p for p in problems)
    assert load_spec(write(tmp_path, text), check_local_files=False).host("a").model.path == tmp_path / "weights"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sd35_provision.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_validate_command_prints_ok_or_every_error(tmp_path):
    good = run_cli("validate", str(write(tmp_path, GOOD)))
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("ok")

    bad = write(tmp_path, "hosts:\n  a:\n    address: 10.0.0.1\n    ssh: {port: 0, user: Root}\n", "bad.yaml")
    result = run_cli("validate", str(bad))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f"{bad}:4: hosts.a.ssh.port: 0 is below 1" in lines
    assert any(line.startswith(f"{bad}:4: hosts.a.ssh.user: 'Root' is not valid") for line in lines)
    assert "Traceback" not in result.stderr


def test_usage_error_exit_code(tmp_path):
    result = run_cli("plan")
    assert result.returncode == 64
    assert "Missing argument" in result.stderr


def test_hf_revision_must_be_a_full_commit_sha(tmp_path):
    text = "defaults:\n  model:\n    source: hf\n    revision: abc1234\nhosts:\n  a: {address: 10.0.0.1}\n"
    problems = "\n".join(problems_of(tmp_path, text, check_local_files=False))
    assert (
        "fleet.yaml:4: defaults.model.revision: 'abc1234' is not a full 40-character commit sha; the hub cache "
        "names the snapshot by it, so an abbreviated one cannot be used with source hf (host a)"
    ) in problems
    git = "defaults:\n  model: {source: git, url: file:///m.git, revision: abc1234}\nhosts:\n  a: {address: 10.0.0.1}\n"
    assert load_spec(write(tmp_path, git), check_local_files=False).host("a").model.revision == "abc1234"


def test_push_path_must_be_a_diffusers_pipeline(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "notes.txt").write_text("not a model")
    text = "defaults:\n  model: {source: push, path: weights}\nhosts:\n  a: {address: 10.0.0.1}\n"
    problems = problems_of(tmp_path, text)
    assert any(
        f"fleet.yaml:2: defaults.model.path: {tmp_path}/weights has no model_index.json: not a diffusers "
        "pipeline directory (host a)" in p
        for p in problems
    ), problems
    (tmp_path / "weights" / "model_index.json").write_text("{}")
    assert load_spec(write(tmp_path, text)).host("a").model.path == tmp_path / "weights"


RENAMED = """\
defaults:
  python:
    venv_root: /srv/old
  gpu:
    driver:
      flavor: server
  model: {source: push, path: weights}
groups:
  lab:
    python: {venv_root: /srv/lab}
hosts:
  a: {address: 10.0.0.1}
  b:
    address: 10.0.0.2
    groups: [lab]
"""


def test_renamed_keys_are_still_read_with_a_deprecation_line_each(tmp_path):
    path = write(tmp_path, RENAMED)
    spec = load_spec(path, check_local_files=False)
    assert spec.host("a").python.install_root == "/srv/old"
    assert spec.host("b").python.install_root == "/srv/lab"  # the group's old key still beats the defaults
    assert spec.host("a").gpu.driver.flavour == "server"
    assert spec.warnings == (
        f"{path}:3: python.venv_root is deprecated: use python.install_root",
        f"{path}:6: gpu.driver.flavor is deprecated: use gpu.driver.flavour",
        f"{path}:10: python.venv_root is deprecated: use python.install_root",
    )


def test_renamed_key_keeps_its_line_for_later_errors(tmp_path):
    text = "hosts:\n  a:\n    address: 10.0.0.1\n    python:\n      venv_root: relative/dir\n"
    problems = problems_of(tmp_path, text, check_local_files=False)
    assert any(
        p.startswith(f"{tmp_path}/fleet.yaml:5: hosts.a.python.install_root: 'relative/dir' is not valid")
        for p in problems
    ), problems


def test_current_keys_give_no_deprecation_line(tmp_path):
    text = (
        "defaults:\n  python: {install_root: /srv/new}\n  gpu: {driver: {flavour: open}}\n"
        "  model: {source: push, path: weights}\nhosts:\n  a: {address: 10.0.0.1}\n"
    )
    spec = load_spec(write(tmp_path, text), check_local_files=False)
    assert spec.warnings == ()
    assert spec.host("a").python.install_root == "/srv/new"
    assert spec.host("a").gpu.driver.flavour == "open"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "hosts:\n  a:\n    address: 10.0.0.1\n    python:\n"
            "      install_root: /srv/new\n      venv_root: /srv/old\n",
            "fleet.yaml:6: hosts.a.python.venv_root: "
            "python.venv_root (deprecated) and python.install_root are both set; "
            "keep only python.install_root",
        ),
        (
            "defaults:\n  gpu:\n    driver: {flavor: open, flavour: server}\nhosts:\n  a: {address: 10.0.0.1}\n",
            "fleet.yaml:3: defaults.gpu.driver.flavor: gpu.driver.flavor (deprecated) and gpu.driver.flavour are "
            "both set; keep only gpu.driver.flavour",
        ),
    ],
)
def test_old_and_new_key_together_is_an_error(tmp_path, text, expected):
    problems = problems_of(tmp_path, text, check_local_files=False)
    assert [p for p in problems if "deprecated" in p] == [f"{tmp_path}/{expected}"]
    assert not any("unknown key" in p for p in problems), problems  # the old key is not reported twice


def test_every_spec_command_prints_the_deprecation_lines_on_stderr(tmp_path):
    path = write(tmp_path, RENAMED)
    result = run_cli("validate", "--skip-local-files", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
    assert result.stderr.splitlines() == [
        f"{path}:3: python.venv_root is deprecated: use python.install_root",
        f"{path}:6: gpu.driver.flavor is deprecated: use gpu.driver.flavour",
        f"{path}:10: python.venv_root is deprecated: use python.install_root",
    ]


def test_a_precision_no_device_of_the_host_runs_is_refused_at_its_line(tmp_path):
    # Accepted before, the service then failed to start on every host ("fp8-dynamic needs a CUDA GPU") and rolled back.
    text = """\
    defaults:
      model: {source: git, url: file:///srv/tiny.git, revision: 0123456789abcdef0123456789abcdef01234567}
      gpu: {accelerator: cpu}
    hosts:
      a:
        address: 10.0.0.1
        service: {precision: fp8-dynamic}
      b:
        address: 10.0.0.2
        gpu: {accelerator: nvidia}
        python: {torch_flavour: cpu}
        service: {precision: fp8}
      c:
        address: 10.0.0.3
        gpu: {require_fp8: true}
      d:
        address: 10.0.0.4
        service: {precision: fp32}
    """
    assert problems_of(tmp_path, text, check_local_files=False) == [
        f"{tmp_path}/fleet.yaml:7: hosts.a.service.precision: fp8-dynamic needs a CUDA GPU, and gpu.accelerator is cpu "
        "(host a)",
        f"{tmp_path}/fleet.yaml:12: hosts.b.service.precision: fp8 needs a CUDA GPU, and python.torch_flavour cpu "
        "installs torch without CUDA (host b)",
        f"{tmp_path}/fleet.yaml:15: hosts.c.gpu.require_fp8: FP8 needs an NVIDIA GPU, and gpu.accelerator is cpu "
        "(host c)",
    ]
