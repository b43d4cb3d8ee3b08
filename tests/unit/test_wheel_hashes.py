"""The WheelHashes fact's host program: each wheel hashed once, again only when its stat changed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from sd35_provision import wheelhouse
from sd35_provision.facts.venv import WheelHashes, wheel_hashes_program
from sd35_provision.hostside import manifests, wheel_hashes


def _wheel(directory: Path, name: str, data: bytes) -> str:
    (directory / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(manifests, "hash_file", refuse)


def test_a_second_look_reads_no_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _wheel(tmp_path, "a-1-py3-none-any.whl", b"a" * 1000)
    b = _wheel(tmp_path, "b-2-py3-none-any.whl", b"b" * 10)
    (tmp_path / "c.whl.partial").write_bytes(b"half")  # an interrupted push is no wheel
    assert wheel_hashes.wheel_hashes(str(tmp_path)) == {"a-1-py3-none-any.whl": a, "b-2-py3-none-any.whl": b}
    _no_reading(monkeypatch)
    assert wheel_hashes.wheel_hashes(str(tmp_path)) == {"a-1-py3-none-any.whl": a, "b-2-py3-none-any.whl": b}


def test_a_wheel_modified_in_place_with_its_mtime_put_back_is_hashed_again(tmp_path: Path) -> None:
    wheel = tmp_path / "a-1-py3-none-any.whl"
    _wheel(tmp_path, wheel.name, b"a" * 1000)
    wheel_hashes.wheel_hashes(str(tmp_path))
    before = wheel.stat()
    with open(wheel, "r+b") as handle:  # same size, same inode
        handle.write(b"X")
    os.utime(wheel, ns=(before.st_atime_ns, before.st_mtime_ns))  # the mtime hides it; the ctime does not
    assert wheel.stat().st_mtime_ns == before.st_mtime_ns
    digest = hashlib.sha256(b"X" + b"a" * 999).hexdigest()
    assert wheel_hashes.wheel_hashes(str(tmp_path)) == {wheel.name: digest}


def test_a_touched_wheel_is_hashed_again_and_a_removed_one_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _wheel(tmp_path, "a-1-py3-none-any.whl", b"a")
    _wheel(tmp_path, "b-1-py3-none-any.whl", b"b")
    wheel_hashes.wheel_hashes(str(tmp_path))
    (tmp_path / "b-1-py3-none-any.whl").unlink()
    os.utime(tmp_path / "a-1-py3-none-any.whl", ns=(1, 1))
    read: list[str] = []
    real = manifests.hash_file
    monkeypatch.setattr(manifests, "hash_file", lambda path, algorithms: read.append(path) or real(path, algorithms))
    assert wheel_hashes.wheel_hashes(str(tmp_path)) == {"a-1-py3-none-any.whl": a}
    assert read == [str(tmp_path / "a-1-py3-none-any.whl")]


def test_the_fact_runs_the_program_as_hosts_do(tmp_path: Path) -> None:
    a = _wheel(tmp_path, "a-1-py3-none-any.whl", b"a")
    fact = WheelHashes()
    for directory, expected in ((tmp_path, {"a-1-py3-none-any.whl": a}), (tmp_path / "absent", {})):
        result = subprocess.run(
            ["sh", "-c", fact.command(directory=str(directory))], capture_output=True, text=True, check=True
        )
        assert fact.process(result.stdout.splitlines()) == expected
    assert "wheel_hashes.py" in wheel_hashes_program()
    assert fact.process(["not json"]) == {}


def test_the_control_sides_wheelhouse_is_hashed_once_across_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # wheels_for/wheels_in run in every plan and drift: a CUDA wheelhouse is 3-4 GB to read each time.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    house = tmp_path / "wheelhouse"
    house.mkdir()
    a = _wheel(house, "a-1-py3-none-any.whl", b"a" * 1000)
    b = _wheel(house, "b-2-py3-none-any.whl", b"b" * 10)
    assert {w.path.name: w.sha256 for w in wheelhouse.wheels_in(house)} == {
        "a-1-py3-none-any.whl": a,
        "b-2-py3-none-any.whl": b,
    }
    with monkeypatch.context() as refusing:
        _no_reading(refusing)
        assert [w.sha256 for w in wheelhouse.wheels_in(house)] == [a, b]  # the next run: from the cache
    # Changed in place, size and mtime put back: hashed again (ctime); a removed wheel is forgotten.
    info = os.stat(house / "a-1-py3-none-any.whl")
    changed = _wheel(house, "a-1-py3-none-any.whl", b"c" * 1000)
    os.utime(house / "a-1-py3-none-any.whl", ns=(info.st_atime_ns, info.st_mtime_ns))
    (house / "b-2-py3-none-any.whl").unlink()
    assert [(w.path.name, w.sha256) for w in wheelhouse.wheels_in(house)] == [("a-1-py3-none-any.whl", changed)]
    kept = json.loads(wheelhouse.hash_cache_path(house).read_text())["files"]
    assert set(kept) == {"a-1-py3-none-any.whl"}
