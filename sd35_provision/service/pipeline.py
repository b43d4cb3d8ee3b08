"""Loading, warming up and running the Stable Diffusion 3.5 pipeline.

Everything here runs on the GPU worker thread (see worker.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .api import CapacityError, EngineLoader, GenerationJob, LoadedEngine, ModelLimits
from .config import ServiceConfig
from .drawing import encode_png, seeded_generators
from .precision import (
    T5_WEIGHTS,
    DeviceInfo,
    MemoryPlan,
    PrecisionChoice,
    choose_memory_plan,
    choose_precision,
    compile_transformer,
    convert_transformer,
    detect_device,
    release_cached_memory,
    store_fp8_scaled,
    store_t5_8bit,
    tile_vae,
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
    return sum(p.stat().st_size for name in components for p in (model_dir / name).glob("*.safetensors") if p.is_file())


def _accelerate_available() -> bool:
    from diffusers.utils import is_accelerate_available

    return bool(is_accelerate_available())


def _dtype_kwarg() -> str:
    """``dtype`` on diffusers that deprecated ``torch_dtype`` (PR 14205, 2026), ``torch_dtype`` before."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def _transformers_dtype_kwarg() -> str:
    """transformers took ``dtype`` from 4.56 and deprecated ``torch_dtype``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


# The weight-carrying components in the order they are loaded: the transformer
# first, so it is in its target precision (FP8: half its bf16 size) before the
# next big component arrives, and the process's peak is never the bf16 whole.
LOAD_ORDER = ("transformer", "text_encoder_3", "text_encoder_2", "text_encoder", "vae")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def component_bytes(model_dir: Path) -> dict[str, int]:
    """Bytes of each pipeline component's weights on disk (model_index.json's components only)."""
    model_dir = Path(model_dir)
    index = json.loads((model_dir / "model_index.json").read_text())
    return {
        name: sum(p.stat().st_size for p in (model_dir / name).glob("*.safetensors") if p.is_file())
        for name, value in index.items()
        if isinstance(value, list) and not name.startswith("_")
    }


def _component_class(model_dir: Path, name: str) -> tuple[str, Any] | None:
    import importlib

    index = json.loads((Path(model_dir) / "model_index.json").read_text())
    entry = index.get(name)
    if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
        return None
    library, class_name = entry
    return library, getattr(importlib.import_module(library), class_name)


def _load_component(model_dir: Path, name: str, dtype: Any, device: DeviceInfo) -> Any:
    """One component straight onto the device in ``dtype`` (through host memory only without accelerate)."""
    found = _component_class(model_dir, name)
    if found is None:
        return None
    library, cls = found
    kwargs: dict[str, Any] = {(_dtype_kwarg() if library == "diffusers" else _transformers_dtype_kwarg()): dtype}
    kwargs.update(local_files_only=True, use_safetensors=True)
    direct = device.kind == "cuda" and _accelerate_available()
    if direct:
        kwargs.update(device_map="cuda", low_cpu_mem_usage=True)
    module = cls.from_pretrained(str(Path(model_dir) / name), **kwargs)
    if device.kind == "cuda" and not direct:
        module.to("cuda")
    return module.eval().requires_grad_(False)


def plan_memory(model_dir: Path, choice: PrecisionChoice, device: DeviceInfo, max_batch: int = 1) -> MemoryPlan:
    """The memory plan (resident or lean) from the sizes on disk, the GPU's memory and ``max_batch``."""
    sizes = component_bytes(model_dir)
    return choose_memory_plan(
        choice, device, sizes.get("transformer"), sum(sizes.get(name, 0) for name in TEXT_ENCODERS), max_batch
    )


def load_pipeline(
    model_dir: Path, choice: PrecisionChoice, device: DeviceInfo, max_batch: int = 1, plan: MemoryPlan | None = None
) -> Any:
    """Load the pipeline from local files onto ``device``, each component straight into its target precision.

    Component by component (LOAD_ORDER): the transformer is read in the compute
    dtype, converted (FP8) and the freed bf16 blocks given back before the text
    encoders are read, and each text encoder is stored in FP8 right after it
    arrives when the memory plan is lean. So the process never holds the whole
    model in bf16, on the GPU or in host memory. The memory plan (resident or
    lean) is chosen before loading, from the sizes on disk, the GPU's memory
    and ``max_batch`` (the most images one pipeline call draws).
    """
    from diffusers import StableDiffusion3Pipeline

    if device.kind == "cuda" and not _accelerate_available():
        log.warning("accelerate is not installed: each component passes through host memory on its way to the GPU")
    sizes = component_bytes(model_dir)
    if plan is None:
        plan = plan_memory(model_dir, choice, device, max_batch)
    log.info("memory plan: %s", plan.reason)
    _quiet_progress_bars()
    components: dict[str, Any] = {}
    for name in LOAD_ORDER:
        if name not in sizes:
            continue
        begin = time.monotonic()
        module = _load_component(model_dir, name, choice.compute_dtype, device)
        if module is None:
            continue
        if name == "transformer":
            convert_transformer(module, choice)
        elif name in TEXT_ENCODERS and plan.text_encoders_fp8:
            store_fp8_scaled(module)
        elif name == "text_encoder_3" and plan.t5_8bit:
            store_t5_8bit(module)
        elif name == "vae" and plan.vae_tiling:
            tile_vae(module)
        release_cached_memory()
        components[name] = module
        log.info("loaded %s in %.1f s%s", name, time.monotonic() - begin, _gpu_memory_note(device))
    # The tokenizers and the scheduler (small files) come with the pipeline; the
    # weight-carrying components are the ones loaded above.
    pipe = StableDiffusion3Pipeline.from_pretrained(
        str(model_dir),
        **components,
        **{_dtype_kwarg(): choice.compute_dtype},
        local_files_only=True,
        use_safetensors=True,
    )
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "vae", None) is not None:
        # Decode a batch one image at a time: the whole-frame decode is the
        # activation peak (2.5 GB per 1024x1024 image), and the decode costs the
        # same per image either way.
        pipe.vae.enable_slicing()
    if choice.compile:
        compile_transformer(pipe.transformer, choice.compile_scope, fullgraph=choice.mode != "fp8-storage")
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


def run_pipeline(pipe: Any, job: GenerationJob) -> list[Any]:
    """Draw ``job.n`` images; returns PIL images."""
    return run_batch(pipe, [job])[0]


def run_batch(pipe: Any, jobs: list[GenerationJob]) -> list[list[Any]]:
    """Draw several jobs of one size, step count and guidance in one pipeline call; PIL images per job.

    Each image gets its own prompt entry and its own generator (seed + i), so an
    image is the same noise and prompt whether its job ran alone or batched.
    """
    first = jobs[0]
    prompts: list[str] = []
    negatives: list[str] = []
    generators: list[Any] = []
    for job in jobs:
        if (job.width, job.height, job.num_inference_steps, job.guidance_scale) != (
            first.width,
            first.height,
            first.num_inference_steps,
            first.guidance_scale,
        ):
            raise ValueError("a batch takes jobs of one size, step count and guidance only")
        prompts += [job.prompt] * job.n
        negatives += [job.negative_prompt or ""] * job.n
        generators += seeded_generators(job.seed, job.n)
    result = pipe(
        prompt=prompts,
        negative_prompt=negatives,
        num_inference_steps=first.num_inference_steps,
        guidance_scale=first.guidance_scale,
        width=first.width,
        height=first.height,
        num_images_per_prompt=1,
        generator=generators,
    )
    images = list(result.images)
    out: list[list[Any]] = []
    for job in jobs:
        out.append(images[: job.n])
        images = images[job.n :]
    return out


def warmup_plan(
    sizes: list[tuple[int, int]], max_batch: int, guidance_scale: float
) -> list[tuple[int, int, int, float]]:
    """(width, height, images, guidance) of each warm-up call: every batch the service can run, per size.

    torch.compile specialises on the transformer's batch (2 x images with CFG,
    images without), so each image count up to ``max_batch`` is drawn once with
    CFG, and one image without it (guidance 0: batch 1, which compile treats as
    its own case). After two distinct batches dynamo compiles a shape-generic
    graph, so nothing a request can ask for compiles inside the request.
    """
    plan: list[tuple[int, int, int, float]] = []
    for width, height in sizes:
        plan += [(width, height, n, guidance_scale) for n in range(1, max_batch + 1)]
        if guidance_scale > 1.0:
            plan.append((width, height, 1, 0.0))
    return plan


def warm_up(
    pipe: Any,
    sizes: list[tuple[int, int]],
    steps: int,
    guidance_scale: float,
    max_batch: int = 1,
) -> float:
    """Draw each batch of ``warmup_plan`` (compiling for it when torch.compile is on); returns seconds spent."""
    begin = time.monotonic()
    for width, height, n, guidance in warmup_plan(sizes, max_batch, guidance_scale):
        job = GenerationJob(
            prompt=WARMUP_PROMPT,
            negative_prompt=None,
            n=n,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
            seed=0,
        )
        started = time.monotonic()
        run_pipeline(pipe, job)
        log.info(
            "warm-up %dx%d, %d image(s), guidance %g, %d steps: %.1f s",
            width,
            height,
            n,
            guidance,
            steps,
            time.monotonic() - started,
        )
    return time.monotonic() - begin


class PipelineEngine:
    """The loaded pipeline as the service uses it: limits, batched drawing and PNG encoding."""

    def __init__(self, pipe: Any, device: DeviceInfo, choice: PrecisionChoice):
        self.pipe = pipe
        self.editor: Any = None  # the ImageEditor the warm-up made (edits.py), reused by every edit
        self.device = device
        self.choice = choice
        self.limits = model_limits(pipe)

    def draw(self, jobs: list[GenerationJob]) -> list[list[Any]]:
        """Images (PIL) for jobs of one size, steps and guidance, in one pipeline call (the GPU thread)."""
        import torch

        try:
            return run_batch(self.pipe, jobs)
        except torch.cuda.OutOfMemoryError:
            # Give the cached blocks back so the next, smaller request can run.
            torch.cuda.empty_cache()
            images = sum(job.n for job in jobs)
            log.warning("out of GPU memory: %dx%d, %d image(s)", jobs[0].width, jobs[0].height, images)
            raise CapacityError(
                f"out of GPU memory for {images} image(s) of {jobs[0].width}x{jobs[0].height}; "
                "retry later or ask for less"
            ) from None

    encode = staticmethod(encode_png)

    def generate(self, job: GenerationJob) -> list[bytes]:
        return [encode_png(image) for image in self.draw([job])[0]]


def engine_loader(config: ServiceConfig) -> EngineLoader:
    """The service's start-up: pick the precision, load, warm up (runs on the GPU thread)."""

    def load(set_phase: Callable[[str], None]) -> LoadedEngine:
        limit = _apply_gpu_memory_limit(config.gpu_memory_gib)
        device = detect_device(limit)
        try:
            choice = choose_precision(
                config.precision, device, config.compile, model_bytes(config.model_dir), warmup=config.warmup_steps > 0
            )
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
        largest = max(config.limits.max_n, config.max_batch)
        plan = plan_memory(config.model_dir, choice, device, largest)
        pipe = load_pipeline(config.model_dir, choice, device, largest, plan)
        load_s = time.monotonic() - begin
        log.info("loaded %s in %.1f s%s", config.model_dir, load_s, _gpu_memory_note(device))
        engine = PipelineEngine(pipe, device, choice)
        warmup_s = 0.0
        if config.warmup_steps > 0:
            set_phase("warming up")
            limits = engine.limits
            sizes = list(config.warmup_sizes or [(limits.default_width, limits.default_height)])
            warmup_s = warm_up(pipe, sizes, config.warmup_steps, config.default_guidance, largest)
            # Edits (/v1/images/edits) share the transformer and its compiled graphs; their
            # own first use (VAE encoder, mask handling) happens here, not in a request.
            from .edits import ImageEditor, warm_up_edits

            engine.editor = ImageEditor(pipe)
            warmup_s += warm_up_edits(engine.editor, sizes, config.warmup_steps, config.default_guidance)
            release_cached_memory()
            log.info("warm-up done in %.1f s%s", warmup_s, _gpu_memory_note(device))
        description = {
            "precision": choice.mode,
            "compute_dtype": str(choice.compute_dtype).removeprefix("torch."),
            "compile": "on" if choice.compile else "off",
            "device": device.name,
            "reason": choice.reason,
            "load_s": f"{load_s:.1f}",
            "warmup_s": f"{warmup_s:.1f}",
            "max_batch": str(config.max_batch),
            "memory_plan": plan.name,
            "t5": "fp8"
            if plan.text_encoders_fp8
            else T5_WEIGHTS
            if plan.t5_8bit
            else str(choice.compute_dtype).removeprefix("torch."),
        }
        if limit is not None:
            description["gpu_memory_limit"] = f"{limit / 2**30:.2f} GiB"
        return LoadedEngine(engine=engine, description=description)

    return load


def _apply_gpu_memory_limit(gib: float | None) -> int | None:
    """Cap torch's allocator at ``gib`` GiB of GPU 0 (SD35_GPU_MEMORY_GIB); returns the cap in bytes."""
    if gib is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    limit = min(int(gib * 2**30), total)
    torch.cuda.set_per_process_memory_fraction(limit / total, 0)
    log.info("GPU memory limited to %.2f GiB of %.2f GiB", limit / 2**30, total / 2**30)
    return limit


def _gpu_memory_note(device: DeviceInfo) -> str:
    if device.kind != "cuda":
        return ""
    import torch

    return (
        f"; GPU memory {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated, "
        f"{torch.cuda.memory_reserved() / 2**30:.1f} GiB reserved, "
        f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated"
    )
