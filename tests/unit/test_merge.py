"""The one deep-merge: nested mappings merge, anything else replaces, inputs stay as they were."""

from __future__ import annotations

from sd35_provision.hostspec.merge import deep_merge


def test_nested_mappings_merge_and_other_values_replace() -> None:
    base = {"ssh": {"user": "root", "port": 22}, "groups": ["a"], "address": "10.0.0.1"}
    update = {"ssh": {"port": 2222, "key": "k"}, "groups": ["b"], "service": {"bind": "10.0.0.1"}}
    assert deep_merge(base, update) == {
        "ssh": {"user": "root", "port": 2222, "key": "k"},
        "groups": ["b"],  # lists replace, they do not concatenate
        "address": "10.0.0.1",
        "service": {"bind": "10.0.0.1"},
    }


def test_a_mapping_replaces_a_scalar_and_a_scalar_a_mapping() -> None:
    assert deep_merge({"a": 1, "b": {"c": 2}}, {"a": {"x": 1}, "b": 3}) == {"a": {"x": 1}, "b": 3}


def test_deep_merge_leaves_its_inputs_alone() -> None:
    base = {"a": {"b": 1, "c": [1]}}
    update = {"a": {"c": [2], "d": 3}, "e": {"f": [4]}}
    merged = deep_merge(base, update)
    assert merged == {"a": {"b": 1, "c": [2], "d": 3}, "e": {"f": [4]}}
    assert base == {"a": {"b": 1, "c": [1]}}
    merged["e"]["f"].append(5)  # the result shares nothing with the inputs
    merged["a"]["c"].append(6)
    assert update == {"a": {"c": [2], "d": 3}, "e": {"f": [4]}}
