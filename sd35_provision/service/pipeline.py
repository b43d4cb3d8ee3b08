"""Loading, warming up and running the Stable Diffusion 3.5 pipeline.

Everything here runs on the GPU worker thread (see worker.py).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .api import CapacityError, EngineLoader, GenerationJob, LoadedEngine, ModelLimits
from .config import ServiceConfig
from .precision import (
    DeviceInfo,
    PrecisionChoice,
    apply_memory_plan,
    apply_precision,
    choose_memory_plan,
    choose_precision,
    detect_device,
    module_bytes,
    text_encoders,
)

log = logging.getLogger("sd35.service")

class StartupError(Exception):
    """The model cannot be served as configured on this machine."""


WARMUP_PROMPT = "warm-up: a lighthouse on a cliff at dusk"


def model_bytes(model_dir: Path) -> int:
    """Size of the pipeline's weights on disk: what choose_precision weighs against device memory.

    Only the component folders named in model_index.json count: the published
    SD3.5 repositories also hold single-file checkpoints (sd3.5_large.safetensors,
    text_encoders/) that the pipeline never loads.
    """
    model_dir = Path(model_dir)
    index = json.loads((model_dir / "model_index.json").read_text())
    components = [name for name, value in index.items() if isinstance(value, list) and not name.startswith("_")]
    return sum(
        p.stat().st_size for name in components for p in (model_dir / name).glob("*.safetensors") if p.is_file()
    )


def _accelerate_available() -> bool:
    from diffusers.utils import is_accelerate_available

    return bool(is_accelerate_available())


def _dtype_kwarg() -> str:
    """``dtype`` on diffusers that deprecated ``torch_dtype`` (PR 14205, 2026), ``torch_dtype`` before."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def load_pipeline(model_dir: Path, choice: PrecisionChoice, device: DeviceInfo) -> Any:
    """Load the pipeline from local files onto ``device`` in ``choice``'s dtype, then apply its precision.

    Weights are read in the compute dtype (never a full fp32 copy), and on CUDA
    each component is placed straight on the GPU (``device_map="cuda"``, needs
    accelerate) so host memory never holds the whole model at once. When the
    weights leave too little GPU memory free, precision's memory plan then
    stores the text encoders in FP8 and tiles the VAE decode; the bf16 weights
    must still fit the GPU while loading.
    """
    import torch
    from diffusers import StableDiffusion3Pipeline

    kwargs: dict[str, Any] = {
        _dtype_kwarg(): choice.compute_dtype,
        "local_files_only": True,
        "use_safetensors": True,
    }
    direct_to_gpu = device.kind == "cuda" and _accelerate_available()
    if direct_to_gpu:
        kwargs.update(device_map="cuda", low_cpu_mem_usage=True)
    elif device.kind == "cuda":
        log.warning("accelerate is not installed: the model passes through host memory before moving to the GPU")

    _quiet_progress_bars()
    pipe = StableDiffusion3Pipeline.from_pretrained(str(model_dir), **kwargs)
    if device.kind == "cuda" and not direct_to_gpu:
        # One component at a time, so host memory holds at most the rest of the
        # model plus nothing duplicated.
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    # Sizes in bf16, taken before apply_precision changes the transformer's storage.
    plan = choose_memory_plan(
        choice, device, module_bytes(pipe.transformer), sum(module_bytes(m) for m in text_encoders(pipe))
    )
    log.info("memory plan: %s", plan.reason)
    apply_precision(pipe, choice)
    apply_memory_plan(pipe, plan)
    return pipe


def _quiet_progress_bars() -> None:
    """No tqdm bars in the journal: they are one line per refresh there."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def model_limits(pipe: Any) -> ModelLimits:
    """The sizes the loaded model can draw, from its own config."""
    vae_scale = int(getattr(pipe, "vae_scale_factor", 8))
    patch = int(getattr(pipe, "patch_size", 2))
    config = pipe.transformer.config
    native = int(config.sample_size) * vae_scale
    pos_embed_max = getattr(config, "pos_embed_max_size", None)
    max_side = int(pos_embed_max) * patch * vae_scale if pos_embed_max else None
    # The service's own rule is multiples of 16; a model with a coarser grid raises it.
    multiple = max(16, vae_scale * patch)
    return ModelLimits(default_width=native, default_height=native, size_multiple=multiple, max_side=max_side)


def _generators(seed: int, n: int) -> list[Any]:
    import torch

    # CPU generators: the same seed gives the same noise whatever the device.
    return [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(n)]


def run_pipeline(pipe: Any, job: GenerationJob) -> list[Any]:
    """Draw ``job.n`` images; returns PIL images."""
    result = pipe(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        num_inference_steps=job.num_inference_steps,
        guidance_scale=job.guidance_scale,
        width=job.width,
        height=job.height,
        num_images_per_prompt=job.n,
        generator=_generators(job.seed, job.n),
    )
    return list(result.images)


def encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def warm_up(
    pipe: Any,
    sizes: list[tuple[int, int]],
    steps: int,
    guidance_scale: float,
) -> float:
    """Run one small generation per size (compiling for it when torch.compile is on); returns seconds spent."""
    begin = time.monotonic()
    for width, height in sizes:
        job = GenerationJob(
            prompt=WARMUP_PROMPT,
            negative_prompt=None,
            n=1,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            seed=0,
        )
        started = time.monotonic()
        run_pipeline(pipe, job)
        log.info("warm-up %dx%d, %d steps: %.1f s", width, height, steps, time.monotonic() - started)
    return time.monotonic() - begin


class PipelineEngine:
    """The loaded pipeline as the service uses it: limits and PNG-producing generation."""

    def __init__(self, pipe: Any, device: DeviceInfo, choice: PrecisionChoice):
        self.pipe = pipe
        self.device = device
        self.choice = choice
        self.limits = model_limits(pipe)

    def generate(self, job: GenerationJob) -> list[bytes]:
        import torch

        try:
            images = run_pipeline(self.pipe, job)
        except torch.cuda.OutOfMemoryError:
            # Give the cached blocks back so the next, smaller request can run.
            torch.cuda.empty_cache()
            log.warning("out of GPU memory: %dx%d, n=%d", job.width, job.height, job.n)
            raise CapacityError(
                f"out of GPU memory for {job.n} image(s) of {job.width}x{job.height}; retry later or ask for less"
            ) from None
        return [encode_png(image) for image in images]


def engine_loader(config: ServiceConfig) -> EngineLoader:
    """The service's start-up: pick the precision, load, warm up (runs on the GPU thread)."""

    def load(set_phase: Callable[[str], None]) -> LoadedEngine:
        device = detect_device()
        try:
            choice = choose_precision(config.precision, device, config.compile, model_bytes(config.model_dir),
                                      warmup=config.warmup_steps > 0)
        except ValueError as exc:
            raise StartupError(f"SD35_PRECISION={config.precision}, SD35_COMPILE={config.compile}: {exc}") from None
        log.info(
            "precision: %s (compute %s, compile %s) on %s %s: %s",
            choice.mode,
            str(choice.compute_dtype).removeprefix("torch."),
            "on" if choice.compile else "off",
            device.kind,
            device.name,
            choice.reason,
        )
        set_phase("loading")
        begin = time.monotonic()
        pipe = load_pipeline(config.model_dir, choice, device)
        log.info("loaded %s in %.1f s%s", config.model_dir, time.monotonic() - begin, _gpu_memory_note(device))
        engine = PipelineEngine(pipe, device, choice)
        if config.warmup_steps > 0:
            set_phase("warming up")
            limits = engine.limits
            sizes = list(config.warmup_sizes or [(limits.default_width, limits.default_height)])
            seconds = warm_up(pipe, sizes, config.warmup_steps, config.default_guidance)
            log.info("warm-up done in %.1f s%s", seconds, _gpu_memory_note(device))
        description = {
            "precision": choice.mode,
            "compute_dtype": str(choice.compute_dtype).removeprefix("torch."),
            "compile": "on" if choice.compile else "off",
            "device": device.name,
            "reason": choice.reason,
        }
        return LoadedEngine(engine=engine, description=description)

    return load


def _gpu_memory_note(device: DeviceInfo) -> str:
    if device.kind != "cuda":
        return ""
    import torch

    return f"; GPU memory {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
