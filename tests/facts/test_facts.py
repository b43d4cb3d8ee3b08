"""Every fact parser against recorded outputs (tests/facts/<Fact>/<case>.json).

A case's ``fact`` lists the expected value; for dict facts, only the keys it
names are compared, so reasons can be reworded without touching every case.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sd35_provision.facts import host as host_facts

CASES = sorted(Path(__file__).parent.glob("*/*.json"))


@pytest.mark.parametrize("case_path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_fact_parses_recorded_output(case_path):
    case = json.loads(case_path.read_text())
    fact = getattr(host_facts, case_path.parent.name)()
    fact.command(**case["arg"])  # the command must build with these arguments
    value = fact.process(case["output"])
    expected = case["fact"]
    if isinstance(expected, dict) and isinstance(value, dict):
        assert {key: value.get(key) for key in expected} == expected
    else:
        assert value == expected


def test_storage_script_is_valid_sh_and_runs_here(tmp_path):
    """The one-shot storage script runs under sh and gives a verdict for a real path."""
    fact = host_facts.StorageKind()
    result = subprocess.run(["sh", "-c", fact.command(path=str(tmp_path / "not" / "yet"))],
                            capture_output=True, text=True, check=True)
    value = fact.process(result.stdout.splitlines())
    assert value["path"] == str(tmp_path)
    assert value["kind"] in {"ssd", "hdd", "unknown"} and value["reason"]
