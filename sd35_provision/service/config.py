"""Service configuration, read from environment variables only.

systemd passes them in through ``EnvironmentFile=`` lines; nothing comes from
argv, and the API key is read from a file (``SD35_API_KEY_FILE``) so it never
sits in the environment or a process listing.

Every problem is reported at once, each as ``VAR: what is wrong``.

| variable | meaning | default |
| --- | --- | --- |
| SD35_MODEL_DIR | diffusers pipeline directory (model_index.json, safetensors) | required |
| SD35_BIND | address to listen on; not loopback needs SD35_API_KEY_FILE | 127.0.0.1 |
| SD35_PORT | TCP port | 8000 |
| SD35_PRECISION | auto, fp8 (best FP8 the GPU has), fp8-dynamic, fp8-storage, bf16, fp32 | auto |
| SD35_COMPILE | torch.compile the transformer: auto, on, off | auto |
| SD35_QUEUE_SIZE | requests that may wait behind the running one; more get 429 | 8 |
| SD35_MIN_SIDE, SD35_MAX_SIDE | image side limits in pixels (the model's own limit also applies) | 64, 2048 |
| SD35_MAX_PIXELS | width x height limit | 2359296 (1536x1536) |
| SD35_MAX_STEPS, SD35_MAX_N | inference steps and images per request | 100, 4 |
| SD35_MAX_PROMPT_CHARS | prompt and negative prompt length | 4000 |
| SD35_DEFAULT_STEPS, SD35_DEFAULT_GUIDANCE | when a request does not say (Large: 28, 3.5; Turbo: 4, 0) | 28, 3.5 |
| SD35_WARMUP_STEPS | steps of the start-up generation; 0 skips warm-up | 2 |
| SD35_WARMUP_SIZES | sizes to warm up (and compile) for, e.g. 1024x1024,768x1344 | the model's native size |
| SD35_API_KEY_FILE | file (mode 0600 or 0400) holding the bearer key, 16+ characters | none: no auth |
| SD35_LOG_LEVEL | DEBUG, INFO, WARNING, ERROR | INFO |
| SD35_MODEL_NAME, SD35_MODEL_ALIASES | the model id requests may name (listed by GET /v1/models), and other names for it (comma-separated) | sd3.5, none |
"""

from __future__ import annotations

import ipaddress
import math
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

# The same as precision.REQUESTS / COMPILE_REQUESTS, repeated so reading the config
# does not import torch (a test keeps them equal).
PRECISION_CHOICES = ("auto", "fp8", "fp8-dynamic", "fp8-storage", "bf16", "fp32")
COMPILE_CHOICES = ("auto", "on", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MIN_API_KEY_CHARS = 16

T = TypeVar("T")


class ConfigError(Exception):
    """The service cannot start with this configuration; ``problems`` has one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class ApiKey:
    """The bearer key; its repr and str never show it, so it cannot leak into logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> bytes:
        return self._value.encode("utf-8")

    def __repr__(self) -> str:
        return "ApiKey(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    min_side: int = 64
    max_side: int = 2048
    max_pixels: int = 1536 * 1536
    max_steps: int = 100
    max_n: int = 4
    max_prompt_chars: int = 4000
    max_guidance: float = 30.0


@dataclass(frozen=True)
class ServiceConfig:
    model_dir: Path
    bind: str = "127.0.0.1"
    port: int = 8000
    precision: str = "auto"
    compile: str = "auto"
    queue_size: int = 8
    limits: Limits = field(default_factory=Limits)
    default_steps: int = 28
    default_guidance: float = 3.5
    warmup_steps: int = 2
    # None: warm up at the model's native size.
    warmup_sizes: tuple[tuple[int, int], ...] | None = None
    api_key: ApiKey | None = None
    api_key_file: Path | None = None
    log_level: str = "INFO"
    model_name: str = "sd3.5"
    model_aliases: tuple[str, ...] = ()

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name a request's ``model`` may use: the id first, then the aliases."""
        return (self.model_name, *(alias for alias in self.model_aliases if alias != self.model_name))


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1: addresses only this machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)`` (width, height); ValueError otherwise."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT (for example 1024x1024)")
    return int(parts[0]), int(parts[1])


def read_api_key(path: Path) -> ApiKey:
    """Read the key from a file that only its owner may read (0600 or 0400)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: is not a regular file")
    if st.st_mode & 0o077:
        raise ValueError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read the key; use 0600"
        )
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    if len(key) < MIN_API_KEY_CHARS:
        raise ValueError(f"{path}: the key is shorter than {MIN_API_KEY_CHARS} characters")
    if any(c.isspace() for c in key):
        raise ValueError(f"{path}: the key contains whitespace")
    return ApiKey(key)


class _EnvReader:
    """Reads typed values from the environment, collecting problems instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _parse(self, name: str, default: T, convert: Callable[[str], T]) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc}")
            return default

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        def convert(text: str) -> int:
            try:
                number = int(text)
            except ValueError:
                raise ValueError(f"{text!r} is not an integer") from None
            if number < minimum:
                raise ValueError(f"{number} is below the minimum {minimum}")
            if maximum is not None and number > maximum:
                raise ValueError(f"{number} is above the maximum {maximum}")
            return number

        return self._parse(name, default, convert)

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        def convert(text: str) -> float:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a number") from None
            if not math.isfinite(number) or not minimum <= number <= maximum:
                raise ValueError(f"{text} is not between {minimum} and {maximum}")
            return number

        return self._parse(name, default, convert)

    def choice(self, name: str, default: str, choices: tuple[str, ...], fold: Callable[[str], str] = str.lower) -> str:
        def convert(text: str) -> str:
            if fold(text) not in choices:
                raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
            return fold(text)

        return self._parse(name, default, convert)

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        def convert(text: str) -> tuple[str, ...]:
            names = tuple(item.strip() for item in text.split(",") if item.strip())
            for item in names:
                if not item.isprintable() or " " in item:
                    raise ValueError(f"{item!r} is not a model name (printable, without spaces)")
            return names

        return self._parse(name, default, convert)

    def sizes(self, name: str) -> tuple[tuple[int, int], ...] | None:
        def convert(text: str) -> tuple[tuple[int, int], ...]:
            return tuple(parse_size(item) for item in text.split(",") if item.strip())

        return self._parse(name, None, convert)


def load_config(env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Build the config from ``env`` (default ``os.environ``); raises ConfigError listing every problem."""
    r = _EnvReader(os.environ if env is None else env)

    model_dir_text = r.raw("SD35_MODEL_DIR")
    model_dir = Path(model_dir_text) if model_dir_text else Path()
    if model_dir_text is None:
        r.problems.append("SD35_MODEL_DIR: not set (the directory holding model_index.json)")
    elif not (model_dir / "model_index.json").is_file():
        r.problems.append(f"SD35_MODEL_DIR: {model_dir}/model_index.json does not exist")

    bind = r.raw("SD35_BIND") or "127.0.0.1"
    port = r.integer("SD35_PORT", 8000, 1, 65535)

    limits = Limits(
        min_side=r.integer("SD35_MIN_SIDE", Limits.min_side, 16),
        max_side=r.integer("SD35_MAX_SIDE", Limits.max_side, 16),
        max_pixels=r.integer("SD35_MAX_PIXELS", Limits.max_pixels, 16 * 16),
        max_steps=r.integer("SD35_MAX_STEPS", Limits.max_steps, 1),
        max_n=r.integer("SD35_MAX_N", Limits.max_n, 1),
        max_prompt_chars=r.integer("SD35_MAX_PROMPT_CHARS", Limits.max_prompt_chars, 1),
    )
    if limits.min_side > limits.max_side:
        r.problems.append(f"SD35_MIN_SIDE: {limits.min_side} is above SD35_MAX_SIDE {limits.max_side}")

    default_steps = r.integer("SD35_DEFAULT_STEPS", 28, 1)
    if default_steps > limits.max_steps:
        r.problems.append(f"SD35_DEFAULT_STEPS: {default_steps} is above SD35_MAX_STEPS {limits.max_steps}")

    warmup_sizes = r.sizes("SD35_WARMUP_SIZES")
    for width, height in warmup_sizes or ():
        if width % 16 or height % 16 or width <= 0 or height <= 0:
            r.problems.append(f"SD35_WARMUP_SIZES: {width}x{height} sides must be positive multiples of 16")

    api_key_file_text = r.raw("SD35_API_KEY_FILE")
    api_key_file = Path(api_key_file_text) if api_key_file_text else None
    api_key = None
    if api_key_file is not None:
        try:
            api_key = read_api_key(api_key_file)
        except ValueError as exc:
            r.problems.append(f"SD35_API_KEY_FILE: {exc}")
    elif not is_loopback(bind):
        r.problems.append(
            f"SD35_BIND: {bind} is reachable from other machines; refusing to start without "
            "SD35_API_KEY_FILE (a 0600 file holding the bearer key)"
        )
    if "SD35_API_KEY" in (os.environ if env is None else env):
        r.problems.append("SD35_API_KEY: keys are not read from the environment; put it in SD35_API_KEY_FILE")

    model_name = r.names("SD35_MODEL_NAME", (ServiceConfig.model_name,))
    if len(model_name) != 1:
        r.problems.append("SD35_MODEL_NAME: one name; other names go in SD35_MODEL_ALIASES")

    config = ServiceConfig(
        model_dir=model_dir,
        bind=bind,
        port=port,
        precision=r.choice("SD35_PRECISION", "auto", PRECISION_CHOICES),
        compile=r.choice("SD35_COMPILE", "auto", COMPILE_CHOICES),
        queue_size=r.integer("SD35_QUEUE_SIZE", 8, 0, 10_000),
        limits=limits,
        default_steps=default_steps,
        default_guidance=r.number("SD35_DEFAULT_GUIDANCE", 3.5, 0.0, limits.max_guidance),
        warmup_steps=r.integer("SD35_WARMUP_STEPS", 2, 0, 100),
        warmup_sizes=warmup_sizes,
        api_key=api_key,
        api_key_file=api_key_file,
        log_level=r.choice("SD35_LOG_LEVEL", "INFO", LOG_LEVELS, fold=str.upper),
        model_name=model_name[0] if len(model_name) == 1 else ServiceConfig.model_name,
        model_aliases=r.names("SD35_MODEL_ALIASES", ()),
    )
    if r.problems:
        raise ConfigError(r.problems)
    return config
