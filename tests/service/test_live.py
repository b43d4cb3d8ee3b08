"""The service as it runs on a host: the shipped package under uvicorn, on a real loopback port."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from .support import TEST_KEY, RunningService, base_env, free_port, subprocess_env, write_key_file


def run_smoke(shipped_dir: Path, url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sd35_provision.service.smoke",
            "--url",
            url,
            "--size",
            "64x64",
            "--steps",
            "2",
            "--timeout",
            "60",
            *args,
        ],
        cwd=shipped_dir,
        env=subprocess_env(env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return result.returncode, json.loads(lines[0])


def test_openai_client_generates(live_service: RunningService) -> None:
    client = openai.OpenAI(base_url=f"{live_service.url}/v1", api_key="unused-on-loopback", max_retries=0)
    result = client.images.generate(
        model="sd3.5-large",
        prompt="a lighthouse at dusk",
        n=2,
        size="128x64",
        response_format="b64_json",
        extra_body={"num_inference_steps": 2, "guidance_scale": 2.0, "seed": 11, "negative_prompt": "blurry"},
    )
    assert len(result.data) == 2
    for item in result.data:
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert (image.format, image.size) == ("PNG", (128, 64))


def test_openai_client_sees_clear_errors(live_service: RunningService) -> None:
    client = openai.OpenAI(base_url=f"{live_service.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="does not host files"):
        client.images.generate(prompt="a cat", size="64x64", response_format="url")
    with pytest.raises(openai.BadRequestError, match="not a multiple of 16"):
        client.images.generate(prompt="a cat", size="72x64")  # type: ignore[arg-type]
    # and it still serves
    ok = client.images.generate(prompt="a cat", size="64x64", extra_body={"num_inference_steps": 1})
    assert ok.data[0].b64_json


def test_openai_client_lists_models_and_is_told_an_unknown_one_is_not_found(live_service: RunningService) -> None:
    client = openai.OpenAI(base_url=f"{live_service.url}/v1", api_key="unused", max_retries=0)
    assert [model.id for model in client.models.list()] == ["sd3.5", "sd3.5-large"]
    assert client.models.retrieve("sd3.5-large").id == "sd3.5-large"
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="dall-e-3", prompt="a cat", size="64x64")  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found" and "'dall-e-3' does not exist" in caught.value.message
    # the default name and no name at all both work
    for model in ("sd3.5", None):
        extra = {"model": model} if model else {}
        assert (
            client.images.generate(prompt="a cat", size="64x64", extra_body={"num_inference_steps": 1}, **extra)
            .data[0]
            .b64_json
        )  # type: ignore[arg-type]


def test_openai_client_edits(live_service: RunningService, tmp_path: Path) -> None:
    from .support import noise_png

    source = tmp_path / "source.png"
    source.write_bytes(noise_png(96, 64, seed=3))
    client = openai.OpenAI(base_url=f"{live_service.url}/v1", api_key="unused-on-loopback", max_retries=0)
    with source.open("rb") as image:
        result = client.images.edit(
            image=image,
            prompt="the same scene at night",
            n=2,
            size="64x64",
            response_format="b64_json",
            extra_body={"strength": 0.5, "num_inference_steps": 2, "guidance_scale": 2.0, "seed": 11},
        )
    assert [item.model_extra["seed"] for item in result.data] == [11, 12]
    for item in result.data:
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert (image.format, image.size) == ("PNG", (64, 64))
    # Without size, the picture's own size; a text file is refused in the OpenAI error shape.
    kept = client.images.edit(
        image=("in.png", source.read_bytes(), "image/png"),
        prompt="x",
        extra_body={"num_inference_steps": 2, "strength": 0.5},
    )
    assert Image.open(io.BytesIO(base64.b64decode(kept.data[0].b64_json))).size == (96, 64)
    with pytest.raises(openai.BadRequestError, match="not a PNG, JPEG, WEBP image"):
        client.images.edit(image=("notes.png", b"just text", "image/png"), prompt="x")
    # A mask in OpenAI's shape (transparent where to edit) inpaints; one without alpha is refused.
    mask = Image.new("RGBA", (96, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 48, 64))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    inpainted = client.images.edit(
        image=("in.png", source.read_bytes()),
        mask=("mask.png", buffer.getvalue()),
        prompt="a moon",
        extra_body={"num_inference_steps": 2, "strength": 1.0},
    )
    assert Image.open(io.BytesIO(base64.b64decode(inpainted.data[0].b64_json))).size == (96, 64)
    with pytest.raises(openai.BadRequestError, match="without an alpha channel"):
        client.images.edit(image=("in.png", source.read_bytes()), mask=("mask.png", source.read_bytes()), prompt="x")


def test_smoke_client_passes(live_service: RunningService, shipped_dir: Path) -> None:
    code, result = run_smoke(shipped_dir, live_service.url)
    assert code == 0, result
    assert result["ok"] is True and result["width"] == 64 and result["height"] == 64
    assert result["latency_s"] > 0 and result["reason"] == "ok"


def test_smoke_client_fails_on_wrong_size_of_model(live_service: RunningService, shipped_dir: Path) -> None:
    code, result = run_smoke(shipped_dir, live_service.url, "--size", "256x256")
    assert code == 1 and result["ok"] is False
    assert "generation answered 400" in result["reason"]


def test_metrics_after_live_requests(live_service: RunningService) -> None:
    httpx.post(
        f"{live_service.url}/v1/images/generations",
        json={"prompt": "x", "size": "64x64", "num_inference_steps": 1},
        timeout=60,
    )
    text = httpx.get(f"{live_service.url}/metrics").text
    assert 'sd35_http_requests_total{method="POST",route="/v1/images/generations",status="200"}' in text
    assert "sd35_images_generated_total" in text
    assert "process_resident_memory_bytes" in text


def test_start_up_log_says_precision_and_why(live_service: RunningService) -> None:
    log = live_service.log()
    lines = [line for line in log.splitlines() if "precision: " in line]
    assert len(lines) == 1 and "fp32" in lines[0] and "CPU" in lines[0], log


def test_tells_systemd_when_ready(live_service: RunningService) -> None:
    sock = live_service.notify_socket
    assert sock is not None
    sock.settimeout(5)
    messages = [sock.recv(4096).decode(), sock.recv(4096).decode()]
    assert messages == ["STATUS=loading model", "READY=1\nSTATUS=ready"]


def test_model_that_does_not_load_exits_1(shipped_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_model_dir / "model_index.json").read_text())
    env = subprocess_env(base_env(broken, SD35_PORT=str(free_port())))
    result = subprocess.run(
        [sys.executable, "-m", "sd35_provision.service"],
        cwd=shipped_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "model load failed" in result.stderr


def test_precision_this_machine_cannot_run_exits_2(shipped_dir: Path, tiny_model_dir: Path) -> None:
    env = subprocess_env(base_env(tiny_model_dir, SD35_PRECISION="fp8", SD35_PORT=str(free_port())))
    result = subprocess.run(
        [sys.executable, "-m", "sd35_provision.service"],
        cwd=shipped_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "SD35_PRECISION=fp8, SD35_COMPILE=auto: fp8 needs a CUDA GPU" in result.stderr


def test_non_loopback_bind_without_key_refuses_to_start(shipped_dir: Path, tiny_model_dir: Path) -> None:
    env = subprocess_env(base_env(tiny_model_dir, SD35_BIND="0.0.0.0", SD35_PORT="1"))
    result = subprocess.run(
        [sys.executable, "-m", "sd35_provision.service"],
        cwd=shipped_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SD35_BIND: 0.0.0.0 is reachable from other machines; refusing to start" in result.stderr


def test_auth_required_except_healthz(auth_service: RunningService) -> None:
    url = auth_service.url
    good = {"Authorization": f"Bearer {TEST_KEY}"}
    assert httpx.get(f"{url}/healthz").status_code == 200
    body = {"prompt": "a cat", "size": "64x64", "num_inference_steps": 1}
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789ab"}, {"Authorization": f"Basic {TEST_KEY}"}):
        assert httpx.get(f"{url}/readyz", headers=headers).status_code == 401
        assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401
        denied = httpx.post(f"{url}/v1/images/generations", json=body, headers=headers, timeout=60)
        assert denied.status_code == 401
        assert "API key" in denied.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/images/generations", json=body, headers=good, timeout=60).status_code == 200

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TEST_KEY, max_retries=0)
    assert client.images.generate(prompt="a cat", size="64x64", extra_body={"num_inference_steps": 1}).data
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="not-the-key-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt="a cat", size="64x64")


def test_smoke_client_with_key_file(auth_service: RunningService, shipped_dir: Path, tmp_path: Path) -> None:
    code, result = run_smoke(shipped_dir, auth_service.url, "--api-key-file", str(auth_service.key_file))
    assert code == 0, result
    code, result = run_smoke(shipped_dir, auth_service.url, env={"SD35_API_KEY_FILE": str(auth_service.key_file)})
    assert code == 0, result
    wrong = write_key_file(tmp_path, key="wrong-key-0123456789abc")
    code, result = run_smoke(shipped_dir, auth_service.url, "--api-key-file", str(wrong))
    assert code == 1 and "401" in result["reason"]


def test_key_never_logged(auth_service: RunningService) -> None:
    httpx.get(f"{auth_service.url}/readyz", headers={"Authorization": f"Bearer {TEST_KEY}"})
    assert TEST_KEY not in auth_service.log()
    assert "auth on" in auth_service.log()


def test_shipped_package_imports_nothing_else_of_the_project(shipped_dir: Path) -> None:
    code = (
        "import sys, sd35_provision.service.app, sd35_provision.service.pipeline, sd35_provision.service.smoke, "
        "sd35_provision.service.unit\n"
        "import sd35_provision\n"
        "print(sd35_provision.__file__)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('pyinfra', 'click', 'yaml', 'jsonschema')"
        " or (m.startswith('sd35_provision.') and not m.startswith('sd35_provision.service')))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=shipped_dir,
        env=subprocess_env({}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    location, foreign = (result.stdout.splitlines() + [""])[:2]
    assert location.startswith(str(shipped_dir))
    assert foreign == ""


def test_quiet_start_and_health_polls_leave_no_access_lines(live_service: RunningService) -> None:
    # start_service polled /readyz until ready; poll the others too, then make one real request.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(live_service.url + path, timeout=10).status_code == 200
    body = {"prompt": "quiet", "size": "64x64", "num_inference_steps": 1, "seed": 5}
    assert httpx.post(live_service.url + "/v1/images/generations", json=body, timeout=60).status_code == 200
    log = live_service.log()
    assert '"POST /v1/images/generations HTTP/1.1" 200' in log  # real requests are still logged
    for noise in ("GET /readyz", "GET /healthz", "GET /metrics", "SyntaxWarning", "Unable to import `torchao`"):
        assert noise not in log, noise


def test_readyz_and_metrics_report_start_up_time(live_service: RunningService) -> None:
    ready = httpx.get(live_service.url + "/readyz", timeout=10).json()
    assert float(ready["ready_s"]) >= float(ready["load_s"]) + float(ready["warmup_s"]) > 0
    metrics = httpx.get(live_service.url + "/metrics", timeout=10).text
    line = next(x for x in metrics.splitlines() if x.startswith("sd35_ready_seconds "))
    assert abs(float(line.split()[1]) - float(ready["ready_s"])) < 0.1


def test_sigterm_exits_0(shipped_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """systemd stops the unit with SIGTERM: a clean stop, exit status 0 (uvicorn would re-raise the signal)."""
    from .support import start_service

    service = start_service(shipped_dir, base_env(tiny_model_dir), tmp_path / "service.log")
    service.process.terminate()
    assert service.process.wait(timeout=60) == 0, service.log()
    assert "Finished server process" in service.log()


def test_readyz_names_the_memory_plan(live_service: RunningService) -> None:
    assert httpx.get(live_service.url + "/readyz", timeout=10).json()["memory_plan"] == "resident"  # a CPU
