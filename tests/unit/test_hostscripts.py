"""The shell scripts of sd35_provision/hostside/: values go in quoted, and the scripts do what they say on a real sh."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sd35_provision import hostscripts
from sd35_provision.deploys.release import _create_script, switch_script
from sd35_provision.hostscripts import placeholders, render_script

HOSTSIDE = Path(hostscripts.__file__).parent / "hostside"
ODD = 'it\'s a "dir" with $(touch pwned) spaces'


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], check=False, cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("script", sorted(path.name for path in HOSTSIDE.glob("*.sh")))
def test_every_script_renders_to_valid_sh(script, tmp_path):
    values = {
        name: ["a b", "c"] if name in ("pip_options", "extras", "names", "include") else "/x y/z"
        for name in placeholders(script)
    }
    text = render_script(script, **values)
    assert "@" not in text.replace("safe.directory", "")  # every value put in
    result = subprocess.run(["sh", "-n", "-c", text], check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_values_missing_or_left_over_are_refused():
    with pytest.raises(ValueError, match=r"hostside/release-switch.sh: values missing \['target'\], not used \[\]"):
        render_script("release-switch.sh", root="/opt/sd35")
    with pytest.raises(ValueError, match=r"not used \['extra'\]"):
        render_script("release-switch.sh", root="/opt/sd35", target="releases/a", extra="x")


def test_a_placeholder_inside_quotes_or_a_comment_is_refused(monkeypatch):
    texts = {
        "quoted.sh": 'echo "@path@"\n',
        "single.sh": "echo '@path@'\n",
        "comment.sh": "true  # @path@\n",
        "fine.sh": "# it's fine\necho @path@/bin \"$x\" 'y'\n",
    }
    monkeypatch.setattr(hostscripts, "source", texts.__getitem__)
    placeholders.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"hostside/quoted.sh:1: @path@ is inside quotes"):
            placeholders("quoted.sh")
        with pytest.raises(ValueError, match="inside quotes"):
            placeholders("single.sh")
        with pytest.raises(ValueError, match="inside a comment"):
            placeholders("comment.sh")
        assert (
            render_script("fine.sh", path=ODD)
            == "echo " + "'it'\"'\"'s a \"dir\" with $(touch pwned) spaces'" + "/bin \"$x\" 'y'"
        )
    finally:
        placeholders.cache_clear()


def test_release_is_created_and_switched_with_odd_paths_kept_as_one_word(tmp_path):
    root = tmp_path / ODD
    (root / "releases").mkdir(parents=True)
    manifest = {
        "links": {"venv": f"{root}/venvs/v1", "app": f"{root}/apps/a1", "model": f"{root}/models/m 1"},
        "lock": "cpu-1",
    }
    env = "SD35_PORT=8000\nSD35_PROMPT_NOTE=it's $HOME\n"
    for rid in ("r1", "r2"):
        result = sh(_create_script(f"{root}/releases", rid, manifest, env), tmp_path)
        assert result.returncode == 0, result.stderr
    release = root / "releases" / "r1"
    assert os.readlink(release / "model") == f"{root}/models/m 1"
    assert json.loads((release / "release.json").read_text()) == manifest
    assert (release / "service.env").read_text() == env
    assert not (tmp_path / "pwned").exists() and not (root / "pwned").exists()

    for target in ("releases/r1", "releases/r2", "releases/r2"):
        result = sh(switch_script(str(root), target), tmp_path)
        assert result.returncode == 0, result.stderr
    assert os.readlink(root / "current") == "releases/r2" and os.readlink(root / "previous") == "releases/r1"


def test_a_failed_venv_build_leaves_nothing_and_says_why(tmp_path):
    from sd35_provision.deploys.python_env import _build_script

    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for torch==9.9' >&2\nexit 1\n")
    python.chmod(0o755)
    venv = tmp_path / "venvs" / "cpu-0123456789ab"
    venv.mkdir(parents=True)  # a half-built one from an interrupted run
    result = sh(_build_script(str(python), str(venv), str(tmp_path / "lock.txt"), ["--require-hashes"]), tmp_path)
    assert result.returncode == 1
    assert "No matching distribution found for torch==9.9" in result.stderr
    assert "venv cpu-0123456789ab not built, pip failed (above); the running environment is unchanged" in result.stderr
    assert not venv.exists()
