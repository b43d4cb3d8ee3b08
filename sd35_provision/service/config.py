"""The service's settings: the one definition of every SD35_* variable.

systemd passes them in through ``EnvironmentFile=`` lines; nothing comes from
argv, and the API key is read from a file (``SD35_API_KEY_FILE``) so it never
sits in the environment or a process listing.

This module is both ends of that contract: the service parses its
environment with ``load_config``, and the control machine renders the
settings file with ``render_env`` (sd35_provision/service_settings.py)
from the same ``Setting`` entries: one name, type, default, bounds and set of
choices each. It is shipped to hosts with the service, so it uses the
standard library only. The host spec's ``service.*`` keys in
sd35_provision/schemas/host-spec.schema.json repeat the bounds and defaults
for users; tests/service/test_config.py keeps them equal.

Every problem is reported at once, each as ``VAR: what is wrong``.

| variable | meaning | default |
| --- | --- | --- |
| SD35_MODEL_DIR | diffusers pipeline directory (model_index.json, safetensors) | required |
| SD35_BIND | address to listen on; not loopback needs SD35_API_KEY_FILE | 127.0.0.1 |
| SD35_PORT | TCP port | 8000 |
| SD35_PRECISION | auto, fp8 (best FP8 the GPU has), fp8-dynamic, fp8-storage, bf16, fp32 | auto |
| SD35_COMPILE | torch.compile the transformer: auto, on, off | auto |
| SD35_QUEUE_SIZE | requests that may wait behind the running one; more get 429 | 4 |
| SD35_MAX_BATCH | images per pipeline call: queued requests alike in size, steps, guidance join (1: no batching) | 4 |
| SD35_GPU_MEMORY_GIB | cap this process's GPU memory (torch allocator) and plan for that much; 0: the whole GPU | 0 |
| SD35_MIN_SIDE, SD35_MAX_SIDE | image side limits in pixels (the model's own limit also applies) | 64, 1536 |
| SD35_MAX_PIXELS | width x height limit | 2359296 (1536x1536) |
| SD35_MAX_STEPS, SD35_MAX_N | inference steps and images per request | 60, 4 |
| SD35_MAX_PROMPT_CHARS | prompt and negative prompt length | 4000 |
| SD35_DEFAULT_STEPS, SD35_DEFAULT_GUIDANCE | when a request does not say (Large: 28, 3.5; Turbo: 4, 0) | 28, 3.5 |
| SD35_WARMUP_STEPS | steps of the start-up generation; 0 skips warm-up | 2 |
| SD35_WARMUP_SIZES | sizes to warm up (and compile) for, e.g. 1024x1024,768x1344 | the model's native size |
| SD35_API_KEY_FILE | file (mode 0600 or 0400) holding the bearer key, 16+ characters | none: no auth |
| SD35_LOG_LEVEL | DEBUG, INFO, WARNING, ERROR | INFO |
| SD35_MODEL_NAME | the model id requests may name (listed by GET /v1/models) | sd3.5 |
| SD35_MODEL_ALIASES | other names requests may use for it (comma-separated) | none |
| SD35_PLAYGROUND | the playground page at ``/``: on, off | on |
| SD35_RUNNING_RECORD | where to state what this process runs (see running.py); set by the unit | none: not written |
| SD35_RELEASE_LINK | the release link the record names; set by the unit | none |
| SD35_RUNNING_FILES | the files (space-separated) the record names; set by the unit | none |
"""

from __future__ import annotations

import ipaddress
import math
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast, get_args

# What "auto" and "fp8" resolve to on a given GPU (sd35_provision/service/precision.py).
PrecisionMode = Literal["fp8-dynamic", "fp8-storage", "bf16", "fp32"]
Precision = Literal["auto", "fp8", PrecisionMode]  # a nested Literal is flattened (PEP 586)
CompileMode = Literal["auto", "on", "off"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

PRECISION_CHOICES: tuple[Precision, ...] = get_args(Precision)
PRECISION_MODES: tuple[PrecisionMode, ...] = get_args(PrecisionMode)
COMPILE_CHOICES: tuple[CompileMode, ...] = get_args(CompileMode)
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
MIN_API_KEY_CHARS = 16
MAX_GUIDANCE = 30.0

Value = TypeVar("Value")

# systemd's EnvironmentFile= strips, unquotes and unescapes values: a value holding
# one of these would not reach the service as written (a newline would even start
# another variable), so the renderer refuses it.
_ENV_FILE_SPECIAL = ("\n", "\r", '"', "'", "\\")
# What a bool setting accepts; the settings file writes on/off.
_SWITCH_WORDS = {
    "on": True,
    "off": False,
    "true": True,
    "false": False,
    "yes": True,
    "no": False,
    "1": True,
    "0": False,
}


@dataclass(frozen=True)
class Setting(Generic[Value]):
    """One SD35_* variable: its name, type, default and what values it allows.

    + env: the variable's name
    + kind: ``int``, ``float``, ``bool`` (written ``on``/``off``) or ``str``
    + default: used when the variable is unset or empty (``""``: no default)
    + minimum, maximum: bounds of a number (None: unbounded)
    + choices: the fixed values a ``str`` may take (from a ``Literal``; empty: any)
    + fold: how a value is normalised before it is matched against ``choices``
    """

    env: str
    kind: type
    default: Value
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    fold: Callable[[str], str] | None = None

    def parse(self, text: str) -> Value:
        """The value of ``text``; ValueError saying what is wrong (without the variable's name)."""
        text = text.strip()
        if self.kind is bool:
            switch = text.lower()
            if switch not in _SWITCH_WORDS:
                raise ValueError(f"{text!r} is not one of on, off")
            return cast(Value, _SWITCH_WORDS[switch])
        if self.kind is int:
            try:
                number = int(text)
            except ValueError:
                raise ValueError(f"{text!r} is not an integer") from None
            if self.minimum is not None and number < self.minimum:
                raise ValueError(f"{number} is below the minimum {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise ValueError(f"{number} is above the maximum {self.maximum}")
            return cast(Value, number)
        if self.kind is float:
            try:
                real = float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a number") from None
            low = -math.inf if self.minimum is None else self.minimum
            high = math.inf if self.maximum is None else self.maximum
            if not math.isfinite(real) or not low <= real <= high:
                raise ValueError(f"{text} is not between {low} and {high}")
            return cast(Value, real)
        folded = self.fold(text) if self.fold else text
        if self.choices and folded not in self.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(self.choices)}")
        return cast(Value, folded)

    def format(self, value: Value) -> str:
        """``value`` as the settings file writes it; ValueError (naming the variable) if the service would refuse it."""
        text = ("on" if value else "off") if self.kind is bool else str(value)
        if text != text.strip() or any(char in text for char in _ENV_FILE_SPECIAL):
            raise ValueError(f"{self.env}: {text!r} cannot be written to an environment file")
        try:
            self.parse(text)
        except ValueError as exc:
            raise ValueError(f"{self.env}: {exc}") from None
        return text


def _int(env: str, default: int, minimum: int, maximum: int | None = None) -> Setting[int]:
    return Setting(env, int, default, minimum, maximum)


MODEL_DIR: Setting[str] = Setting("SD35_MODEL_DIR", str, "")  # required
BIND: Setting[str] = Setting("SD35_BIND", str, "127.0.0.1")
PORT = _int("SD35_PORT", 8000, 1, 65535)
PRECISION: Setting[Precision] = Setting("SD35_PRECISION", str, "auto", choices=PRECISION_CHOICES, fold=str.lower)
COMPILE: Setting[CompileMode] = Setting("SD35_COMPILE", str, "auto", choices=COMPILE_CHOICES, fold=str.lower)
QUEUE_SIZE = _int("SD35_QUEUE_SIZE", 4, 1, 256)
MIN_SIDE = _int("SD35_MIN_SIDE", 64, 16)
MAX_SIDE = _int("SD35_MAX_SIDE", 1536, 64, 4096)
MAX_PIXELS = _int("SD35_MAX_PIXELS", 1536 * 1536, 16 * 16)
MAX_STEPS = _int("SD35_MAX_STEPS", 60, 1, 500)
MAX_N = _int("SD35_MAX_N", 4, 1, 16)
MAX_PROMPT_CHARS = _int("SD35_MAX_PROMPT_CHARS", 4000, 1)
DEFAULT_STEPS = _int("SD35_DEFAULT_STEPS", 28, 1)
DEFAULT_GUIDANCE: Setting[float] = Setting("SD35_DEFAULT_GUIDANCE", float, 3.5, 0.0, MAX_GUIDANCE)
WARMUP_STEPS = _int("SD35_WARMUP_STEPS", 2, 0, 100)
WARMUP_SIZES: Setting[str] = Setting("SD35_WARMUP_SIZES", str, "")  # "": the model's native size
API_KEY_FILE: Setting[str] = Setting("SD35_API_KEY_FILE", str, "")  # "": no auth
LOG_LEVEL: Setting[LogLevel] = Setting("SD35_LOG_LEVEL", str, "INFO", choices=LOG_LEVELS, fold=str.upper)
MODEL_NAME: Setting[str] = Setting("SD35_MODEL_NAME", str, "sd3.5")
MODEL_ALIASES: Setting[str] = Setting("SD35_MODEL_ALIASES", str, "")  # comma-separated; "": none
PLAYGROUND: Setting[bool] = Setting("SD35_PLAYGROUND", bool, True)  # the page at / (service/playground.py)
# Batching won on the H200 at 4+ concurrent clients (docs/benchmarks.md).
MAX_BATCH = _int("SD35_MAX_BATCH", 4, 1, 64)
GPU_MEMORY_GIB: Setting[float] = Setting("SD35_GPU_MEMORY_GIB", float, 0.0, 0.0, 4096.0)  # 0: no cap
# Set by the unit, not the spec: what the process states it runs (service/running.py).
RUNNING_RECORD: Setting[str] = Setting("SD35_RUNNING_RECORD", str, "")  # "": no record written
RELEASE_LINK: Setting[str] = Setting("SD35_RELEASE_LINK", str, "")
RUNNING_FILES: Setting[str] = Setting("SD35_RUNNING_FILES", str, "")  # space-separated paths

# By the name of the ServiceConfig (or Limits) field each one fills; the host
# spec's service.* keys that reach the service use the same names.
SETTINGS: dict[str, Setting[Any]] = {
    "model_dir": MODEL_DIR,
    "bind": BIND,
    "port": PORT,
    "precision": PRECISION,
    "compile": COMPILE,
    "queue_size": QUEUE_SIZE,
    "min_side": MIN_SIDE,
    "max_side": MAX_SIDE,
    "max_pixels": MAX_PIXELS,
    "max_steps": MAX_STEPS,
    "max_n": MAX_N,
    "max_prompt_chars": MAX_PROMPT_CHARS,
    "default_steps": DEFAULT_STEPS,
    "default_guidance": DEFAULT_GUIDANCE,
    "warmup_steps": WARMUP_STEPS,
    "warmup_sizes": WARMUP_SIZES,
    "api_key_file": API_KEY_FILE,
    "log_level": LOG_LEVEL,
    "model_name": MODEL_NAME,
    "model_aliases": MODEL_ALIASES,
    "playground": PLAYGROUND,
    "max_batch": MAX_BATCH,
    "gpu_memory_gib": GPU_MEMORY_GIB,
}


def render_env(values: Iterable[tuple[Setting[Any], Any]]) -> dict[str, str]:
    """``{SD35_*: text}`` for the given settings and values, in their order (what the settings file holds).

    Raises ValueError naming the variable for a value the service would refuse.
    """
    return {setting.env: setting.format(value) for setting, value in values}


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

    min_side: int = MIN_SIDE.default
    max_side: int = MAX_SIDE.default
    max_pixels: int = MAX_PIXELS.default
    max_steps: int = MAX_STEPS.default
    max_n: int = MAX_N.default
    max_prompt_chars: int = MAX_PROMPT_CHARS.default
    max_guidance: float = MAX_GUIDANCE


@dataclass(frozen=True)
class ServiceConfig:
    model_dir: Path
    bind: str = BIND.default
    port: int = PORT.default
    precision: Precision = PRECISION.default
    compile: CompileMode = COMPILE.default
    queue_size: int = QUEUE_SIZE.default
    limits: Limits = field(default_factory=Limits)
    default_steps: int = DEFAULT_STEPS.default
    default_guidance: float = DEFAULT_GUIDANCE.default
    warmup_steps: int = WARMUP_STEPS.default
    # None: warm up at the model's native size.
    warmup_sizes: tuple[tuple[int, int], ...] | None = None
    api_key: ApiKey | None = None
    api_key_file: Path | None = None
    log_level: LogLevel = LOG_LEVEL.default
    model_name: str = MODEL_NAME.default
    model_aliases: tuple[str, ...] = ()
    playground: bool = PLAYGROUND.default
    max_batch: int = MAX_BATCH.default
    gpu_memory_gib: float | None = None  # None: the whole GPU
    running_record: str | None = None  # see running.py
    release_link: str | None = None
    running_files: tuple[str, ...] = ()

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
        raise ValueError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read the key; use 0600")
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
    """Reads settings from the environment, collecting problems instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def raw(self, setting: Setting[Any]) -> str | None:
        value = self.env.get(setting.env)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def read(self, setting: Setting[Value]) -> Value:
        value = self.raw(setting)
        if value is None:
            return setting.default
        try:
            return setting.parse(value)
        except ValueError as exc:
            self.problems.append(f"{setting.env}: {exc}")
            return setting.default

    def sizes(self, setting: Setting[str]) -> tuple[tuple[int, int], ...] | None:
        value = self.raw(setting)
        if value is None:
            return None
        try:
            return tuple(parse_size(item) for item in value.split(",") if item.strip())
        except ValueError as exc:
            self.problems.append(f"{setting.env}: {exc}")
            return None

    def names(self, setting: Setting[str]) -> tuple[str, ...]:
        """A comma-separated list of model names (the setting's default when unset)."""
        value = self.raw(setting)
        names = tuple(item.strip() for item in (value or setting.default).split(",") if item.strip())
        for item in names:
            if not item.isprintable() or " " in item:
                self.problems.append(f"{setting.env}: {item!r} is not a model name (printable, without spaces)")
                return tuple(item for item in setting.default.split(",") if item)
        return names


def load_config(env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Build the config from ``env`` (default ``os.environ``); raises ConfigError listing every problem."""
    environment = os.environ if env is None else env
    r = _EnvReader(environment)

    model_dir_text = r.raw(MODEL_DIR)
    model_dir = Path(model_dir_text) if model_dir_text else Path()
    if model_dir_text is None:
        r.problems.append(f"{MODEL_DIR.env}: not set (the directory holding model_index.json)")
    elif not (model_dir / "model_index.json").is_file():
        r.problems.append(f"{MODEL_DIR.env}: {model_dir}/model_index.json does not exist")

    bind = r.read(BIND)
    port = r.read(PORT)

    limits = Limits(
        min_side=r.read(MIN_SIDE),
        max_side=r.read(MAX_SIDE),
        max_pixels=r.read(MAX_PIXELS),
        max_steps=r.read(MAX_STEPS),
        max_n=r.read(MAX_N),
        max_prompt_chars=r.read(MAX_PROMPT_CHARS),
    )
    if limits.min_side > limits.max_side:
        r.problems.append(f"{MIN_SIDE.env}: {limits.min_side} is above {MAX_SIDE.env} {limits.max_side}")

    default_steps = r.read(DEFAULT_STEPS)
    if default_steps > limits.max_steps:
        r.problems.append(f"{DEFAULT_STEPS.env}: {default_steps} is above {MAX_STEPS.env} {limits.max_steps}")

    warmup_sizes = r.sizes(WARMUP_SIZES)
    for width, height in warmup_sizes or ():
        if width % 16 or height % 16 or width <= 0 or height <= 0:
            r.problems.append(f"{WARMUP_SIZES.env}: {width}x{height} sides must be positive multiples of 16")

    api_key_file_text = r.raw(API_KEY_FILE)
    api_key_file = Path(api_key_file_text) if api_key_file_text else None
    api_key = None
    if api_key_file is not None:
        try:
            api_key = read_api_key(api_key_file)
        except ValueError as exc:
            r.problems.append(f"{API_KEY_FILE.env}: {exc}")
    elif not is_loopback(bind):
        r.problems.append(
            f"{BIND.env}: {bind} is reachable from other machines; refusing to start without "
            f"{API_KEY_FILE.env} (a 0600 file holding the bearer key)"
        )
    if "SD35_API_KEY" in environment:
        r.problems.append(f"SD35_API_KEY: keys are not read from the environment; put it in {API_KEY_FILE.env}")

    model_name = r.names(MODEL_NAME)
    if len(model_name) != 1:
        r.problems.append(f"{MODEL_NAME.env}: one name; other names go in {MODEL_ALIASES.env}")

    config = ServiceConfig(
        model_dir=model_dir,
        bind=bind,
        port=port,
        precision=r.read(PRECISION),
        compile=r.read(COMPILE),
        queue_size=r.read(QUEUE_SIZE),
        limits=limits,
        default_steps=default_steps,
        default_guidance=r.read(DEFAULT_GUIDANCE),
        warmup_steps=r.read(WARMUP_STEPS),
        warmup_sizes=warmup_sizes,
        api_key=api_key,
        api_key_file=api_key_file,
        log_level=r.read(LOG_LEVEL),
        model_name=model_name[0] if len(model_name) == 1 else MODEL_NAME.default,
        model_aliases=r.names(MODEL_ALIASES),
        playground=r.read(PLAYGROUND),
        max_batch=r.read(MAX_BATCH),
        gpu_memory_gib=r.read(GPU_MEMORY_GIB) or None,
        running_record=r.raw(RUNNING_RECORD),
        release_link=r.raw(RELEASE_LINK),
        running_files=tuple((r.raw(RUNNING_FILES) or "").split()),
    )
    if r.problems:
        raise ConfigError(r.problems)
    return config
