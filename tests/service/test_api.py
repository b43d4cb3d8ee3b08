"""Validation of the OpenAI-style generation request, without HTTP."""

from __future__ import annotations

import pytest

from sd35_provision.service.api import ModelLimits, RequestError, parse_generation_request
from sd35_provision.service.config import Limits

LIMITS = Limits(min_side=64, max_side=2048, max_pixels=1536 * 1536, max_steps=100, max_n=4, max_prompt_chars=100)
MODEL = ModelLimits(default_width=1024, default_height=1024, size_multiple=16, max_side=3072)


def parse(**body):
    return parse_generation_request(body, LIMITS, MODEL, default_steps=28, default_guidance=3.5)


def test_minimal_request_gets_defaults() -> None:
    job = parse(prompt="a cat")
    assert (job.width, job.height, job.n, job.num_inference_steps, job.guidance_scale) == (1024, 1024, 1, 28, 3.5)
    assert 0 <= job.seed < 2**32


def test_full_request() -> None:
    job = parse(
        prompt="a cat",
        n=2,
        size="768x512",
        response_format="b64_json",
        model="sd3.5-large",
        num_inference_steps=4,
        guidance_scale=0,
        seed=7,
        negative_prompt="blurry",
        quality="standard",
    )
    assert (job.width, job.height, job.n, job.num_inference_steps, job.guidance_scale, job.seed) == (
        768,
        512,
        2,
        4,
        0.0,
        7,
    )
    assert job.negative_prompt == "blurry"


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({}, "prompt", "is required"),
        ({"prompt": 5}, "prompt", "must be a string"),
        ({"prompt": "x" * 101}, "prompt", "101 characters, the limit is 100"),
        ({"prompt": "a", "size": "0x0"}, "size", "width 0 is outside the allowed range 64..2048"),
        ({"prompt": "a", "size": "10000x10000"}, "size", "width 10000 is outside"),
        ({"prompt": "a", "size": "1000x1024"}, "size", "width 1000 is not a multiple of 16"),
        ({"prompt": "a", "size": "1024x1000"}, "size", "height 1000 is not a multiple of 16"),
        ({"prompt": "a", "size": "2048x2048"}, "size", "the limit is 2359296"),
        ({"prompt": "a", "size": "big"}, "size", "not WIDTHxHEIGHT"),
        ({"prompt": "a", "size": 1024}, "size", "must be a string"),
        ({"prompt": "a", "num_inference_steps": 1000}, "num_inference_steps", "outside the allowed range 1..100"),
        ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps", "outside"),
        ({"prompt": "a", "num_inference_steps": "ten"}, "num_inference_steps", "must be an integer"),
        ({"prompt": "a", "num_inference_steps": True}, "num_inference_steps", "must be an integer"),
        ({"prompt": "a", "n": 5}, "n", "outside the allowed range 1..4"),
        ({"prompt": "a", "n": 0}, "n", "outside"),
        ({"prompt": "a", "guidance_scale": -1}, "guidance_scale", "outside the allowed range"),
        ({"prompt": "a", "guidance_scale": "high"}, "guidance_scale", "must be a number"),
        ({"prompt": "a", "seed": -1}, "seed", "outside"),
        ({"prompt": "a", "response_format": "url"}, "response_format", "does not host files; use 'b64_json'"),
        ({"prompt": "a", "response_format": "jpeg"}, "response_format", "not supported"),
        ({"prompt": "a", "output_format": "webp"}, "output_format", "not supported"),
        ({"prompt": "a", "steps": 4}, "steps", "unknown field"),
    ],
)
def test_bad_requests_name_the_field(body: dict, param: str, text: str) -> None:
    with pytest.raises(RequestError) as info:
        parse(**body)
    assert info.value.status == 400
    assert info.value.param == param
    assert text in info.value.message
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_model_limit_caps_the_configured_side() -> None:
    small_model = ModelLimits(default_width=64, default_height=64, size_multiple=16, max_side=128)
    with pytest.raises(RequestError, match="outside the allowed range 64..128"):
        parse_generation_request({"prompt": "a", "size": "256x256"}, LIMITS, small_model, 2, 3.5)


def test_body_must_be_an_object() -> None:
    with pytest.raises(RequestError, match="JSON object"):
        parse_generation_request(["a"], LIMITS, MODEL, 28, 3.5)
