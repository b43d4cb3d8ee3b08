"""Shell scripts of sd35_provision/hostside/, filled in with a host's values (control side).

A script names each value it takes as ``@name@``, standing where a shell
word (or part of one) goes, never inside quotes; ``render_script`` puts in
the value quoted with ``shlex.quote`` (a list: each item quoted, joined by
spaces; an empty list: nothing). Whole-line comments are left out. So a path or URL with spaces or quotes
stays one word and never becomes shell code. A script whose placeholder is
inside quotes, or a value missing or left over, is a bug: ValueError.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from functools import cache

from sd35_provision.hostside import source

PLACEHOLDER = re.compile(r"@([a-z_]+)@")


def render_script(script: str, /, **values: str | Sequence[str]) -> str:
    """The text of hostside/``script`` with each ``@key@`` replaced by ``values[key]``, shell-quoted."""
    text = source(script)
    wanted = placeholders(script)
    if set(values) != wanted:
        missing, extra = sorted(wanted - set(values)), sorted(set(values) - wanted)
        raise ValueError(f"hostside/{script}: values missing {missing}, not used {extra}")

    def quoted(match: re.Match[str]) -> str:
        value = values[match.group(1)]
        if isinstance(value, str):
            return shlex.quote(value)
        return " ".join(shlex.quote(item) for item in value)

    # Whole-line comments are for people reading the file; the host and pyinfra's output need none.
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return PLACEHOLDER.sub(quoted, "\n".join(lines)).rstrip("\n")


@cache
def placeholders(name: str) -> frozenset[str]:
    """The names ``hostside/name`` takes; ValueError if one stands inside quotes or a comment."""
    text = source(name)
    found: set[str] = set()
    for line_number, position, inside in _unquoted_scan(text):
        match = PLACEHOLDER.match(text, position)
        if match is None:
            continue
        if inside:
            raise ValueError(
                f"hostside/{name}:{line_number}: @{match.group(1)}@ is inside {inside}; values go where a word goes"
            )
        found.add(match.group(1))
    return frozenset(found)


def _unquoted_scan(text: str):
    """Yield (line number, index, what it is inside: "" or "quotes"/"a comment") for each "@" of ``text``."""
    quote, comment, line = "", False, 1
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\n":
            line += 1
            comment = False
        elif comment:
            if char == "@":
                yield line, index, "a comment"
        elif quote == "'":
            if char == "'":
                quote = ""
            elif char == "@":
                yield line, index, "quotes"
        elif quote == '"':
            if char == "\\":
                index += 1
            elif char == '"':
                quote = ""
            elif char == "@":
                yield line, index, "quotes"
        elif char == "\\":
            index += 1
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1] in " \t\n;"):
            comment = True
        elif char == "@":
            yield line, index, ""
        index += 1
