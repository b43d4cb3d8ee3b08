"""Service instances: which ones a host runs (recorded 2 x H200, constructed 8-GPU and MIG outputs, CPU),
what the spec may ask for, and what the service layer does with them on recorded facts."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest

from sd35_provision import layout
from sd35_provision.errors import SpecError
from sd35_provision.facts.nvidia import MigDevice, NvidiaGpus, NvidiaMigDevices, NvidiaStatus
from sd35_provision.facts.python import PythonInterpreter
from sd35_provision.facts.service import InstalledInstances, parse_installed_instances
from sd35_provision.hostplan import InstancesNotAvailable, PlanFacts, build_host_plan
from sd35_provision.hostspec import load_spec
from sd35_provision.hostspec.settings import GpuSettings, ServiceSettings
from sd35_provision.instances import Instance, InstanceSelectionError, select_instances
from sd35_provision.jsonreport import load_schema, run_document, status_document
from sd35_provision.report import HostOutcome, RunReport, render_smoke_table
from sd35_provision.status import HostStatus, InstanceStatus, render_status_table
from tests.pyinfra_fakes import Output, existing_files, fact_case, merge_facts, plan_for, run_deploy
from tests.unit.test_service_deploy import (
    INSTALLED_KEY,
    KEY,
    LAYERS,
    facts,
    render_service_env,
    render_service_unit,
    running_output,
    service_ops,
    settings,
    sha256,
    target,
)

PY311 = PythonInterpreter("python3", "/usr/bin/python3", "3.11.2")
H200_UUIDS = ["GPU-ef6d584d-cafe-0652-0f12-0ec5c3ffe8c0", "GPU-34f4428c-ff6c-aada-b002-b16896dbd402"]


def gpus(case: str) -> NvidiaStatus:
    return NvidiaGpus().process(list(fact_case("NvidiaGpus", case)))


def migs(case: str) -> tuple[MigDevice, ...]:
    return NvidiaMigDevices().process(list(fact_case("NvidiaMigDevices", case)))


def pick(setting, nvidia=None, mig=(), accelerator="nvidia", port=8000):
    return select_instances(setting, port, accelerator, nvidia, mig)


# -- selection ------------------------------------------------------------------------------


def test_auto_on_the_recorded_two_h200_box_pins_each_gpu_by_its_uuid():
    assert pick("auto", gpus("two_h200_recorded"), migs("two_h200_recorded")) == (
        Instance(0, 8000, H200_UUIDS[0], "GPU 0"),
        Instance(1, 8001, H200_UUIDS[1], "GPU 1"),
    )


@pytest.mark.parametrize(
    "gpu_case, mig_case",
    [("eight_h100_sxm", "eight_h100_constructed"), ("eight_h200_constructed", "eight_h200_constructed")],
)
def test_auto_on_an_eight_gpu_box_is_one_instance_per_gpu_on_consecutive_ports(gpu_case, mig_case):
    status = gpus(gpu_case)
    chosen = pick("auto", status, migs(mig_case), port=9000)
    assert [(i.index, i.port, i.gpu) for i in chosen] == [(n, 9000 + n, f"GPU {n}") for n in range(8)]
    assert [i.device for i in chosen] == [gpu.uuid for gpu in status.gpus]
    assert len({i.device for i in chosen}) == 8 and all(i.device.startswith("GPU-") for i in chosen)
    assert [i.unit for i in chosen[:2]] == ["sd35-inference@0.service", "sd35-inference@1.service"]


def test_a_number_takes_the_first_gpus_and_a_list_the_named_ones_in_its_order():
    status = gpus("eight_h200_constructed")
    assert [i.gpu for i in pick(3, status)] == ["GPU 0", "GPU 1", "GPU 2"]
    listed = pick([7, status.gpus[2].uuid], status)
    assert [(i.index, i.port, i.device, i.gpu) for i in listed] == [
        (0, 8000, status.gpus[7].uuid, "GPU 7"),
        (1, 8001, status.gpus[2].uuid, "GPU 2"),
    ]


def test_mig_auto_is_one_instance_per_mig_device_and_per_whole_gpu():
    status, mig = gpus("two_h100_one_in_mig_constructed"), migs("h100_mig_constructed")
    chosen = pick("auto", status, mig)
    assert [(i.port, i.gpu) for i in chosen] == [
        (8000, "GPU 0 MIG 3g.40gb #0"),
        (8001, "GPU 0 MIG 2g.20gb #1"),
        (8002, "GPU 0 MIG 2g.20gb #2"),
        (8003, "GPU 1"),
    ]
    assert [i.device for i in chosen] == [m.uuid for m in mig] + [status.gpus[1].uuid]
    # A MIG device by its UUID, a whole GPU by index: fine. The GPU in MIG mode itself: refused, naming its slices.
    assert [i.device for i in pick([mig[2].uuid, 1], status, mig)] == [mig[2].uuid, status.gpus[1].uuid]
    with pytest.raises(InstanceSelectionError, match=r"GPU 0 is in MIG mode.*list its MIG devices instead \(MIG-"):
        pick([0], status, mig)


def test_a_cpu_host_runs_one_unpinned_instance_or_as_many_as_asked():
    assert pick("auto", accelerator="cpu") == (Instance(0, 8000, None, "cpu"),)
    assert [(i.port, i.device) for i in pick(3, accelerator="cpu")] == [(8000, None), (8001, None), (8002, None)]
    # accelerator cpu on a box with GPUs: they are not used
    assert pick("auto", gpus("two_h200_recorded"), accelerator="cpu") == (Instance(0, 8000),)
    with pytest.raises(InstanceSelectionError, match="lists GPUs, but gpu.accelerator is cpu"):
        pick([0], accelerator="cpu")


def test_what_the_host_does_not_have_is_named_with_what_it_has():
    status = gpus("two_h200_recorded")
    with pytest.raises(InstanceSelectionError) as too_many:
        pick(3, status)
    assert str(too_many.value) == (
        f"service.instances: 3 instances, but the host has 2 GPUs to pin them to "
        f"(GPU 0 ({H200_UUIDS[0]}), GPU 1 ({H200_UUIDS[1]}))"
    )
    with pytest.raises(InstanceSelectionError, match=r"^service.instances: GPU 5 is not on this host; it has GPU 0 \("):
        pick([0, 5], status)
    with pytest.raises(InstanceSelectionError, match="MIG-0000aaaa-1111 is not on this host; it has GPU 0"):
        pick(["MIG-0000aaaa-1111"], status)
    with pytest.raises(InstanceSelectionError, match=rf"GPU 1 \({H200_UUIDS[1]}\) is listed twice"):
        pick([1, H200_UUIDS[1]], status)  # once by index, once by UUID


def test_a_gpu_host_whose_driver_does_not_work_yet_runs_one_instance_unpinned_until_it_does():
    broken = gpus("driver_library_mismatch")
    assert pick("auto", broken) == (Instance(0, 8000),)
    with pytest.raises(InstanceSelectionError, match="it names none on this host .*use auto until the driver works"):
        pick(2, broken)
    with pytest.raises(InstanceSelectionError, match="lists 0, 1, but nvidia-smi names no GPU"):
        pick([0, 1], broken)


# -- the plan --------------------------------------------------------------------------------


def test_the_plan_pins_each_instance_in_its_own_settings_file_and_the_unit_is_a_template():
    host = dataclasses.replace(settings(), gpu=GpuSettings(accelerator="nvidia"))
    plan = build_host_plan(host, PlanFacts(pythons=(PY311,), nvidia=gpus("two_h200_recorded")))
    assert [(i.port, i.device) for i in plan.instances] == [(8123, H200_UUIDS[0]), (8124, H200_UUIDS[1])]
    env = plan.instance_envs[1].splitlines()
    assert env[2:] == ["SD35_PORT=8124", f"CUDA_VISIBLE_DEVICES={H200_UUIDS[1]}"]
    assert "SD35_PORT" not in plan.service_env  # shared settings only
    unit = plan.unit
    assert "EnvironmentFile=/etc/sd35/instances/%i.env" in unit.splitlines()
    assert unit.index("EnvironmentFile=/etc/sd35/service.env") < unit.index(
        "EnvironmentFile=/etc/sd35/instances/%i.env"
    )
    assert "RuntimeDirectory=sd35/%i" in unit and "Environment=SD35_RUNNING_RECORD=/run/sd35/%i/running.json" in unit
    assert "/etc/sd35/instances/%i.env" in re.search(r'SD35_RUNNING_FILES=([^"]*)"', unit).group(1)
    files = plan.running_files_of(plan.instances[1])
    assert files["/etc/sd35/instances/1.env"] == sha256(plan.instance_envs[1]) and layout.UNIT_PATH in files


def test_a_plan_asking_for_a_gpu_the_host_lacks_fails_at_preflight_naming_host_and_field():
    host = dataclasses.replace(
        settings(), gpu=GpuSettings(accelerator="nvidia"), service=ServiceSettings(instances=(0, 2))
    )
    with pytest.raises(InstancesNotAvailable) as error:
        build_host_plan(host, PlanFacts(pythons=(PY311,), nvidia=gpus("two_h200_recorded")))
    assert str(error.value).startswith("h1: preflight: service.instances: GPU 2 is not on this host; it has GPU 0")


# -- the spec ---------------------------------------------------------------------------------

SPEC = """\
defaults:
  model: {source: git, url: 'file:///srv/mirror/tiny.git', revision: 0123456789abcdef0123456789abcdef01234567}
hosts:
"""


def problems(tmp_path: Path, hosts: str) -> list[str]:
    (tmp_path / "key").write_text("k" * 32 + "\n")
    spec = tmp_path / "fleet.yaml"
    spec.write_text(SPEC + textwrap.indent(textwrap.dedent(hosts), "  "))
    with pytest.raises(SpecError) as error:
        load_spec(spec)
    return [line.split(":", 1)[1] for line in error.value.problems]


def test_the_spec_loads_each_form(tmp_path):
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        SPEC
        + "  a: {address: 10.0.0.1}\n  b: {address: 10.0.0.2, service: {instances: 4}}\n"
        + "  c: {address: 10.0.0.3, service: {instances: [3, GPU-34f4428c-ff6c, MIG-227780c1-f5ac]}}\n"
    )
    assert [host.service.instances for host in load_spec(spec).hosts] == [
        "auto",
        4,
        (3, "GPU-34f4428c-ff6c", "MIG-227780c1-f5ac"),
    ]


def test_bad_instances_are_refused_at_their_line(tmp_path):
    assert problems(tmp_path, "a: {address: 10.0.0.1, service: {instances: 0}}\n") == [
        "4: hosts.a.service.instances: 0 is not valid: auto, a number of instances (1 to 64), "
        "or a list of GPU indexes, GPU UUIDs (GPU-...) and MIG device UUIDs (MIG-...)"
    ]
    assert problems(tmp_path, "a: {address: 10.0.0.1, service: {instances: [0, gpu1]}}\n") == [
        "4: hosts.a.service.instances[1]: 'gpu1' is not valid: a GPU index (0-63), or a GPU or MIG device UUID as "
        "nvidia-smi -L prints it (GPU-..., MIG-...)"
    ]
    assert problems(tmp_path, "a: {address: 10.0.0.1, service: {instances: [1, 0, 1]}}\n") == [
        "4: hosts.a.service.instances: GPU 1 is listed twice (one instance per device) (host a)"
    ]
    assert problems(tmp_path, "a: {address: 10.0.0.1, service: {port: 65535, instances: 2}}\n") == [
        "4: hosts.a.service.instances: 2 instances from service.port 65535 need ports up to 65536, above 65535 (host a)"
    ]
    assert problems(tmp_path, "a: {address: 10.0.0.1, gpu: {accelerator: cpu}, service: {instances: [0]}}\n") == [
        "4: hosts.a.service.instances: lists GPUs, but gpu.accelerator is cpu; give a number instead (host a)"
    ]


def test_every_instance_port_counts_against_ssh_ports_and_other_instances_on_the_same_address(tmp_path):
    # Instance 2 of a lands on its own ssh port.
    assert problems(tmp_path, "a: {address: 10.0.0.1, ssh: {port: 8002}, service: {instances: 4}}\n") == [
        "4: hosts.a: service instance 2 (service.port + 2) would listen on 8002, ssh.port"
    ]
    # Two hosts behind one address (their own ssh ports): b's instance 1 is a's ssh endpoint there.
    assert (
        problems(
            tmp_path,
            """\
        a: {address: 10.0.0.1, ssh: {port: 8001}}
        b: {address: 10.0.0.1, service: {bind: 0.0.0.0, api_key_file: key, instances: 2}}
        """,
        )[-1]
        == "5: hosts.b.address: 10.0.0.1:8001, service instance 1 (service.port + 1), is already host 'a' "
        "(its ssh port)"
    )
    # Both bound to that very address: one socket.
    assert problems(
        tmp_path,
        """\
        a: {address: 10.0.0.1, service: {bind: 10.0.0.1, api_key_file: key, instances: 2}}
        b: {address: 10.0.0.1, ssh: {port: 2222}, service: {bind: 10.0.0.1, api_key_file: key, port: 8001}}
        """,
    )[-1] == (
        "5: hosts.b.address: 10.0.0.1:8001, service instance 0 (service.port), is already host 'a' "
        "(a service instance bound to that address)"
    )


# -- the service layer on recorded facts ----------------------------------------------------------


def two_instance_facts(
    host, running: tuple[bool, bool] = (True, True), env1: bool = True, stated1: bool = True, unit: str | None = None
):
    """A host that runs the plan with two instances (``running``), unless told otherwise (``unit``: its unit file)."""
    plan = plan_for(host)
    unit, env = unit or render_service_unit(host), render_service_env(host)
    base = facts(host, unit, env, KEY + "\n", target(host), running=running[0])
    one = layout.instance_unit(1)
    key = f"machine=None, services=['{one}'], user_mode=False, user_name=None"
    stated = {
        layout.UNIT_PATH: sha256(unit),
        layout.SERVICE_ENV_FILE: sha256(env),
        layout.ENV_FILE: plan.running_files[layout.ENV_FILE],
        layout.API_KEY_FILE: sha256(KEY + "\n"),
        layout.instance_env_file(1): sha256(plan.instance_envs[1]),
    }
    return merge_facts(
        base,
        existing_files({layout.instance_env_file(1): plan.instance_envs[1] if env1 else None}, group="sd35", mode=640),
        {
            "RunningService": {
                f"record={layout.running_record(1)}, unit={one}": running_output(
                    plan.release_id if stated1 else "old",
                    stated,
                    pid=4343,
                    active="active" if running[1] else "inactive",
                )
            },
            "SystemdStatus": {key: {one: running[1]}},
            "SystemdEnabled": {key: {one: True}},
            "InstalledInstances": {
                INSTALLED_KEY: Output(
                    [
                        f"env 0 {host.service.port}",
                        *([f"env 1 {host.service.port + 1}"] if env1 else []),
                        f"unit {layout.instance_unit(0)} active",
                        f"unit {one} {'active' if running[1] else 'inactive'}",
                    ]
                )
            },
        },
    )


def two(tmp_path):
    return dataclasses.replace(
        settings(tmp_path, bind="10.0.0.1"),
        service=dataclasses.replace(settings(tmp_path, bind="10.0.0.1").service, instances=2),
    )


def test_two_instances_that_run_the_plan_change_nothing(tmp_path):
    host = two(tmp_path)
    run = run_deploy(LAYERS, two_instance_facts(host), host)
    assert run.changes == [] and run.notes == []


def test_a_new_second_instance_starts_alone_the_first_keeps_running(tmp_path):
    host = two(tmp_path)
    run = run_deploy(LAYERS, two_instance_facts(host, running=(True, False), env1=False), host)
    assert service_ops(run) == ["Service | Instance 1 settings", "Service | Restart sd35-inference@1.service"]
    [restart] = run.commands("Restart")
    assert "systemctl enable --quiet sd35-inference@1.service && systemctl restart sd35-inference@1.service" in restart
    assert "sd35-inference@0.service" not in restart
    assert run.notes == ["sd35-inference@1.service restarts (instance settings changed)"]
    assert any("+SD35_PORT=8124" in diff for diff in run.diffs)


def test_a_stopped_instance_is_started_by_name_and_one_running_old_settings_restarted(tmp_path):
    host = two(tmp_path)
    stopped = run_deploy(LAYERS, two_instance_facts(host, running=(True, False)), host)
    assert service_ops(stopped) == ["Service | sd35-inference@1.service enabled and running"]
    assert stopped.commands("sd35-inference@1") == ["systemctl start sd35-inference@1.service"]
    stale = run_deploy(LAYERS, two_instance_facts(host, stated1=False), host)
    assert service_ops(stale) == ["Service | Restart sd35-inference@1.service"]
    [note] = stale.notes
    assert note.startswith("sd35-inference@1.service restarts: service runs release old with settings digest ")


def test_a_changed_shared_input_restarts_every_instance_in_one_go(tmp_path):
    host = two(tmp_path)
    old_unit = render_service_unit(host).replace("ProtectHome=yes\n", "")
    run = run_deploy(LAYERS, two_instance_facts(host, unit=old_unit), host)
    restart = [op.name for op in run.changes if "Restart" in op.name]
    assert restart == ["Service | Restart sd35-inference@0.service, sd35-inference@1.service"]
    assert "systemctl restart sd35-inference@0.service sd35-inference@1.service" in run.commands("Restart")[0]
    assert run.notes == ["service restarts (unit changed)"]


def test_fewer_instances_stop_disable_and_remove_the_extra_one(tmp_path):
    host = settings(tmp_path, bind="10.0.0.1")  # one instance now
    recorded = merge_facts(
        facts(host, render_service_unit(host), render_service_env(host), KEY + "\n", target(host)),
        {
            "InstalledInstances": {
                INSTALLED_KEY: Output(
                    [
                        "env 0 8123",
                        "env 1 8124",
                        "unit sd35-inference@0.service active",
                        "unit sd35-inference@1.service active",
                        "enabled sd35-inference@0.service",
                        "enabled sd35-inference@1.service",
                    ]
                )
            }
        },
    )
    run = run_deploy(LAYERS, recorded, host)
    assert service_ops(run) == ["Service | Remove sd35-inference@1.service (not in the spec)"]
    [command] = run.commands("Remove sd35-inference@1")
    assert command.startswith(
        "systemctl disable --now --quiet sd35-inference@1.service; rm -f /etc/sd35/instances/1.env"
    )
    assert run.notes == ["sd35-inference@1.service runs but the spec has no instance 1"]


def test_the_single_unit_of_before_instances_is_removed_before_instance_0_starts(tmp_path):
    host = settings(tmp_path, bind="10.0.0.1")
    # The host as the old version left it: sd35-inference.service runs; no template, no instance file yet.
    recorded = merge_facts(
        facts(host, None, render_service_env(host), KEY + "\n", target(host), running=False),
        {
            "InstalledInstances": {
                INSTALLED_KEY: Output(["legacy-file", "legacy LoadState=loaded", "legacy ActiveState=active"])
            }
        },
    )
    run = run_deploy(LAYERS, recorded, host)
    names = service_ops(run)
    assert names == [
        "Service | Instance 0 settings",
        "Service | Service unit",
        "Service | Remove sd35-inference.service (replaced by instances)",
        "Service | Restart sd35-inference@0.service",
    ]
    [remove] = run.commands("Remove sd35-inference.service")
    assert "systemctl disable --now --quiet sd35-inference.service" in remove
    assert "rm -f /etc/systemd/system/sd35-inference.service && systemctl daemon-reload" in remove
    assert run.notes[0] == "sd35-inference.service (active) is replaced by sd35-inference@.service instances"


# -- facts, status and smoke rows ----------------------------------------------------------------


def test_installed_instances_parses_files_units_links_and_the_old_unit():
    parsed = parse_installed_instances(
        [
            "env 0 8000 GPU-ef6d584d-cafe-0652-0f12-0ec5c3ffe8c0",
            "env 1 8001 ",
            "unit sd35-inference@1.service failed",
            "unit sd35-inference@7.service active",
            "enabled sd35-inference@0.service",
            "legacy-file",
            "legacy LoadState=not-found",
            "legacy ActiveState=inactive",
        ]
    )
    assert [(i.index, i.port, i.device, i.active, i.enabled) for i in parsed.instances] == [
        (0, 8000, "GPU-ef6d584d-cafe-0652-0f12-0ec5c3ffe8c0", None, True),
        (1, 8001, None, "failed", False),
        (7, None, None, "active", False),
    ]
    assert parsed.legacy_unit is True and parsed.legacy_active is None


def test_installed_instances_command_runs_under_sh_on_a_host_without_any(tmp_path):
    import subprocess

    command = InstalledInstances().command(str(tmp_path / "instances"), "sd35-nosuch@.service", "sd35-nosuch.service")
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    (tmp_path / "instances").mkdir()
    (tmp_path / "instances" / "3.env").write_text("# x\nSD35_PORT=8003\nCUDA_VISIBLE_DEVICES=MIG-abc\n")
    again = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    assert parse_installed_instances(result.stdout.splitlines()).instances == ()
    [found] = parse_installed_instances(again.stdout.splitlines()).instances
    assert (found.index, found.port, found.device) == (3, 8003, "MIG-abc")


def test_status_lists_each_instance_and_the_table_gets_a_row_per_instance():
    smoke = {"ok": True, "latency_s": 1.25, "reason": ""}
    row = HostStatus("gpu-1", "10.0.0.1", True, "Ubuntu 24.04", "2x NVIDIA H200", "580.159.04", True, "active", "ready")
    row.instances = [
        InstanceStatus(0, "sd35-inference@0.service", 8000, H200_UUIDS[0], "GPU 0", "active", "ready", smoke),
        InstanceStatus(1, "sd35-inference@1.service", 8001, H200_UUIDS[1], "GPU 1", "failed", None, None),
    ]
    single = HostStatus("cpu-1", "10.0.0.2", True, "Debian 12", "none")
    single.instances = [InstanceStatus(0, "sd35-inference@0.service", 8000, None, "cpu", "active", "ready", smoke)]
    lines = render_status_table([row, single]).splitlines()
    assert lines[3] == "" and lines[4].split() == ["HOST", "INSTANCE", "GPU", "PORT", "SERVICE", "LAST", "SMOKE"]
    assert lines[5].split() == ["gpu-1", "0", "GPU", "0", "8000", "active/ready", "ok", "1.2s"]
    assert lines[6].split() == ["gpu-1", "1", "GPU", "1", "8001", "failed", "-"]
    assert lines[7].split() == ["cpu-1", "0", "cpu", "8000", "active/ready", "ok", "1.2s"]
    assert len(render_status_table([single]).splitlines()) == 2  # one instance: the host row says it all
    document = status_document([row, single])
    import jsonschema

    jsonschema.validate(document, load_schema())
    assert [i["gpu"] for i in document["hosts"][0]["instances"]] == ["GPU 0", "GPU 1"]
    assert document["hosts"][0]["instances"][1]["active"] == "failed"


def test_the_smoke_table_has_a_row_per_instance_and_the_json_lists_them():
    instances = [
        {
            "index": 0,
            "unit": "sd35-inference@0.service",
            "port": 8000,
            "device": H200_UUIDS[0],
            "ok": True,
            "reason": "",
            "latency_s": 2.5,
            "image": "/srv/sd35/smoke/last.png",
        },
        {
            "index": 1,
            "unit": "sd35-inference@1.service",
            "port": 8001,
            "device": H200_UUIDS[1],
            "ok": False,
            "reason": "blank image",
            "latency_s": 2.0,
            "image": None,
        },
    ]
    host = HostOutcome(
        "gpu-1", failed=True, step="smoke test", error="smoke test failed: instance 1 (port 8001): blank image"
    )
    host.smoke = {
        "ok": False,
        "reason": "instance 1 (port 8001): blank image",
        "latency_s": 2.5,
        "image": "/srv/sd35/smoke/last.png",
        "instances": instances,
    }
    report = RunReport(
        mode="smoke", hosts=[host, HostOutcome("gone", failed=True, unreachable=True, step="connect", error="refused")]
    )
    lines = render_smoke_table(report).splitlines()
    assert lines[0].split() == ["HOST", "INSTANCE", "PORT", "DEVICE", "STATUS", "DETAIL"]
    assert lines[1].split() == ["gpu-1", "0", "8000", H200_UUIDS[0], "ok", "smoke", "ok", "in", "2.5s"]
    assert lines[2].split()[:5] == ["gpu-1", "1", "8001", H200_UUIDS[1], "failed"] and lines[2].endswith("blank image")
    assert lines[3].split()[:5] == ["gone", "-", "-", "-", "unreachable"]
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(run_document(report))), load_schema())
