"""One pass over each host: no operation evaluated again for nothing, every fact read once, many per round trip.

pyinfra 3 runs an operation's generator twice: up to its first command while
preparing (to know whether it will change something), then again from the
start when executing, reading every fact a second time (one SSH round trip
each). Our runs prepare every host completely before executing anything, and
nothing changes a host while preparing: an operation that found nothing to do
then has nothing to do when executing either, so ``OnePassState`` does not run
it again. One that will change something runs again when executing, as pyinfra
runs it, on the host as the operations before it left it (its commands can
depend on them: a directory an earlier operation made is not made again with
other owners).

For the same reason a fact read before executing starts is read once and
kept (``FactCachingHost``): layers that look at the same path ask the host
once. ``read_facts`` reads many facts in one SSH command (each fact's own
command and parser, as pyinfra would run them one by one) and keeps the
results, so the operations that ask for them afterwards find them here.
Once executing starts nothing is kept: the run changes the host.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from inspect import getcallargs
from typing import Any

from pyinfra.api import FactBase, State
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.command import PyinfraCommand, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.state import StateOperationHostData, StateStage

from sd35_provision.errors import HostError

# pyinfra's own marker for "the fact's command is not installed" (pyinfra/api/facts.py).
MISSING_COMMAND = "##PYINFRA_NOCMD##"
# One SSH command is one argument of the host's shell (``sh -c TEXT``): Linux takes at most 128 KiB in one.
BATCH_LIMIT = 96 * 1024


class OnePassState(State):
    """A pyinfra State that does not evaluate again what found nothing to do, and reads facts once while
    preparing."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fact_cache: dict[str, dict[tuple, Any]] = {}
        for host in self.inventory:
            host.__class__ = FactCachingHost  # the inventory makes plain Hosts; ours only add the cache

    def set_op_data_for_host(self, host: Host, op_hash: str, op_data: StateOperationHostData) -> None:
        if self.current_stage == StateStage.Prepare and op_data.operation_meta._maybe_is_change is False:
            op_data.command_generator = _nothing_to_do
        super().set_op_data_for_host(host, op_hash, op_data)


def _nothing_to_do() -> Iterator[PyinfraCommand]:
    yield from ()


# -- facts ----------------------------------------------------------------------------


def fact_key(fact: type[FactBase], args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> tuple | None:
    """What identifies one read of ``fact`` (its class and command arguments); None: not to be kept."""
    kwargs = dict(kwargs or {})
    if any(name.startswith("_") for name in kwargs):
        return None  # run as another user, with other settings: pyinfra's own path
    command = fact().command
    if callable(command):
        try:
            kwargs = getcallargs(command, *args, **kwargs)
        except TypeError:
            return None  # pyinfra will say what is wrong
        kwargs.pop("self", None)
    elif args:
        return None
    return (fact.__module__, fact.__qualname__, repr(sorted(kwargs.items())))


def _cache(host: Host) -> dict[tuple, Any] | None:
    state = getattr(host, "state", None)  # a host of recorded facts (tests) has none
    caches = getattr(state, "fact_cache", None)
    if state is None or caches is None or state.is_executing or state.current_stage >= StateStage.Execute:
        return None
    return caches.setdefault(host.name, {})


class FactCachingHost(Host):
    """A pyinfra Host that keeps what its facts said until executing starts."""

    def get_fact(self, name_or_cls, *args, **kwargs):
        cache = _cache(self)
        key = fact_key(name_or_cls, args, kwargs) if cache is not None else None
        if cache is None or key is None:
            return super().get_fact(name_or_cls, *args, **kwargs)
        if key not in cache:
            cache[key] = super().get_fact(name_or_cls, *args, **kwargs)
        return cache[key]


@dataclass(frozen=True)
class FactRead:
    """One fact a step needs: read ahead of it, with the others, in one round trip."""

    step: str  # who needs it, for messages: "System", "Python environment", "preflight"
    fact: type[FactBase]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    # A wider fact (no arguments) this read answers too while preparing: only for one whose readers look up
    # nothing but the entries this read names (``server.user`` looks up its own user in ``Users``).
    stands_in_for: type[FactBase] | None = None

    def describe(self) -> str:
        arguments = ", ".join(f"{name}={value}" for name, value in self.kwargs.items())
        return f"{self.fact.__name__}({arguments})" if arguments else self.fact.__name__


def read_facts(host: Host, reads: Sequence[FactRead]) -> int:
    """Read every fact of ``reads`` not known yet in one SSH command and keep them; returns how many.

    Each fact runs its own command in a subshell, its output followed by a
    marker line with its exit status, and is parsed by its own ``process``.
    A fact whose command fails is not kept: the operation that needs it reads
    it again, on its own, and pyinfra reports the failure as usual. A batch
    that cannot run, or a fact that cannot be parsed, fails the host naming
    the step and the fact (and so its path). A batch whose text would pass
    ``BATCH_LIMIT`` is sent in several commands.
    """
    cache = _cache(host)
    if cache is None:
        return 0
    pending: dict[tuple, FactRead] = {}
    for read in reads:
        key = fact_key(read.fact, (), read.kwargs)
        if key is not None and key not in cache and key not in pending:
            pending[key] = read
    marker = f"#sd35-fact-{secrets.token_hex(6)}"
    batch: list[tuple[tuple, FactRead, FactBase, str]] = []
    size = 0
    for key, read in pending.items():
        fact = read.fact()  # one instance for command and process: some keep their arguments on it
        part = f"( {_fact_command(fact, read.kwargs)}\n) </dev/null\nprintf '{marker} {len(batch)} %d\\n' $?"
        quoted = len(shlex.quote(part))
        if batch and size + quoted > BATCH_LIMIT:
            _read_batch(host, cache, batch, marker)
            batch, size = [], 0
            part = f"( {_fact_command(fact, read.kwargs)}\n) </dev/null\nprintf '{marker} 0 %d\\n' $?"
        batch.append((key, read, fact, part))
        size += quoted
    if batch:
        _read_batch(host, cache, batch, marker)
    return len(pending)


def _read_batch(host: Host, cache: dict[tuple, Any], batch: list[tuple[tuple, FactRead, FactBase, str]], marker: str):
    connector_arguments = {
        key: value
        for key, value in pop_global_arguments(host.state, host, {})[0].items()
        if key in CONNECTOR_ARGUMENT_KEYS
    }
    script = StringCommand("\n".join(part for _, _, _, part in batch))
    try:
        _, output = host.run_shell_command(script, print_output=False, **connector_arguments)
    except Exception as error:  # noqa: BLE001 - the connection's own error, named
        steps = ", ".join(sorted({read.step for _, read, _, _ in batch}))
        raise HostError(host.name, steps, f"reading {len(batch)} facts at once failed: {error}") from error
    results = _split(output.stdout_lines, marker)
    for index, (key, read, fact, _) in enumerate(batch):
        lines, status = results.get(index, (None, None))
        if lines is None:
            first = next(iter(output.stderr_lines), "no output")
            raise HostError(
                host.name, read.step, f"reading {read.describe()} failed: the batch stopped before it ({first})"
            )
        if status != 0:
            continue  # read again on its own when needed: pyinfra's error handling
        if lines == [MISSING_COMMAND] or not lines:
            cache[key] = read.fact.default()
        else:
            try:
                cache[key] = fact.process(lines)
            except Exception as error:  # noqa: BLE001 - any parser's error, named
                raise HostError(host.name, read.step, f"reading {read.describe()} failed: {error}") from error
        wider = fact_key(read.stands_in_for) if read.stands_in_for is not None else None
        if wider is not None:
            cache[wider] = cache[key]


def _fact_command(fact: FactBase, kwargs: Mapping[str, Any]) -> str:
    command = fact.command(**kwargs) if callable(fact.command) else fact.command
    required = fact.requires_command(**kwargs) if callable(fact.requires_command) else fact.requires_command
    text = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
    if required:  # as pyinfra runs it: a missing program is the fact's default, not an error
        return f"if command -v {required} >/dev/null 2>&1; then ( {text}\n); else echo '{MISSING_COMMAND}'; fi"
    return text


def _split(lines: Sequence[str], marker: str) -> dict[int, tuple[list[str], int]]:
    """``{index: (output lines, exit status)}`` from the batch's stdout."""
    results: dict[int, tuple[list[str], int]] = {}
    current: list[str] = []
    for line in lines:
        before, found, after = line.partition(marker)
        if not found:
            current.append(line)
            continue
        if before:  # output that did not end with a newline
            current.append(before)
        index, _, status = after.strip().partition(" ")
        results[int(index)] = (current, int(status))
        current = []
    return results
