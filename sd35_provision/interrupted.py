"""Where each host was when a run was interrupted (Ctrl-C): one line per host."""

from __future__ import annotations

from collections.abc import Iterable

from pyinfra.api.state import StateStage

from sd35_provision.runner import FleetRun

STAGE_WORDS = {
    StateStage.Setup: "before connecting",
    StateStage.Connect: "while connecting",
    StateStage.Prepare: "while working out the changes (nothing changed yet)",
    StateStage.Execute: "while applying",
    StateStage.Disconnect: "while disconnecting",
}


def host_states(runs: Iterable[FleetRun]) -> list[str]:
    """``name: state`` for every host of ``runs`` (a later run, e.g. a later wave, says the last word)."""
    states: dict[str, str] = {}
    for run in runs:
        for name in run.hosts:
            states[name] = _state(run, name)
    return [f"{name}: {state}" for name, state in states.items()]


def _state(run: FleetRun, name: str) -> str:
    outcome = run.outcomes[name]
    if outcome.failed or outcome.aborted or outcome.skipped:
        first = (outcome.error or "").strip().splitlines()
        return f"{outcome.status} at {outcome.step}" + (f": {first[0]}" if first else "")
    host = run.state.inventory.get_host(name)
    stage = run.state.current_stage
    if stage == StateStage.Connect and not host.connected:
        return "interrupted while connecting; nothing changed"
    ops = list(run.state.ops.get(host, {}).values())
    done = [data for data in ops if data.operation_meta.is_complete()]
    if not done:
        return f"interrupted {STAGE_WORDS[stage]}"
    changed = sum(1 for data in done if data.operation_meta.did_change())
    return (
        f"interrupted {STAGE_WORDS[stage]}: {len(done)} of {len(ops)} operations done, "
        f"{changed} of them changed something"
    )
