"""Adding a host to a spec file: comments, order and layout kept; duplicates refused with file:line."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from sd35_provision.errors import SpecError
from sd35_provision.hostspec.edit import add_host, restore

COMMENTED = """\
# The lab fleet.
defaults:
  ssh:
    user: root   # everything as root in the lab
    port: 22
  gpu:
    accelerator: cpu

hosts:
  # rack 1
  a1:
    address: 10.0.0.1  # the first box
    groups: [lab]

  a2:
    address: 10.0.0.2
    service:
      bind: 10.0.0.2 # its own address

# Groups come last in this file.
groups:
  lab:
    description: "the lab"   # quoted on purpose
"""

NEW_HOST = """\

  b1:
    address: 10.0.0.9
    groups: [lab]
    ssh:
      user: deploy
"""


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_host_is_appended_with_every_comment_and_the_order_kept(tmp_path):
    path = spec_file(tmp_path, COMMENTED)
    edit = add_host(path, "b1", {"address": "10.0.0.9", "groups": ["lab"], "ssh": {"user": "deploy"}})

    # Exactly the new lines, after the last host; the comment that headed the next section stays before it.
    head, tail = COMMENTED.split("\n# Groups come last", 1)
    assert path.read_text() == head + NEW_HOST + "\n# Groups come last" + tail
    assert edit.changed and path.read_text().splitlines()[edit.line - 1] == "  b1:"
    assert list(yaml.safe_load(path.read_text())["hosts"]) == ["a1", "a2", "b1"]


def test_block_sequences_and_the_file_end_keep_their_style(tmp_path):
    text = (
        "defaults:\n  ssh:\n    user: root\n"
        "hosts:\n  n1:\n    address: 127.0.0.5\n    groups:\n    - g\ngroups:\n  g: {}\n"
    )
    path = spec_file(tmp_path, text)
    add_host(path, "n2", {"address": "127.0.0.6", "groups": ["g"]})
    assert path.read_text() == text.replace(
        "groups:\n  g: {}", "  n2:\n    address: 127.0.0.6\n    groups:\n    - g\ngroups:\n  g: {}"
    )

    trailing = "hosts:\n  n1:\n    address: 127.0.0.5\n\n# end of file\n"
    path.write_text(trailing)
    add_host(path, "n2", {"address": "127.0.0.6"})
    assert path.read_text() == (
        "hosts:\n  n1:\n    address: 127.0.0.5\n\n  n2:\n    address: 127.0.0.6\n\n# end of file\n"
    )


def test_an_empty_hosts_section_takes_the_first_host(tmp_path):
    path = spec_file(tmp_path, "defaults:\n  ssh:\n    user: root\nhosts: {}\n")
    add_host(path, "n1", {"address": "127.0.0.5"})
    assert path.read_text() == "defaults:\n  ssh:\n    user: root\nhosts:\n  n1:\n    address: 127.0.0.5\n"


def test_the_same_entry_again_changes_nothing(tmp_path):
    path = spec_file(tmp_path, COMMENTED)
    first = add_host(path, "b1", {"address": "10.0.0.9", "groups": ["lab"], "ssh": {"user": "deploy"}})
    after_first = path.read_text()
    mtime = path.stat().st_mtime_ns
    again = add_host(path, "b1", {"address": "10.0.0.9", "groups": ["lab"], "ssh": {"user": "deploy"}})
    assert not again.changed and again.line == first.line
    assert path.read_text() == after_first and path.stat().st_mtime_ns == mtime


def test_an_entry_edited_by_hand_since_still_counts_as_the_same(tmp_path):
    path = spec_file(tmp_path, COMMENTED)
    # a2 has more settings than onboarding would write; what onboarding writes matches.
    assert not add_host(path, "a2", {"address": "10.0.0.2"}).changed
    assert path.read_text() == COMMENTED


@pytest.mark.parametrize(
    "name, entry, expected",
    [
        (
            "a2",
            {"address": "10.0.0.7"},
            "fleet.yaml:16: hosts.a2.address: '10.0.0.2' in the spec, '10.0.0.7' asked for",
        ),
        (
            "a1",
            {"address": "10.0.0.1", "groups": ["other"]},
            "fleet.yaml:13: hosts.a1.groups: ['lab'] in the spec, ['other'] asked for",
        ),
        (
            "a1",
            {"address": "10.0.0.1", "ssh": {"user": "deploy"}},
            "fleet.yaml:11: hosts.a1.ssh: nothing in the spec, {'user': 'deploy'} asked for",
        ),
        (
            "A1",
            {"address": "10.0.0.1"},
            "fleet.yaml:11: hosts.a1: a host of that name (ignoring case) is already in the spec",
        ),
        ("b1", {"address": "10.0.0.1"}, "fleet.yaml:12: hosts.a1.address: 10.0.0.1:22 is already host 'a1'"),
    ],
)
def test_conflicts_are_refused_with_file_and_line(tmp_path, name, entry, expected):
    path = spec_file(tmp_path, COMMENTED)
    with pytest.raises(SpecError) as caught:
        add_host(path, name, entry)
    assert any(problem.startswith(f"{path.parent}/{expected}") for problem in caught.value.problems), (
        caught.value.problems
    )
    assert path.read_text() == COMMENTED


def test_same_address_on_another_port_is_another_host(tmp_path):
    path = spec_file(tmp_path, COMMENTED)
    assert add_host(path, "b1", {"address": "10.0.0.1", "ssh": {"port": 2222}}).changed


def test_ports_set_by_groups_and_other_address_spellings_count_as_the_loader_counts_them(tmp_path):
    text = COMMENTED.replace(
        '    description: "the lab"   # quoted on purpose\n',
        '    description: "the lab"   # quoted on purpose\n    ssh: {port: 2222}\n',
    )
    path = spec_file(tmp_path, text)
    # a1 is 10.0.0.1:2222 through its group, so port 22 there is free...
    assert add_host(path, "b1", {"address": "10.0.0.1"}).changed
    # ...and 2222 is taken, however the address is spelled.
    with pytest.raises(SpecError) as caught:
        add_host(path, "b2", {"address": "::ffff:10.0.0.1", "groups": ["lab"]})
    assert caught.value.problems[0].startswith(f"{path}:12: hosts.a1.address: 10.0.0.1:2222 is already host 'a1'")


def test_restore_puts_the_old_text_back_and_keeps_the_mode(tmp_path):
    path = spec_file(tmp_path, COMMENTED)
    path.chmod(0o640)
    edit = add_host(path, "b1", {"address": "10.0.0.9"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    restore(edit)
    assert path.read_text() == COMMENTED and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.yaml"]  # no temporary file left


def test_broken_yaml_is_named_by_line(tmp_path):
    path = spec_file(tmp_path, "hosts:\n  a1:\n    address: [1\n")
    with pytest.raises(SpecError) as caught:
        add_host(path, "b1", {"address": "10.0.0.9"})
    assert caught.value.problems[0].startswith(f"{path}:")
    assert "YAML syntax error" in caught.value.problems[0]
