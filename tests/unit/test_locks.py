"""The shipped locks and the lock parser: every pin exact and hashed, markers honoured, drift named."""

from __future__ import annotations

import pytest
from packaging.version import Version

from sd35_provision.cuda_compat import AUTO_FLAVOURS
from sd35_provision.locks import FLAVOURS, LockError, compare_installed, load_lock, parse_lock, unlocked_packages

PY311 = {
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "platform_release": "6.1.0",
}
PY312 = {**PY311, "python_full_version": "3.12.3", "python_version": "3.12"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_shipped_locks_pin_a_float8_torch_and_an_sd35_fp8_diffusers(flavour):
    lock = load_lock(flavour)
    pins = lock.expected(PY311)
    assert Version(pins["torch"]).release >= (2, 3)  # torch.float8_e4m3fn
    assert Version(pins["diffusers"]) >= Version("0.33")  # SD3.5 + enable_layerwise_casting
    for name in ("transformers", "huggingface-hub", "accelerate", "fastapi", "uvicorn", "safetensors"):
        assert name in pins, name
    assert all(pin.hashes and all(len(h) == 64 for h in pin.hashes) for pin in lock.pins)


def test_flavours_match_what_auto_can_pick():
    assert set(AUTO_FLAVOURS) | {"cpu"} == set(FLAVOURS)
    assert load_lock("cpu").expected(PY311)["torch"].endswith("+cpu")
    assert "torchao" in load_lock("cu130").expected(PY311)
    assert "nvidia-cublas" in load_lock("cu130").expected(PY311)  # CUDA 13 runtime wheels
    assert "nvidia-cublas-cu12" in load_lock("cu128").expected(PY311)


def test_markers_pick_per_python_version():
    lock = load_lock("cpu")
    assert lock.expected(PY311)["numpy"] != lock.expected(PY312)["numpy"]


def test_lock_id_follows_the_text():
    lock = load_lock("cpu")
    assert lock.id.startswith("cpu-") and len(lock.id) == len("cpu-") + 12
    assert lock.id == load_lock("cpu").id and lock.id != load_lock("cu130").id


def test_parse_joins_continuations_and_keeps_markers():
    pins = parse_lock(
        "# header\n"
        "numpy==2.4.6 ; python_full_version < '3.12' \\\n"
        "    --hash=sha256:" + "a" * 64 + " \\\n"
        "    --hash=sha256:" + "b" * 64 + "\n"
        "    # via torch\n"
        "Pillow==13.0.0 --hash=sha256:" + "c" * 64 + "\n",
        "x.txt",
    )
    assert [(p.name, p.version, len(p.hashes)) for p in pins] == [("numpy", "2.4.6", 2), ("pillow", "13.0.0", 1)]
    assert pins[0].applies_to(PY311) and not pins[0].applies_to(PY312)


@pytest.mark.parametrize(
    "text, message",
    [
        ("numpy>=2 --hash=sha256:" + "a" * 64 + "\n", "x.txt:1: numpy is not pinned with =="),
        ("\nnumpy==2.4.6\n", "x.txt:2: numpy has no --hash"),
        ("numpy=2 --hash=sha256:" + "a" * 64 + "\n", "x.txt:1: not a requirement"),
    ],
)
def test_parse_refuses_what_pip_require_hashes_would(text, message):
    with pytest.raises(LockError, match=message):
        parse_lock(text, "x.txt")


def test_unknown_flavour():
    with pytest.raises(LockError, match="no lock for torch flavour 'cu126'; shipped: cpu, cu128, cu130"):
        load_lock("cu126")


def test_compare_installed_names_each_difference():
    lock = load_lock("cpu")
    installed = dict(lock.expected(PY311))
    installed.update({"pip": "24.0", "wheel": "0.45.1"})  # venv tooling is not drift
    assert compare_installed(lock, PY311, installed) == []

    del installed["pillow"]
    installed["diffusers"] = "0.30.0"
    installed["Hand_Made"] = "1.0"
    assert compare_installed(lock, PY311, installed) == [
        "diffusers is 0.30.0, the lock pins 0.42.1",
        "pillow 13.0.0 is missing",
        "hand-made 1.0 is installed but not in the lock",
    ]
    assert unlocked_packages(lock, PY311, installed) == ["hand-made"]
