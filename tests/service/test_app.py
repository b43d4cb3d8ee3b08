"""The HTTP app in-process: the real tiny pipeline, and fake engines for queueing and failures."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sd35_provision.service.app import create_app

from .support import FakeEngine, make_config


def wait_ready(client: TestClient, headers: dict[str, str] | None = None, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz", headers=headers).status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("service never became ready")


def decode(item: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    app = create_app(make_config(tiny_model_dir))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


GOOD = {"prompt": "a red cat", "size": "64x64", "num_inference_steps": 2, "seed": 3}


def test_generates_pngs_of_the_asked_size(client: TestClient) -> None:
    response = client.post("/v1/images/generations", json={**GOOD, "n": 2, "size": "128x64"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int)
    images = [decode(item) for item in body["data"]]
    assert [(im.format, im.size) for im in images] == [("PNG", (128, 64))] * 2
    assert images[0].tobytes() != images[1].tobytes()


def test_same_seed_same_image(client: TestClient) -> None:
    first = client.post("/v1/images/generations", json=GOOD).json()["data"][0]["b64_json"]
    second = client.post("/v1/images/generations", json=GOOD).json()["data"][0]["b64_json"]
    other = client.post("/v1/images/generations", json={**GOOD, "seed": 4}).json()["data"][0]["b64_json"]
    assert first == second != other


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "alive"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["precision"] == "fp32"  # CPU


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({**GOOD, "size": "0x0"}, 400, "width 0 is outside"),
        ({**GOOD, "size": "10000x10000"}, 400, "width 10000 is outside"),
        ({**GOOD, "size": "72x64"}, 400, "not a multiple of 16"),
        ({**GOOD, "size": "256x256"}, 400, "outside the allowed range 64..128"),  # the tiny model's own limit
        ({**GOOD, "num_inference_steps": 1000}, 400, "num_inference_steps"),
        ({**GOOD, "n": 50}, 400, "n: 50 is outside"),
        ({**GOOD, "prompt": ""}, 400, "prompt: must not be empty"),
        ({**GOOD, "response_format": "url"}, 400, "does not host files"),
    ],
)
def test_bad_requests_get_4xx_and_service_keeps_serving(client: TestClient, body: dict, status: int, text: str) -> None:
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == status
    assert text in response.json()["error"]["message"]
    assert client.post("/v1/images/generations", json=GOOD).status_code == 200


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/images/generations", content=b"prompt=a cat", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.json()["error"]["message"]
    response = client.post(
        "/v1/images/generations", content=b"prompt=a", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 415


def test_invalid_json_is_400(client: TestClient) -> None:
    response = client.post("/v1/images/generations", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_huge_body_is_413(client: TestClient) -> None:
    response = client.post("/v1/images/generations", json={"prompt": "a" * 1_000_000})
    assert response.status_code == 413


def test_unknown_path_is_json_404(client: TestClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_metrics_count_requests(client: TestClient) -> None:
    client.post("/v1/images/generations", json=GOOD)
    client.post("/v1/images/generations", json={**GOOD, "n": 99})
    text = client.get("/metrics").text
    assert 'sd35_http_requests_total{method="POST",route="/v1/images/generations",status="200"}' in text
    assert 'sd35_http_requests_total{method="POST",route="/v1/images/generations",status="400"}' in text
    assert 'sd35_errors_total{kind="invalid"}' in text
    assert "sd35_http_request_duration_seconds_bucket" in text
    assert "sd35_generation_duration_seconds_count" in text
    assert "sd35_queue_depth 0.0" in text
    assert "sd35_model_ready 1.0" in text
    assert "sd35_model_info{" in text and 'precision="fp32"' in text


# --- fake engines: queueing, failures, start-up ---------------------------------------------------


def fake_app(tiny_model_dir: Path, engine: FakeEngine, load_gate: threading.Event | None = None, **env: str):
    return create_app(make_config(tiny_model_dir, **env), load_engine=engine.loader(load_gate))


def test_full_queue_answers_429_with_retry_after(tiny_model_dir: Path) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    app = fake_app(tiny_model_dir, engine, SD35_QUEUE_SIZE="1")
    results: dict[str, int] = {}
    with TestClient(app) as client:
        wait_ready(client)

        def post(name: str) -> None:
            results[name] = client.post("/v1/images/generations", json=GOOD).status_code

        running = threading.Thread(target=post, args=("running",))
        running.start()
        assert engine.started.wait(10)
        waiting = threading.Thread(target=post, args=("waiting",))
        waiting.start()
        deadline = time.monotonic() + 10
        while app.state.worker.waiting < 1:
            assert time.monotonic() < deadline, "second request never queued"
            time.sleep(0.01)

        rejected = client.post("/v1/images/generations", json=GOOD)
        assert rejected.status_code == 429
        assert int(rejected.headers["Retry-After"]) >= 1
        assert "busy" in rejected.json()["error"]["message"]
        assert "sd35_queue_depth 1.0" in client.get("/metrics").text
        assert client.get("/healthz").status_code == 200  # the event loop is not blocked

        gate.set()
        running.join(10)
        waiting.join(10)
        assert results == {"running": 200, "waiting": 200}
        assert 'sd35_errors_total{kind="queue_full"} 1.0' in client.get("/metrics").text


def test_engine_exception_is_a_generic_500_and_service_survives(tiny_model_dir: Path, caplog) -> None:
    engine = FakeEngine(fail_on_prompt="boom")
    with TestClient(fake_app(tiny_model_dir, engine)) as client:
        wait_ready(client)
        response = client.post("/v1/images/generations", json={**GOOD, "prompt": "boom"})
        assert response.status_code == 500
        message = response.json()["error"]["message"]
        assert message == "image generation failed; the service logged the details"
        assert "Traceback" not in response.text and "/root" not in response.text
        assert "simulated failure" in caplog.text  # logged server-side
        assert client.post("/v1/images/generations", json=GOOD).status_code == 200
        assert 'sd35_errors_total{kind="internal"} 1.0' in client.get("/metrics").text


def test_out_of_gpu_memory_is_503_with_a_hint(tiny_model_dir: Path) -> None:
    engine = FakeEngine(out_of_memory_on_prompt="huge")
    with TestClient(fake_app(tiny_model_dir, engine)) as client:
        wait_ready(client)
        response = client.post("/v1/images/generations", json={**GOOD, "prompt": "huge", "n": 4})
        assert response.status_code == 503 and "Retry-After" in response.headers
        assert "out of GPU memory for 4 image(s) of 64x64" in response.json()["error"]["message"]
        assert client.post("/v1/images/generations", json=GOOD).status_code == 200


def test_not_ready_while_loading(tiny_model_dir: Path) -> None:
    load_gate = threading.Event()
    engine = FakeEngine()
    with TestClient(fake_app(tiny_model_dir, engine, load_gate)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        busy = client.post("/v1/images/generations", json=GOOD)
        assert busy.status_code == 503 and "Retry-After" in busy.headers
        assert "sd35_model_ready 0.0" in client.get("/metrics").text
        load_gate.set()
        wait_ready(client)
        assert client.post("/v1/images/generations", json=GOOD).status_code == 200


def test_load_failure_is_reported_and_fatal(tiny_model_dir: Path) -> None:
    fatal = threading.Event()
    errors: list[BaseException] = []

    def failing_loader(set_phase):
        raise RuntimeError("no such weights")

    def on_fatal(exc: BaseException) -> None:
        errors.append(exc)
        fatal.set()

    app = create_app(make_config(tiny_model_dir), load_engine=failing_loader, on_fatal=on_fatal)
    with TestClient(app) as client:
        assert fatal.wait(10)
        assert str(errors[0]) == "no such weights"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"


def test_auth_in_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    from .support import TEST_KEY, write_key_file

    key_file = write_key_file(tmp_path)
    app = fake_app(tiny_model_dir, FakeEngine(), SD35_API_KEY_FILE=str(key_file))
    good = {"Authorization": f"Bearer {TEST_KEY}"}
    with TestClient(app) as client:
        wait_ready(client, headers=good)
        assert client.get("/healthz").status_code == 200
        for path in ("/readyz", "/metrics", "/openapi.json"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer wrong-key-0123456789"}).status_code == 401
            assert client.get(path, headers=good).status_code == 200
        denied = client.post("/v1/images/generations", json=GOOD)
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Bearer"
        assert client.post("/v1/images/generations", json=GOOD, headers={"Authorization": TEST_KEY}).status_code == 401
        assert client.post("/v1/images/generations", json=GOOD, headers=good).status_code == 200


def test_model_bytes_counts_only_pipeline_components(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from sd35_provision.service.pipeline import model_bytes

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    expected = sum(p.stat().st_size for p in tiny_model_dir.rglob("*.safetensors"))
    (copy / "sd3.5_large.safetensors").write_bytes(b"x" * 1000)  # a single-file checkpoint beside the folders
    (copy / "text_encoders").mkdir()
    (copy / "text_encoders" / "t5xxl_fp8.safetensors").write_bytes(b"x" * 1000)
    assert model_bytes(copy) == expected > 1_000_000
