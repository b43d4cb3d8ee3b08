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

from .config import COMPILE_CHOICES as COMPILE_REQUESTS
from .config import PRECISION_CHOICES as REQUESTS
from .config import PRECISION_MODES as MODES

# What torch.compile covers: "blocks" compiles each transformer block on its own
# (regional compilation: the blocks share one compiled graph, so the warm-up
# compiles a block, not all 38 of them), "model" the whole transformer as one graph.
COMPILE_SCOPES = ("blocks", "model")

# Hardware FP8 tensor cores: Ada (8.9) and Hopper (9.0) onwards.
FP8_MIN_CAPABILITY = (8, 9)
# Native bf16 tensor cores: Ampere (8.0) onwards; below that bf16 is emulated.
BF16_MIN_CAPABILITY = (8, 0)
# The seed document demands torch >= 2.3 for FP8 (float8 types exist from 2.1).
FP8_MIN_TORCH = (2, 3)
# FP8 GEMM kernels (torch._scaled_mm) take only dims that are multiples of 16.
FP8_DIM_MULTIPLE = 16
# Linears smaller than this (weight elements) stay bf16: the per-call activation
# quantization costs more than the FP8 matmul saves (timestep embedders, proj_out).
FP8_MIN_LINEAR_ELEMENTS = 1 << 20
# VRAM kept free beyond the weights: activations, the VAE decode and the CUDA
# context. Measured on the H100 (docs/benchmarks.md): SD3.5 Large needs about
# 2-3 GiB over its weights at 1024x1024 with CFG.
VRAM_HEADROOM_BYTES = 4 << 30
VRAM_HEADROOM_FRACTION = 0.10


@dataclass(frozen=True)
class DeviceInfo:
    """The device the pipeline runs on."""

    kind: str  # "cuda" | "cpu"
    name: str
    compute_capability: tuple[int, int] | None
    total_memory_bytes: int | None


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision mode picked for a device, and why."""

    mode: str  # "fp8-dynamic" | "fp8-storage" | "bf16" | "fp32"
    compute_dtype: "torch.dtype"
    compile: bool
    reason: str
    compile_scope: str = "blocks"  # one of COMPILE_SCOPES; only read when compile is on


def detect_device() -> DeviceInfo:
    """Describe CUDA device 0, or the CPU when there is no usable GPU."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo(
            kind="cuda",
            name=props.name,
            compute_capability=(props.major, props.minor),
            total_memory_bytes=int(props.total_memory),
        )
    import platform

    return DeviceInfo(kind="cpu", name=platform.processor() or platform.machine() or "cpu",
                      compute_capability=None, total_memory_bytes=None)


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


def _fits(model_bytes: int | None, total: int | None, weight_scale: float) -> bool:
    """Whether ``model_bytes`` of bf16 weights, scaled, leave the activation headroom free."""
    if model_bytes is None or total is None:
        return True
    headroom = max(VRAM_HEADROOM_BYTES, int(total * VRAM_HEADROOM_FRACTION))
    return model_bytes * weight_scale + headroom <= total


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def choose_precision(
    requested: str,
    device: DeviceInfo,
    compile: str = "auto",
    model_bytes: int | None = None,
    warmup: bool = True,
) -> PrecisionChoice:
    """Pick the precision mode for ``device``.

    + requested: "auto" | "fp8" (best FP8 the GPU can do) | "fp8-dynamic" |
      "fp8-storage" | "bf16" | "fp32"
    + device: from ``detect_device()``
    + compile: "auto" | "on" | "off"
    + model_bytes: size of the weights kept on the GPU in bf16; used to fall
      back to FP8 storage when they would not fit
    + warmup: whether the service warms up (and so compiles) before it takes
      requests; without, "auto" compile is off and FP8 dynamic is not picked

    Raises ValueError when an explicit request cannot run on this device.
    """
    if requested not in REQUESTS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(REQUESTS)}")
    if compile not in COMPILE_REQUESTS:
        raise ValueError(f"compile {compile!r} is not one of {', '.join(COMPILE_REQUESTS)}")

    # Whether a GPU mode would be compiled decides between the FP8 modes (see the module docstring).
    compiled = compile == "on" or (compile == "auto" and device.kind == "cuda" and warmup)
    mode, reason = _pick_mode(requested, device, model_bytes, compiled,
                              "compile off" if compile == "off" else "no warm-up to cover the compile")
    compute_dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    use_compile, compile_reason = _pick_compile(compile, mode, device, warmup)
    return PrecisionChoice(mode=mode, compute_dtype=compute_dtype, compile=use_compile,
                           reason=f"{reason}; {compile_reason}")


def _pick_mode(requested: str, device: DeviceInfo, model_bytes: int | None, compiled: bool = True,
               why_not_compiled: str = "") -> tuple[str, str]:
    cc = device.compute_capability
    where = f"this GPU ({device.name}) has {cc[0]}.{cc[1]}" if cc else f"this device ({device.name}) is a CPU"
    fp8_hw = device.kind == "cuda" and cc is not None and cc >= FP8_MIN_CAPABILITY
    has_f8 = torch_has_float8()
    has_ao = torchao_available()
    torch_v = ".".join(map(str, torch_version()))
    need_torch = ".".join(map(str, FP8_MIN_TORCH))

    if requested == "fp32":
        return "fp32", "fp32 requested"

    if requested == "bf16":
        if device.kind == "cuda" and cc is not None and cc < BF16_MIN_CAPABILITY:
            return "bf16", f"bf16 requested ({where}: below 8.0 bf16 is emulated and slow)"
        return "bf16", "bf16 requested"

    if requested in ("fp8", "fp8-dynamic", "fp8-storage"):
        if not has_f8:
            raise ValueError(f"{requested} needs torch >= {need_torch} with float8 types; "
                             f"this torch is {torch.__version__}")
        if device.kind != "cuda":
            raise ValueError(f"{requested} needs a CUDA GPU; {where}")
        if requested == "fp8-storage":
            return "fp8-storage", "fp8-storage requested"
        if requested == "fp8" and fp8_hw and not compiled:
            return "fp8-storage", (f"fp8 requested; {why_not_compiled}, and dynamic FP8 without compile is "
                                   "slower than bf16 (2.2x on the H100), so weights are stored in FP8 instead")
        if requested == "fp8-dynamic" or fp8_hw:
            if not fp8_hw:
                raise ValueError(f"fp8-dynamic needs compute capability >= "
                                 f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}; {where}")
            if not has_ao:
                raise ValueError("fp8-dynamic needs torchao (pip install torchao); it is not installed")
            return "fp8-dynamic", f"{requested} requested; FP8 tensor cores ({where})"
        return "fp8-storage", (f"fp8 requested; no FP8 tensor cores ({where}, need 8.9), "
                               "so weights are stored in FP8 and computed in bf16")

    # auto
    if device.kind != "cuda":
        return "fp32", f"auto: {where}, fp32"
    if fp8_hw and has_f8 and has_ao and compiled:
        return "fp8-dynamic", f"auto: FP8 tensor cores ({where}) and torchao installed"
    missing = (f"{why_not_compiled}: dynamic FP8 needs compile to beat bf16" if fp8_hw and has_f8 and has_ao else
               "torchao not installed" if fp8_hw and has_f8 else
               f"torch {torch_v} < {need_torch}" if fp8_hw else f"no FP8 tensor cores, {where}")
    if not _fits(model_bytes, device.total_memory_bytes, 1.0):
        if has_f8:
            return "fp8-storage", (f"auto: {_gib(model_bytes)} of bf16 weights do not fit "
                                   f"{_gib(device.total_memory_bytes)} with headroom ({missing}); "
                                   "FP8 weight storage")
        return "bf16", (f"auto: bf16 ({missing}); {_gib(model_bytes)} of weights may not fit "
                        f"{_gib(device.total_memory_bytes)} and this torch has no FP8 storage")
    return "bf16", f"auto: bf16 ({missing})"


def _pick_compile(compile: str, mode: str, device: DeviceInfo, warmup: bool = True) -> tuple[bool, str]:
    if compile == "on":
        return True, "compile requested" + ("" if warmup else " (no warm-up: the first request waits for it)")
    if compile == "off":
        if mode == "fp8-dynamic":
            return False, "compile off (dynamic FP8 without compile is slower than bf16: 2.2x on the H100)"
        return False, "compile off"
    # auto: compile where it pays on a GPU. Layerwise casting runs Python hooks per
    # layer, which break the graph, so fp8-storage stays eager.
    if device.kind != "cuda":
        return False, "no compile on CPU"
    if not warmup and mode == "bf16":
        return False, "eager: no warm-up, and the first request would wait for the compile"
    if mode == "fp8-dynamic":
        return True, "compiled (dynamic FP8 needs compile to beat bf16)" + (
            "" if warmup else "; no warm-up: the first request waits for the compile")
    if mode == "bf16":
        return True, "compiled"
    return False, "eager (layerwise casting hooks do not compile)"


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


def store_fp8(module: torch.nn.Module, compute_dtype: torch.dtype = torch.bfloat16,
              skip: tuple[str, ...] = ()) -> None:
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
    apply_layerwise_casting(module, storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype,
                            skip_modules_pattern=tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(skip),
                            skip_modules_classes=(torch.nn.Embedding,))


def apply_precision(pipe, choice: PrecisionChoice) -> None:
    """Apply ``choice`` to a loaded pipeline, in place, on its device.

    The transformer is what runs every step, so that is what gets FP8 and
    compile; the text encoders and the VAE keep the compute dtype (see
    ``choose_memory_plan``/``apply_memory_plan`` for their memory).
    """
    transformer = pipe.transformer
    if choice.mode == "fp8-dynamic":
        quantize_fp8_dynamic(transformer)
    elif choice.mode == "fp8-storage":
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                             compute_dtype=choice.compute_dtype)
    if choice.compile:
        compile_transformer(transformer, choice.compile_scope, fullgraph=choice.mode != "fp8-storage")


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


@dataclass(frozen=True)
class MemoryPlan:
    """Where the components other than the transformer keep their weights."""

    text_encoders_fp8: bool  # CLIP-L, CLIP-G and T5-XXL linears stored in FP8 (per-row scales)
    vae_tiling: bool  # decode in 512-pixel tiles
    reason: str


def choose_memory_plan(
    choice: PrecisionChoice,
    device: DeviceInfo,
    transformer_bytes: int | None,
    text_encoder_bytes: int | None,
) -> MemoryPlan:
    """Keep everything resident in the compute dtype when it fits the GPU; else shrink the rest.

    + transformer_bytes, text_encoder_bytes: bf16 weight sizes (the three text
      encoders together). The transformer counts at half size in the FP8 modes.

    Shrinking means FP8 storage of the text encoders (T5-XXL goes from 9.5 to
    4.8 GB; they run once per image, so the upcast costs little) and a tiled VAE
    decode. Both are what the H100 measurements showed are needed for SD3.5
    Large to fit 16 GB (docs/benchmarks.md).
    """
    if device.kind != "cuda" or transformer_bytes is None or text_encoder_bytes is None:
        return MemoryPlan(False, False, "resident: sizes or GPU unknown")
    total = device.total_memory_bytes
    scale = {"fp8-dynamic": 0.5, "fp8-storage": 0.5, "fp32": 2.0}.get(choice.mode, 1.0)
    transformer = int(transformer_bytes * scale)
    if _fits(transformer + text_encoder_bytes, total, 1.0):
        return MemoryPlan(False, False, f"resident: {_gib(transformer + text_encoder_bytes)} of weights "
                                        f"fit {_gib(total)}")
    return MemoryPlan(True, True, f"lean: {_gib(transformer + text_encoder_bytes)} of weights do not fit "
                                  f"{_gib(total)} with headroom; text encoders in FP8, tiled VAE decode")


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
        return (isinstance(m, torch.nn.Linear) and m.weight.shape[0] % FP8_DIM_MULTIPLE == 0
                and m.weight.shape[1] % FP8_DIM_MULTIPLE == 0)

    quantize_(module, Float8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False),
              filter_fn=eligible)


def apply_memory_plan(pipe, plan: MemoryPlan) -> None:
    """Apply ``plan`` to a loaded pipeline, in place."""
    if plan.text_encoders_fp8:
        for encoder in text_encoders(pipe):
            store_fp8_scaled(encoder)
    if plan.vae_tiling and getattr(pipe, "vae", None) is not None:
        vae = pipe.vae
        vae.enable_tiling()
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_sample_min_size = VAE_TILE_PIXELS
        vae.tile_latent_min_size = VAE_TILE_PIXELS // scale


def module_bytes(module: torch.nn.Module | None, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of ``module``'s parameters and buffers if stored in ``dtype``."""
    if module is None:
        return 0
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() for t in (*module.parameters(), *module.buffers())) * itemsize
