"""Run pyinfra deploys and operations against recorded facts: what would each command be?

pyinfra's own operation tests feed an operation recorded facts and compare the
commands it yields (pyinfra-dev/pyinfra tests/util.py, FakeHost). Its helpers
are not in the wheel, and our deploys call several operations, so this runs
the real machinery instead: a real ``State`` and ``Host`` in the prepare stage,
``add_deploy`` as the runner does, with every fact read answered from the
test's recording. Nothing connects anywhere; a fact the test did not record
fails with its name and arguments.

    run = run_deploy(nvidia_driver, facts={"LinuxDistribution": {...},
                                           "FileContents": {"path=/etc/apt/sources.list": [...]}},
                     settings=settings)
    run.commands("Install the NVIDIA driver")  # -> ["apt-get update", "DEBIAN_FRONTEND=... install ..."]

A layer gets the host's plan, built from ``settings`` and the recorded facts
the way deploys/site.py builds it (facts the plan reads that a test did not
record default to ``PLAN_DEFAULTS``; the plan's reads are not in
``facts_read``), and a fresh ``HostRecorder`` whose notes and diffs the
result holds. Several layers in a list run in order, sharing both.

Facts are keyed by class name ("NvidiaGpus") or pyinfra's full name
("server.LinuxDistribution"). A fact read with arguments takes a dict keyed the
way pyinfra prints them ("path=/etc/apt/sources.list"). ``Output([...])`` in
place of a value is raw command output, parsed by the fact's own ``process``.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from inspect import getcallargs
from pathlib import Path
from typing import Any
from unittest import mock

from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileDownloadCommand, FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.api.deploy import add_deploy
from pyinfra.api.facts import FactBase, ShortFactBase
from pyinfra.api.state import StateStage
from pyinfra.api.util import get_kwargs_str
from pyinfra.context import ctx_host, ctx_state

from sd35_provision.deploys.plan import plan_host
from sd35_provision.facts.nvidia import NvidiaStatus
from sd35_provision.facts.python import PythonInterpreter
from sd35_provision.hostplan import HostPlan
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.operations import HostRecorder


class FactNotRecorded(LookupError):
    pass


# Facts of the connection rather than of the host's state, answered unless a test records them.
CONNECTION_FACTS: dict[str, Any] = {"TmpDir": "/tmp"}
# What the plan reads that a layer's test may not care about: a Debian 12 host's Python, no GPU.
PLAN_DEFAULTS: dict[str, Any] = {
    "PythonVersions": [PythonInterpreter("python3", "/usr/bin/python3", "3.11.2")],
    "NvidiaPciDevices": [],
    "NvidiaGpus": NvidiaStatus(state="absent"),  # what instances an NVIDIA host runs depends on them
    "NvidiaMigDevices": (),
}


class Output(list):
    """Raw output lines of a fact's command, to be parsed by the fact itself."""


@dataclass
class RecordedOperation:
    name: str
    commands: list[Any]

    @property
    def changed(self) -> bool:
        return bool(self.commands)


@dataclass
class DeployRun:
    operations: list[RecordedOperation]
    notes: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    facts_read: list[str] = field(default_factory=list)
    recorder: HostRecorder | None = None
    metas: dict[str, Any] = field(default_factory=dict)  # operation name -> its OperationMeta

    def notes_after(self, succeeded: Sequence[str] = (), failed: Sequence[str] = ()) -> list[str]:
        """The notes once executed: operations whose name contains one of ``succeeded`` ran their commands,
        those of ``failed`` failed, the rest did not run (an earlier one failed)."""
        from pyinfra.connectors.util import CommandOutput

        for name, meta in self.metas.items():
            commands = next(op.commands for op in self.operations if op.name == name)
            if any(part in name for part in succeeded):
                meta.set_complete(True, commands, CommandOutput([]))
            elif any(part in name for part in failed):
                meta.set_complete(False, commands, CommandOutput([]))
        by_hash = {meta._hash: meta for meta in self.metas.values()}
        assert self.recorder is not None
        return self.recorder.notes_after(True, by_hash.get)

    @property
    def changes(self) -> list[RecordedOperation]:
        """The operations that would run a command."""
        return [op for op in self.operations if op.changed]

    def commands(self, name: str | None = None) -> list[Any]:
        """Every command, or those of the operations whose name contains ``name``."""
        return [command for op in self.operations if name is None or name in op.name for command in op.commands]


def _command_json(command: Any) -> Any:
    if isinstance(command, str):
        return command.strip()
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FileUploadCommand):
        src = command.src
        if isinstance(src, io.IOBase):
            src.seek(0)
            data = src.read()
            src.seek(0)
            src = data.decode() if isinstance(data, bytes) else data
        return ["upload", src, command.dest]
    if isinstance(command, FileDownloadCommand):
        return ["download", command.src, command.dest]
    if isinstance(command, FunctionCommand):
        return ["function", command.function.__name__]
    raise TypeError(f"unexpected command {command!r}")


class RecordedFacts:
    def __init__(self, facts: dict[str, Any]):
        self.facts = facts
        self.read: list[str] = []

    def get(self, cls: type, args: Any = None, kwargs: Any = None) -> Any:
        if issubclass(cls, ShortFactBase):
            return cls().process_data(self.get(cls.fact, args, kwargs))
        name = cls.name
        key = cls.__name__ if cls.__name__ in self.facts else name
        fact_kwargs = dict(kwargs or {})
        if args or fact_kwargs:
            fact_kwargs = getcallargs(cls().command, *(args or ()), **fact_kwargs)
            fact_kwargs.pop("self", None)
        arguments = get_kwargs_str(fact_kwargs)
        label = f"{name}({arguments})" if arguments else name
        self.read.append(label)
        if key not in self.facts:
            raise FactNotRecorded(f"no recorded fact {label}")
        value = self.facts[key]
        if arguments:
            if not isinstance(value, dict) or arguments not in value:
                raise FactNotRecorded(f"no recorded fact {label} (recorded: {list(value)!r})")
            value = value[arguments]
        if isinstance(value, Output):
            fact: FactBase = cls()
            fact.command(**fact_kwargs)
            lines = list(value)
            return fact.process(lines) if lines else fact.default()  # as pyinfra does for no output
        return value


def run_deploy(
    deploy: Callable[..., Any] | Sequence[Callable[..., Any]],
    facts: dict[str, Any],
    settings: HostSettings | None = None,
    *args: Any,
    plan: HostPlan | None = None,
    host_name: str = "testhost",
    **kwargs: Any,
) -> DeployRun:
    """Prepare ``deploy`` for one host with recorded facts.

    A layer (or a list of layers, run in order) given ``settings`` (or a ready
    ``plan``) gets ``(plan, recorder)``; anything else gets ``args``/``kwargs``.
    """
    inventory = Inventory(([(host_name, {})], {}))
    state = State(inventory, Config())
    state.set_stage(StateStage.Prepare)
    host = inventory.get_host(host_name)
    recorded = RecordedFacts({**CONNECTION_FACTS, **facts})
    answering = [recorded]

    def get_fact(_state: State, _host: Any, cls: type, args: Any = None, kwargs: Any = None, **_: Any) -> Any:
        return answering[-1].get(cls, args, kwargs)

    def no_connection(*_: Any, **__: Any) -> None:
        raise AssertionError("a deploy under test tried to reach the host")

    deploys = list(deploy) if isinstance(deploy, Sequence) else [deploy]
    recorder = HostRecorder()
    with (
        mock.patch("pyinfra.api.host.get_fact", get_fact),
        mock.patch.object(type(host), "connect", no_connection),
        mock.patch.object(type(host), "run_shell_command", no_connection),
    ):
        if plan is None and settings is not None:
            answering.append(RecordedFacts({**CONNECTION_FACTS, **PLAN_DEFAULTS, **facts}))
            with ctx_state.use(state), ctx_host.use(host):
                plan = plan_host(host, settings)
            answering.pop()
        layer_args = (plan, recorder) if plan is not None else args
        for each in deploys:
            add_deploy(state, each, *layer_args, host=host, **kwargs)
        operations = []
        metas = {}
        with ctx_state.use(state), ctx_host.use(host):  # operations generate their commands in context
            for op_hash in state.get_op_order():
                op_data = state.ops[host].get(op_hash)
                if op_data is None:
                    continue
                name = sorted(state.get_op_meta(op_hash).names)[0]
                commands = [_command_json(command) for command in op_data.command_generator()]
                operations.append(RecordedOperation(name=name, commands=commands))
                metas[name] = op_data.operation_meta

    return DeployRun(
        operations=operations,
        notes=list(recorder.notes),
        diffs=list(recorder.diffs.values()),
        facts_read=recorded.read,
        recorder=recorder,
        metas=metas,
    )


def plan_for(settings: HostSettings, facts: dict[str, Any] | None = None) -> HostPlan:
    """The plan ``run_deploy`` gives a layer for ``settings`` on a host with these recorded facts."""
    host = RecordedHost({**PLAN_DEFAULTS, **(facts or {})})
    return plan_host(host, settings)  # type: ignore[arg-type]


def merge_facts(*recordings: dict[str, Any]) -> dict[str, Any]:
    """Combine recordings; facts read with arguments merge their argument keys."""
    merged: dict[str, Any] = {}
    for recording in recordings:
        for name, value in recording.items():
            if isinstance(value, dict) and isinstance(merged.get(name), dict) and all("=" in k for k in value):
                merged[name] = {**merged[name], **value}
            else:
                merged[name] = value
    return merged


def existing_files(
    files: dict[str, str | None], user: str = "root", group: str = "root", mode: int = 644
) -> dict[str, Any]:
    """The facts pyinfra's file operations read, for files with this text (None: absent) and their folders."""
    facts: dict[str, dict[str, Any]] = {
        name: {} for name in ("File", "Directory", "FileContents", "Sha1File", "Sha256File", "Md5File")
    }
    for path, text in files.items():
        key = f"path={path}"
        data = None if text is None else text.encode()
        facts["File"][key] = (
            None
            if data is None
            else {
                "user": user,
                "group": group,
                "mode": mode,
                "size": len(data),
                "atime": None,
                "mtime": None,
                "ctime": None,
            }
        )
        facts["Directory"][key] = None if data is None else False
        facts["FileContents"][key] = None if text is None else text.splitlines()
        for fact, algorithm in (("Sha1File", "sha1"), ("Sha256File", "sha256"), ("Md5File", "md5")):
            facts[fact][key] = None if data is None else hashlib.new(algorithm, data).hexdigest()
        folder = f"path={posixpath.dirname(path)}"
        facts["Directory"].setdefault(
            folder,
            {"user": "root", "group": "root", "mode": 755, "size": 4096, "atime": None, "mtime": None, "ctime": None},
        )
    return facts


class RecordedHost:
    """A stand-in for a pyinfra ``Host`` where code only reads facts (e.g. gather_host_facts)."""

    def __init__(self, facts: dict[str, Any], name: str = "testhost"):
        self.name = name
        self.recorded = RecordedFacts({**CONNECTION_FACTS, **facts})

    def get_fact(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        return self.recorded.get(cls, args, kwargs)


FACT_CASES = Path(__file__).parent / "facts"


def fact_case(fact: str, case: str) -> Output:
    """The recorded output of tests/facts/<fact>/<case>.json, for a test that needs that host state."""
    return Output(json.loads((FACT_CASES / fact / f"{case}.json").read_text())["output"])
