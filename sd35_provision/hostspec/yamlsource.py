"""YAML parsing that remembers where every value came from.

PyYAML's composer keeps a mark on every node; we keep a map from the value's
path (a tuple of keys and indexes) to its 1-based line, so every later error
can say ``FILE:LINE: path.to.field: message``. Duplicate keys, which PyYAML
silently collapses, are reported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sd35_provision.errors import SpecError

PathKey = tuple[Any, ...]


def format_path(path: PathKey) -> str:
    """``("hosts", "gpu-a1", "ssh", "port")`` -> ``hosts.gpu-a1.ssh.port``."""
    parts: list[str] = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


@dataclass
class SourceDocument:
    """Parsed YAML plus the line of every path in it."""

    path: Path
    data: Any
    lines: dict[PathKey, int]

    def line_of(self, path: PathKey) -> int:
        """Line of ``path``, or of its nearest ancestor that has one."""
        probe = tuple(path)
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return self.lines.get((), 1)

    def problem(self, path: PathKey, message: str) -> str:
        return f"{self.path}:{self.line_of(path)}: {format_path(path)}: {message}"


def load_yaml_document(path: Path) -> SourceDocument:
    """Parse ``path``; raise SpecError with file:line for syntax and duplicate keys."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError([f"{path}: cannot read: {error.strerror or error}"]) from error
    except UnicodeDecodeError as error:
        raise SpecError([f"{path}: not UTF-8 text: {error.reason}"]) from error

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        if error.context_mark and mark and mark.line >= len(text.splitlines()):
            # Hit the end of the file: where the unclosed construct began is more useful.
            mark = error.context_mark
        line = mark.line + 1 if mark else 1
        reason = " ".join(filter(None, [error.context, error.problem]))
        raise SpecError([f"{path}:{line}: YAML syntax error: {reason}"]) from error
    except yaml.YAMLError as error:
        raise SpecError([f"{path}:1: YAML error: {error}"]) from error

    if node is None:
        raise SpecError([f"{path}:1: (top level): the file is empty; expected a mapping with `hosts:`"])

    lines: dict[PathKey, int] = {(): node.start_mark.line + 1}
    problems: list[str] = []
    _index(node, (), lines, problems, path)
    if problems:
        raise SpecError(problems)

    try:
        data = yaml.SafeLoader(text).get_single_data()
    except yaml.YAMLError as error:  # pragma: no cover - compose already parsed it
        raise SpecError([f"{path}:1: YAML error: {error}"]) from error
    return SourceDocument(path=path, data=data, lines=lines)


def _index(
    node: yaml.Node,
    path: PathKey,
    lines: dict[PathKey, int],
    problems: list[str],
    file: Path,
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # `<<: *anchor` merges are fine; their keys are indexed where defined.
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            child = (*path, key)
            if key in seen:
                problems.append(
                    f"{file}:{line}: {format_path(child)}: duplicate key "
                    f"(first defined on line {seen[key]})"
                )
                continue
            seen[key] = line
            lines[child] = line
            _index(value_node, child, lines, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            child = (*path, position)
            lines[child] = item.start_mark.line + 1
            _index(item, child, lines, problems, file)
