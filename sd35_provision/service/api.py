"""The OpenAI-compatible request: parsing and validation, no HTTP and no torch.

``parse_generation_request`` turns the decoded JSON body into a
``GenerationJob`` or raises ``RequestError`` carrying the HTTP status and an
OpenAI-style error body, so the client sees which field is wrong and why.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Limits, parse_size

MAX_SEED = 2**63 - 1
# A generation request is one flat object; nesting beyond this is refused before
# the JSON parser (which recurses) ever sees it.
MAX_JSON_DEPTH = 8
# Fields of the OpenAI images API that change nothing here; accepted so stock clients work.
IGNORED_FIELDS = frozenset({"quality", "style", "user", "background", "moderation", "output_compression"})
KNOWN_FIELDS = IGNORED_FIELDS | {
    "model",
    "prompt",
    "n",
    "size",
    "response_format",
    "output_format",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "negative_prompt",
}


class RequestError(Exception):
    """A request the service will not run; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, "invalid_request_error", self.param, self.code)


class CapacityError(Exception):
    """A valid request that the device cannot run now (out of GPU memory); the message is for the client."""


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape, which the openai client turns into its exception's message."""
    return {"error": {"message": _printable(message), "type": kind, "param": _printable(param), "code": code}}


def _printable(text: str | None) -> str | None:
    # Messages quote what the client sent, which may hold lone surrogates no JSON response can encode.
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class ModelLimits:
    """What the loaded model itself can draw (from its config), on top of the configured limits."""

    default_width: int
    default_height: int
    # Sides must be multiples of this (VAE downscale x transformer patch size).
    size_multiple: int = 16
    max_side: int | None = None


@dataclass(frozen=True)
class GenerationJob:
    prompt: str
    negative_prompt: str | None
    n: int
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def _json_depth(body: bytes) -> int:
    """How deeply ``body`` nests arrays and objects, brackets inside strings not counted."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b"", body)):
        depth += 1 if bracket in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def _refuse_constant(name: str) -> Any:
    raise RequestError(400, f"the request body is not valid JSON: {name} is not a JSON number")


def decode_json_body(body: bytes) -> Any:
    """The request body as JSON; RequestError for what is not plain, shallow, UTF-8 JSON."""
    if _json_depth(body) > MAX_JSON_DEPTH:
        raise RequestError(400, f"the request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise RequestError(400, "the request body nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise RequestError(400, f"the request body is not valid JSON: {exc}") from None


def model_not_found(name: str, names: Collection[str]) -> RequestError:
    return RequestError(
        404,
        f"the model {name!r} does not exist here; this service serves {', '.join(names)}",
        "model",
        "model_not_found",
    )


def _integer(data: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name)
    if value is None:
        return default
    # bool is an int subclass; true/false as a step count is a client bug.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(400, f"{name}: must be an integer, got {value!r}", name)
    if not low <= value <= high:
        raise RequestError(400, f"{name}: {value} is outside the allowed range {low}..{high}", name)
    return value


def _text(data: dict[str, Any], name: str, max_chars: int, required: bool) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise RequestError(400, f"{name}: is required", name)
        return None
    if not isinstance(value, str):
        raise RequestError(400, f"{name}: must be a string", name)
    if required and not value.strip():
        raise RequestError(400, f"{name}: must not be empty", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800" escape decodes to half a character
        raise RequestError(400, f"{name}: is not valid Unicode text (it holds a lone UTF-16 surrogate)", name) from None
    if len(value) > max_chars:
        raise RequestError(400, f"{name}: {len(value)} characters, the limit is {max_chars}", name)
    return value


def _size(data: dict[str, Any], limits: Limits, model: ModelLimits) -> tuple[int, int]:
    value = data.get("size")
    if value is None or value == "auto":
        return model.default_width, model.default_height
    if not isinstance(value, str):
        raise RequestError(400, "size: must be a string WIDTHxHEIGHT, for example '1024x1024'", "size")
    try:
        width, height = parse_size(value)
    except ValueError as exc:
        raise RequestError(400, f"size: {exc}", "size") from None
    max_side = limits.max_side if model.max_side is None else min(limits.max_side, model.max_side)
    multiple = model.size_multiple
    for side_name, side in (("width", width), ("height", height)):
        if not limits.min_side <= side <= max_side:
            raise RequestError(
                400, f"size: {side_name} {side} is outside the allowed range {limits.min_side}..{max_side}", "size"
            )
        if side % multiple:
            raise RequestError(400, f"size: {side_name} {side} is not a multiple of {multiple}", "size")
    if width * height > limits.max_pixels:
        raise RequestError(
            400, f"size: {width}x{height} is {width * height} pixels, the limit is {limits.max_pixels}", "size"
        )
    return width, height


def parse_generation_request(
    data: Any,
    limits: Limits,
    model: ModelLimits,
    default_steps: int,
    default_guidance: float,
    model_names: Collection[str] | None = None,
) -> GenerationJob:
    """Validate one ``POST /v1/images/generations`` body; raises RequestError.

    ``model_names``: what ``model`` may name (any name when None); no ``model`` means this one.
    """
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    # Unknown fields are refused rather than ignored: a typo such as "steps" would
    # otherwise silently run with the default.
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise RequestError(
            400, f"{unknown[0]}: unknown field; accepted fields are {', '.join(sorted(KNOWN_FIELDS))}", unknown[0]
        )

    requested_model = data.get("model")
    if requested_model is not None:
        if not isinstance(requested_model, str):
            raise RequestError(400, "model: must be a string", "model")
        if model_names is not None and requested_model not in model_names:
            raise model_not_found(requested_model, model_names)

    response_format = data.get("response_format")
    if response_format == "url":
        raise RequestError(
            400,
            "response_format: 'url' is not supported, this service does not host files; use 'b64_json'",
            "response_format",
            "unsupported_response_format",
        )
    if response_format not in (None, "b64_json"):
        raise RequestError(
            400, f"response_format: {response_format!r} is not supported; use 'b64_json'", "response_format"
        )
    if data.get("output_format") not in (None, "png"):
        raise RequestError(
            400, f"output_format: {data['output_format']!r} is not supported; use 'png'", "output_format"
        )

    prompt = _text(data, "prompt", limits.max_prompt_chars, required=True)
    assert prompt is not None
    negative_prompt = _text(data, "negative_prompt", limits.max_prompt_chars, required=False)
    n = _integer(data, "n", 1, 1, limits.max_n)
    width, height = _size(data, limits, model)
    steps = _integer(data, "num_inference_steps", default_steps, 1, limits.max_steps)

    guidance = data.get("guidance_scale")
    if guidance is None:
        guidance = default_guidance
    elif isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise RequestError(400, f"guidance_scale: must be a number, got {guidance!r}", "guidance_scale")
    elif not 0.0 <= guidance <= limits.max_guidance:
        raise RequestError(
            400, f"guidance_scale: {guidance} is outside the allowed range 0..{limits.max_guidance}", "guidance_scale"
        )

    seed = data.get("seed")
    seed = secrets.randbelow(2**32) if seed is None else _integer(data, "seed", 0, 0, MAX_SEED)

    return GenerationJob(
        prompt=prompt,
        negative_prompt=negative_prompt,
        n=n,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=float(guidance),
        seed=seed,
    )


class Engine(Protocol):
    """A loaded model: what it can draw, and drawing (PNG bytes per image)."""

    limits: ModelLimits

    def generate(self, job: GenerationJob) -> list[bytes]: ...


@dataclass(frozen=True)
class LoadedEngine:
    engine: Engine
    # Shown on /readyz and in the sd35_model info metric: precision mode, device, why.
    description: dict[str, str]


# Runs on the GPU thread; its argument reports progress ("loading", "warming up").
EngineLoader = Callable[[Callable[[str], None]], LoadedEngine]
