"""``POST /v1/images/edits`` in-process: img2img on the tiny pipeline, shared weights, and every bad upload."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sd35_provision.service.api import ModelLimits
from sd35_provision.service.app import create_app
from sd35_provision.service.config import Limits
from sd35_provision.service.edits import MAX_INPUT_PIXELS, MAX_UPLOAD_BYTES, fitted_size

from .support import make_config, noise_png
from .test_app import wait_ready

FORM = {"prompt": "a red cat", "num_inference_steps": "2", "seed": "3", "strength": "0.5"}


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    app = create_app(make_config(tiny_model_dir))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


def edit(client: TestClient, image: bytes, filename: str = "in.png", content_type: str = "image/png", **fields: str):
    return client.post("/v1/images/edits", files={"image": (filename, image, content_type)}, data={**FORM, **fields})


def decode(item: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, with almost no pixel data: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_edit_returns_pngs_of_the_asked_size_and_follows_the_seed(client: TestClient) -> None:
    source = noise_png(96, 64, seed=1)
    response = edit(client, source, n="2", size="64x64")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == "64x64" and [item["seed"] for item in body["data"]] == [3, 4]
    images = [decode(item) for item in body["data"]]
    assert [(im.format, im.size) for im in images] == [("PNG", (64, 64))] * 2
    assert images[0].tobytes() != images[1].tobytes()  # one seed each
    again = edit(client, source, n="2", size="64x64").json()
    assert [item["b64_json"] for item in again["data"]] == [item["b64_json"] for item in body["data"]]
    # The source image matters: another picture, same seed, gives another result.
    other = edit(client, noise_png(96, 64, seed=2), n="2", size="64x64").json()
    assert other["data"][0]["b64_json"] != body["data"][0]["b64_json"]


def test_edit_without_size_keeps_the_image_size_within_the_limits(client: TestClient) -> None:
    assert edit(client, noise_png(96, 64)).json()["size"] == "96x64"
    # 300x200 is above the tiny model's 128 px side: scaled down, rounded to multiples of 16.
    assert edit(client, noise_png(300, 200)).json()["size"] == "128x80"


def test_edits_run_on_the_loaded_weights_not_a_copy(client: TestClient) -> None:
    assert edit(client, noise_png(64, 64)).status_code == 200
    app = client.app
    pipe = app.state.service.loaded.engine.pipe
    (editor,) = app.state.image_editors.values()
    img2img = editor.pipe
    assert type(img2img).__name__ == "StableDiffusion3Img2ImgPipeline"
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        original, shared = getattr(pipe, name), getattr(img2img, name)
        if original is None:
            continue
        assert shared is original, name
        assert [p.data_ptr() for p in shared.parameters()] == [p.data_ptr() for p in original.parameters()], name

    def storage_bytes(*pipes) -> int:
        seen: dict[int, int] = {}
        for p in pipes:
            for module in p.components.values():
                for tensor in getattr(module, "parameters", list)():
                    seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return sum(seen.values())

    # The parameter storage of all three pipelines together is that of the one loaded.
    assert storage_bytes(pipe, img2img, editor.inpaint) == storage_bytes(pipe) > 0


def test_edit_runs_the_same_openai_shape_as_generations(client: TestClient) -> None:
    response = edit(
        client,
        noise_png(64, 64),
        response_format="b64_json",
        model="sd3.5",
        output_format="png",
        negative_prompt="blurry",
        guidance_scale="2.5",
    )
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"created", "data", "size", "output_format"}


def test_edit_names_only_the_served_model(client: TestClient) -> None:
    response = edit(client, noise_png(64, 64), model="dall-e-2")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("image", "fields", "status", "param", "text"),
    [
        (b"this is not an image", {}, 400, "image", "not a PNG, JPEG, WEBP image"),
        (encoded(Image.new("RGB", (64, 64)), "GIF"), {}, 400, "image", "not a PNG, JPEG, WEBP image"),
        (encoded(Image.new("CMYK", (64, 64)), "JPEG"), {}, 400, "image", "mode CMYK is not accepted"),
        (encoded(Image.new("I;16", (64, 64)), "PNG"), {}, 400, "image", "mode I;16 is not accepted"),
        (noise_png(64, 64)[:300], {}, 400, "image", "the PNG data is damaged"),
        (
            png_header_only(5000, 5000),
            {},
            413,
            "image",
            f"5000x5000 is 25000000 pixels, the limit is {MAX_INPUT_PIXELS}",
        ),
        (png_header_only(20000, 20000), {}, 413, "image", f"more pixels than the limit of {MAX_INPUT_PIXELS}"),
        (b"", {}, 400, "image", "the file is empty"),
        (noise_png(64, 64), {"strength": "0"}, 400, "strength", "outside the allowed range (0, 1]"),
        (noise_png(64, 64), {"strength": "1.5"}, 400, "strength", "outside the allowed range (0, 1]"),
        (noise_png(64, 64), {"strength": "lots"}, 400, "strength", "must be a number"),
        (noise_png(64, 64), {"strength": "1e-20"}, 400, "strength", "1e-20 of 2 steps leaves no step to run"),
        (noise_png(64, 64), {"n": "two"}, 400, "n", "must be an integer"),
        (noise_png(64, 64), {"n": "50"}, 400, "n", "n: 50 is outside"),
        (noise_png(64, 64), {"size": "72x64"}, 400, "size", "not a multiple of 16"),
        (noise_png(64, 64), {"prompt": ""}, 400, "prompt", "prompt: must not be empty"),
        (noise_png(64, 64), {"response_format": "url"}, 400, "response_format", "does not host files"),
        (noise_png(64, 64), {"steps": "2"}, 400, "steps", "unknown field"),
    ],
    ids=[
        "not-an-image",
        "gif",
        "cmyk",
        "16-bit",
        "truncated",
        "too-many-pixels",
        "decompression-bomb",
        "empty",
        "strength-0",
        "strength-1.5",
        "strength-text",
        "no-step-left",
        "n-text",
        "n-too-many",
        "size",
        "prompt",
        "url",
        "unknown-field",
    ],
)
def test_bad_edits_are_refused_in_the_openai_error_shape(
    client: TestClient, image: bytes, fields: dict[str, str], status: int, param: str, text: str
) -> None:
    response = edit(client, image, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert text in error["message"], error["message"]


def mask_png(width: int, height: int, transparent_left: int, mode: str = "RGBA") -> bytes:
    """OpenAI's mask shape: fully transparent pixels (here the left ``transparent_left`` columns) are edited."""
    mask = Image.new(mode, (width, height), (0, 0, 0, 255) if mode == "RGBA" else 0)
    if transparent_left and mode == "RGBA":
        mask.paste((0, 0, 0, 0), (0, 0, transparent_left, height))
    return encoded(mask, "PNG")


def with_mask(client: TestClient, image: bytes, mask: bytes, **fields: str):
    return client.post(
        "/v1/images/edits",
        data={**FORM, **fields},
        files={"image": ("in.png", image, "image/png"), "mask": ("mask.png", mask, "image/png")},
    )


def test_mask_inpaints_on_the_same_weights(client: TestClient) -> None:
    source = noise_png(96, 64, seed=4)
    whole = edit(client, source, strength="1.0").json()["data"][0]["b64_json"]
    half = with_mask(client, source, mask_png(96, 64, 48), strength="1.0")
    assert half.status_code == 200, half.text
    assert half.json()["size"] == "96x64"
    inpainted = decode(half.json()["data"][0])
    assert (inpainted.format, inpainted.size) == ("PNG", (96, 64))
    # Inpainting keeps the masked-off half's latents: not the plain edit, and the mask matters.
    assert half.json()["data"][0]["b64_json"] != whole
    other_half = with_mask(client, source, mask_png(96, 64, 16), strength="1.0").json()["data"][0]["b64_json"]
    assert other_half != half.json()["data"][0]["b64_json"]
    # Scaled with the image when a size is asked for.
    assert with_mask(client, source, mask_png(96, 64, 48), size="64x64").json()["size"] == "64x64"

    (editor,) = client.app.state.image_editors.values()
    pipe = client.app.state.service.loaded.engine.pipe
    assert type(editor.inpaint).__name__ == "StableDiffusion3InpaintPipeline"
    assert editor.inpaint.transformer is pipe.transformer and editor.inpaint.vae is pipe.vae
    assert editor.inpaint.text_encoder_3 is pipe.text_encoder_3


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        (mask_png(96, 64, 0, mode="L"), "mask: a L PNG without an alpha channel"),
        (mask_png(64, 64, 10), "mask: 64x64, the image is 96x64; they must be the same size"),
        (encoded(Image.new("RGB", (96, 64)), "JPEG"), "mask: not a PNG image"),
        (png_header_only(20000, 20000), f"mask: more pixels than the limit of {MAX_INPUT_PIXELS}"),
    ],
    ids=["no-alpha", "other-size", "jpeg", "bomb"],
)
def test_bad_masks_are_refused(client: TestClient, mask: bytes, text: str) -> None:
    response = with_mask(client, noise_png(96, 64), mask)
    assert response.status_code in (400, 413)
    error = response.json()["error"]
    assert error["param"] == "mask" and text in error["message"], error


def test_missing_image_wrong_body_and_oversized_upload(client: TestClient) -> None:
    missing = client.post("/v1/images/edits", files={"prompt": (None, "a cat")})
    assert missing.status_code == 400 and "image: is required" in missing.json()["error"]["message"]
    two = client.post(
        "/v1/images/edits",
        data=FORM,
        files=[
            ("image[]", ("a.png", noise_png(64, 64), "image/png")),
            ("image[]", ("b.png", noise_png(64, 64), "image/png")),
        ],
    )
    assert two.status_code == 400 and "2 images sent" in two.json()["error"]["message"]
    as_json = client.post("/v1/images/edits", json={"prompt": "a cat"})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["error"]["message"]
    huge = edit(client, b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert huge.status_code == 413 and f"larger than {MAX_UPLOAD_BYTES} bytes" in huge.json()["error"]["message"]
    # and it still edits
    assert edit(client, noise_png(64, 64)).status_code == 200


def test_an_rgba_image_is_flattened_on_white() -> None:
    from sd35_provision.service.edits import FormPart, read_image

    transparent = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    image = read_image(FormPart("image", encoded(transparent, "PNG"), "t.png", "image/png"))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1024, 1024), (1024, 1024)), ((4000, 3000), (1760, 1328)), ((1000, 750), (992, 736)), ((30, 30), (64, 64))],
)
def test_fitted_size_scales_into_the_limits(size: tuple[int, int], expected: tuple[int, int]) -> None:
    limits = Limits(max_side=2048, max_pixels=1536 * 1536)
    assert fitted_size(*size, limits, ModelLimits(1024, 1024, 16, None)) == expected


def test_openapi_documents_the_multipart_edit(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["image", "prompt"] and body["properties"]["image"]["format"] == "binary"


def test_an_engine_that_cannot_edit_says_so(tiny_model_dir: Path) -> None:
    from .support import FakeEngine

    engine = FakeEngine()  # generates, but has neither a pipeline nor an edit method
    with TestClient(create_app(make_config(tiny_model_dir), load_engine=engine.loader())) as fake:
        wait_ready(fake)
        response = edit(fake, noise_png(64, 64), size="64x64")
        assert response.status_code == 501 and "cannot edit images" in response.json()["error"]["message"]
        assert fake.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"}).status_code == 200


def test_edits_are_warmed_up_at_start_and_the_first_edit_reuses_that_editor(client: TestClient, caplog) -> None:
    """The start-up draws one img2img and one inpainting edit (their first use: VAE encoder, mask
    handling), and the editor it drew with is the one every edit request runs on."""
    app = client.app
    engine = app.state.service.loaded.engine  # type: ignore[attr-defined]
    assert engine.editor is not None
    assert float(app.state.service.loaded.description["warmup_s"]) > 0  # type: ignore[attr-defined]
    response = edit(client, noise_png(64, 64), size="64x64")
    assert response.status_code == 200, response.text
    assert app.state.image_editors[id(engine)] is engine.editor  # type: ignore[attr-defined]


def test_warm_up_edits_runs_each_edit_kind_per_size() -> None:
    from sd35_provision.service.edits import warm_up_edits

    seen: list[tuple[str, tuple[int, int], int, float]] = []

    class Recorder:
        def edit(self, job) -> list[bytes]:
            g = job.generation
            seen.append(
                ("inpaint" if job.mask is not None else "img2img", job.image.size, g.num_inference_steps, job.strength)
            )
            assert (g.width, g.height) == job.image.size
            if job.mask is not None:
                assert job.mask.size == job.image.size and job.mask.getextrema() == (0, 255)
            return []

    assert warm_up_edits(Recorder(), [(64, 64), (128, 96)], 2, 3.5) >= 0  # type: ignore[arg-type]
    assert seen == [
        ("img2img", (64, 64), 2, 1.0),
        ("inpaint", (64, 64), 2, 1.0),
        ("img2img", (128, 96), 2, 1.0),
        ("inpaint", (128, 96), 2, 1.0),
    ]


def test_a_full_queue_answers_edits_with_429_and_retry_after(tiny_model_dir: Path) -> None:
    """The same answer as generations' (service/responses.py): 429, Retry-After, counted as queue_full."""
    import threading
    import time

    from .support import FakeEngine

    class EditingEngine(FakeEngine):
        def edit(self, job) -> list[bytes]:
            return self.generate(job.generation)

    gate = threading.Event()
    engine = EditingEngine(gate=gate)
    app = create_app(make_config(tiny_model_dir, SD35_QUEUE_SIZE="1"), load_engine=engine.loader())
    results: dict[str, int] = {}
    with TestClient(app) as fake:
        wait_ready(fake)

        def post(name: str) -> None:
            results[name] = edit(fake, noise_png(64, 64), size="64x64").status_code

        running = threading.Thread(target=post, args=("running",))
        running.start()
        assert engine.started.wait(10)
        waiting = threading.Thread(target=post, args=("waiting",))
        waiting.start()
        deadline = time.monotonic() + 10
        while app.state.worker.waiting < 1:
            assert time.monotonic() < deadline, "second edit never queued"
            time.sleep(0.01)
        rejected = edit(fake, noise_png(64, 64), size="64x64")
        assert rejected.status_code == 429
        assert int(rejected.headers["Retry-After"]) >= 1
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        assert "busy (1 requests waiting)" in rejected.json()["error"]["message"]
        gate.set()
        running.join(10)
        waiting.join(10)
        assert results == {"running": 200, "waiting": 200}
        assert 'sd35_errors_total{kind="queue_full"} 1.0' in fake.get("/metrics").text


def test_an_edit_the_gpu_has_no_memory_for_is_503_like_a_generation(tiny_model_dir: Path) -> None:
    from .support import FakeEngine

    class EditingEngine(FakeEngine):
        def edit(self, job) -> list[bytes]:
            return self.generate(job.generation)

    engine = EditingEngine(out_of_memory_on_prompt="huge")
    with TestClient(create_app(make_config(tiny_model_dir), load_engine=engine.loader())) as fake:
        wait_ready(fake)
        edited = edit(fake, noise_png(64, 64), size="64x64", prompt="huge")
        generated = fake.post("/v1/images/generations", json={"prompt": "huge", "size": "64x64"})
        for response in (edited, generated):
            assert response.status_code == 503 and "Retry-After" in response.headers
            assert response.json()["error"]["type"] == "server_error"
            assert "out of GPU memory" in response.json()["error"]["message"]
        assert 'sd35_errors_total{kind="capacity"} 2.0' in fake.get("/metrics").text
