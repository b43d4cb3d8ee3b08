"""HostStates, the fleet tests' memory of their hosts: what it applies or resets, and when it does nothing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.integration import support
from tests.integration.support import FRESH, PROVISIONED, HostStates


class PaperFleet:
    """The calls HostStates makes on a fleet, recorded."""

    def __init__(self, *names: str):
        self.hosts = [SimpleNamespace(name=name) for name in names]
        self.stopped: set[str] = set()
        self.calls: list[tuple[str, ...]] = []

    def is_running(self, name: str) -> bool:
        return name not in self.stopped

    def start_host(self, name: str) -> None:
        self.calls.append(("start", name))
        self.stopped.discard(name)

    def reset_host(self, name: str) -> None:
        self.calls.append(("reset", name))
        self.stopped.discard(name)


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> PaperFleet:
    paper = PaperFleet("node1", "node2")

    def cli(*args: str, check_exit: int | None = None) -> None:
        paper.calls.append(("cli", *args))

    monkeypatch.setattr(support, "cli", cli)
    return paper


def spec(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_booted_fleet_is_fresh_and_an_apply_is_remembered_only_when_declared(fleet, tmp_path) -> None:
    states = HostStates(fleet)
    states.fresh()
    assert fleet.calls == []
    good = spec(tmp_path, "good.yaml", "a")
    states.converged(good, "node1")
    assert fleet.calls == [("cli", "apply", str(good), "--limit", "node1")]
    states.converged(spec(tmp_path, "same.yaml", "a"), "node1")  # the same text: the same state
    assert len(fleet.calls) == 1

    states.test_finished()  # nothing declared: nothing known
    states.converged(good)
    assert fleet.calls[1:] == [("cli", "apply", str(good), "--limit", "node1", "--limit", "node2")]
    states.are(good, "node1")
    states.kept("node2")
    states.test_finished()
    states.converged(good)
    states.fresh("node2")
    assert fleet.calls[2:] == [("reset", "node2")]


def test_provisioned_takes_any_applied_state_and_starts_stopped_hosts(fleet, tmp_path) -> None:
    states = HostStates(fleet)
    good, other = spec(tmp_path, "good.yaml", "a"), spec(tmp_path, "other.yaml", "b")
    states.are(other, "node1")
    states.are(PROVISIONED, "node2")
    states.test_finished()
    states.provisioned(good)
    assert fleet.calls == []
    states.kept("node1")
    states.are(FRESH, "node2")
    states.test_finished()
    fleet.stopped.add("node2")
    states.provisioned(good)
    assert fleet.calls == [("start", "node2"), ("cli", "apply", str(good), "--limit", "node2")]


def test_a_failed_apply_leaves_the_host_unknown(fleet, tmp_path, monkeypatch) -> None:
    states = HostStates(fleet)

    def failing(*args: str, check_exit: int | None = None) -> None:
        raise AssertionError("exit 1")

    monkeypatch.setattr(support, "cli", failing)
    with pytest.raises(AssertionError):
        states.converged(spec(tmp_path, "good.yaml", "a"), "node1")
    states.kept()
    states.test_finished()
    assert states.known == {"node2": FRESH}
