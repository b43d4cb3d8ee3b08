"""The command line in-process (click's CliRunner): help, version, usage errors (64), -v anywhere,
--limit patterns, apply --check, import-ansible, testfleet up --replace; and in a subprocess what
needs a fresh interpreter: importing patches nothing, Ctrl-C exits 130 saying where each host was."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sd35_provision.cli import EXIT_INTERRUPTED, EXIT_USAGE, cli
from sd35_provision.errors import UsageError
from sd35_provision.hostspec import load_spec
from sd35_provision.inventory import select_hosts

REVISION = "ceddf0a7fdf2064ea28e2213e3b84e4afa170a0f"
SPEC = f"""\
defaults:
  model: {{source: hf, repo: stabilityai/stable-diffusion-3.5-large, revision: {REVISION}}}
groups:
  gpu: {{}}
  edge: {{}}
hosts:
  node1: {{address: 10.0.0.1, groups: [gpu]}}
  node2: {{address: 10.0.0.2, groups: [gpu]}}
  node3: {{address: 10.0.0.3, groups: [edge]}}
  db1: {{address: 10.0.0.4}}
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def runner():
    """A CliRunner; the logging levels -v sets are put back afterwards."""
    loggers = {name: logging.getLogger(name).level for name in ("", "pyinfra", "paramiko")}
    yield CliRunner()
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def no_gevent_patching(monkeypatch):
    """Commands that run pyinfra patch the standard library; not inside the test process."""
    from gevent import monkey

    calls: list[str] = []
    monkeypatch.setattr(monkey, "patch_all", lambda *a, **k: calls.append("patch_all"))
    monkeypatch.setattr(monkey, "is_module_patched", lambda name: False)
    return calls


def test_importing_the_cli_patches_nothing():
    # A fresh interpreter: the test process has long imported gevent for other tests.
    code = (
        "import socket, ssl, sys, threading; before = (socket.socket, threading.Lock)\n"
        "import sd35_provision.cli\n"
        "print(before == (socket.socket, threading.Lock), 'gevent' in sys.modules, 'pyinfra' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "False"]


def test_version_and_help(runner):
    version = runner.invoke(cli, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("sd35-provision, version ")
    for args in (["-h"], ["--help"]):
        helped = runner.invoke(cli, args)
        assert helped.exit_code == 0
        assert "import-ansible" in helped.output and "testfleet" in helped.output and "130 interrupted" in helped.output
    plan_help = runner.invoke(cli, ["plan", "-h"])
    assert plan_help.exit_code == 0 and "-l, --limit PATTERN" in plan_help.output and "--diff" in plan_help.output
    assert "--check" in runner.invoke(cli, ["apply", "-h"]).output


def test_validate_in_process(runner, spec):
    result = runner.invoke(cli, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 4 host(s), 2 group(s)\n"


def test_each_spec_problem_is_printed_once_at_its_line(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("defaults:\n", "defaults:\n  ssh: {key: nokey}\n"))
    result = runner.invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines == [
        f"{bad}:2: defaults.ssh.key: {tmp_path}/nokey does not exist on this machine (all 4 hosts)",
        "1 problem(s); nothing was changed.",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["plan"],
        ["validate"],
        ["plan", "x.yaml", "--no-such-option"],
        ["nosuch"],
        ["apply", "x.yaml", "--batch", "0"],
        ["status", "x.yaml", "--parallel", "-1"],
    ],
)
def test_usage_errors_exit_64(runner, args):
    result = runner.invoke(cli, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Usage: " in result.output


def test_verbose_is_taken_before_or_after_the_command(runner, spec):
    after = runner.invoke(cli, ["validate", str(spec), "-vv"])
    assert after.exit_code == 0, after.output
    assert logging.getLogger("pyinfra").level == logging.DEBUG
    assert logging.getLogger("paramiko").level == logging.DEBUG
    split = runner.invoke(cli, ["-v", "validate", "-v", str(spec), "--debug"])
    assert split.exit_code == 0, split.output
    assert logging.getLogger("paramiko").level == logging.DEBUG  # -v twice: -vv
    once = runner.invoke(cli, ["validate", str(spec), "--verbose"])
    assert once.exit_code == 0 and logging.getLogger("pyinfra").level == logging.INFO
    assert logging.getLogger("paramiko").level == logging.CRITICAL
    # Subcommands of the lazily loaded groups take it too.
    assert runner.invoke(cli, ["testfleet", "status", "-v", "--state-dir", str(spec.parent)]).exit_code == 0


def test_limit_takes_comma_lists_and_globs_over_hosts_and_groups(spec):
    fleet = load_spec(spec)

    def names(*limit: str) -> list[str]:
        return [host.name for host in select_hosts(fleet, limit)]

    assert names() == ["node1", "node2", "node3", "db1"]
    assert names("node3,node1") == ["node1", "node3"]  # spec order, whatever the order asked
    assert names("node*") == ["node1", "node2", "node3"]
    assert names("edge", "db?") == ["node3", "db1"]
    assert names("gpu, db1") == ["node1", "node2", "db1"]
    assert names("g*") == ["node1", "node2"]  # the group gpu
    with pytest.raises(
        UsageError,
        match=r"--limit web\*: no such host or group \(known: node1, node2, node3, db1, "
        r"gpu \(group\), edge \(group\)\)",
    ):
        names("node1,web*")


def test_an_unknown_limit_exits_64_naming_the_known_hosts(runner, spec, no_gevent_patching):
    result = runner.invoke(cli, ["plan", str(spec), "-l", "node1,nope"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert (
        "--limit nope: no such host or group (known: node1, node2, node3, db1, gpu (group), edge (group))"
        in result.output
    )
    assert no_gevent_patching == ["patch_all"]  # a command that runs pyinfra patches when it starts


def test_apply_check_is_plan(runner, spec, monkeypatch, no_gevent_patching):
    from sd35_provision import workflow
    from sd35_provision.report import HostOutcome, OperationOutcome, RunReport

    asked: list[tuple[str, tuple[str, ...]]] = []

    def plan(fleet, limit, options):
        asked.append(("plan", limit))
        ops = [OperationOutcome("System | Cache environment file", True, diff="+HF_HOME=/srv\n")]
        return RunReport(mode="plan", hosts=[HostOutcome("node1", operations=ops)])

    monkeypatch.setattr(workflow, "plan", plan)
    monkeypatch.setattr(workflow, "apply", lambda *a, **k: asked.append(("apply", ())))
    result = runner.invoke(cli, ["apply", str(spec), "--check", "--diff", "-l", "node1"])
    assert result.exit_code == 0, result.output
    assert asked == [("plan", ("node1",))]
    assert "== node1: 1 operation(s) would change" in result.output and "+HF_HOME=/srv" in result.output
    refused = runner.invoke(cli, ["apply", str(spec), "--check", "--canary", "1"])
    assert refused.exit_code == EXIT_USAGE and "--check changes nothing" in refused.output


def test_import_ansible_writes_a_spec_that_validates(runner, tmp_path):
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[web]\nweb1 ansible_host=10.1.0.1\n[db]\ndb1 ansible_host=10.1.0.2 ansible_port=2222\n")
    out = tmp_path / "spec.yaml"
    written = runner.invoke(cli, ["import-ansible", str(inventory), "-o", str(out)])
    assert written.exit_code == 0, written.output
    assert runner.invoke(cli, ["validate", str(out)]).output == "ok: 2 host(s), 2 group(s)\n"
    again = runner.invoke(cli, ["import-ansible", str(inventory), "-o", str(out)])
    assert again.exit_code == EXIT_USAGE and "exists" in again.output
    printed = runner.invoke(cli, ["import-ansible", str(inventory)])
    assert printed.exit_code == 0 and printed.output == out.read_text()


def test_testfleet_up_refuses_to_replace_a_fleet_without_replace(runner, tmp_path):
    from tests.test_testfleet import paper_fleet

    fleet = paper_fleet(tmp_path)
    fleet.save()
    before = (tmp_path / "state.json").read_text()
    result = runner.invoke(cli, ["testfleet", "up", "1", "--state-dir", str(tmp_path)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"{tmp_path} already has a test fleet: node1 (127.0.2.1), node2 (127.0.2.2)" in result.output
    assert "--replace" in result.output
    assert (tmp_path / "state.json").read_text() == before


def test_ctrl_c_exits_130_and_says_where_each_host_was(tmp_path):
    # A host whose sshd never says a word: the run waits in connect until interrupted.
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    (tmp_path / "known_hosts").write_text("")
    spec = tmp_path / "silent.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        defaults:
          ssh: {{known_hosts: known_hosts, port: {silent.getsockname()[1]}, connect_timeout: 120}}
          model: {{source: hf, repo: a/b, revision: {REVISION}}}
        hosts:
          quiet: {{address: 127.0.0.1}}
        """)
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "sd35_provision.cli", "plan", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not accepted:
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
        silent.close()
    assert run.returncode == EXIT_INTERRUPTED, out + err
    assert err.splitlines()[-2:] == ["interrupted", "quiet: interrupted while connecting; nothing changed"], err
    assert "Traceback" not in err


def test_apply_diff_shows_what_changed_before_the_table(runner, spec, monkeypatch, no_gevent_patching):
    from sd35_provision import workflow
    from sd35_provision.report import HostOutcome, OperationOutcome, RunReport

    def apply(fleet, limit, options, rollout, reboots):
        ops = [
            OperationOutcome("System | Cache environment file", True, diff="-HF_HOME=/tmp\n+HF_HOME=/srv\n"),
            OperationOutcome("System | Service user", False),
        ]
        return RunReport(mode="apply", hosts=[HostOutcome("node1", operations=ops, executed=True)])

    monkeypatch.setattr(workflow, "apply", apply)
    result = runner.invoke(cli, ["apply", str(spec), "--diff"])
    assert result.exit_code == 0, result.output
    diff_at = result.output.index("== node1: 1 operation(s) changed\n  ~ System | Cache environment file")
    assert result.output.index("    +HF_HOME=/srv") > diff_at
    assert result.output.index("\nHOST ") > diff_at
    plain = runner.invoke(cli, ["apply", str(spec)])
    assert "+HF_HOME=/srv" not in plain.output and "node1  changed" in plain.output


def test_apply_reboots_only_when_asked_within_the_timeout_given(runner, spec, monkeypatch, no_gevent_patching):
    from sd35_provision import workflow
    from sd35_provision.reboots import RebootOptions
    from sd35_provision.report import HostOutcome, RunReport

    asked: list[RebootOptions] = []

    def apply(fleet, limit, options, rollout, reboots):
        asked.append(reboots)
        return RunReport(mode="apply", hosts=[HostOutcome("node1", executed=True)])

    monkeypatch.setattr(workflow, "apply", apply)
    assert runner.invoke(cli, ["apply", str(spec)]).exit_code == 0
    assert runner.invoke(cli, ["apply", str(spec), "--reboot", "--reboot-timeout", "90"]).exit_code == 0
    assert [(options.allowed, options.timeout_s) for options in asked] == [(False, None), (True, 90)]
    refused = runner.invoke(cli, ["apply", str(spec), "--reboot", "--reboot-timeout", "0"])
    assert refused.exit_code == 64 and "--reboot-timeout" in refused.output


def test_where_each_host_was_when_interrupted():
    from pyinfra.api.state import StateStage

    from sd35_provision.hostspec.settings import HostSettings
    from sd35_provision.interrupted import host_states
    from sd35_provision.runner import FleetRun

    run = FleetRun([HostSettings(name=f"n{i}", address=f"127.0.0.{i}") for i in (1, 2)])
    outcome = run.outcomes["n2"]
    outcome.failed, outcome.step, outcome.error = True, "preflight", "python3 3.9 is older than 3.11\nmore"
    run.state.current_stage = StateStage.Prepare
    assert host_states([run]) == [
        "n1: interrupted while working out the changes (nothing changed yet)",
        "n2: failed at preflight: python3 3.9 is older than 3.11",
    ]
    later = FleetRun([HostSettings(name="n1", address="127.0.0.1")])
    later.state.current_stage = StateStage.Execute
    assert host_states([run, later])[0] == "n1: interrupted while applying"  # the later run says the last word
