"""``service.playground`` from the spec to the service: schema, typed settings, SD35_PLAYGROUND."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sd35_provision.errors import SpecError
from sd35_provision.hostspec import load_spec
from sd35_provision.service.config import load_config
from sd35_provision.service_settings import render_service_env

SPEC = """\
defaults:
  model:
    source: git
    url: file:///srv/mirror/tiny.git
    revision: 0123456789abcdef0123456789abcdef01234567
hosts:
  open:
    address: 10.0.0.1
  closed:
    address: 10.0.0.2
    service:
      playground: {value}
"""


def spec_file(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(SPEC.format(value=value)))
    return path


def test_playground_setting_reaches_the_service(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, "false"), check_local_files=False)
    on, off = spec.host("open"), spec.host("closed")
    assert on.service.playground is True and off.service.playground is False
    assert "SD35_PLAYGROUND=on" in render_service_env(on).splitlines()
    env_lines = render_service_env(off).splitlines()
    assert "SD35_PLAYGROUND=off" in env_lines
    # The service reads what the deploy writes.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model_index.json").write_text("{}")
    env = dict(line.split("=", 1) for line in env_lines if "=" in line and not line.startswith("#"))
    assert load_config({**env, "SD35_MODEL_DIR": str(model_dir)}).playground is False
    assert load_config({"SD35_MODEL_DIR": str(model_dir)}).playground is True


def test_a_playground_that_is_not_a_boolean_is_named_by_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(spec_file(tmp_path, "maybe"), check_local_files=False)
    text = "\n".join(caught.value.problems)
    assert "fleet.yaml:12: hosts.closed.service.playground: " in text, text


def test_service_refuses_an_unknown_playground_value(tmp_path: Path) -> None:
    from sd35_provision.service.config import ConfigError

    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ConfigError) as caught:
        load_config({"SD35_MODEL_DIR": str(tmp_path), "SD35_PLAYGROUND": "maybe"})
    assert any(p.startswith("SD35_PLAYGROUND: 'maybe' is not one of on, off") for p in caught.value.problems)
