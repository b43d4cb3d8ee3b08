"""What a killed run leaves behind, against recorded facts: named by plan/drift, removed by apply;
the rollback target kept; a broken ``previous`` reported; the run lock's script and messages."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sd35_provision.deploys.release import release_layer
from sd35_provision.facts.releases import ReleaseStoreContents
from sd35_provision.facts.runlock import RunLockHolder
from sd35_provision.hostlock import (
    LockAnswer,
    holder_text,
    lock_command,
    read_answer,
    refusal,
)
from sd35_provision.hostscripts import render_script
from tests.pyinfra_fakes import Output, merge_facts, plan_for, run_deploy
from tests.unit.test_python_env_deploy import (
    MODELS,
    ROOT,
    dirs,
    settings,
    store_fact,
    store_output,
)


def on_release(host, store: Output) -> dict:
    """A host already on the plan's release, with this release store."""
    plan = plan_for(host)
    return merge_facts(
        dirs(f"{ROOT}/releases", f"{ROOT}/apps", f"{ROOT}/releases/{plan.release_id}", plan.app_dir),
        {"Link": {f"path={ROOT}/current": {"link_target": plan.release_target}}},
        store_fact(store),
    )


def kept_store(host, extra: list[str]) -> Output:
    plan = plan_for(host)
    links = plan.release_manifest["links"]
    parts = (links["venv"], links["app"], links["model"])
    return Output(list(store_output(plan.release_target, "", {plan.release_target: parts}, list(parts))) + extra)


def test_leftovers_of_a_killed_run_are_named_and_removed_but_not_the_venv_being_built():
    host = settings(accelerator="cpu")
    plan = plan_for(host)
    leftovers = [
        f"{ROOT}/releases/.0123456789ab-cdef01.new",
        f"{ROOT}/.current.new",
        f"{ROOT}/apps/feedfeedfeed.new",
        f"{ROOT}/apps/feedfeedfeed.tar",
        f"{MODELS}/push-000000000001/transformer/weights.safetensors.partial",
    ]
    store = kept_store(
        host,
        [f"leftover {path}" for path in leftovers]
        + [f"unstamped {ROOT}/venvs/cpu-half0built00", f"unstamped {plan.venv_dir}"],
    )
    run = run_deploy(release_layer, on_release(host, store), host)
    [op] = [op for op in run.changes if "interrupted run" in op.name]
    assert op.name == (
        "Release | Remove what an interrupted run left: "
        "releases/.0123456789ab-cdef01.new, .current.new, "
        "apps/feedfeedfeed.new, apps/feedfeedfeed.tar, "
        "models/push-000000000001/transformer/weights.safetensors.partial, "
        "venvs/cpu-half0built00"
    )
    removed = [line.removeprefix("rm -rf ") for line in op.commands[0].splitlines() if line.startswith("rm -rf ")]
    assert removed == [*leftovers, f"{ROOT}/venvs/cpu-half0built00"]
    assert plan.venv_dir not in op.commands[0]  # the Python environment layer builds it again
    assert not any("Prune" in op.name for op in run.changes)  # each path is removed once

    assert run_deploy(release_layer, on_release(host, kept_store(host, [])), host).changes == []


def test_the_rollback_target_is_kept_when_current_was_deleted_by_hand():
    host = settings(accelerator="cpu")
    plan = plan_for(host)
    old = (f"{ROOT}/venvs/cpu-000000000001", f"{ROOT}/apps/aaaaaaaaaaaa", f"{MODELS}/push-000000000001")
    store = store_output("", "releases/old-1", {"releases/old-1": old}, list(old))
    facts = merge_facts(
        dirs(f"{ROOT}/releases", f"{ROOT}/apps", f"{ROOT}/releases/{plan.release_id}", plan.app_dir),
        {"Link": {f"path={ROOT}/current": None}},
        store_fact(store),
    )
    run = run_deploy(release_layer, facts, host)
    assert [op.name for op in run.changes] == [f"Release | Switch current to release {plan.release_id}"]


def test_a_broken_previous_link_is_drift_and_apply_removes_it():
    host = settings(accelerator="cpu")
    plan = plan_for(host)
    links = plan.release_manifest["links"]
    store = store_output(
        plan.release_target, "releases/gone-0", {plan.release_target: tuple(links.values())}, list(links.values())
    )
    run = run_deploy(release_layer, on_release(host, store), host)
    [op] = run.changes
    assert op.name == "Release | Remove the broken link previous (releases/gone-0 is gone: no rollback target)"
    assert op.commands == [f"rm -f {ROOT}/previous"]


def test_the_release_store_fact_reads_leftovers_from_a_real_directory(tmp_path):
    # The fact's own command on a directory laid out as a killed run leaves it.
    root, models = tmp_path / "opt", tmp_path / "models"
    for path in (
        "releases/abc-123",
        "releases/.def-456.new",
        "venvs/cpu-1",
        "venvs/cpu-2",
        "apps/a1",
        "apps/a2.new",
        "wheelhouse",
    ):
        (root / path).mkdir(parents=True)
    (root / "venvs/cpu-1/.sd35-complete").write_text("lock\n")
    (root / "apps/a2.tar").write_text("")
    (root / "wheelhouse/x-1.whl.partial").write_text("")
    (models / "push-1/transformer").mkdir(parents=True)
    (models / "push-1/transformer/w.safetensors.partial").write_text("")
    (root / "current").symlink_to("releases/abc-123")
    (root / "previous").symlink_to("releases/gone")
    fact = ReleaseStoreContents()
    output = subprocess.run(
        ["sh", "-c", fact.command(str(root), str(models))], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    store = fact.process(output)
    assert sorted(store.leftovers) == sorted(
        [
            f"{root}/releases/.def-456.new",
            f"{root}/apps/a2.new",
            f"{root}/apps/a2.tar",
            f"{root}/wheelhouse/x-1.whl.partial",
            f"{models}/push-1/transformer/w.safetensors.partial",
        ]
    )
    assert store.unstamped == (f"{root}/venvs/cpu-2",)
    assert store.previous_broken and store.current == "releases/abc-123"


def test_lock_script_refuses_naming_the_holder_waits_and_is_released_when_its_input_ends(tmp_path):
    lock = str(tmp_path / "run.lock")

    def start(holder: str, wait_s: int) -> subprocess.Popen:
        script = render_script("run-lock.sh", lock_file=lock, holder=holder, wait_s=str(wait_s))
        return subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    first = start("alice@ctl pid 4242 since 12:01:03 UTC (apply)", 0)
    assert first.stdout.readline() == "locked\n"
    second = start("bob@ctl pid 1 since 12:02:00 UTC (apply)", 0)
    out, _ = second.communicate(timeout=10)
    assert second.returncode == 75
    answer = read_answer(out.splitlines())
    assert answer == LockAnswer(
        locked=False,
        holder="alice@ctl pid 4242 since 12:01:03 UTC (apply)",
        waited_for="alice@ctl pid 4242 since 12:01:03 UTC (apply)",
    )
    assert refusal("node1", answer, 0) == (
        "node1: locked by alice@ctl pid 4242 since 12:01:03 UTC (apply); --wait-lock S to wait"
    )
    waiting = start("carol@ctl pid 2 since 12:03:00 UTC (apply)", 30)
    assert waiting.stdout.readline().startswith("busy alice@ctl")
    time.sleep(0.5)
    first.stdin.close()  # the first run's connection ends
    first.wait(timeout=10)
    assert waiting.stdout.readline() == "locked\n"
    assert Path(lock).read_text() == "carol@ctl pid 2 since 12:03:00 UTC (apply)\n"
    waiting.stdin.close()
    waiting.wait(timeout=10)


def test_the_lock_holder_fact_sees_a_held_lock_without_taking_it(tmp_path):
    """plan, drift and status read who holds the lock from /proc/locks, here against the real script."""
    lock = str(tmp_path / "run.lock")
    fact = RunLockHolder()

    def holder() -> str | None:
        result = subprocess.run(["sh", "-c", fact.command(lock_file=lock)], capture_output=True, text=True, check=True)
        return fact.process(result.stdout.splitlines())

    assert holder() is None  # no lock file yet
    script = render_script(
        "run-lock.sh", lock_file=lock, holder="alice@ctl pid 4242 since 12:01:03 UTC (apply)", wait_s="0"
    )
    run = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert run.stdout.readline() == "locked\n"
    try:
        assert holder() == "alice@ctl pid 4242 since 12:01:03 UTC (apply)"
    finally:
        run.stdin.close()
        run.wait(timeout=10)
    assert Path(lock).read_text() and holder() is None  # released: the file stays, naming the last run


def test_lock_command_quotes_the_holder_and_uses_sudo_when_the_host_does():
    holder = holder_text("apply", now=0)
    assert holder.endswith(" since 00:00:00 UTC (apply)") and " pid " in holder
    command = lock_command("eve'; touch /tmp/x; '", 5, sudo=True)
    assert command.startswith("sudo -n sh -c ")
    assert "touch /tmp/x" in command and "'\"'\"'eve'\"'\"'\"'\"'\"'\"'\"'\"'; touch" in command


@pytest.mark.parametrize(
    "lines, expected",
    [
        (["locked"], LockAnswer(locked=True)),
        (["busy a pid 1", "locked"], LockAnswer(locked=True, waited_for="a pid 1")),
        ([], LockAnswer(locked=False)),
    ],
)
def test_lock_answers(lines, expected):
    assert read_answer(lines) == expected
