"""The systemd unit rendering."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sd35_provision.service.unit import render_unit

ARGS = dict(
    venv_dir="/opt/sd35/venv",
    working_dir="/opt/sd35/app",
    cache_dirs=["/var/cache/sd35", "/mnt/nvme/sd35-models"],
    service_env_file="/etc/sd35/service.env",
)


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_unit_runs_the_service_from_the_venv() -> None:
    unit = directives(render_unit(**ARGS))
    assert unit["ExecStart"] == ["/opt/sd35/venv/bin/python -m sd35_provision.service"]
    assert unit["WorkingDirectory"] == ["/opt/sd35/app"]
    assert unit["User"] == ["sd35"] and unit["Group"] == ["sd35"]
    assert unit["EnvironmentFile"] == ["/etc/sd35/env", "/etc/sd35/service.env"]
    assert unit["Type"] == ["notify"] and unit["TimeoutStartSec"] == ["900"]
    assert unit["Restart"] == ["on-failure"] and unit["RestartSec"] == ["10"]
    assert unit["RestartPreventExitStatus"] == ["2"]
    assert unit["WantedBy"] == ["multi-user.target"]


def test_unit_is_hardened_without_breaking_cuda() -> None:
    text = render_unit(**ARGS)
    unit = directives(text)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }.items():
        assert unit[key] == [value], key
    assert unit["ReadWritePaths"] == ["/var/cache/sd35 /mnt/nvme/sd35-models"]
    # torch.compile/Triton need W+X memory; the GPU is a device node.
    for forbidden in ("MemoryDenyWriteExecute", "PrivateDevices", "DevicePolicy=closed", "DevicePolicy=strict"):
        assert forbidden not in text
    # caches point into the writable directory
    env = dict(v.split("=", 1) for v in unit["Environment"])
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/var/cache/sd35/")
    assert env["HF_HOME"].startswith("/var/cache/sd35/")


def test_unit_has_no_secret() -> None:
    text = render_unit(**ARGS).lower()
    assert "api_key" not in text and "bearer" not in text and "token" not in text and "password" not in text


def test_options() -> None:
    unit = directives(render_unit(**ARGS, user="gen", group="gpu", timeout_start_s=1800, restart_sec=30))
    assert unit["User"] == ["gen"] and unit["Group"] == ["gpu"]
    assert unit["TimeoutStartSec"] == ["1800"] and unit["RestartSec"] == ["30"]
    no_service_env = directives(render_unit(**{**ARGS, "service_env_file": None}))
    assert no_service_env["EnvironmentFile"] == ["/etc/sd35/env"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"venv_dir": "venv"}, "venv_dir: 'venv' is not an absolute path"),
        ({"working_dir": "/opt/x\nExecStartPre=/bin/sh"}, "working_dir"),
        ({"cache_dirs": []}, "cache_dirs"),
        ({"cache_dirs": ["/var/cache/a b"]}, "whitespace"),
        ({"user": "root;rm"}, "not a valid account name"),
        ({"timeout_start_s": 0}, "timeout_start_s"),
    ],
)
def test_bad_values_are_refused(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_unit(**{**ARGS, **override})


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit_and_rates_it_hardened(tmp_path: Path) -> None:
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "app").mkdir()
    unit = tmp_path / "sd35-inference.service"
    unit.write_text(render_unit(str(tmp_path / "venv"), str(tmp_path / "app"), [str(tmp_path / "cache")]))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert str(unit) not in verify.stderr, verify.stderr  # no warnings about our file
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert match, security.stdout[-500:]
    assert float(match.group(1)) <= 2.5, security.stdout
