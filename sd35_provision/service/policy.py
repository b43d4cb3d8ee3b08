"""Which precision and memory plan the SD3.5 service runs with: pure policy, no torch.

The control machine imports this to show which plan a host's GPU gets (from
its facts: GPU name, compute capability, memory); the service imports it
through ``precision`` (the torch side), which fills in what the installed
software offers. Inputs are plain values, so the whole policy is tested over a
table of devices.

What the measurements showed (docs/benchmarks.md) and how ``auto`` follows it:
  FP8 dynamic + compile: the fastest (0.58x BF16 eager on the H100) and the
    smallest resident transformer; auto's pick on an FP8 GPU with torchao, but
    only when compiled.
  FP8 dynamic without compile: slower than BF16 eager (2.2x), never auto's pick.
  BF16 + compile 0.73x: bf16 is compiled wherever it runs on a GPU.
  FP8 storage 1.13x: only when bf16 weights do not fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The choices are the settings' own (config.py is stdlib only, like this module).
from .config import COMPILE_CHOICES as COMPILE_REQUESTS
from .config import PRECISION_CHOICES as REQUESTS
from .config import PRECISION_MODES as MODES  # noqa: F401  (re-exported by precision.py)

# What torch.compile covers: "blocks" compiles each transformer block on its own
# (regional compilation: the blocks share one compiled graph, so the warm-up
# compiles a block, not all 38 of them), "model" the whole transformer as one graph.
COMPILE_SCOPES = ("blocks", "model")

FP8_MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9) and Hopper (9.0) onwards
BF16_MIN_CAPABILITY = (8, 0)  # below Ampere bf16 is emulated
FP8_MIN_TORCH = (2, 3)
# Precisions that only a CUDA device runs (_pick_mode refuses them elsewhere); the spec refuses them up front.
CUDA_ONLY_PRECISIONS = ("fp8", "fp8-dynamic", "fp8-storage")

# GPU memory that the weights must leave free (the 'fits' rule of auto's precision).
VRAM_HEADROOM_BYTES = 4 << 30
VRAM_HEADROOM_FRACTION = 0.10
# What the memory plans add to the weights, from the H200 service bench (SD3.5
# Large, 1024x1024, batches of up to 4 images; docs/benchmarks.md):
# the CUDA context and allocator slack (nvidia-smi's process figure ran 1.5 GiB
# over torch's peak allocated), the VAE decode of one image (batches decode one
# image at a time: 2.4 GiB over the weights measured, whole frame; a quarter of
# that tiled), the denoising activations of each image, and a safety margin of
# the card for the driver and other processes.
CONTEXT_BYTES = 3 << 29  # 1.5 GiB
DECODE_BYTES = 5 << 29  # 2.5 GiB
TILED_DECODE_BYTES = 3 << 28  # 0.75 GiB
DENOISE_BYTES_PER_IMAGE = 1 << 29  # 0.5 GiB
SAFETY_FRACTION = 0.05
# Bytes per bf16 weight byte once each mode has been applied: FP8 halves the
# transformer, fp32 doubles it.
TRANSFORMER_SCALE = {"fp8-dynamic": 0.5, "fp8-storage": 0.5, "fp32": 2.0}
# FP8 (per-row scales) text encoders: about half their bf16 size.
TEXT_ENCODER_FP8_SCALE = 0.5
# T5-XXL's share of the three text encoders' weights (SD3.5: 9.52 of 11.16 GB).
T5_SHARE = 0.85
# The precision modes that store the transformer in FP8: they store T5-XXL in 8 bits too,
# so the process (not only the transformer) shrinks with them (docs/benchmarks.md).
FP8_MODES = ("fp8-dynamic", "fp8-storage")


@dataclass(frozen=True)
class DeviceInfo:
    """The device the pipeline runs on (from torch on the host, or from the host's GPU facts)."""

    kind: str  # "cuda" | "cpu"
    name: str
    compute_capability: tuple[int, int] | None
    total_memory_bytes: int | None


@dataclass(frozen=True)
class Software:
    """What the host's Python environment offers for FP8."""

    float8: bool  # torch has the float8 types and is >= FP8_MIN_TORCH
    torchao: bool
    torch_version: str = ""


@dataclass(frozen=True)
class PrecisionPlan:
    """The precision mode picked for a device, and why (dtype by name: no torch here)."""

    mode: str  # one of MODES
    compute_dtype: str  # "bfloat16" | "float32"
    compile: bool
    reason: str
    compile_scope: str = "blocks"


@dataclass(frozen=True)
class MemoryPlan:
    """Where the components other than the transformer keep their weights."""

    text_encoders_fp8: bool  # CLIP-L, CLIP-G and T5-XXL linears stored in FP8 (per-row scales)
    vae_tiling: bool  # decode in 512-pixel tiles
    reason: str
    t5_8bit: bool = False  # T5-XXL's linears alone in 8 bits (an FP8 mode's resident plan; precision.T5_WEIGHTS)
    expected_peak_bytes: int | None = None  # the process's GPU memory at its peak (memory_need less the margin)

    @property
    def name(self) -> str:
        return "lean" if self.text_encoders_fp8 else "resident"


def gib(n: int | float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def fits(weight_bytes: int | None, total: int | None) -> bool:
    """Whether ``weight_bytes`` leave the general headroom free on a GPU of ``total`` bytes."""
    if weight_bytes is None or total is None:
        return True
    headroom = max(VRAM_HEADROOM_BYTES, int(total * VRAM_HEADROOM_FRACTION))
    return weight_bytes + headroom <= total


def choose_precision(
    requested: str,
    device: DeviceInfo,
    software: Software,
    compile: str = "auto",
    model_bytes: int | None = None,
    warmup: bool = True,
) -> PrecisionPlan:
    """Pick the precision mode for ``device``.

    + requested: "auto" | "fp8" (best FP8 the GPU can do) | "fp8-dynamic" |
      "fp8-storage" | "bf16" | "fp32"
    + compile: "auto" | "on" | "off"
    + model_bytes: bf16 weights kept on the GPU; used to fall back to FP8
      storage when they would not fit
    + warmup: whether the service warms up (and so compiles) before it takes
      requests; without, "auto" compile is off and FP8 dynamic is not picked

    Raises ValueError when an explicit request cannot run on this device.
    """
    if requested not in REQUESTS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(REQUESTS)}")
    if compile not in COMPILE_REQUESTS:
        raise ValueError(f"compile {compile!r} is not one of {', '.join(COMPILE_REQUESTS)}")
    compiled = compile == "on" or (compile == "auto" and device.kind == "cuda" and warmup)
    mode, reason = _pick_mode(
        requested,
        device,
        software,
        model_bytes,
        compiled,
        "compile off" if compile == "off" else "no warm-up to cover the compile",
    )
    use_compile, compile_reason = _pick_compile(compile, mode, device, warmup)
    return PrecisionPlan(
        mode=mode,
        compute_dtype="float32" if mode == "fp32" else "bfloat16",
        compile=use_compile,
        reason=f"{reason}; {compile_reason}",
    )


def _pick_mode(
    requested: str,
    device: DeviceInfo,
    software: Software,
    model_bytes: int | None,
    compiled: bool,
    why_not_compiled: str,
) -> tuple[str, str]:
    cc = device.compute_capability
    where = f"this GPU ({device.name}) has {cc[0]}.{cc[1]}" if cc else f"this device ({device.name}) is a CPU"
    fp8_hw = device.kind == "cuda" and cc is not None and tuple(cc) >= FP8_MIN_CAPABILITY
    has_f8, has_ao = software.float8, software.torchao
    need_torch = ".".join(map(str, FP8_MIN_TORCH))

    if requested == "fp32":
        return "fp32", "fp32 requested"
    if requested == "bf16":
        if device.kind == "cuda" and cc is not None and tuple(cc) < BF16_MIN_CAPABILITY:
            return "bf16", f"bf16 requested ({where}: below 8.0 bf16 is emulated and slow)"
        return "bf16", "bf16 requested"
    if requested in ("fp8", "fp8-dynamic", "fp8-storage"):
        if not has_f8:
            raise ValueError(
                f"{requested} needs torch >= {need_torch} with float8 types; "
                f"this torch is {software.torch_version or 'older'}"
            )
        if device.kind != "cuda":
            raise ValueError(f"{requested} needs a CUDA GPU; {where}")
        if requested == "fp8-storage":
            return "fp8-storage", "fp8-storage requested"
        if requested == "fp8" and fp8_hw and not compiled:
            return "fp8-storage", (
                f"fp8 requested; {why_not_compiled}, and dynamic FP8 without compile is "
                "slower than bf16 (2.2x on the H100), so weights are stored in FP8 instead"
            )
        if requested == "fp8-dynamic" or fp8_hw:
            if not fp8_hw:
                raise ValueError(
                    f"fp8-dynamic needs compute capability >= {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}; {where}"
                )
            if not has_ao:
                raise ValueError("fp8-dynamic needs torchao (pip install torchao); it is not installed")
            return "fp8-dynamic", f"{requested} requested; FP8 tensor cores ({where})"
        return "fp8-storage", (
            f"fp8 requested; no FP8 tensor cores ({where}, need 8.9), so weights are stored in FP8 and computed in bf16"
        )

    # auto
    if device.kind != "cuda":
        return "fp32", f"auto: {where}, fp32"
    if fp8_hw and has_f8 and has_ao and compiled:
        return "fp8-dynamic", f"auto: FP8 tensor cores ({where}) and torchao installed"
    missing = (
        f"{why_not_compiled}: dynamic FP8 needs compile to beat bf16"
        if fp8_hw and has_f8 and has_ao
        else "torchao not installed"
        if fp8_hw and has_f8
        else f"torch {software.torch_version} < {need_torch}"
        if fp8_hw
        else f"no FP8 tensor cores, {where}"
    )
    if not fits(model_bytes, device.total_memory_bytes):
        assert model_bytes is not None and device.total_memory_bytes is not None
        if has_f8:
            return "fp8-storage", (
                f"auto: {gib(model_bytes)} of bf16 weights do not fit "
                f"{gib(device.total_memory_bytes)} with headroom ({missing}); "
                "FP8 weight storage"
            )
        return "bf16", (
            f"auto: bf16 ({missing}); {gib(model_bytes)} of weights may not fit "
            f"{gib(device.total_memory_bytes)} and this torch has no FP8 storage"
        )
    return "bf16", f"auto: bf16 ({missing})"


def _pick_compile(compile: str, mode: str, device: DeviceInfo, warmup: bool) -> tuple[bool, str]:
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
            "" if warmup else "; no warm-up: the first request waits for the compile"
        )
    if mode == "bf16":
        return True, "compiled"
    return False, "eager (layerwise casting hooks do not compile)"


def choose_memory_plan(
    mode: str,
    device: DeviceInfo,
    transformer_bytes: int | None,
    text_encoder_bytes: int | None,
    max_batch: int = 1,
) -> MemoryPlan:
    """Keep everything resident in the compute dtype when it fits the GPU; else the lean plan.

    + transformer_bytes, text_encoder_bytes: bf16 weight sizes (the three text
      encoders together); the transformer counts at its size after ``mode``
    + max_batch: the most images one pipeline call draws (``max_n``, or the
      batching limit): activations grow with it

    Resident needs the weights, the activations of ``max_batch`` images, the
    CUDA context and a margin to fit (``memory_need``); in an FP8 mode it
    stores T5-XXL in 8 bits (``t5_8bit``: 9.5 to 4.8 GB, INT8 weight-only;
    measured on the H200 it took the service's peak from 0.76x to 0.62x of
    bf16's). Lean stores the text encoders in FP8 (they run once per image, so
    the upcast costs little) and decodes in tiles (a quarter of the
    activations). ``expected_peak_bytes`` is what the process should reach
    (``memory_need`` less the card's margin; the H200 bench measured 6-7%
    under it).
    """
    if device.kind != "cuda" or transformer_bytes is None or text_encoder_bytes is None:
        return MemoryPlan(False, False, "resident: sizes or GPU unknown")
    total = device.total_memory_bytes
    if total is None:
        return MemoryPlan(False, False, "resident: GPU memory unknown")
    transformer = int(transformer_bytes * TRANSFORMER_SCALE.get(mode, 1.0))
    batch = max(1, max_batch)
    t5_8bit = mode in FP8_MODES
    t5_saved = int(text_encoder_bytes * T5_SHARE * (1 - TEXT_ENCODER_FP8_SCALE)) if t5_8bit else 0
    encoders = text_encoder_bytes - t5_saved
    resident = transformer + encoders
    need = memory_need(resident, batch, tiled=False, total=total)
    if fits(resident, total) and need <= total:
        return MemoryPlan(
            False,
            False,
            f"resident: {gib(resident)} of weights{' (T5-XXL in 8 bits)' if t5_8bit else ''} and {batch} image(s) "
            f"per call ({gib(need)} with activations and margin) fit {gib(total)}",
            t5_8bit=t5_8bit,
            expected_peak_bytes=need - int(total * SAFETY_FRACTION),
        )
    lean = transformer + int(text_encoder_bytes * TEXT_ENCODER_FP8_SCALE)
    lean_need = memory_need(lean, batch, tiled=True, total=total)
    verdict = "fits" if lean_need <= total else "may not fit"
    return MemoryPlan(
        True,
        True,
        f"lean: {gib(need)} for resident weights and {batch} image(s) per call do not "
        f"fit {gib(total)}; text encoders in FP8, tiled VAE decode ({gib(lean_need)}, "
        f"{verdict})",
        expected_peak_bytes=lean_need - int(total * SAFETY_FRACTION),
    )


def memory_need(weight_bytes: int, batch: int, tiled: bool, total: int) -> int:
    """GPU memory a process needs for ``weight_bytes`` of weights drawing ``batch`` images per call."""
    decode = TILED_DECODE_BYTES if tiled else DECODE_BYTES
    return weight_bytes + decode + batch * DENOISE_BYTES_PER_IMAGE + CONTEXT_BYTES + int(total * SAFETY_FRACTION)


_MIG_PROFILE = re.compile(r"^\d+g\.(\d+)gb(?:\+\S*)?$")  # "3g.40gb", "1g.18gb", "1g.20gb+me"


def mig_memory_mib(profile: str) -> int | None:
    """A MIG profile's memory in MiB as its name says ("1g.18gb": 18 GB); None for a name it does not parse.

    The name rounds the slice's memory (a "7g.80gb" H100 slice has 79.25 GiB), so read as decimal GB,
    which errs on the small side: a plan made for less memory than the slice has still fits it.
    """
    match = _MIG_PROFILE.match(profile)
    return None if match is None else int(match.group(1)) * 10**9 >> 20


def gpu_device(name: str, compute_capability: tuple[int, int] | None, memory_mib: int | None) -> DeviceInfo:
    """A DeviceInfo from a host's GPU facts (nvidia-smi reports memory in MiB)."""
    return DeviceInfo("cuda", name, compute_capability, None if memory_mib is None else memory_mib << 20)


# The published SD3.5 pipelines' bf16 weights (transformer, the three text encoders
# together), the components the service loads: what the control machine plans with
# before the model is on the host.
PUBLISHED_WEIGHTS = {
    "stable-diffusion-3.5-large": (16_290_000_000, 11_160_000_000),
    "stable-diffusion-3.5-large-turbo": (16_290_000_000, 11_160_000_000),
    "stable-diffusion-3.5-medium": (4_940_000_000, 11_160_000_000),
}
# What a host's venv offers: the GPU locks pin torch >= 2.9 with torchao (sd35_provision/locks/cu*.txt).
GPU_LOCK_SOFTWARE = Software(float8=True, torchao=True, torch_version="from the cu128/cu130 lock")


@dataclass(frozen=True)
class ServicePlan:
    """What the service will pick on a host's GPU, worked out on the control machine from its facts.

    ``precision`` is empty when the requested precision cannot run there
    (``reason`` says why); ``memory`` is "resident" or "lean";
    ``expected_peak_bytes`` is the process's GPU memory at its peak (the
    policy's estimate, which the H200 bench measured 6-7% above the real one).
    """

    gpu: str
    gpu_memory_bytes: int | None  # what the service plans for: the card, or service.gpu_memory_gib
    precision: str
    compile: bool
    memory: str
    t5: str  # how T5-XXL's weights are stored: "bf16", "8-bit", "fp8" (lean)
    expected_peak_bytes: int | None
    reason: str

    def line(self) -> str:
        """One line for ``plan``'s per-host output."""
        if not self.precision:
            return f"service: {self.reason}"
        peak = (
            f", expected peak {gib(self.expected_peak_bytes)} of {gib(self.gpu_memory_bytes)}"
            if self.expected_peak_bytes is not None and self.gpu_memory_bytes is not None
            else ""
        )
        return (
            f"service: {self.precision}{' + compile' if self.compile else ''}, memory {self.memory}{peak} "
            f"({self.reason})"
        )

    def to_json(self) -> dict[str, object]:
        peak = self.expected_peak_bytes
        return {
            "gpu": self.gpu,
            "gpu_memory_gib": None if self.gpu_memory_bytes is None else round(self.gpu_memory_bytes / 2**30, 2),
            "precision": self.precision or None,
            "compile": self.compile,
            "memory": self.memory or None,
            "t5": self.t5 or None,
            "expected_peak_gib": None if peak is None else round(peak / 2**30, 2),
            "reason": self.reason,
        }


def plan_service(
    requested: str,
    compile: str,
    device: DeviceInfo,
    repo: str | None,
    max_batch: int,
    software: Software = GPU_LOCK_SOFTWARE,
    gpu_memory_gib: float | None = None,
) -> ServicePlan:
    """The precision and memory plan the service will pick on ``device``.

    ``repo`` names the model (its published weight sizes, when known);
    ``max_batch`` is the most images one pipeline call draws (max_n or the
    batching limit); ``gpu_memory_gib`` caps the memory planned for, as
    ``service.gpu_memory_gib`` caps the service.
    """
    if gpu_memory_gib and device.total_memory_bytes is not None:
        device = DeviceInfo(
            device.kind,
            device.name,
            device.compute_capability,
            min(device.total_memory_bytes, int(gpu_memory_gib * 2**30)),
        )
    name = (repo or "").rstrip("/").rsplit("/", 1)[-1].lower()
    transformer, encoders = PUBLISHED_WEIGHTS.get(name, (None, None))
    total_bf16 = None if transformer is None or encoders is None else transformer + encoders
    try:
        precision = choose_precision(requested, device, software, compile, total_bf16)
    except ValueError as exc:
        return ServicePlan(
            device.name, device.total_memory_bytes, "", False, "", "", None, f"precision {requested} cannot run: {exc}"
        )
    memory = choose_memory_plan(precision.mode, device, transformer, encoders, max_batch)
    t5 = "fp8" if memory.text_encoders_fp8 else "8-bit" if memory.t5_8bit else precision.compute_dtype
    return ServicePlan(
        gpu=device.name,
        gpu_memory_bytes=device.total_memory_bytes,
        precision=precision.mode,
        compile=precision.compile,
        memory=memory.name,
        t5=t5,
        expected_peak_bytes=memory.expected_peak_bytes,
        reason=memory.reason.split(":", 1)[1].strip() if ":" in memory.reason else memory.reason,
    )


def host_plan(
    requested: str,
    compile: str,
    device: DeviceInfo,
    repo: str | None,
    max_batch: int,
    software: Software = GPU_LOCK_SOFTWARE,
) -> str:
    """``plan_service(...).line()``: one line for the control side."""
    return plan_service(requested, compile, device, repo, max_batch, software).line()
