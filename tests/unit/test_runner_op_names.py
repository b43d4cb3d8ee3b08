"""Each host's operations carry that host's own names, even when hosts need different operations."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from sd35_provision.runner import FleetRun
from sd35_provision.hostspec.settings import HostSettings


@deploy("Demo")
def uneven_layer() -> None:
    if host.name == "fresh":
        server.shell(name="Only where missing", commands=["true"])
    server.shell(name="Everywhere", commands=["true"])


def test_a_hosts_changes_are_named_by_its_own_operations():
    # pyinfra matches operations across hosts by position: fresh's 1st and applied's 1st share a hash.
    run = FleetRun([HostSettings(name="fresh", address="127.0.0.5"), HostSettings(name="applied", address="127.0.0.6")])
    for pyinfra_host in run.state.inventory:
        run.state.activate_host(pyinfra_host)
    run.prepare([uneven_layer])
    report = {outcome.name: [op.name for op in outcome.changes] for outcome in run.report("plan").hosts}
    assert report == {"fresh": ["Demo | Only where missing", "Demo | Everywhere"], "applied": ["Demo | Everywhere"]}
