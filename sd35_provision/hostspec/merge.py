"""How layers of settings combine: the one deep-merge of the project.

The spec's precedence (defaults < groups < host), the test fleet's generated
specs and onboarding's host entries all merge the same way: nested mappings
merge key by key, anything else (scalars, lists) replaces.
"""

from __future__ import annotations

import copy
from typing import Any


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in; neither input is changed."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
