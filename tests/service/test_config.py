"""Service configuration from SD35_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from sd35_provision.service.config import (
    COMPILE_CHOICES,
    PRECISION_CHOICES,
    ConfigError,
    is_loopback,
    load_config,
)

from .support import TEST_KEY, write_key_file


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    return tmp_path / "model"


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(env)
    return info.value.problems


def test_defaults_bind_loopback_without_key(model_dir: Path) -> None:
    config = load_config({"SD35_MODEL_DIR": str(model_dir)})
    assert config.bind == "127.0.0.1"
    assert config.port == 8000
    assert config.precision == "auto" and config.compile == "auto"
    assert config.api_key is None
    assert config.limits.max_n >= 1 and config.queue_size >= 1


def test_values_are_parsed(model_dir: Path, tmp_path: Path) -> None:
    key_file = write_key_file(tmp_path)
    config = load_config(
        {
            "SD35_MODEL_DIR": str(model_dir),
            "SD35_BIND": "0.0.0.0",
            "SD35_PORT": "9000",
            "SD35_PRECISION": "FP8",
            "SD35_COMPILE": "off",
            "SD35_QUEUE_SIZE": "3",
            "SD35_MAX_STEPS": "50",
            "SD35_MAX_N": "2",
            "SD35_MAX_PIXELS": "1048576",
            "SD35_WARMUP_SIZES": "1024x1024, 768x1344",
            "SD35_API_KEY_FILE": str(key_file),
        }
    )
    assert (config.bind, config.port, config.precision, config.compile) == ("0.0.0.0", 9000, "fp8", "off")
    assert (config.queue_size, config.limits.max_steps, config.limits.max_n) == (3, 50, 2)
    assert config.warmup_sizes == ((1024, 1024), (768, 1344))
    assert config.api_key is not None and config.api_key.reveal() == TEST_KEY.encode()


def test_every_bad_value_is_reported_with_its_variable(tmp_path: Path) -> None:
    found = problems(
        {
            "SD35_MODEL_DIR": str(tmp_path / "missing"),
            "SD35_PORT": "70000",
            "SD35_PRECISION": "int4",
            "SD35_COMPILE": "maybe",
            "SD35_QUEUE_SIZE": "many",
            "SD35_WARMUP_SIZES": "1000x1000",
        }
    )
    text = "\n".join(found)
    assert "SD35_MODEL_DIR" in text and "model_index.json" in text
    assert "SD35_PORT: 70000 is above the maximum 65535" in text
    assert "SD35_PRECISION: 'int4' is not one of" in text
    assert "SD35_COMPILE: 'maybe'" in text
    assert "SD35_QUEUE_SIZE: 'many' is not an integer" in text
    assert "SD35_WARMUP_SIZES: 1000x1000" in text


def test_model_dir_is_required() -> None:
    assert any(p.startswith("SD35_MODEL_DIR: not set") for p in problems({}))


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.1.2.3", "gpu-a1.example"])
def test_non_loopback_bind_without_key_is_refused(model_dir: Path, bind: str) -> None:
    (problem,) = problems({"SD35_MODEL_DIR": str(model_dir), "SD35_BIND": bind})
    assert problem.startswith(f"SD35_BIND: {bind} is reachable from other machines; refusing to start")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.1", False),
        ("example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_key_file_readable_by_others_is_refused(model_dir: Path, tmp_path: Path) -> None:
    key_file = write_key_file(tmp_path, mode=0o644)
    (problem,) = problems({"SD35_MODEL_DIR": str(model_dir), "SD35_API_KEY_FILE": str(key_file)})
    assert "mode 0644 lets other users read the key; use 0600" in problem
    assert TEST_KEY not in problem


def test_short_or_missing_key_file_is_refused(model_dir: Path, tmp_path: Path) -> None:
    short = write_key_file(tmp_path, key="short")
    assert "shorter than 16" in problems({"SD35_MODEL_DIR": str(model_dir), "SD35_API_KEY_FILE": str(short)})[0]
    missing = tmp_path / "nope"
    assert "cannot be read" in problems({"SD35_MODEL_DIR": str(model_dir), "SD35_API_KEY_FILE": str(missing)})[0]


def test_key_in_environment_is_refused(model_dir: Path) -> None:
    (problem,) = problems({"SD35_MODEL_DIR": str(model_dir), "SD35_API_KEY": "x" * 32})
    assert problem.startswith("SD35_API_KEY: keys are not read from the environment")
    assert "x" * 32 not in problem


def test_key_never_shows_in_repr(model_dir: Path, tmp_path: Path) -> None:
    key_file = write_key_file(tmp_path)
    config = load_config({"SD35_MODEL_DIR": str(model_dir), "SD35_API_KEY_FILE": str(key_file)})
    assert TEST_KEY not in repr(config) and TEST_KEY not in str(config.api_key)


def test_choices_match_the_precision_module() -> None:
    from sd35_provision.service import precision

    assert set(PRECISION_CHOICES) == set(precision.REQUESTS)
    assert set(COMPILE_CHOICES) == set(precision.COMPILE_REQUESTS)


def test_model_names(model_dir: Path) -> None:
    assert load_config({"SD35_MODEL_DIR": str(model_dir)}).model_names == ("sd3.5",)
    config = load_config(
        {
            "SD35_MODEL_DIR": str(model_dir),
            "SD35_MODEL_NAME": "sd3.5-large",
            "SD35_MODEL_ALIASES": "stabilityai/stable-diffusion-3.5-large, sd3.5-large,large",
        }
    )
    assert config.model_names == ("sd3.5-large", "stabilityai/stable-diffusion-3.5-large", "large")
    found = problems({"SD35_MODEL_DIR": str(model_dir), "SD35_MODEL_NAME": "a,b", "SD35_MODEL_ALIASES": "two words"})
    assert sorted(found) == [
        "SD35_MODEL_ALIASES: 'two words' is not a model name (printable, without spaces)",
        "SD35_MODEL_NAME: one name; other names go in SD35_MODEL_ALIASES",
    ]


def test_batching_and_gpu_memory_settings(model_dir: Path) -> None:
    default = load_config({"SD35_MODEL_DIR": str(model_dir)})
    assert (default.max_batch, default.gpu_memory_gib) == (4, None)  # batching won on the H200
    config = load_config({"SD35_MODEL_DIR": str(model_dir), "SD35_MAX_BATCH": "1", "SD35_GPU_MEMORY_GIB": "22.35"})
    assert (config.max_batch, config.gpu_memory_gib) == (1, 22.35)
    assert load_config({"SD35_MODEL_DIR": str(model_dir), "SD35_GPU_MEMORY_GIB": "0"}).gpu_memory_gib is None


def test_bad_batching_and_gpu_memory_settings_are_named(model_dir: Path) -> None:
    found = problems({"SD35_MODEL_DIR": str(model_dir), "SD35_MAX_BATCH": "0", "SD35_GPU_MEMORY_GIB": "lots"})
    assert "SD35_MAX_BATCH: 0 is below the minimum 1" in found
    assert "SD35_GPU_MEMORY_GIB: 'lots' is not a number" in found
