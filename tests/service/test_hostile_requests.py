"""Hostile requests to the service, in-process with the tiny CPU model: each gets a clean 4xx, never a 500.

The hand-written cases are the ones that once got a 500 or an image they
should not have; the property-based tests then throw whatever the request
schema allows (and much that it does not) at the app, bounded in count.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sd35_provision.service.api import MAX_JSON_DEPTH
from sd35_provision.service.app import create_app

from .support import make_config
from .test_app import wait_ready

PATH = "/v1/images/generations"
GOOD = {"prompt": "a red cat", "size": "64x64", "num_inference_steps": 1, "seed": 3}
NAME, ALIAS = "sd3.5-tiny", "tiny"


class ErrorLog(logging.Handler):
    """Every ERROR the app logs (an unhandled exception's traceback, a failed generation)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, errors: ErrorLog) -> Iterator[TestClient]:
    # Small limits keep every request the property tests make cheap on the CPU.
    config = make_config(
        tiny_model_dir,
        SD35_MAX_STEPS="2",
        SD35_DEFAULT_STEPS="1",
        SD35_MAX_N="2",
        SD35_MODEL_NAME=NAME,
        SD35_MODEL_ALIASES=f"{ALIAS}, sd3.5-tiny-v1",
    )
    with TestClient(create_app(config), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


def post_raw(client: TestClient, body: bytes):
    return client.post(PATH, content=body, headers={"Content-Type": "application/json"})


def assert_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    return error


def test_deeply_nested_json_is_refused_before_parsing(client: TestClient, errors: ErrorLog) -> None:
    for body in (b"[" * 20_000 + b"]" * 20_000, b'{"prompt": "a", "user": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_001):
        begin = time.monotonic()
        error = assert_openai_error(post_raw(client, body), 400)
        assert f"more than {MAX_JSON_DEPTH} levels deep" in error["message"]
        assert time.monotonic() - begin < 2
    # Brackets inside strings are text, not nesting.
    assert post_raw(client, json.dumps({**GOOD, "prompt": "[[[[[[[[[[[{{{{{{{{{{ a cat"}).encode()).status_code == 200
    assert errors.records == []


def test_a_lone_surrogate_in_a_prompt_is_400(client: TestClient, errors: ErrorLog) -> None:
    for field in ("prompt", "negative_prompt"):
        body = json.dumps({**GOOD, field: "a cat \ud800"}).encode()  # json escapes it as \ud800
        error = assert_openai_error(post_raw(client, body), 400)
        assert error["param"] == field and "not valid Unicode text" in error["message"]
    # A proper pair is one character, and fine.
    assert post_raw(client, json.dumps({**GOOD, "prompt": "a cat \U0001f408"}).encode()).status_code == 200
    assert errors.records == []


def test_an_unknown_model_is_404_model_not_found(client: TestClient) -> None:
    error = assert_openai_error(client.post(PATH, json={**GOOD, "model": "dall-e-3"}), 404, "model_not_found")
    assert error["param"] == "model" and "'dall-e-3'" in error["message"] and NAME in error["message"]
    assert_openai_error(client.post(PATH, json={**GOOD, "model": 3}), 400)
    for name in (NAME, ALIAS, "sd3.5-tiny-v1"):
        assert client.post(PATH, json={**GOOD, "model": name}).status_code == 200
    assert client.post(PATH, json=GOOD).status_code == 200  # no model: this one


def test_models_are_listed_as_openai_does(client: TestClient) -> None:
    listing = client.get("/v1/models")
    assert listing.status_code == 200
    body = listing.json()
    assert body["object"] == "list"
    assert [entry["id"] for entry in body["data"]] == [NAME, ALIAS, "sd3.5-tiny-v1"]
    assert all(entry["object"] == "model" and isinstance(entry["created"], int) for entry in body["data"])
    assert client.get(f"/v1/models/{ALIAS}").json()["id"] == ALIAS
    assert_openai_error(client.get("/v1/models/dall-e-3"), 404, "model_not_found")


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "a", "guidance_scale": NaN}',
        b'{"prompt": "a", "seed": Infinity}',
        b'{"prompt": "a", "seed": ' + b"9" * 5_000 + b"}",
        b'{"prompt": "a", "\\ud800": 1}',
        b'{"prompt": "\xff\xfe"}',
        b'{"prompt": "a"} trailing',
    ],
)
def test_bodies_json_cannot_carry_are_400(client: TestClient, errors: ErrorLog, body: bytes) -> None:
    response = post_raw(client, body)
    assert_openai_error(response, 400)
    assert errors.records == []


# --- property-based: whatever the schema allows, and what it does not -------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
# Text with the characters that broke things before: lone surrogates, NUL, control and combining marks.
awkward_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=30),
    st.text(max_size=20).map(lambda text: text + "\ud800"),
    st.sampled_from(["", " ", "\x00", "a\u0301" * 50, "🐈" * 30, "x" * 5000]),
)


FIELDS = (
    "prompt",
    "negative_prompt",
    "model",
    "n",
    "size",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "response_format",
    "output_format",
    "quality",
    "user",
)
# Requests the service should run: they reach the model, with every kind of prompt text.
valid_requests = st.fixed_dictionaries(
    {"prompt": awkward_text},
    optional={
        "negative_prompt": awkward_text,
        "model": st.sampled_from([NAME, ALIAS]),
        "n": st.integers(1, 2),
        "size": st.sampled_from(["64x64", "128x64", "64x128", "auto"]),
        "num_inference_steps": st.integers(1, 2) | st.just(2.0),
        "guidance_scale": st.floats(0, 30) | st.integers(0, 30),
        "seed": st.integers(0, 2**63 - 1),
        "response_format": st.just("b64_json"),
        "output_format": st.just("png"),
        "quality": st.sampled_from(["standard", "hd"]),
    },
)
# Near misses of every field, and anything JSON can hold in its place.
wrong_values = {
    "model": st.sampled_from(["dall-e-3", "", "SD3.5-TINY", NAME + " "]),
    "n": st.integers(-1, 3) | st.floats(),
    "size": st.sampled_from(["72x64", "0x0", "64x64x64", "１２８x64", "64²x64", "-64x64", "64X64", "9" * 5000 + "x64"])
    | st.from_regex(r"-?\d{1,6}[xX]\d{1,6}", fullmatch=True),
    "num_inference_steps": st.integers(-1, 3) | st.floats(),
    "guidance_scale": st.floats() | st.integers(-5, 50),
    "seed": st.integers(-2, 2**64),
    "response_format": st.sampled_from(["url", "json"]),
    "output_format": st.sampled_from(["webp", "jpeg"]),
}


@st.composite
def requests(draw: st.DrawFn) -> dict:
    body = draw(valid_requests)
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(FIELDS) | st.text(max_size=10))
        body[field] = draw(st.one_of(wrong_values.get(field, awkward_text), json_values))
    return body


BOUNDED = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_answer(response, errors: ErrorLog) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code == 200:
        assert body["data"] and all(item["b64_json"] for item in body["data"])
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert errors.records == [], [record.getMessage() for record in errors.records]


@BOUNDED
@given(body=requests())
def test_no_request_gets_a_500(client: TestClient, errors: ErrorLog, body: dict) -> None:
    # ensure_ascii: lone surrogates travel as \ud800 escapes, as a hostile client sends them.
    check_answer(post_raw(client, json.dumps(body, ensure_ascii=True).encode()), errors)


@settings(BOUNDED, max_examples=60)
@given(raw=st.one_of(st.binary(max_size=200), json_values.map(lambda value: json.dumps(value).encode())))
def test_no_body_gets_a_500(client: TestClient, errors: ErrorLog, raw: bytes) -> None:
    check_answer(post_raw(client, raw), errors)
