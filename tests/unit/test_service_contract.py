"""The service's contract is written once (sd35_provision/service/config.py): the host spec's schema,
the control side's settings and the rendered settings file all agree with what the service reads."""

from __future__ import annotations

import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

from sd35_provision.hostspec import load_spec
from sd35_provision.hostspec.loader import load_schema
from sd35_provision.hostspec.settings import ServiceSettings
from sd35_provision.instances import select_instances
from sd35_provision.service import config
from sd35_provision.service_settings import (
    instance_environment,
    render_service_env,
    service_environment,
)

# service.* keys of the spec that never reach the service's environment: the unit's
# user and start timeout, the key file on the control machine (the service is
# told the path of its host copy, layout.API_KEY_FILE) and how many instances run.
# service.instances picks the unit's instances; each one's port reaches it through its own settings file.
NOT_SERVICE_SETTINGS = {"user", "start_timeout_s", "api_key_file", "instances"}

SPEC = """\
hosts:
  a1:
    address: 10.0.0.1
    model:
      source: git
      url: file:///srv/mirror/tiny.git
      revision: 0123456789abcdef0123456789abcdef01234567
    smoke:
      size: 64x64
"""


def service_schema() -> dict:
    return load_schema()["$defs"]["service"]["properties"]


@pytest.mark.parametrize("key", sorted(service_schema()))
def test_the_schema_agrees_with_the_service_config(key: str) -> None:
    schema = service_schema()[key]
    if key in NOT_SERVICE_SETTINGS:
        assert key not in config.SETTINGS or key == "api_key_file"
        return
    assert key in config.SETTINGS, f"service.{key} is in the schema but not in service/config.py"
    setting = config.SETTINGS[key]
    assert schema.get("default") == setting.default
    assert schema.get("enum") == (list(setting.choices) or None)
    assert schema.get("minimum") == setting.minimum
    assert schema.get("maximum") == setting.maximum
    assert schema["type"] == {int: "integer", float: "number", str: "string", bool: "boolean"}[setting.kind]


def test_the_control_side_defaults_are_the_service_defaults() -> None:
    defaults = ServiceSettings()
    for item in fields(ServiceSettings):
        if item.name not in NOT_SERVICE_SETTINGS:
            assert getattr(defaults, item.name) == config.SETTINGS[item.name].default, item.name


def test_a_spec_without_service_settings_renders_what_the_service_defaults_to(tmp_path: Path) -> None:
    """The defaults that disagreed (queue 4 vs 8, max_side 1536 vs 2048, max_steps 60 vs 100) are one now."""
    spec = tmp_path / "fleet.yaml"
    spec.write_text(SPEC)
    host = load_spec(spec).hosts[0]
    assert host.service == ServiceSettings()
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    rendered = dict(line.split("=", 1) for line in render_service_env(host).splitlines() if not line.startswith("#"))
    assert rendered == service_environment(host)
    from_file = config.load_config({**rendered, "SD35_MODEL_DIR": str(model)})
    from_nothing = config.load_config({"SD35_MODEL_DIR": str(model)})
    assert from_file == from_nothing
    assert (from_nothing.queue_size, from_nothing.limits.max_side, from_nothing.limits.max_steps) == (4, 1536, 60)


def test_every_spec_value_reaches_the_service_as_written(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        SPEC
        + textwrap.indent(
            textwrap.dedent("""\
        service:
          bind: 127.0.0.2
          port: 9001
          precision: fp8-storage
          compile: "off"
          queue_size: 256
          max_side: 4096
          max_steps: 500
          max_n: 16
    """),
            "    ",
        )
    )
    host = load_spec(spec).hosts[0]
    assert host.service.queue_size == 256  # the spec's own maximum...
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    # The shared settings file, then instance 0's own (its port), as the unit reads them.
    (instance,) = select_instances(host.service.instances, host.service.port, host.gpu.accelerator, None)
    environment = {**service_environment(host), **instance_environment(instance)}
    loaded = config.load_config({**environment, "SD35_MODEL_DIR": str(model)})
    # ...is accepted by the service, and so is every other value the schema allows
    assert (loaded.bind, loaded.port, loaded.precision, loaded.compile, loaded.queue_size) == (
        "127.0.0.2",
        9001,
        "fp8-storage",
        "off",
        256,
    )
    assert (loaded.limits.max_side, loaded.limits.max_pixels, loaded.limits.max_steps, loaded.limits.max_n) == (
        4096,
        4096 * 4096,
        500,
        16,
    )


def test_the_renderer_refuses_what_the_service_would_refuse() -> None:
    with pytest.raises(ValueError, match="^SD35_QUEUE_SIZE: 0 is below the minimum 1$"):
        config.render_env([(config.QUEUE_SIZE, 0)])
    with pytest.raises(ValueError, match="^SD35_PRECISION: 'int4' is not one of auto, fp8,"):
        config.render_env([(config.PRECISION, "int4")])
    # a newline would start another variable in systemd's EnvironmentFile=
    with pytest.raises(ValueError, match="^SD35_BIND: .* cannot be written to an environment file$"):
        config.render_env([(config.BIND, "127.0.0.1\nSD35_API_KEY_FILE=/tmp/k")])
    assert config.render_env([(config.PORT, 8000), (config.DEFAULT_GUIDANCE, 3.5)]) == {
        "SD35_PORT": "8000",
        "SD35_DEFAULT_GUIDANCE": "3.5",
    }


def test_max_batch_and_gpu_memory_reach_the_service(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(SPEC + "    service:\n      max_batch: 8\n      gpu_memory_gib: 22\n")
    host = load_spec(spec).hosts[0]
    assert (host.service.max_batch, host.service.gpu_memory_gib) == (8, 22.0)
    env = service_environment(host)
    assert (env["SD35_MAX_BATCH"], env["SD35_GPU_MEMORY_GIB"]) == ("8", "22.0")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    loaded = config.load_config({**env, "SD35_MODEL_DIR": str(model)})
    assert (loaded.max_batch, loaded.gpu_memory_gib) == (8, 22.0)
    # 0, the default, is the whole GPU
    default = config.load_config({**service_environment(load_spec_text(tmp_path, SPEC)), "SD35_MODEL_DIR": str(model)})
    assert (default.max_batch, default.gpu_memory_gib) == (4, None)


@pytest.mark.parametrize(
    "service,field",
    [("max_batch: 0", "max_batch"), ("max_batch: 65", "max_batch"), ("gpu_memory_gib: -1", "gpu_memory_gib")],
)
def test_out_of_range_batch_and_memory_are_refused_naming_the_field(tmp_path: Path, service: str, field: str) -> None:
    from sd35_provision.errors import SpecError

    spec = tmp_path / "fleet.yaml"
    spec.write_text(SPEC + f"    service:\n      {service}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert field in str(caught.value) and "fleet.yaml:" in str(caught.value)


def load_spec_text(tmp_path: Path, text: str):
    spec = tmp_path / "plain.yaml"
    spec.write_text(text)
    return load_spec(spec).hosts[0]
