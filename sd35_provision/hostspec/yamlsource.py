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


# Bounds on what a spec may make the parser do. A real fleet spec is a few
# hundred lines, a handful of levels deep; these are far above that and far
# below what would hang `validate` or exhaust the interpreter's stack.
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 100_000  # scalars, lists and mappings, counting every alias use in full
MAX_NUMBER_CHARS = 100

# Plain YAML values only: what JSON has, plus merge keys and (implicit) dates,
# which the schema then refuses where a string is wanted.
_YAML_TAG = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(
    _YAML_TAG + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge", "timestamp")
)
_KEY_TAG = _YAML_TAG + "str"


class _TooLarge(yaml.composer.ComposerError):
    """The document goes beyond MAX_DEPTH or MAX_VALUES."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses documents too deep or too large once aliases are expanded.

    PyYAML composes recursively (20 000 levels of ``[`` end in RecursionError)
    and shares aliased nodes, so a "billion laughs" document composes quickly
    and only explodes in whatever walks it later. Both are measured here, as
    the nodes are composed: each node's height and its size with every alias
    counted in full, so an alias to a big or deep node costs what it expands to.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._heights: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._child_heights: list[int] = [0]

    def _refuse(self, problem: str, mark: yaml.Mark | None) -> None:
        raise _TooLarge(None, None, problem, mark)

    def _count(self, size: int, height: int, mark: yaml.Mark | None) -> None:
        self._values += size
        if self._values > MAX_VALUES:
            self._refuse(f"the document expands to more than {MAX_VALUES} values (aliases included)", mark)
        if self._depth + height > MAX_DEPTH:
            self._refuse(f"values are nested more than {MAX_DEPTH} levels deep (aliases included)", mark)
        self._child_heights[-1] = max(self._child_heights[-1], height)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) not in self._sizes:
                    self._refuse(f"alias *{event.anchor} refers to a value that contains it", event.start_mark)
                self._count(self._sizes[id(target)], self._heights[id(target)], event.start_mark)
            return super().compose_node(parent, index)

        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._refuse(f"values are nested more than {MAX_DEPTH} levels deep", mark)
        before = self._values
        self._values += 1
        self._child_heights.append(0)
        node = super().compose_node(parent, index)
        height = 1 + self._child_heights.pop()
        self._depth -= 1
        self._sizes[id(node)] = self._values - before
        self._heights[id(node)] = height
        self._values = before  # _count adds the whole node, as for an alias
        self._count(self._sizes[id(node)], height, mark)
        return node


def _line_at(data: bytes | str, position: int) -> int:
    newline = b"\n" if isinstance(data, bytes) else "\n"
    return data.count(newline, 0, position) + 1  # type: ignore[arg-type]


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise SpecError([f"{path}: cannot read: {error.strerror or error}"]) from error
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(
            [f"{path}:1: (top level): the file is larger than {MAX_FILE_BYTES} bytes; a host spec is a few kilobytes"]
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(
            [
                f"{path}:{_line_at(raw, error.start)}: not UTF-8 text: "
                f"byte {raw[error.start]:#04x} at offset {error.start} ({error.reason})"
            ]
        ) from error


def _unprintable(path: Path, text: str, error: yaml.reader.ReaderError) -> str:
    # A character YAML does not allow in a document (a control character, for instance).
    what = f"U+{error.character:04X}" if isinstance(error.character, int) else repr(error.character)
    return f"{path}:{_line_at(text, error.position)}: not valid YAML text: character {what} is not allowed"


def load_yaml_document(path: Path) -> SourceDocument:
    """Parse ``path``; raise SpecError with file:line for syntax, bounds, tags and keys."""
    text = _read_text(path)
    try:
        # The reader checks every character up front, so even building the loader can fail.
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as error:
        raise SpecError([_unprintable(path, text, error)]) from error
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            if error.context_mark and mark and mark.line >= len(text.splitlines()):
                # Hit the end of the file: where the unclosed construct began is more useful.
                mark = error.context_mark
            line = mark.line + 1 if mark else 1
            reason = " ".join(filter(None, [error.context, error.problem]))
            kind = "refused" if isinstance(error, _TooLarge) else "YAML syntax error"
            raise SpecError([f"{path}:{line}: {kind}: {reason}"]) from error
        except yaml.reader.ReaderError as error:
            raise SpecError([_unprintable(path, text, error)]) from error
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
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line = mark.line + 1 if mark else 1
            raise SpecError([f"{path}:{line}: YAML error: {error.problem or error}"]) from error
        except (ValueError, OverflowError) as error:  # pragma: no cover - _index refuses what leads here
            raise SpecError([f"{path}:1: YAML error: {error}"]) from error
    finally:
        loader.dispose()
    return SourceDocument(path=path, data=data, lines=lines)


def _is_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_YAML_TAG) :] if tag.startswith(_YAML_TAG) else tag


def _index(
    node: yaml.Node,
    path: PathKey,
    lines: dict[PathKey, int],
    problems: list[str],
    file: Path,
) -> None:
    if node.tag not in ALLOWED_TAGS:
        problems.append(
            f"{file}:{node.start_mark.line + 1}: {format_path(path)}: the tag {_tag_name(node.tag)} is not allowed; "
            "a spec holds plain values (strings, numbers, booleans, lists, mappings)"
        )
        return
    if node.tag == _YAML_TAG + "int" and len(node.value) > MAX_NUMBER_CHARS:
        # Python refuses to convert integers of thousands of digits; say where, not how.
        problems.append(
            f"{file}:{node.start_mark.line + 1}: {format_path(path)}: a number of "
            f"{len(node.value)} characters; no setting needs more than {MAX_NUMBER_CHARS}"
        )
        return
    if isinstance(node, yaml.ScalarNode) and not _is_text(node.value):
        # Escapes in double-quoted YAML ("\0", "\ud800") make what no file, argv or HTTP body can carry.
        problems.append(
            f"{file}:{node.start_mark.line + 1}: {format_path(path)}: "
            "contains a NUL character or a lone UTF-16 surrogate"
        )
        return
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # `<<: *anchor` merges are fine; their keys are indexed where defined.
                _index(value_node, path, {}, problems, file)
                continue
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                problems.append(f"{file}:{line}: {format_path(path)}: a key is a {kind}; keys must be plain names")
                continue
            key = key_node.value
            child = (*path, key)
            if key_node.tag != _KEY_TAG:
                problems.append(
                    f"{file}:{line}: {format_path(child)}: the key {key!r} is read as "
                    f'{_tag_name(key_node.tag)[2:]}, not a name; quote it ("{key}")'
                )
                continue
            if key in seen:
                problems.append(
                    f"{file}:{line}: {format_path(child)}: duplicate key (first defined on line {seen[key]})"
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
