"""The service layer against recorded facts: restart only for a reason, secrets by path, smoke command."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from sd35_provision import layout
from sd35_provision.appbundle import service_bundle
from sd35_provision.deploys.release import release_layer
from sd35_provision.deploys.service import (
    API_KEY_PATH,
    SERVICE_ENV_FILE,
    UNIT_PATH,
    render_service_env,
    render_service_unit,
    running_difference,
    service_layer,
)
from sd35_provision.facts.service import RunningState
from sd35_provision.hostspec.settings import (
    CacheSettings,
    GpuSettings,
    HostSettings,
    ModelSettings,
    ServiceSettings,
    SmokeSettings,
)
from sd35_provision.smoketest import smoke_command
from tests.pyinfra_fakes import Output, existing_files, merge_facts, plan_for, run_deploy

KEY = "k3y-that-must-never-show-0123456789"
UNIT_NAME = layout.instance_unit(0)  # one instance on a CPU host
INSTANCE_ENV = layout.instance_env_file(0)


def settings(tmp_path=None, bind="127.0.0.1") -> HostSettings:
    key_file = None
    if tmp_path is not None:
        key_file = tmp_path / "api-key"
        key_file.write_text(KEY + "\n")
    return HostSettings(
        name="h1",
        address="10.0.0.1",
        gpu=GpuSettings(accelerator="cpu"),
        cache=CacheSettings(root="/srv/sd35"),
        model=ModelSettings(source="git", url="file:///mirror/tiny.git", revision="a" * 40),
        service=ServiceSettings(bind=bind, port=8123, api_key_file=key_file),
        smoke=SmokeSettings(size="64x64", steps=2),
    )


def sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def running_output(
    release: str | None, files: dict[str, str | None], pid: int = 4242, active: str = "active"
) -> Output:
    """RunningService's output on a host whose service (pid ``pid``) stated ``release`` and these file digests."""
    record = {"version": 1, "pid": pid, "started_at": "2026-11-30T12:00:00Z", "release": release, "files": files}
    return Output(
        [
            "LoadState=loaded",
            f"ActiveState={active}",
            f"MainPID={pid if active == 'active' else 0}",
            "record " + json.dumps(record, sort_keys=True),
        ]
    )


def facts(
    host: HostSettings,
    unit: str | None,
    env: str | None,
    key: str | None,
    current: str | None,
    running: bool = True,
    stated: Output | None = None,
    installed: Output | None = None,
):
    """The host as the release and service layers read it: the release is there; ``current`` points at ``current``.

    The service (when ``running``) states what these files held when it started, unless ``stated`` says otherwise.
    """
    systemd_key = f"machine=None, services=['{UNIT_NAME}'], user_mode=False, user_name=None"
    plan = plan_for(host)
    if stated is None:
        files = {
            UNIT_PATH: sha256(unit),
            SERVICE_ENV_FILE: sha256(env),
            layout.ENV_FILE: plan.running_files[layout.ENV_FILE],
            INSTANCE_ENV: sha256(plan.instance_envs[0]),
        }
        if key is not None:
            files[API_KEY_PATH] = sha256(key)
        stated = running_output(
            current.rsplit("/", 1)[-1] if current else None, files, active="active" if running else "inactive"
        )
    present = {"mode": 755, "user": "root", "group": "root"}
    return merge_facts(
        {
            "Directory": {
                f"path={path}": present
                for path in (
                    "/opt/sd35/releases",
                    "/opt/sd35/apps",
                    plan.app_dir,
                    f"/opt/sd35/releases/{plan.release_id}",
                )
            },
            "ReleaseStoreContents": {"models=/srv/sd35/models, root=/opt/sd35": Output([])},
        },
        existing_files({UNIT_PATH: unit}),
        existing_files({SERVICE_ENV_FILE: env}, group="sd35", mode=640),
        existing_files({INSTANCE_ENV: plan.instance_envs[0] if unit else None}, group="sd35", mode=640),
        existing_files({API_KEY_PATH: key}, user="sd35", group="sd35", mode=400),
        {
            "Directory": {"path=/srv/sd35/smoke": {"mode": 755, "user": "root", "group": "root"}},
            "Link": {"path=/opt/sd35/current": {"link_target": current} if current else None},
            "RunningService": {f"record={layout.running_record(0)}, unit={UNIT_NAME}": stated},
            "InstalledInstances": {
                INSTALLED_KEY: installed
                if installed is not None
                else Output(
                    [f"env 0 {host.service.port}", f"unit {UNIT_NAME} active", f"enabled {UNIT_NAME}"] if unit else []
                )
            },
            "SystemdStatus": {systemd_key: {UNIT_NAME: running}},
            "SystemdEnabled": {systemd_key: {UNIT_NAME: True}},
        },
    )


INSTALLED_KEY = (
    f"instances_dir={layout.INSTANCES_DIR}, legacy_unit={layout.LEGACY_UNIT}, template={layout.SERVICE_TEMPLATE}"
)


def installed_output(*lines: str) -> Output:
    """InstalledInstances' output: ``env 0 8123 -``, ``unit sd35-inference@0.service active``, ``legacy-file``..."""
    return Output(list(lines))


def target(host: HostSettings) -> str:
    return plan_for(host).release_target


def service_ops(run) -> list[str]:
    """The names of the service layer's changes (the release layer runs first, as it feeds the service)."""
    return [op.name for op in run.changes if op.name.startswith("Service | ")]


LAYERS = [release_layer, service_layer]


def test_nothing_changed_means_no_restart(tmp_path):
    host = settings(tmp_path, bind="10.0.0.1")
    run = run_deploy(
        LAYERS, facts(host, render_service_unit(host), render_service_env(host), KEY + "\n", target(host)), host
    )
    assert run.changes == [] and run.notes == []


def test_a_new_release_or_unit_restarts_and_says_why(tmp_path):
    host = settings(tmp_path, bind="10.0.0.1")
    run = run_deploy(
        LAYERS,
        facts(
            host,
            render_service_unit(host).replace("ProtectHome=yes", ""),
            render_service_env(host),
            KEY + "\n",
            "releases/old",
        ),
        host,
    )
    assert service_ops(run) == ["Service | Service unit", f"Service | Restart {UNIT_NAME}"]
    [restart] = run.commands("Restart")
    assert "systemctl daemon-reload" in restart and f"systemctl restart {UNIT_NAME}" in restart
    assert run.notes == ["service restarts (unit, release changed)"]
    assert run.notes_after() == ["service restarts (unit, release changed)"]  # the run stopped before it
    assert run.notes_after(succeeded=["Service |"]) == ["service restarted (unit, release changed)"]
    assert any("-ProtectHome=yes" not in diff and "+ProtectHome=yes" in diff for diff in run.diffs)


def test_a_stopped_service_is_started_not_restarted(tmp_path):
    host = settings()
    run = run_deploy(
        LAYERS,
        facts(host, render_service_unit(host), render_service_env(host), None, target(host), running=False),
        host,
    )
    assert service_ops(run) == [f"Service | {UNIT_NAME} enabled and running"]
    assert run.commands(UNIT_NAME) == [f"systemctl start {UNIT_NAME}"]


def test_api_key_goes_in_a_0400_file_never_in_unit_env_diff_or_command(tmp_path):
    host = settings(tmp_path, bind="10.0.0.1")
    run = run_deploy(LAYERS, facts(host, None, None, None, None), host)
    [upload] = run.commands("Service API key")[:1]
    assert upload == ["upload", KEY + "\n", API_KEY_PATH]
    assert any("chmod 400" in str(c) for c in run.commands("Service API key"))
    everything = repr([c for op in run.operations if op.name != "Service | Service API key" for c in op.commands])
    assert KEY not in everything and KEY not in repr(run.diffs) and KEY not in repr(run.notes)
    assert f"SD35_API_KEY_FILE={API_KEY_PATH}" in render_service_env(host)
    assert KEY not in smoke_command(host) and f"--api-key-file {API_KEY_PATH}" in smoke_command(host)


def test_playground_is_off_in_the_service_env_when_the_spec_says_so():
    assert "SD35_PLAYGROUND=on\n" in render_service_env(settings())
    off = dataclasses.replace(settings(), service=ServiceSettings(playground=False))
    assert "SD35_PLAYGROUND=off\n" in render_service_env(off)


def test_unit_runs_the_current_release_hardened():
    unit = render_service_unit(settings())
    assert "ExecStart=/opt/sd35/current/venv/bin/python -m sd35_provision.service" in unit
    assert "WorkingDirectory=/opt/sd35/current/app" in unit and "User=sd35" in unit
    assert "ReadWritePaths=/srv/sd35" in unit and "ProtectSystem=strict" in unit
    assert f"EnvironmentFile={SERVICE_ENV_FILE}" in unit and "Restart=on-failure" in unit


def test_smoke_command_targets_the_bound_address():
    assert "--url http://127.0.0.1:8123 --size 64x64 --steps 2" in smoke_command(settings(bind="0.0.0.0"))
    assert "--url http://10.0.0.1:8123" in smoke_command(settings(bind="10.0.0.1"))


def test_service_bundle_is_reproducible_and_only_the_service():
    import io
    import tarfile

    data, digest = service_bundle()
    assert hashlib.sha256(data).hexdigest() == digest
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert "sd35_provision/service/__main__.py" in names and "sd35_provision/__init__.py" in names
    assert all(name.startswith("sd35_provision/service/") or name == "sd35_provision/__init__.py" for name in names)
    # The playground's page and assets, served by the service itself, travel with the code.
    assert {
        "sd35_provision/service/static/playground.html",
        "sd35_provision/service/static/playground.js",
        "sd35_provision/service/static/playground.css",
    } <= set(names)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_direct_smoke_commands_use_sudo_when_the_spec_says_so():
    from sd35_provision.smoketest import _as_root

    class FakeHost:
        def __init__(self, data):
            self.data = data

    assert _as_root(FakeHost({"_sudo": True})) == {"_sudo": True}
    assert _as_root(FakeHost({})) == {}


def test_a_model_fetched_again_restarts_the_service():
    # The model layer's fetch feeds the service: its change, not a second look at the files, restarts it.
    from sd35_provision.deploys.model import model_layer
    from sd35_provision.facts.model import ModelCheck
    from tests.unit.test_model_deploy import model_fact

    host = settings(bind="10.0.0.1")
    model = merge_facts(
        {
            "Directory": {
                f"path=/srv/sd35/{name}": {"mode": 750, "user": "sd35", "group": "sd35"}
                for name in ("models", "manifests")
            }
        },
        model_fact(host, ModelCheck(manifest=True, exists=False)),
    )
    current = facts(host, render_service_unit(host), render_service_env(host), None, target(host))
    run = run_deploy([model_layer, *LAYERS], merge_facts(current, model), host)
    assert service_ops(run) == [f"Service | Restart {UNIT_NAME}"]
    assert "service restarts (model changed)" in run.notes
    healthy = merge_facts(current, model, model_fact(host, ModelCheck(manifest=True, exists=True, git_head="a" * 40)))
    assert run_deploy([model_layer, *LAYERS], healthy, host).changes == []


def test_a_service_running_old_settings_restarts_though_the_files_are_right(tmp_path):
    # A run cut off after writing the settings: the files match the spec, the process does not.
    host = settings(tmp_path, bind="10.0.0.1")
    unit, env = render_service_unit(host), render_service_env(host)
    old = {
        UNIT_PATH: sha256(unit),
        SERVICE_ENV_FILE: sha256(env + "SD35_QUEUE_SIZE=4\n"),
        layout.ENV_FILE: plan_for(host).running_files[layout.ENV_FILE],
        API_KEY_PATH: sha256(KEY + "\n"),
        INSTANCE_ENV: sha256(plan_for(host).instance_envs[0]),
    }
    rid = plan_for(host).release_id
    run = run_deploy(LAYERS, facts(host, unit, env, KEY + "\n", target(host), stated=running_output(rid, old)), host)
    assert service_ops(run) == [f"Service | Restart {UNIT_NAME}"]
    [note] = run.notes
    assert note.startswith(f"service restarts: service runs release {rid} with settings digest ")
    assert note.endswith(f"({SERVICE_ENV_FILE} differs)")


def test_a_hand_edited_env_file_the_service_restarted_with_is_restored_and_restarted(tmp_path):
    from sd35_provision.deploys.system import system_layer  # noqa: F401 - the env file's own layer is tested there

    host = settings(tmp_path, bind="10.0.0.1")
    unit, env = render_service_unit(host), render_service_env(host)
    edited = {
        UNIT_PATH: sha256(unit),
        SERVICE_ENV_FILE: sha256(env),
        layout.ENV_FILE: sha256("HF_HOME=/tmp/x\n"),
        API_KEY_PATH: sha256(KEY + "\n"),
        INSTANCE_ENV: sha256(plan_for(host).instance_envs[0]),
    }
    run = run_deploy(
        LAYERS,
        facts(host, unit, env, KEY + "\n", target(host), stated=running_output(plan_for(host).release_id, edited)),
        host,
    )
    assert service_ops(run) == [f"Service | Restart {UNIT_NAME}"]
    assert run.notes[0].endswith(f"({layout.ENV_FILE} differs)")


def test_a_process_that_states_nothing_or_another_release_is_restarted(tmp_path):
    host = settings(tmp_path, bind="10.0.0.1")
    unit, env = render_service_unit(host), render_service_env(host)
    silent = Output(["LoadState=loaded", "ActiveState=active", "MainPID=77", "record "])
    run = run_deploy(LAYERS, facts(host, unit, env, KEY + "\n", target(host), stated=silent), host)
    assert service_ops(run) == [f"Service | Restart {UNIT_NAME}"]
    assert run.notes == ["service restarts: the running process (pid 77) does not state what it runs"]


def test_running_difference_names_release_and_files():
    files = {"/etc/a": "1" * 64, "/etc/b": "2" * 64}
    same = RunningState("active", 5, {"pid": 5, "release": "r1", "files": dict(files)})
    assert running_difference(same, "r1", files) is None
    other = RunningState("active", 5, {"pid": 5, "release": "r0", "files": {**files, "/etc/b": "3" * 64}})
    text = running_difference(other, "r1", files)
    assert text.startswith("service runs release r0 with settings digest ") and ", wanted r1 with " in text
    assert text.endswith("(/etc/b differs)")
    stale = RunningState("active", 6, {"pid": 5, "release": "r1", "files": dict(files)})  # another process's record
    assert running_difference(stale, "r1", files) == "the running process (pid 6) does not state what it runs"
    assert running_difference(RunningState("inactive", None, None), "r1", files) is None
    assert running_difference(RunningState("failed", None, same.record), "r1", files) is None
