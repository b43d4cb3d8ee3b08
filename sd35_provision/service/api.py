"""The OpenAI-compatible request: parsing and validation, no HTTP and no torch.

``parse_generation_request`` turns the decoded JSON body into a
``GenerationJob`` or raises ``RequestError`` carrying the HTTP status and an
OpenAI-style error body, so the client sees which field is wrong and why.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Limits, parse_size

MAX_SEED = 2**63 - 1
# Fields of the OpenAI images API that change nothing here; accepted so stock clients work.
IGNORED_FIELDS = frozenset({"model", "quality", "style", "user", "background", "moderation", "output_compression"})
KNOWN_FIELDS = IGNORED_FIELDS | {
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
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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
    data: Any, limits: Limits, model: ModelLimits, default_steps: int, default_guidance: float
) -> GenerationJob:
    """Validate one ``POST /v1/images/generations`` body; raises RequestError."""
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    # Unknown fields are refused rather than ignored: a typo such as "steps" would
    # otherwise silently run with the default.
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise RequestError(
            400, f"{unknown[0]}: unknown field; accepted fields are {', '.join(sorted(KNOWN_FIELDS))}", unknown[0]
        )

    response_format = data.get("response_format")
    if response_format == "url":
        raise RequestError(
            400,
            "response_format: 'url' is not supported, this service does not host files; use 'b64_json'",
            "response_format",
            "unsupported_response_format",
        )
    if response_format not in (None, "b64_json"):
        raise RequestError(400, f"response_format: {response_format!r} is not supported; use 'b64_json'", "response_format")
    if data.get("output_format") not in (None, "png"):
        raise RequestError(400, f"output_format: {data['output_format']!r} is not supported; use 'png'", "output_format")

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
