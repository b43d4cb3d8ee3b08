"""Each host's operations carry that host's own names, even when hosts need different operations."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from sd35_provision.hostplan import HostPlan
from sd35_provision.hostspec.settings import GpuSettings, HostSettings
from sd35_provision.operations import HostRecorder
from sd35_provision.runner import FleetRun
from tests.pyinfra_fakes import plan_for


@deploy("Demo")
def uneven_layer(plan: HostPlan, recorder: HostRecorder) -> None:
    if plan.name == "fresh":
        server.shell(name="Only where missing", commands=["true"])
    server.shell(name="Everywhere", commands=["true"])
    recorder.note(f"prepared on {host.name}")


def test_a_hosts_changes_are_named_by_its_own_operations():
    # pyinfra matches operations across hosts by position: fresh's 1st and applied's 1st share a hash.
    hosts = [
        HostSettings(name="fresh", address="127.0.0.5", gpu=GpuSettings(accelerator="cpu")),
        HostSettings(name="applied", address="127.0.0.6", gpu=GpuSettings(accelerator="cpu")),
    ]
    run = FleetRun(hosts)
    for pyinfra_host in run.state.inventory:
        run.state.activate_host(pyinfra_host)
    run.prepare([uneven_layer], {settings.name: plan_for(settings) for settings in hosts})
    report = {outcome.name: [op.name for op in outcome.changes] for outcome in run.report("plan").hosts}
    assert report == {"fresh": ["Demo | Only where missing", "Demo | Everywhere"], "applied": ["Demo | Everywhere"]}
    # each host's notes are its own (the recorder handed to its layers)
    assert {outcome.name: outcome.notes for outcome in run.report("plan").hosts} == {
        "fresh": ["prepared on fresh"],
        "applied": ["prepared on applied"],
    }


def test_pyinfra_keeps_each_hosts_own_operation_name_and_verdict():
    """The runner names a host's operations from pyinfra's per-host operation data (``global_arguments``) and
    reads the prepared verdict from ``OperationMeta.will_change``: this fails if pyinfra stops keeping either."""
    hosts = [
        HostSettings(name="fresh", address="127.0.0.5", gpu=GpuSettings(accelerator="cpu")),
        HostSettings(name="applied", address="127.0.0.6", gpu=GpuSettings(accelerator="cpu")),
    ]
    run = FleetRun(hosts)
    for pyinfra_host in run.state.inventory:
        run.state.activate_host(pyinfra_host)
    run.prepare([uneven_layer], {settings.name: plan_for(settings) for settings in hosts})
    first = run.state.get_op_order()[0]
    fresh, applied = run.state.inventory.get_host("fresh"), run.state.inventory.get_host("applied")
    assert run.state.get_op_meta(first).names == {"Demo | Only where missing", "Demo | Everywhere"}
    assert run.state.ops[fresh][first].global_arguments["name"] == "Only where missing"
    assert run.state.ops[applied][first].global_arguments["name"] == "Everywhere"
    assert run.state.ops[fresh][first].operation_meta.will_change is True
