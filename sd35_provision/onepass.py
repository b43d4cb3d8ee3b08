"""Each operation evaluated once per run: its commands worked out while preparing, replayed when executing.

pyinfra 3 runs an operation's generator twice: up to its first command while
preparing (to know whether it will change something), then again from the
start when executing, reading every fact a second time (one SSH round trip
each). Our runs prepare every host completely before executing anything, and
nothing changes a host while preparing, so the commands worked out then are
the commands to run: ``OnePassState`` runs each generator to its end once,
while preparing, and executing replays what it yielded. ``_if`` conditions
(the service's restart on ``any_changed``) are still decided when executing,
from what the operations before it did.

Operations added while executing (none of our layers does) run as pyinfra runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pyinfra.api import State
from pyinfra.api.command import PyinfraCommand
from pyinfra.api.host import Host
from pyinfra.api.state import StateOperationHostData, StateStage


class OnePassState(State):
    """A pyinfra State whose operations' commands are worked out once, while preparing."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # pyinfra's own look at the first command goes: the whole generator runs below instead.
        self.check_for_changes = False

    def set_op_data_for_host(self, host: Host, op_hash: str, op_data: StateOperationHostData) -> None:
        if self.current_stage == StateStage.Prepare and not self.is_executing:
            commands = list(op_data.command_generator())
            op_data.operation_meta._maybe_is_change = bool(commands)
            if commands:  # pyinfra counted it as no change, not having looked
                meta = self.get_meta_for_host(host)
                meta.ops_change += 1
                meta.ops_no_change -= 1
            op_data.command_generator = _replay(self, op_data, commands)
        super().set_op_data_for_host(host, op_hash, op_data)


def _replay(
    state: State, op_data: StateOperationHostData, commands: list[PyinfraCommand]
) -> Callable[[], Iterator[PyinfraCommand]]:
    def replay() -> Iterator[PyinfraCommand]:
        # As pyinfra's own generator: an ``_if`` that says no skips the operation when executing.
        if state.is_executing:
            conditions = op_data.global_arguments.get("_if")
            if isinstance(conditions, list) and not all(condition() for condition in conditions):
                return
            if callable(conditions) and not conditions():
                return
        yield from commands

    return replay
