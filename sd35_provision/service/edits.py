"""``POST /v1/images/edits``: image-to-image in the OpenAI multipart shape.

The request is ``multipart/form-data`` (``image``, ``prompt``, ``n``, ``size``,
``response_format``, and this service's ``strength``, ``num_inference_steps``,
``guidance_scale``, ``seed``, ``negative_prompt``). The form is parsed with
the standard library's MIME parser, because python-multipart (what FastAPI's
``Form`` needs) is not in the hosts' locked requirements.

The image is checked before it is decoded (format, size of the upload, pixel
count from the header: a decompression bomb never reaches ``load()``), and the
edit runs on SD3's img2img pipeline made from the modules the service already
loaded: the same weights, no second copy in memory. With a ``mask`` (OpenAI's:
a PNG whose fully transparent pixels mark what to change) it is SD3's
inpainting pipeline, made the same way.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import logging
import math
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .api import CapacityError, GenerationJob, ModelLimits, RequestError, parse_generation_request
from .config import Limits, ServiceConfig
from .drawing import encode_png, seeded_generators
from .responses import error_response, gpu_busy_response, not_ready_response
from .worker import QueueFull

log = logging.getLogger("sd35.service")

EDITS_PATH = "/v1/images/edits"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Pixels an uploaded image may have before it is scaled to the output size (4096x4096, 48 MiB
# decoded): checked from the header, so a small file claiming a huge image is refused undecoded.
MAX_INPUT_PIXELS = 4096 * 4096
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# Modes that convert to RGB without guessing (no CMYK profiles, no 16-bit or float data).
IMAGE_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P"})
DEFAULT_STRENGTH = 0.6
# Form fields besides the generation ones.
EDIT_ONLY_FIELDS = frozenset({"image", "image[]", "strength", "input_fidelity", "mask"})
INTEGER_FIELDS = ("n", "num_inference_steps", "seed")
NUMBER_FIELDS = ("guidance_scale", "strength")


@dataclass(frozen=True)
class EditJob:
    """One edit: the generation settings, the source image (RGB, already at the output size), how much to change it."""

    generation: GenerationJob
    image: Any  # PIL.Image.Image
    strength: float
    mask: Any = None  # PIL "L" image, white where to repaint (inpainting); None: img2img on the whole image


@dataclass(frozen=True)
class FormPart:
    name: str
    data: bytes
    filename: str | None
    content_type: str


def check_form_type(content_type: str) -> None:
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data" or "boundary=" not in content_type:
        raise RequestError(415, "the request body must be multipart/form-data (an image file and form fields)")


def parse_form(body: bytes, content_type: str) -> dict[str, list[FormPart]]:
    """The parts of a ``multipart/form-data`` body, by field name; RequestError when it is not one."""
    check_form_type(content_type)
    header = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(header + body)
    if not message.is_multipart() or not isinstance(message, EmailMessage):
        raise RequestError(400, "the multipart body could not be read (no parts found for its boundary)")
    fields: dict[str, list[FormPart]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise RequestError(
                400, "a multipart part has no form field name (Content-Disposition: form-data; name=...)"
            )
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        fields.setdefault(name, []).append(FormPart(name, data, part.get_filename(), part.get_content_type()))
    return fields


def _text_value(part: FormPart) -> str:
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, f"{part.name}: is not UTF-8 text", part.name) from None


def _typed(name: str, text: str) -> Any:
    """A form value (always text) as the JSON type the generation parser checks."""
    if name in INTEGER_FIELDS:
        try:
            return int(text.strip())
        except ValueError:
            raise RequestError(400, f"{name}: must be an integer, got {text!r}", name) from None
    if name in NUMBER_FIELDS:
        try:
            number = float(text.strip())
        except ValueError:
            raise RequestError(400, f"{name}: must be a number, got {text!r}", name) from None
        if not math.isfinite(number):
            raise RequestError(400, f"{name}: must be a finite number, got {text!r}", name)
        return number
    return text


def _open_upload(part: FormPart, formats: tuple[str, ...], max_pixels: int) -> Any:
    """Decode one uploaded picture after checking, from its header only, that it is one we take."""
    from PIL import Image, UnidentifiedImageError

    field = part.name.removesuffix("[]")
    if not part.data:
        raise RequestError(400, f"{field}: the file is empty", field)
    try:
        with warnings.catch_warnings():
            # PIL warns, then raises, past its own bomb limit; ours (checked below) is lower.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(part.data), formats=formats)
    except UnidentifiedImageError:
        raise RequestError(400, f"{field}: not a {', '.join(formats)} image", field, "invalid_image_format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(
            413, f"{field}: more pixels than the limit of {max_pixels}", field, "image_too_large"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            413,
            f"{field}: {width}x{height} is {width * height} pixels, the limit is {max_pixels}",
            field,
            "image_too_large",
        )
    if getattr(image, "n_frames", 1) > 1:
        raise RequestError(400, f"{field}: animated images are not accepted; send one frame", field)
    if image.mode not in IMAGE_MODES:
        raise RequestError(
            400,
            f"{field}: mode {image.mode} is not accepted; send {', '.join(sorted(IMAGE_MODES))} (8-bit)",
            field,
            "invalid_image_mode",
        )
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise RequestError(400, f"{field}: the {image.format} data is damaged ({exc})", field) from None
    return image


def read_image(part: FormPart, max_pixels: int = MAX_INPUT_PIXELS) -> Any:
    """The uploaded image decoded as RGB; RequestError (400/413) for anything else."""
    from PIL import Image

    image = _open_upload(part, IMAGE_FORMATS, max_pixels)
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent areas become white, as a viewer shows them on a page.
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def read_mask(part: FormPart, image_size: tuple[int, int], max_pixels: int = MAX_INPUT_PIXELS) -> Any:
    """OpenAI's mask (a PNG whose fully transparent pixels mark what to repaint) as the inpainting
    pipeline's: an L image, white where it repaints."""
    mask = _open_upload(part, ("PNG",), max_pixels)
    if mask.size != image_size:
        raise RequestError(
            400,
            f"mask: {mask.size[0]}x{mask.size[1]}, the image is {image_size[0]}x{image_size[1]}; "
            "they must be the same size",
            "mask",
        )
    if mask.mode not in ("RGBA", "LA") and not (mask.mode == "P" and "transparency" in mask.info):
        raise RequestError(
            400,
            f"mask: a {mask.mode} PNG without an alpha channel; its fully transparent pixels mark what to edit",
            "mask",
            "invalid_mask",
        )
    return mask.convert("RGBA").getchannel("A").point(lambda alpha: 255 if alpha == 0 else 0)


def fitted_size(width: int, height: int, limits: Limits, model: ModelLimits) -> tuple[int, int]:
    """The image's own size scaled into the service's limits and rounded down to the model's multiple."""
    max_side = limits.max_side if model.max_side is None else min(limits.max_side, model.max_side)
    scale = min(1.0, max_side / max(width, height), math.sqrt(limits.max_pixels / (width * height)))
    multiple = model.size_multiple

    def side(value: int) -> int:
        return max(limits.min_side, int(value * scale) // multiple * multiple)

    return side(width), side(height)


def parse_edit_request(
    form: dict[str, list[FormPart]],
    limits: Limits,
    model: ModelLimits,
    default_steps: int,
    default_guidance: float,
    model_names: Collection[str] | None = None,
) -> EditJob:
    """Validate one ``POST /v1/images/edits`` form; raises RequestError (``model_names`` as for generations)."""
    images = form.get("image", []) + form.get("image[]", [])
    if not images:
        raise RequestError(400, "image: is required (the picture to edit, as a file part)", "image")
    if len(images) > 1:
        raise RequestError(400, f"image: {len(images)} images sent, this service edits one at a time", "image")

    data: dict[str, Any] = {}
    for name, parts in form.items():
        if name in EDIT_ONLY_FIELDS and name != "strength":
            continue
        if len(parts) > 1:
            raise RequestError(400, f"{name}: given {len(parts)} times", name)
        data[name] = _typed(name, _text_value(parts[0]))
    strength = data.pop("strength", DEFAULT_STRENGTH)
    if not 0.0 < strength <= 1.0:
        raise RequestError(400, f"strength: {strength} is outside the allowed range (0, 1]", "strength")

    image = read_image(images[0])
    masks = form.get("mask", [])
    if len(masks) > 1:
        raise RequestError(400, f"mask: given {len(masks)} times", "mask")
    mask = read_mask(masks[0], image.size) if masks else None
    if data.get("size") in (None, "auto"):
        width, height = fitted_size(image.size[0], image.size[1], limits, model)
        data["size"] = f"{width}x{height}"
    job = parse_generation_request(data, limits, model, default_steps, default_guidance, model_names)
    # img2img skips the first (1 - strength) of the schedule (diffusers' get_timesteps, the same
    # arithmetic); at least one step must remain.
    steps = job.num_inference_steps
    steps_run = steps - int(max(steps - min(steps * strength, steps), 0))
    if steps_run < 1:
        raise RequestError(
            400,
            f"strength: {strength} of {job.num_inference_steps} steps leaves no step to run; "
            "raise strength or num_inference_steps",
            "strength",
        )
    if image.size != (job.width, job.height):
        from PIL import Image

        image = image.resize((job.width, job.height), Image.Resampling.LANCZOS)
        if mask is not None:
            mask = mask.resize((job.width, job.height), Image.Resampling.NEAREST)
    return EditJob(generation=job, image=image, strength=strength, mask=mask)


class ImageEditor:
    """SD3 img2img and inpainting over an already loaded text-to-image pipeline's modules (shared, not copied)."""

    def __init__(self, pipe: Any):
        from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline

        self.pipe = self._sharing(StableDiffusion3Img2ImgPipeline, pipe)
        self.inpaint = self._sharing(StableDiffusion3InpaintPipeline, pipe)

    @staticmethod
    def _sharing(pipeline_class: Any, pipe: Any) -> Any:
        # Constructing from the loaded modules allocates no weights (a test checks the pointers).
        accepted = inspect.signature(pipeline_class.__init__).parameters
        made = pipeline_class(**{name: module for name, module in pipe.components.items() if name in accepted})
        made.set_progress_bar_config(disable=True)
        return made

    def edit(self, job: EditJob) -> list[bytes]:
        import torch

        g = job.generation
        # One copy per image: with one generator per image, diffusers encodes image[i] for each.
        inputs: dict[str, Any] = {"image": [job.image] * g.n}
        if job.mask is not None:
            inputs["mask_image"] = [job.mask] * g.n
        try:
            result = (self.pipe if job.mask is None else self.inpaint)(
                prompt=g.prompt,
                negative_prompt=g.negative_prompt,
                strength=job.strength,
                num_inference_steps=g.num_inference_steps,
                guidance_scale=g.guidance_scale,
                height=g.height,
                width=g.width,
                num_images_per_prompt=g.n,
                generator=seeded_generators(g.seed, g.n),
                **inputs,
            )
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.warning("out of GPU memory editing: %dx%d, n=%d", g.width, g.height, g.n)
            raise CapacityError(
                f"out of GPU memory for {g.n} edit(s) of {g.width}x{g.height}; retry later or ask for less"
            ) from None
        return [encode_png(image) for image in result.images]


def editor_for(engine: Any) -> Any:
    """What runs an edit for ``engine``: its own ``edit`` (test engines), the editor its warm-up made and
    drew with (``engine.editor``), else img2img on its pipeline."""
    if callable(getattr(engine, "edit", None)):
        return engine
    if getattr(engine, "editor", None) is not None:
        return engine.editor
    pipe = getattr(engine, "pipe", None)
    if pipe is None:
        return None
    return ImageEditor(pipe)


def warm_up_edits(editor: ImageEditor, sizes: list[tuple[int, int]], steps: int, guidance_scale: float) -> float:
    """One img2img and one inpainting edit per warm-up size, so the first edit request pays no first-use cost.

    The transformer's shapes are the generations' (their warm-up compiled every
    batch); what only edits use is the VAE encoder, the mask handling and the
    two pipelines' own calls: this runs each once. Returns seconds spent.
    """
    from PIL import Image

    begin = time.monotonic()
    for width, height in sizes:
        image = Image.new("RGB", (width, height), (128, 128, 128))
        mask = Image.new("L", (width, height), 0)
        mask.paste(255, (0, 0, width // 2, height))
        for kind, with_mask in (("img2img", None), ("inpaint", mask)):
            job = GenerationJob(
                prompt="warm-up: a lighthouse",
                negative_prompt=None,
                n=1,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                seed=0,
            )
            started = time.monotonic()
            editor.edit(EditJob(generation=job, image=image, strength=1.0, mask=with_mask))
            log.info(
                "warm-up edit (%s) %dx%d, %d steps: %.1f s", kind, width, height, steps, time.monotonic() - started
            )
    return time.monotonic() - begin


def add_edits_route(app: FastAPI, config: ServiceConfig) -> None:
    """Register ``POST /v1/images/edits`` on the service app (uses its state, worker and metrics)."""
    state, worker, metrics = app.state.service, app.state.worker, app.state.metrics
    editors: dict[int, Any] = {}  # by id(engine): built once, on the GPU thread, on the first edit
    app.state.image_editors = editors

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            raise RequestError(413, f"the request body is larger than {MAX_UPLOAD_BYTES} bytes", "image")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise RequestError(413, f"the request body is larger than {MAX_UPLOAD_BYTES} bytes", "image")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post(
        EDITS_PATH,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image", "prompt"],
                            "properties": {
                                "image": {"type": "string", "format": "binary"},
                                "prompt": {"type": "string"},
                                "strength": {"type": "number"},
                            },
                        }
                    }
                },
            }
        },
    )
    async def edits(request: Request) -> JSONResponse:
        try:
            return await _edit(request)
        except RequestError as exc:
            metrics.errors.labels("invalid").inc()
            return JSONResponse(exc.body(), status_code=exc.status)

    async def _edit(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        check_form_type(content_type)
        body = await read_body(request)
        loaded = state.loaded
        if loaded is None:
            return not_ready_response(state.phase, metrics)
        engine = loaded.engine

        def parse() -> EditJob:
            form = parse_form(body, content_type)
            return parse_edit_request(
                form, config.limits, engine.limits, config.default_steps, config.default_guidance, config.model_names
            )

        # Parsing and decoding a large upload takes a while: off the event loop, so /healthz stays quick.
        job = await asyncio.to_thread(parse)

        def draw() -> tuple[list[str], float]:
            editor = editors.get(id(engine))
            if editor is None:
                editor = editors.setdefault(id(engine), editor_for(engine))
            if editor is None:
                raise RequestError(501, "this service's engine cannot edit images")
            begin = time.monotonic()
            pngs = editor.edit(job)
            return [base64.b64encode(png).decode("ascii") for png in pngs], time.monotonic() - begin

        g = job.generation
        try:
            images, elapsed = await worker.run(draw)
        except (QueueFull, CapacityError) as exc:
            return gpu_busy_response(exc, config.queue_size, worker, metrics)
        except RequestError:
            raise
        except Exception:
            metrics.errors.labels("internal").inc()
            log.exception("edit failed (%dx%d, n=%d, %d steps)", g.width, g.height, g.n, g.num_inference_steps)
            return error_response(500, "image edit failed; the service logged the details", "server_error")

        metrics.generation.observe(elapsed)
        metrics.images.inc(len(images))
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [{"b64_json": image, "seed": g.seed + i} for i, image in enumerate(images)],
                "size": f"{g.width}x{g.height}",
                "output_format": "png",
            }
        )
