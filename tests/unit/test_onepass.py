"""Facts read in batches and kept for the run (sd35_provision/onepass.py), on recorded output."""

from __future__ import annotations

import re

import pytest
from pyinfra.api import Config, Inventory
from pyinfra.api.state import StateStage
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.facts.files import Directory, Sha256File
from pyinfra.facts.server import Os, Users

from sd35_provision.errors import HostError
from sd35_provision.facts.model import ModelFiles
from sd35_provision.facts.users import NamedUsers
from sd35_provision.facts.venv import WheelHashes
from sd35_provision.onepass import FactRead, OnePassState, fact_key, read_facts


def _state() -> OnePassState:
    state = OnePassState(Inventory((["node1"], {})), Config())
    state.set_stage(StateStage.Prepare)
    return state


def _answer(host, script_output: list[str]) -> list[str]:
    """Make ``host`` answer the batch with ``script_output`` (``MARK`` stands for the batch's marker)."""
    sent: list[str] = []

    def run_shell_command(command, **_):
        text = command.get_raw_value()
        sent.append(text)
        marker = re.search(r"#sd35-fact-[0-9a-f]+", text).group(0)
        lines = [OutputLine("stdout", line.replace("MARK", marker)) for line in script_output]
        return True, CommandOutput(lines)

    host.run_shell_command = run_shell_command
    return sent


def test_a_batch_is_one_command_and_its_facts_are_kept_for_the_run() -> None:
    state = _state()
    host = state.inventory.get_host("node1")
    sent = _answer(
        host,
        [
            "user=root group=root mode=drwxr-xr-x atime=1 mtime=2 ctime=3 size=4096 '/etc/sd35'",
            "MARK 0 0",
            "Linux" + "MARK 1 0",  # output without a final newline
            '{"a-1-py3-none-any.whl": "00ff"}',
            "MARK 2 0",
            "MARK 3 1",  # failed: left for the operation to read (pyinfra reports it)
        ],
    )
    reads = [
        FactRead("System", Directory, {"path": "/etc/sd35"}),
        FactRead("System", Os),
        FactRead("Python environment", WheelHashes, {"directory": "/opt/sd35/wheelhouse"}),
        FactRead("Service", Sha256File, {"path": "/etc/sd35/service.env"}),
    ]
    assert read_facts(host, reads) == 4
    assert len(sent) == 1
    cache = state.fact_cache["node1"]
    assert cache[fact_key(Directory, (), {"path": "/etc/sd35"})]["mode"] == 755
    assert cache[fact_key(Os)] == "Linux"
    assert cache[fact_key(WheelHashes, (), {"directory": "/opt/sd35/wheelhouse"})] == {"a-1-py3-none-any.whl": "00ff"}
    assert fact_key(Sha256File, (), {"path": "/etc/sd35/service.env"}) not in cache
    # Asked again (a later layer, an operation): nothing is sent.
    assert host.get_fact(Os) == "Linux"
    assert read_facts(host, reads[:3]) == 0 and len(sent) == 1


def test_a_fact_that_cannot_be_parsed_names_the_step_and_the_path() -> None:
    host = _state().inventory.get_host("node1")
    _answer(host, ["Traceback (most recent call last):", "MARK 0 0"])
    arguments = {"directory": "/srv/sd35/models/push-1", "manifest_path": "/srv/sd35/manifests/push-1.json"}
    with pytest.raises(HostError) as raised:
        read_facts(host, [FactRead("Model", ModelFiles, arguments)])
    assert raised.value.step == "Model"
    assert "ModelFiles(directory=/srv/sd35/models/push-1" in raised.value.message


def test_a_batch_cut_short_names_the_first_fact_it_did_not_read() -> None:
    host = _state().inventory.get_host("node1")
    _answer(host, ["Linux", "MARK 0 0"])
    reads = [FactRead("System", Os), FactRead("Model", Directory, {"path": "/srv/sd35/models"})]
    with pytest.raises(HostError, match=r"Directory\(path=/srv/sd35/models\)") as raised:
        read_facts(host, reads)
    assert raised.value.step == "Model"


def test_nothing_is_kept_once_executing_starts() -> None:
    state = _state()
    host = state.inventory.get_host("node1")
    sent = _answer(host, ["Linux", "MARK 0 0"])
    state.set_stage(StateStage.Execute)
    assert read_facts(host, [FactRead("System", Os)]) == 0 and not sent


def test_fact_keys_fill_in_defaults_and_leave_other_users_to_pyinfra() -> None:
    assert fact_key(Directory, ("/a",)) == fact_key(Directory, (), {"path": "/a"})
    assert fact_key(Directory, (), {"path": "/a"}) != fact_key(Directory, (), {"path": "/b"})
    assert fact_key(Directory, (), {"path": "/a", "_sudo_user": "sd35"}) is None


def test_a_batch_too_long_for_one_argument_is_sent_in_several(monkeypatch: pytest.MonkeyPatch) -> None:
    import sd35_provision.onepass as onepass

    monkeypatch.setattr(onepass, "BATCH_LIMIT", 1)
    state = _state()
    host = state.inventory.get_host("node1")
    sent = _answer(host, ["Linux", "MARK 0 0"])
    reads = [FactRead("System", Os), FactRead("System", Directory, {"path": "/etc"})]
    assert read_facts(host, reads) == 2
    assert len(sent) == 2 and all(" 1 %d" not in text for text in sent)
    assert state.fact_cache["node1"][fact_key(Os)] == "Linux"


def test_the_service_users_line_stands_in_for_every_accounts_while_preparing() -> None:
    state = _state()
    host = state.inventory.get_host("node1")
    sent = _answer(
        host,
        [
            "sd35:x:999:999:sd35 inference service:/srv/sd35:/usr/sbin/nologin|sd35|sd35||!",
            "MARK 0 0",
        ],
    )
    read = FactRead("System", NamedUsers, {"users": ("sd35",)}, stands_in_for=Users)
    assert read_facts(host, [read]) == 1
    assert "for i in sd35; do" in sent[0] and "/etc/passwd | cut" not in sent[0]
    # What server.user asks: found without another command, parsed as pyinfra's Users parses it.
    users = host.get_fact(Users)
    assert users["sd35"]["home"] == "/srv/sd35" and users["sd35"]["shell"] == "/usr/sbin/nologin"
    assert users["sd35"]["uid"] == 999 and users["sd35"]["groups"] == []
    assert len(sent) == 1


def test_an_absent_service_user_is_absent_from_the_stand_in() -> None:
    state = _state()
    host = state.inventory.get_host("node1")
    _answer(host, ["||||", "MARK 0 0"])  # grep and id find nothing for a user that does not exist
    read_facts(host, [FactRead("System", NamedUsers, {"users": ("sd35",)}, stands_in_for=Users)])
    assert host.get_fact(Users) == {}
