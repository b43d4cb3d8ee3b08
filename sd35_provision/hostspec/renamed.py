"""Spec keys that were renamed: the old spelling is still read, with a deprecation line.

``python.venv_root`` became ``python.install_root`` (it holds the releases and
the app code, not only a venv) and ``gpu.driver.flavor`` became
``gpu.driver.flavour`` (one spelling in the whole spec). Specs written before
the rename keep working: the old key is renamed in the parsed document before
the schema sees it, and every occurrence yields one line
``FILE:LINE: python.venv_root is deprecated: use python.install_root`` that the
commands print on stderr. Setting both spellings in one place is an error.
"""

from __future__ import annotations

from typing import Any

from sd35_provision.hostspec.yamlsource import PathKey, SourceDocument, format_path

# (where, in a settings mapping, the old key sits; its old name; its new name)
RENAMED_KEYS: tuple[tuple[PathKey, str, str], ...] = (
    (("python",), "venv_root", "install_root"),
    (("gpu", "driver"), "flavor", "flavour"),
)


def rename_deprecated_keys(document: SourceDocument) -> tuple[list[str], list[str]]:
    """Rename old keys in ``document`` in place; returns (deprecation lines, problems).

    The renamed value keeps its line, so later errors about it still point at
    the line the user wrote.
    """
    warnings: list[tuple[int, str]] = []
    problems: list[tuple[int, str]] = []
    for scope in _settings_scopes(document.data):
        for section, old, new in RENAMED_KEYS:
            where = (*scope, *section)
            mapping = _mapping_at(document.data, where)
            if mapping is None or old not in mapping:
                continue
            line = document.line_of((*where, old))
            old_name, new_name = format_path((*section, old)), format_path((*section, new))
            if new in mapping:
                message = f"{old_name} (deprecated) and {new_name} are both set; keep only {new_name}"
                problems.append((line, f"{document.path}:{line}: {format_path((*where, old))}: {message}"))
                del mapping[old]
                continue
            _rename_key(mapping, old, new)
            new_path = (*where, new)  # a variable: mypy reads (*where, new) inside [] as 3.11-only syntax
            document.lines[new_path] = line
            warnings.append((line, f"{document.path}:{line}: {old_name} is deprecated: use {new_name}"))
    return [text for _, text in sorted(warnings)], [text for _, text in sorted(problems)]


def _settings_scopes(data: Any) -> list[PathKey]:
    """Where settings sections live: ``defaults``, each group, each host."""
    if not isinstance(data, dict):
        return []
    scopes: list[PathKey] = [("defaults",)]
    for top in ("groups", "hosts"):
        entries = data.get(top)
        if isinstance(entries, dict):
            scopes.extend((top, name) for name in entries)
    return scopes


def _mapping_at(data: Any, path: PathKey) -> dict[str, Any] | None:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data if isinstance(data, dict) else None


def _rename_key(mapping: dict[str, Any], old: str, new: str) -> None:
    """Rename in place, keeping the key's position (the order people wrote)."""
    items = [(new if key == old else key, value) for key, value in mapping.items()]
    mapping.clear()
    mapping.update(items)
