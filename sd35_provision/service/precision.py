"""Which numeric precision the SD3.5 service runs in, and how it is applied.

This module ships to GPU hosts with the service, alone: it imports only the
standard library and torch at module level; torchao and diffusers are imported
inside the functions that need them.

Modes:
  fp8-dynamic  real FP8 matmuls (torchao, weights and activations in e4m3,
               per-row scales); needs compute capability >= 8.9 and, to beat
               bf16, torch.compile.
  fp8-storage  weights stored in e4m3 and upcast to bf16 layer by layer
               (diffusers layerwise casting): halves weight memory, not time.
  bf16         plain bfloat16.
  fp32         float32 (CPU).

What the H100 measured (docs/benchmarks.md, SD3.5 Large 1024x1024, 28 steps,
CFG; seconds per image over BF16 eager's 5.6 s) and how ``auto`` follows it:
  FP8 dynamic + compile 0.58x, the fastest, and 0.73x BF16's peak memory: auto's
    pick on an FP8 GPU with torchao, but only when compiled.
  FP8 dynamic without compile 2.24x (Medium 3.18x): slower than BF16 eager, so
    never auto's pick; with compile off, auto takes bf16 and "fp8" takes FP8 storage.
  BF16 + compile 0.73x: bf16 is compiled wherever it runs on a GPU.
  FP8 storage 1.13x, 0.82x the peak: only when bf16 weights do not fit.
  Compile warm-up: 12-17 s compiling each transformer block on its own, 90-180 s
    compiling the whole model for 2-4% faster steps, so blocks; without a
    warm-up at start (``warmup=False``) the first request would pay it, so auto
    does not compile then, and auto's precision follows (bf16).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from . import policy
from .policy import (  # noqa: F401  (re-exported: the service's and the benchmark's names)
    BF16_MIN_CAPABILITY,
    COMPILE_REQUESTS,
    COMPILE_SCOPES,
    FP8_MIN_CAPABILITY,
    FP8_MIN_TORCH,
    MODES,
    REQUESTS,
    VRAM_HEADROOM_BYTES,
    VRAM_HEADROOM_FRACTION,
    DeviceInfo,
    MemoryPlan,
    Software,
)

# FP8 GEMM kernels (torch._scaled_mm) take only dims that are multiples of 16.
FP8_DIM_MULTIPLE = 16
# Linears smaller than this (weight elements) stay bf16: the per-call activation
# quantization costs more than the FP8 matmul saves (timestep embedders, proj_out).
FP8_MIN_LINEAR_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision mode picked for a device, and why (policy.PrecisionPlan with a torch dtype)."""

    mode: str  # "fp8-dynamic" | "fp8-storage" | "bf16" | "fp32"
    compute_dtype: torch.dtype
    compile: bool
    reason: str
    compile_scope: str = "blocks"  # one of COMPILE_SCOPES; only read when compile is on


def detect_device(memory_limit_bytes: int | None = None) -> DeviceInfo:
    """Describe CUDA device 0, or the CPU when there is no usable GPU.

    ``memory_limit_bytes`` caps the memory reported (the service's own GPU
    memory limit), so the policy plans for what this process may use.
    """
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        total = int(props.total_memory)
        if memory_limit_bytes is not None:
            total = min(total, memory_limit_bytes)
        return DeviceInfo(
            kind="cuda",
            name=props.name,
            compute_capability=(props.major, props.minor),
            total_memory_bytes=total,
        )
    import platform

    return DeviceInfo(
        kind="cpu",
        name=platform.processor() or platform.machine() or "cpu",
        compute_capability=None,
        total_memory_bytes=None,
    )


def torch_version() -> tuple[int, int]:
    """(major, minor) of the installed torch."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def torch_has_float8() -> bool:
    """Whether this torch has the float8 types and is new enough to rely on them."""
    return hasattr(torch, "float8_e4m3fn") and torch_version() >= FP8_MIN_TORCH


def torchao_available() -> bool:
    """Whether torchao can be imported (without importing it)."""
    return importlib.util.find_spec("torchao") is not None


def software() -> Software:
    """What this environment offers for FP8, for the policy."""
    return Software(float8=torch_has_float8(), torchao=torchao_available(), torch_version=torch.__version__)


def choose_precision(
    requested: str,
    device: DeviceInfo,
    compile: str = "auto",
    model_bytes: int | None = None,
    warmup: bool = True,
) -> PrecisionChoice:
    """``policy.choose_precision`` with this environment's software; see there."""
    plan = policy.choose_precision(requested, device, software(), compile, model_bytes, warmup)
    return PrecisionChoice(
        mode=plan.mode,
        compute_dtype=getattr(torch, plan.compute_dtype),
        compile=plan.compile,
        reason=plan.reason,
        compile_scope=plan.compile_scope,
    )


def fp8_linear_filter(module: torch.nn.Module, fqn: str = "") -> bool:
    """Whether a layer gets FP8 dynamic quantization: linears whose dims FP8 kernels take."""
    if not isinstance(module, torch.nn.Linear):
        return False
    n_out, n_in = module.weight.shape
    if n_in % FP8_DIM_MULTIPLE or n_out % FP8_DIM_MULTIPLE:
        return False
    return n_in * n_out >= FP8_MIN_LINEAR_ELEMENTS


def quantize_fp8_dynamic(module: torch.nn.Module) -> int:
    """Quantize ``module``'s eligible linears in place to torchao dynamic FP8 (per-row); returns how many."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = sum(1 for m in module.modules() if fp8_linear_filter(m))
    # set_inductor_config=False: torchao would turn on inductor's coordinate-descent
    # tuning process-wide, which multiplies the compile warm-up for little gain here.
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(module, config, filter_fn=fp8_linear_filter)
    return count


# T5's feed-forward casts its input to ``wo.weight.dtype``: with ``wo`` stored in
# FP8 that would cast the activations to FP8 too, so ``wo`` keeps its dtype.
TEXT_ENCODER_FP8_SKIP = (r"(^|\.)wo$",)


def store_fp8(module: torch.nn.Module, compute_dtype: torch.dtype = torch.bfloat16, skip: tuple[str, ...] = ()) -> None:
    """Store ``module``'s weights in FP8 (e4m3), upcast to ``compute_dtype`` per layer when used.

    Works on diffusers models and on plain torch modules (the transformers text
    encoders) alike; norms, embeddings and layers whose names match a regex in
    ``skip`` keep their dtype.
    """
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    # Embeddings stay: besides their precision, transformers reads a model's dtype off
    # its first parameter (the token embedding), and the SD3 pipeline casts the
    # prompt embeddings to it.
    apply_layerwise_casting(
        module,
        storage_dtype=torch.float8_e4m3fn,
        compute_dtype=compute_dtype,
        skip_modules_pattern=tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(skip),
        skip_modules_classes=(torch.nn.Embedding,),
    )


def apply_precision(pipe, choice: PrecisionChoice) -> None:
    """Apply ``choice`` to a loaded pipeline, in place, on its device.

    The transformer is what runs every step, so that is what gets FP8 and
    compile; the text encoders and the VAE keep the compute dtype (see
    ``choose_memory_plan``/``apply_memory_plan`` for their memory).
    """
    convert_transformer(pipe.transformer, choice)
    if choice.compile:
        compile_transformer(pipe.transformer, choice.compile_scope, fullgraph=choice.mode != "fp8-storage")


def convert_transformer(transformer: torch.nn.Module, choice: PrecisionChoice) -> None:
    """Put the transformer's weights in ``choice``'s storage (FP8 modes), in place; no compile."""
    if choice.mode == "fp8-dynamic":
        quantize_fp8_dynamic(transformer)
    elif choice.mode == "fp8-storage":
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=choice.compute_dtype)


def compile_transformer(transformer: torch.nn.Module, scope: str = "blocks", fullgraph: bool = True) -> int:
    """torch.compile ``transformer`` in place; returns how many modules were compiled.

    In place (``nn.Module.compile``), so ``pipe.transformer`` stays the same
    object and its .config, .dtype and hooks keep working. With ``scope``
    "blocks", each of ``transformer_blocks`` is compiled and the rest (patch and
    time embedding, final projection: a few small layers) stays eager; a model
    without such blocks is compiled whole.
    """
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope {scope!r} is not one of {', '.join(COMPILE_SCOPES)}")
    blocks = list(getattr(transformer, "transformer_blocks", None) or ()) if scope == "blocks" else []
    for block in blocks:
        block.compile(fullgraph=fullgraph)
    if not blocks:
        transformer.compile(fullgraph=fullgraph)
    return len(blocks) or 1


# VAE decode tile (pixels) when tiling: half of SD3.5's 1024, so a 1024x1024
# decode runs as overlapping 512x512 tiles and its activations shrink about 4x.
VAE_TILE_PIXELS = 512


def choose_memory_plan(
    choice: PrecisionChoice,
    device: DeviceInfo,
    transformer_bytes: int | None,
    text_encoder_bytes: int | None,
    max_batch: int = 1,
) -> MemoryPlan:
    """``policy.choose_memory_plan`` for ``choice``'s mode; see there."""
    return policy.choose_memory_plan(choice.mode, device, transformer_bytes, text_encoder_bytes, max_batch)


def text_encoders(pipe) -> list[torch.nn.Module]:
    """The pipeline's text encoders that are present (SD3 has up to three)."""
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    return [m for m in (getattr(pipe, n, None) for n in names) if m is not None]


def store_fp8_scaled(module: torch.nn.Module) -> None:
    """Store ``module``'s linears in FP8 with per-row scales, computed in their own dtype.

    Per-row scales keep small-magnitude weights (T5's attention projections are
    initialised near 2e-3, at the edge of e4m3's subnormals) from flushing to
    zero, which plain casting (``store_fp8``) would do. Uses torchao's weight-only
    FP8 when installed, else falls back to plain layerwise casting.
    """
    if not torchao_available():
        dtype = next(module.parameters()).dtype
        store_fp8(module, compute_dtype=dtype, skip=TEXT_ENCODER_FP8_SKIP)
        return
    from torchao.quantization import Float8WeightOnlyConfig, PerRow, quantize_

    def eligible(m: torch.nn.Module, fqn: str = "") -> bool:
        return (
            isinstance(m, torch.nn.Linear)
            and m.weight.shape[0] % FP8_DIM_MULTIPLE == 0
            and m.weight.shape[1] % FP8_DIM_MULTIPLE == 0
        )

    quantize_(module, Float8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False), filter_fn=eligible)


# How an FP8 mode's resident plan stores T5-XXL's linears: INT8 with per-row scales,
# weight-only (the same bytes as FP8 e4m3 and far less error: 7 bits of mantissa
# against 3; docs/benchmarks.md).
T5_WEIGHTS = "int8"


def store_int8_scaled(module: torch.nn.Module) -> None:
    """Store ``module``'s linears in INT8 with per-row scales, weight-only (torchao), computed in their own dtype."""
    from torchao.quantization import Int8WeightOnlyConfig, PerRow, quantize_

    def eligible(m: torch.nn.Module, fqn: str = "") -> bool:
        return (
            isinstance(m, torch.nn.Linear)
            and m.weight.shape[0] % FP8_DIM_MULTIPLE == 0
            and m.weight.shape[1] % FP8_DIM_MULTIPLE == 0
        )

    quantize_(module, Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False), filter_fn=eligible)


def store_t5_8bit(module: torch.nn.Module) -> None:
    """T5-XXL in 8 bits for an FP8 mode's resident plan (``T5_WEIGHTS``; FP8 without torchao's INT8)."""
    if T5_WEIGHTS == "int8" and torchao_available():
        store_int8_scaled(module)
    else:
        store_fp8_scaled(module)


def apply_memory_plan(pipe, plan: MemoryPlan) -> None:
    """Apply ``plan`` to a loaded pipeline, in place."""
    if plan.text_encoders_fp8:
        for encoder in text_encoders(pipe):
            store_fp8_scaled(encoder)
    if plan.vae_tiling and getattr(pipe, "vae", None) is not None:
        tile_vae(pipe.vae)


def tile_vae(vae) -> None:
    """Decode in overlapping VAE_TILE_PIXELS tiles (about a quarter of the activations at 1024x1024)."""
    vae.enable_tiling()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_sample_min_size = VAE_TILE_PIXELS
    vae.tile_latent_min_size = VAE_TILE_PIXELS // scale


def release_cached_memory() -> None:
    """Give the allocator's free blocks back to the driver, so they count nowhere (nvidia-smi included)."""
    import gc

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def module_bytes(module: torch.nn.Module | None, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of ``module``'s parameters and buffers if stored in ``dtype``."""
    if module is None:
        return 0
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() for t in (*module.parameters(), *module.buffers())) * itemsize
