"""Edit a spec file in place, keeping its comments, order and layout (ruamel.yaml round trip).

``add_host`` appends one host entry to ``hosts:``; an identical entry already
there is left alone (so onboarding twice changes nothing), a conflicting one
is refused with ``FILE:LINE: path: message``, like every other spec problem.
The file is replaced atomically; ``restore`` puts the old text back.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent

from sd35_provision.errors import SpecError
from sd35_provision.hostspec.rules import endpoint
from sd35_provision.hostspec.yamlsource import format_path, load_yaml_document


@dataclass
class SpecEdit:
    """What ``add_host`` did: ``changed`` is False when the same entry was already there."""

    path: Path
    changed: bool
    line: int  # 1-based line of the host's name in the file
    original_text: str


def add_host(path: Path, name: str, entry: dict[str, Any]) -> SpecEdit:
    """Append ``hosts.<name>: entry`` to the spec at ``path``, unless that exact entry is there.

    Refused (SpecError, nothing written) when a host of that name (any case)
    exists with other values for the fields in ``entry``, or another host has
    the same address and SSH port.
    """
    text = _read(path)
    if text.strip():
        load_yaml_document(path)  # syntax errors and duplicate keys, named by line, before anything else
    yaml = _round_trip_yaml(text)
    document = yaml.load(text)
    if document is None:
        document = CommentedMap()
    if not isinstance(document, CommentedMap):
        raise SpecError([f"{path}:1: (top level): expected a mapping with `hosts:`"])

    hosts = document.get("hosts")
    if hosts is None:
        hosts = document["hosts"] = CommentedMap()
    if not isinstance(hosts, CommentedMap):
        raise SpecError([f"{path}:{_line(document, 'hosts')}: hosts: expected a mapping of host names"])

    existing = _conflicts(path, document, hosts, name, entry)
    if existing is not None:
        return SpecEdit(path, changed=False, line=existing, original_text=text)

    if hosts.fa.flow_style():
        hosts.fa.set_block_style()  # `hosts: {}` would otherwise take the new host inline
    _append(hosts, name, _to_yaml(entry, flow_sequences=_uses_flow_sequences(hosts)))
    out = io.StringIO()
    yaml.dump(document, out)
    _write_atomically(path, out.getvalue())
    line = _line(_round_trip_yaml(out.getvalue()).load(out.getvalue())["hosts"], name)
    return SpecEdit(path, changed=True, line=line, original_text=text)


def restore(edit: SpecEdit) -> None:
    """Put back the text the file had before ``edit``."""
    if edit.changed:
        _write_atomically(edit.path, edit.original_text)


# -- conflicts -------------------------------------------------------------------


def _conflicts(path: Path, document: CommentedMap, hosts: CommentedMap, name: str, entry: dict[str, Any]) -> int | None:
    """The line of an identical entry already there, None when there is none; raises on a conflict."""
    same_name = [key for key in hosts if str(key).lower() == name.lower()]
    if same_name:
        key = same_name[0]
        current = hosts[key] if isinstance(hosts[key], dict) else {}
        problems = [
            f"{path}:{_line_of(hosts, (key, *field))}: {format_path(('hosts', key, *field))}: "
            f"{_show(have)} in the spec, {_show(want)} asked for; "
            f"onboard {name} with the options it was added with, or edit the spec by hand"
            for field, want, have in _differences(entry, current)
        ]
        if key != name:
            problems.insert(
                0,
                f"{path}:{_line(hosts, key)}: hosts.{key}: a host of that name "
                f"(ignoring case) is already in the spec; pick another --name",
            )
        if problems:
            raise SpecError(problems)
        return _line(hosts, key)

    port = _ssh_port(document, entry)
    for other, other_entry in hosts.items():
        if not isinstance(other_entry, dict):
            continue
        address = str(other_entry.get("address", ""))
        if endpoint(address, _ssh_port(document, other_entry)) == endpoint(str(entry.get("address", "")), port):
            raise SpecError(
                [
                    f"{path}:{_line_of(hosts, (other, 'address'))}: hosts.{other}.address: {address}:{port} is "
                    f"already host {other!r}; onboard it as --name {other}, or remove that entry first"
                ]
            )
    return None


def _differences(want: Any, have: Any, prefix: tuple = ()) -> list[tuple[tuple, Any, Any]]:
    """Fields of ``want`` that ``have`` lacks or holds differently (extra fields in ``have`` are fine)."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [(prefix, want, have)]
        found = []
        for key, value in want.items():
            found += _differences(value, have.get(key), (*prefix, key))
        return found
    if isinstance(want, (list, tuple)):
        return [] if isinstance(have, list) and list(have) == list(want) else [(prefix, list(want), have)]
    return [] if have == want else [(prefix, want, have)]


def _ssh_port(document: CommentedMap, entry: dict[str, Any]) -> int:
    # The loader's precedence: the host's port, else its groups' (the last listed wins), else the defaults'.
    groups = document.get("groups") or {}
    listed = entry.get("groups") or []
    sources = [
        entry,
        *(groups.get(group) for group in reversed(list(listed)) if isinstance(groups, dict)),
        document.get("defaults") or {},
    ]
    for source in sources:
        port = (source.get("ssh") or {}).get("port") if isinstance(source, dict) else None
        if port:
            return int(port)
    return 22


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    return repr(list(value) if isinstance(value, list) else value)


# -- writing -----------------------------------------------------------------------


def _round_trip_yaml(text: str) -> YAML:
    yaml = YAML()  # round trip: comments, key order, quotes, flow/block style are kept
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    _, indent, block_seq_indent = load_yaml_guess_indent(text) if text.strip() else (None, 2, 0)
    indent = indent or 2
    block_seq_indent = block_seq_indent or 0
    yaml.indent(mapping=indent, sequence=indent + block_seq_indent, offset=block_seq_indent)
    return yaml


def _to_yaml(value: Any, flow_sequences: bool) -> Any:
    if isinstance(value, dict):
        mapping = CommentedMap()
        for key, item in value.items():
            mapping[key] = _to_yaml(item, flow_sequences)
        return mapping
    if isinstance(value, (list, tuple)):
        sequence = CommentedSeq(_to_yaml(item, flow_sequences) for item in value)
        if flow_sequences:
            sequence.fa.set_flow_style()
        return sequence
    return str(value) if isinstance(value, Path) else value


def _uses_flow_sequences(hosts: CommentedMap) -> bool:
    """Write ``groups: [a, b]`` when the spec's hosts already do."""
    return any(
        isinstance(entry, dict) and isinstance(entry.get("groups"), CommentedSeq) and entry["groups"].fa.flow_style()
        for entry in hosts.values()
    )


def _append(hosts: CommentedMap, name: str, entry: CommentedMap) -> None:
    """Add ``name`` as the last host, moving the comments that followed the old last host after it.

    ruamel hangs the comment lines after a block (say ``# groups`` heading the
    next section) on the last scalar of that block; left there they would end
    up between the old last host and the new one.
    """
    last = _last_comment_holder(hosts) if hosts else None
    hosts[name] = entry
    if last is None:
        return
    holder, key, position = last
    token: CommentToken = holder.ca.items[key][position]
    value = token.value
    cut = value.find("\n") + 1 if "\n" in value else len(value)
    end_of_line, rest = value[:cut], value[cut:]
    blank = len(rest) - len(rest.lstrip("\n"))
    if not rest[blank:]:
        return  # only blank lines follow: they separate the hosts, keep them
    token.value = end_of_line + "\n" * blank
    new_last = _last_comment_holder(hosts, only=name)
    assert new_last is not None  # with ``only`` it always finds a holder
    new_holder, new_key, new_position = new_last
    slots = new_holder.ca.items.setdefault(new_key, [None, None, None, None])
    slots[new_position] = CommentToken("\n" + rest, token.start_mark, None)


def _last_comment_holder(hosts: CommentedMap, only: str | None = None) -> tuple[Any, Any, int] | None:
    """(container, key, slot) of the comment after the last scalar of the last host entry."""
    node: Any = hosts
    key: Any = only if only is not None else list(hosts)[-1]
    while True:
        value = node[key]
        if isinstance(value, CommentedMap) and value:
            node, key = value, list(value)[-1]
        elif isinstance(value, CommentedSeq) and value and not value.fa.flow_style():
            node, key = value, len(value) - 1
        else:
            break
    position = 0 if isinstance(node, CommentedSeq) else 2
    slots = node.ca.items.get(key)
    if only is None and (not slots or len(slots) <= position or slots[position] is None):
        return None
    return node, key, position


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError([f"{path}: cannot read: {error.strerror or error}"]) from error


def _write_atomically(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _line(mapping: CommentedMap, key: Any) -> int:
    try:
        return mapping.lc.key(key)[0] + 1
    except (KeyError, TypeError, AttributeError):
        return mapping.lc.line + 1 if getattr(mapping, "lc", None) and mapping.lc.line is not None else 1


def _line_of(mapping: CommentedMap, path: tuple) -> int:
    """Line of the deepest part of ``path`` that exists under ``mapping``."""
    line = _line(mapping, path[0])
    node: Any = mapping
    for key in path:
        if not isinstance(node, CommentedMap) or key not in node:
            break
        line = _line(node, key)
        node = node[key]
    return line
