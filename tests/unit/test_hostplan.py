"""The per-host plan from settings + facts, without pyinfra's machinery: which lock, where things go, no secret."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from sd35_provision.appbundle import service_bundle
from sd35_provision.facts.host import HostFacts
from sd35_provision.facts.nvidia import NvidiaGpus, NvidiaPciDevices, NvidiaStatus
from sd35_provision.facts.python import PythonInterpreter
from sd35_provision.hostplan import (
    EnvironmentNotReady,
    Instance,
    ModelNotReady,
    PlanFacts,
    build_host_plan,
    release_id,
)
from sd35_provision.hostspec.settings import (
    CacheSettings,
    DriverSettings,
    GpuSettings,
    HostSettings,
    ModelSettings,
    PythonSettings,
    ServiceSettings,
)
from sd35_provision.locks import load_lock
from tests.pyinfra_fakes import fact_case

PY311 = PythonInterpreter("python3", "/usr/bin/python3", "3.11.2")
REV = "447068b6f7224c7d6673756e2605a4abdd802414"
KEY = "k3y-that-must-never-show-in-a-plan-0123"


def gpus(case: str) -> NvidiaStatus:
    return NvidiaGpus().process(list(fact_case("NvidiaGpus", case)))


def host(**changes) -> HostSettings:
    base = HostSettings(
        name="gpu-a1",
        address="10.0.0.1",
        gpu=GpuSettings(accelerator="cpu"),
        cache=CacheSettings(root="/srv/sd35"),
        model=ModelSettings(source="git", url="file:///mirror/tiny.git", revision=REV),
        service=ServiceSettings(port=8123),
    )
    return replace(base, **changes)


def test_a_cpu_host_gets_the_cpu_lock_and_every_path_from_the_layout():
    plan = build_host_plan(host(), PlanFacts(pythons=(PY311,)))
    lock = load_lock("cpu")
    assert (plan.interpreter, plan.torch_flavour, plan.lock) == ("/usr/bin/python3", "cpu", lock)
    assert plan.venv_dir == f"/opt/sd35/venvs/{lock.id}" and plan.venv_python == f"{plan.venv_dir}/bin/python"
    assert plan.lock_path == f"/opt/sd35/locks/{lock.id}.txt"
    assert plan.wheelhouse_dir is None and plan.wheels == ()
    assert plan.model_dir == f"/srv/sd35/models/git-tiny-{REV[:12]}"
    assert plan.model_manifest_path == f"/srv/sd35/manifests/git-tiny-{REV[:12]}.json"
    assert plan.model_manifest is None and plan.model_manifest_text is None
    assert plan.app_dir == f"/opt/sd35/apps/{service_bundle()[1][:12]}"
    assert plan.release_manifest["links"] == {"venv": plan.venv_dir, "app": plan.app_dir, "model": plan.model_dir}
    assert plan.release_id == release_id(plan.release_manifest) and plan.release_target == f"releases/{plan.release_id}"
    assert plan.service_env_digest == hashlib.sha256(plan.service_env.encode()).hexdigest()[:16]
    assert "SD35_MODEL_DIR=/opt/sd35/current/model" in plan.service_env
    assert "SD35_PORT=8123" in plan.instance_envs[0]  # each instance's port is in its own file
    assert "ExecStart=/opt/sd35/current/venv/bin/python -m sd35_provision.service" in plan.unit
    assert plan.instances == (Instance(index=0, port=8123),)
    assert plan.has_api_key is False


def test_the_torch_flavour_follows_the_driver_or_the_branch_the_driver_step_installs():
    nvidia = host(gpu=GpuSettings(accelerator="nvidia", driver=DriverSettings(mode="install", branch="570")))
    assert build_host_plan(nvidia, PlanFacts(pythons=(PY311,), nvidia=gpus("h100_recorded"))).torch_flavour == "cu130"
    # no working driver yet, a GPU on PCI: what "auto" picks once branch 570 is installed
    pci = tuple(NvidiaPciDevices().process(list(fact_case("NvidiaPciDevices", "l40s_unbound_and_4090_on_nouveau"))))
    facts = PlanFacts(pythons=(PY311,), nvidia=gpus("absent"), nvidia_pci=pci, os_id="ubuntu", os_version="24.04")
    assert build_host_plan(nvidia, facts).torch_flavour == "cu128"
    verify = replace(nvidia, gpu=GpuSettings(accelerator="nvidia", driver=DriverSettings(mode="verify")))
    assert build_host_plan(verify, facts).torch_flavour == "cpu"
    pinned = replace(nvidia, python=PythonSettings(torch_flavour="cu128"))
    assert build_host_plan(pinned, PlanFacts(pythons=(PY311,))).torch_flavour == "cu128"  # no GPU fact needed


def test_the_interpreter_is_python3_if_new_enough_else_the_newest_python3_x():
    old = PythonInterpreter("python3", "/usr/bin/python3", "3.10.12")
    newer = (
        old,
        PythonInterpreter("python3.11", "/usr/bin/python3.11", "3.11.9"),
        PythonInterpreter("python3.12", "/opt/py/bin/python3.12", "3.12.3"),
    )
    assert build_host_plan(host(), PlanFacts(pythons=newer)).interpreter == "/opt/py/bin/python3.12"
    with pytest.raises(EnvironmentNotReady) as raised:
        build_host_plan(host(), PlanFacts(pythons=(old,)))
    assert str(raised.value) == (
        "gpu-a1: Python environment: no Python 3.11+ on the host to build the venv with (python.min_version)"
    )


def test_the_api_key_is_present_in_the_plan_never_its_text(tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    plan = build_host_plan(host(service=ServiceSettings(api_key_file=key_file)), PlanFacts(pythons=(PY311,)))
    assert plan.has_api_key is True
    assert KEY not in repr(plan) and KEY not in plan.service_env and KEY not in plan.unit
    assert "SD35_API_KEY_FILE=/etc/sd35/api-key" in plan.service_env
    assert "settings=" not in repr(plan)  # the plan's repr is its decisions, not the whole spec


def test_a_pushed_model_is_named_by_its_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}\n')
    plan = build_host_plan(host(model=ModelSettings(source="push", path=model)), PlanFacts(pythons=(PY311,)))
    digest = hashlib.sha256(plan.model_manifest_text.encode()).hexdigest()
    assert plan.model_dir == f"/srv/sd35/models/push-{digest[:12]}"
    assert plan.model_manifest_path == f"/srv/sd35/manifests/push-{digest[:12]}.json"
    assert sorted(plan.model_manifest["files"]) == ["model_index.json"]
    (model / "model_index.json").unlink()
    with pytest.raises(ModelNotReady, match=r"^gpu-a1: Model: model.path .*tiny has no model_index.json"):
        build_host_plan(host(model=ModelSettings(source="push", path=model)), PlanFacts(pythons=(PY311,)))


def test_releases_compare_across_hosts_and_change_with_the_service_settings():
    one = build_host_plan(host(), PlanFacts(pythons=(PY311,)))
    other = build_host_plan(host(name="gpu-b2", address="10.0.0.2"), PlanFacts(pythons=(PY311,)))
    assert one.release_id == other.release_id
    queue = build_host_plan(host(service=ServiceSettings(port=8123, queue_size=1)), PlanFacts(pythons=(PY311,)))
    build, settings = one.release_id.split("-")
    assert queue.release_id.split("-")[0] == build and queue.release_id.split("-")[1] != settings


def test_the_plan_takes_preflights_facts_as_they_are():
    facts = HostFacts(
        os_id="debian",
        os_name="Debian GNU/Linux",
        os_version="12",
        os_codename="bookworm",
        kernel="6.1.0-28-amd64",
        pythons=(PY311,),
        cache_free=None,
        cache_storage=None,  # type: ignore[arg-type]  # preflight's, not the plan's
        nvidia=gpus("h100_recorded"),
    )
    plan_facts = PlanFacts.from_host_facts(facts, {"python_version": "3.11"})
    assert (plan_facts.pythons, plan_facts.nvidia, plan_facts.os_id, plan_facts.os_version) == (
        facts.pythons,
        facts.nvidia,
        "debian",
        "12",
    )
    assert plan_facts.interpreter_environment == {"python_version": "3.11"}
    nvidia = host(gpu=GpuSettings(accelerator="nvidia"))
    assert build_host_plan(nvidia, PlanFacts.from_host_facts(facts)).torch_flavour == "cu130"


def test_a_wheelhouse_without_the_interpreters_environment_is_a_bug_not_a_guess(tmp_path):
    settings = host(python=PythonSettings(wheelhouse=Path(tmp_path)))
    with pytest.raises(ValueError, match="needs the interpreter's environment"):
        build_host_plan(settings, PlanFacts(pythons=(PY311,)))


def test_the_plan_says_what_the_service_will_run_on_the_hosts_gpu():
    """From the GPU facts and the spec: precision, memory plan and expected peak (plan prints it per host)."""
    large = ModelSettings(source="hf", repo="stabilityai/stable-diffusion-3.5-large", revision=REV)
    h200 = build_host_plan(host(model=large), PlanFacts(pythons=(PY311,), nvidia=gpus("two_h200_recorded")))
    plan = h200.service_plan
    assert plan is not None
    assert (plan.gpu, plan.precision, plan.compile, plan.memory, plan.t5) == (
        "NVIDIA H200",
        "fp8-dynamic",
        True,
        "resident",
        "8-bit",
    )
    assert plan.expected_peak_bytes is not None and 18 << 30 < plan.expected_peak_bytes < 21 << 30
    assert plan.line().startswith(
        "service: fp8-dynamic + compile, memory resident, expected peak 19.6 GiB of 140.4 GiB"
    )
    # bf16 on the same card: no 8-bit T5, a higher peak
    bf16 = build_host_plan(
        host(model=large, service=ServiceSettings(precision="bf16")),
        PlanFacts(pythons=(PY311,), nvidia=gpus("two_h200_recorded")),
    ).service_plan
    assert bf16 is not None and (bf16.precision, bf16.t5) == ("bf16", "bfloat16")
    assert bf16.expected_peak_bytes is not None and bf16.expected_peak_bytes > plan.expected_peak_bytes
    # the cap of service.gpu_memory_gib is what the plan is made for: a 16 GB cap gets the lean plan
    capped = build_host_plan(
        host(model=large, service=ServiceSettings(gpu_memory_gib=15.0)),
        PlanFacts(pythons=(PY311,), nvidia=gpus("two_h200_recorded")),
    ).service_plan
    assert capped is not None and (capped.memory, capped.gpu_memory_bytes) == ("lean", 15 << 30)
    # an L4 with max_batch 8: the activations of eight images count
    l4_8 = build_host_plan(
        host(model=large, service=ServiceSettings(max_batch=8)), PlanFacts(pythons=(PY311,), nvidia=gpus("l4_ada"))
    ).service_plan
    assert l4_8 is not None and "8 image(s) per call" in l4_8.reason


def test_no_gpu_facts_no_service_plan():
    assert build_host_plan(host(), PlanFacts(pythons=(PY311,))).service_plan is None
    assert build_host_plan(host(), PlanFacts(pythons=(PY311,), nvidia=gpus("absent"))).service_plan is None


def test_a_precision_the_gpu_cannot_run_is_said_in_the_plan():
    a100 = build_host_plan(
        host(service=ServiceSettings(precision="fp8-dynamic")),
        PlanFacts(pythons=(PY311,), nvidia=gpus("two_a100_driver_535")),
    ).service_plan
    assert a100 is not None and a100.precision == ""
    assert a100.line().startswith("service: precision fp8-dynamic cannot run: fp8-dynamic needs compute capability")
    assert a100.to_json()["precision"] is None


def test_each_instance_is_planned_on_its_own_device_a_mig_slice_with_its_memory_only():
    """tests/fixtures/constructed/h100-mig-L.txt: GPU 0 in MIG mode (3g.40gb, 2g.20gb, 2g.20gb), GPU 1 whole."""
    from sd35_provision.facts.nvidia import NvidiaMigDevices
    from sd35_provision.jsonreport import run_json
    from sd35_provision.report import HostOutcome, RunReport, render_plan
    from sd35_provision.service.policy import mig_memory_mib
    from tests.unit.test_jsonreport import check

    large = ModelSettings(source="hf", repo="stabilityai/stable-diffusion-3.5-large", revision=REV)
    migs = NvidiaMigDevices().process(list(fact_case("NvidiaMigDevices", "h100_mig_constructed")))
    facts = PlanFacts(pythons=(PY311,), nvidia=gpus("two_h100_one_in_mig_constructed"), mig_devices=migs)
    plan = build_host_plan(host(model=large, gpu=GpuSettings(accelerator="nvidia")), facts)
    assert [instance.gpu for instance in plan.instances] == [
        "GPU 0 MIG 3g.40gb #0",
        "GPU 0 MIG 2g.20gb #1",
        "GPU 0 MIG 2g.20gb #2",
        "GPU 1",
    ]
    by_index = plan.instance_plans
    assert [by_index[i].gpu_memory_bytes for i in range(4)] == [
        mig_memory_mib("3g.40gb") << 20,  # 40 GB as decimal GB: 37.25 GiB
        20 * 10**9 >> 20 << 20,
        20 * 10**9 >> 20 << 20,
        81559 << 20,  # the whole card
    ]
    assert [by_index[i].gpu for i in range(4)] == [
        "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
        "NVIDIA H100 80GB HBM3 MIG 2g.20gb",
        "NVIDIA H100 80GB HBM3 MIG 2g.20gb",
        "NVIDIA H100 80GB HBM3",
    ]
    # A 2g.20gb slice cannot hold what the whole card holds resident.
    assert (by_index[1].memory, by_index[3].memory) == ("lean", "resident")
    # The host's plan is its first instance's (the 3g.40gb slice), not the whole first GPU's.
    assert plan.service_plan == by_index[0]

    entries = plan.differing_instance_plans()
    assert [(each["instance"], each["device"]) for each in entries] == [
        (0, "GPU 0 MIG 3g.40gb #0"),
        (1, "GPU 0 MIG 2g.20gb #1"),
        (2, "GPU 0 MIG 2g.20gb #2"),
        (3, "GPU 1"),
    ]
    assert entries[1]["plan"]["gpu_memory_gib"] == 18.63
    outcome = HostOutcome("gpu-a1", service_plan={**by_index[0].to_json(), "line": by_index[0].line()})
    outcome.instance_plans = entries
    text = render_plan(RunReport(mode="plan", hosts=[outcome])).splitlines()
    assert text[0] == "== gpu-a1: no changes"
    assert text[1:] == [f"  instance {i} ({plan.instances[i].gpu}): {by_index[i].line()}" for i in range(4)]
    (data,) = check(run_json(RunReport(mode="plan", hosts=[outcome])))["hosts"]
    assert [each["plan"]["memory"] for each in data["instance_plans"]] == ["resident", "lean", "lean", "resident"]


def test_instances_that_plan_alike_show_one_plan():
    large = ModelSettings(source="hf", repo="stabilityai/stable-diffusion-3.5-large", revision=REV)
    facts = PlanFacts(pythons=(PY311,), nvidia=gpus("two_h200_recorded"))
    plan = build_host_plan(host(model=large, gpu=GpuSettings(accelerator="nvidia")), facts)
    assert len(plan.instances) == 2 and len(plan.instance_plans) == 2
    assert plan.differing_instance_plans() == []
    assert plan.service_plan is not None and plan.service_plan.gpu == "NVIDIA H200"
