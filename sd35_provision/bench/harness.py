"""Run SD3.5 side by side in each precision mode and measure time, memory and error.

One run builds the pipeline once (random weights, see ``models``), measures the
device's matmul rates and memory bandwidth, then for each mode: a fresh
transformer with the same weights, ``apply_precision`` from the service, a
warm-up (compile happens here, timed on its own), and a few timed images, each
split into its three stages (text encoders, denoising, VAE decode). Medians are
reported. Each mode's first image and one transformer forward on fixed inputs
are compared with BF16 eager's.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sd35_provision.bench.flops import ForwardFlops, step_floor, transformer_forward_flops
from sd35_provision.bench.models import ModelSpec, build_pipeline, build_transformer
from sd35_provision.service import precision as prec

PROMPT = "a photo of an astronaut riding a red horse on the moon"


@dataclass(frozen=True)
class Mode:
    """One benchmarked configuration."""

    key: str
    label: str
    precision: str  # a PrecisionChoice mode
    compile: bool
    # The pipeline with the lean memory plan (FP8 text encoders, tiled VAE). The plan
    # stays applied, so lean modes run last.
    lean: bool = False
    reuse: bool = False  # the previous mode's transformer, as it is (same precision, already compiled)
    attention: str | None = None  # an SDPA backend forced for the whole mode; None: PyTorch's choice


# In the order they run. The four modes and the lean plan by default;
# "FP8 dynamic, no compile" is an experiment (what FP8 costs without compile) and
# runs when named. (PyTorch 2.11 already picks cuDNN's attention kernel at SD3.5's
# shape on an H100, the fastest of its three: see the SDPA-by-backend rates.)
MODES = (
    Mode("bf16", "BF16 eager", "bf16", False),
    Mode("bf16-compile", "BF16 + compile", "bf16", True),
    Mode("fp8-storage", "FP8 storage (layerwise cast)", "fp8-storage", False),
    Mode("fp8-dynamic-eager", "FP8 dynamic, no compile", "fp8-dynamic", False),
    Mode("fp8-dynamic", "FP8 dynamic + compile", "fp8-dynamic", True),
    Mode("fp8-dynamic-lean", "FP8 dynamic + compile, lean memory", "fp8-dynamic", True, lean=True, reuse=True),
)
MODE_KEYS = tuple(m.key for m in MODES)
DEFAULT_MODES = ("bf16", "bf16-compile", "fp8-storage", "fp8-dynamic", "fp8-dynamic-lean")


@dataclass
class Rates:
    """What the device measured in this run (FLOP/s and bytes/s); None where not measurable."""

    bf16_matmul: float
    fp8_matmul: float | None  # per-tensor scales (cuBLAS): the FP8 peak
    fp8_rowwise_matmul: float | None  # per-row scales: what torchao's PerRow calls
    attention: float | None  # SDPA at the model's own shape
    copy_bandwidth: float | None  # device-to-device copy, bytes read + written
    matmul_size: int = 0
    attention_backends: dict[str, float] = field(default_factory=dict)  # SDPA rate with each backend forced


@dataclass
class ModeResult:
    key: str
    label: str
    status: str  # "ok" | "skipped" | "failed"
    note: str = ""
    warmup_s: float | None = None
    image_s: float | None = None  # median seconds per image, warm
    step_ms: float | None = None  # median denoising ms per step
    encode_s: float | None = None
    denoise_s: float | None = None
    decode_s: float | None = None
    peak_allocated: int | None = None  # whole pipeline, bytes
    peak_reserved: int | None = None
    stage_peaks: dict[str, int] = field(default_factory=dict)  # allocated, per stage
    resident_bytes: int | None = None  # allocated before the image (weights + caches)
    floor_step_ms: float | None = None
    floor_bound: str = ""
    sdpa_floor_step_ms: float | None = None  # the same floor with attention at the measured SDPA rate
    image_rel_err: float | None = None  # vs BF16 eager, same seed
    latent_rel_err: float | None = None
    forward_rel_err: float | None = None  # one transformer forward on fixed inputs
    finite: bool | None = None
    profile_ms: dict[str, float] = field(default_factory=dict)  # GPU time by kernel kind, one forward
    profile_top: list[tuple[str, float]] = field(default_factory=list)
    reps: list[dict[str, float]] = field(default_factory=list)


@dataclass
class BenchRun:
    model: str
    height: int
    width: int
    steps: int
    guidance: float
    cfg: bool
    reps: int
    env: dict[str, str]
    rates: Rates
    flops_linear: float
    flops_attention: float
    image_tokens: int
    text_tokens: int
    transformer_params: int
    pipeline_bytes: dict[str, int]
    modes: list[ModeResult]

    @property
    def flops(self) -> ForwardFlops:
        return ForwardFlops(self.flops_linear, self.flops_attention, self.image_tokens, self.text_tokens)

    def mode(self, key: str) -> ModeResult | None:
        return next((m for m in self.modes if m.key == key and m.status == "ok"), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRun:
        data = dict(data)
        data["rates"] = Rates(**data["rates"])
        data["modes"] = [
            ModeResult(**{**m, "profile_top": [tuple(t) for t in m.get("profile_top", [])]}) for m in data["modes"]
        ]
        return cls(**data)


def merge_runs(runs: list[BenchRun]) -> list[BenchRun]:
    """One run per model and setting: modes measured in several runs (commands) are joined,
    the first run's measurement of a mode kept. The env's command lists every source command."""
    merged: dict[tuple, BenchRun] = {}
    for run in runs:
        # Runs from before the compile scope was recorded compiled the whole model.
        key = (
            run.model,
            run.height,
            run.width,
            run.steps,
            run.env.get("device"),
            run.env.get("compile scope", "model"),
        )
        if key not in merged:
            merged[key] = BenchRun.from_dict(asdict(run))
            continue
        into = merged[key]
        have = {m.key for m in into.modes if m.status == "ok"}
        extra = [m for m in run.modes if m.status == "ok" and m.key not in have]
        if extra:
            into.modes = [m for m in into.modes if m.status == "ok" or m.key not in {e.key for e in extra}]
            into.modes += extra
            into.modes.sort(key=lambda m: MODE_KEYS.index(m.key))
            into.env["command"] += (
                f"; rows {', '.join(m.key for m in extra)}: {run.env.get('command', '?')} ({run.env.get('date', '?')})"
            )
    return list(merged.values())


def load_runs(path: Path) -> list[BenchRun]:
    """Runs saved with ``--json`` (a list, or one run)."""
    data = json.loads(Path(path).read_text())
    return [BenchRun.from_dict(d) for d in (data if isinstance(data, list) else [data])]


# ---------------------------------------------------------------- measuring


class Clock:
    """Wall-clock timing that waits for the device's queued work first."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


def _median_time(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int = 3) -> float:
    """Median seconds of ``fn`` (device events on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_rates(device: torch.device, spec: ModelSpec, quick: bool) -> Rates:
    """Matmul rates (bf16, fp8 per-tensor and per-row), SDPA at the model's shape, copy bandwidth."""
    n = 256 if quick else 8192
    iters = 3 if quick else 20
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    flop = 2.0 * n**3
    bf16 = flop / _median_time(lambda: a @ b, device, iters)

    fp8 = fp8_rowwise = None
    cc = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    if cc is not None and cc >= prec.FP8_MIN_CAPABILITY:
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.to(torch.float8_e4m3fn).t().contiguous().t()  # column-major, as _scaled_mm wants
        one = torch.ones((), device=device)
        fp8 = flop / _median_time(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16), device, iters)
        sa = torch.rand(n, 1, device=device) + 0.5
        sb = torch.rand(1, n, device=device) + 0.5
        try:
            fp8_rowwise = flop / _median_time(
                lambda: torch._scaled_mm(a8, b8, sa, sb, out_dtype=torch.bfloat16), device, iters
            )
        except RuntimeError:
            fp8_rowwise = None

    heads = spec.transformer["num_attention_heads"]
    head_dim = spec.transformer["attention_head_dim"]
    tokens = (
        64
        if quick
        else (spec.height // spec.vae_scale_factor // spec.transformer["patch_size"])
        * (spec.width // spec.vae_scale_factor // spec.transformer["patch_size"])
        + spec.text_tokens
    )
    batch = 2 if spec.cfg else 1
    # The layout diffusers' attention processors pass: (batch, tokens, heads, dim) viewed as
    # (batch, heads, tokens, dim); SDPA picks its kernel by layout too.
    q, k, v = (
        torch.randn(batch, tokens, heads, head_dim, device=device, dtype=torch.bfloat16, generator=gen).transpose(1, 2)
        for _ in range(3)
    )
    sdpa = torch.nn.functional.scaled_dot_product_attention
    attention_flop = 4.0 * batch * heads * tokens**2 * head_dim
    attention = attention_flop / _median_time(lambda: sdpa(q, k, v), device, iters)
    backends: dict[str, float] = {}
    if device.type == "cuda":
        for name in SDPA_BACKENDS:
            try:
                with sdpa_backend(name):
                    backends[name] = attention_flop / _median_time(lambda: sdpa(q, k, v), device, iters)
            except RuntimeError:  # this backend does not take the shape or dtype
                pass

    copy_bw = None
    if device.type == "cuda":
        src = torch.empty(1 << 30, dtype=torch.uint8, device=device).random_(generator=gen)
        dst = torch.empty_like(src)
        copy_bw = 2.0 * src.numel() / _median_time(lambda: dst.copy_(src), device, iters)
        del src, dst
    return Rates(
        bf16_matmul=bf16,
        fp8_matmul=fp8,
        fp8_rowwise_matmul=fp8_rowwise,
        attention=attention,
        copy_bandwidth=copy_bw,
        matmul_size=n,
        attention_backends=backends,
    )


SDPA_BACKENDS = ("flash", "cudnn", "efficient")


def sdpa_backend(name: str | None):
    """A context forcing one SDPA backend ("flash", "cudnn", "efficient"); None leaves PyTorch's choice."""
    import contextlib

    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[name]
    return sdpa_kernel(backend)


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


@dataclass
class _Image:
    latents: torch.Tensor
    image: torch.Tensor
    times: dict[str, float]
    peaks: dict[str, int]
    reserved: int


def generate(pipe, spec: ModelSpec, device: torch.device, steps: int, seed: int = 0) -> _Image:
    """One image in three timed stages (text encoders, denoising, VAE decode), with each stage's peak memory."""
    clock = Clock(device)
    cuda = device.type == "cuda"
    times: dict[str, float] = {}
    peaks: dict[str, int] = {}
    reserved = 0

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        nonlocal reserved
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = clock.now()
        out = fn()
        times[name] = clock.now() - t0
        if cuda:
            peaks[name] = torch.cuda.max_memory_allocated(device)
            reserved = max(reserved, torch.cuda.max_memory_reserved(device))
        return out

    with torch.inference_mode():
        embeds = stage(
            "encode",
            lambda: pipe.encode_prompt(
                prompt=PROMPT,
                prompt_2=PROMPT,
                prompt_3=PROMPT,
                device=device,
                do_classifier_free_guidance=spec.cfg,
                negative_prompt="",
                negative_prompt_2="",
                negative_prompt_3="",
                max_sequence_length=spec.text_tokens - 77,
            ),
        )
        prompt_embeds, negative_embeds, pooled, negative_pooled = embeds
        latents = stage(
            "denoise",
            lambda: (
                pipe(
                    prompt_embeds=prompt_embeds,
                    negative_prompt_embeds=negative_embeds,
                    pooled_prompt_embeds=pooled,
                    negative_pooled_prompt_embeds=negative_pooled,
                    height=spec.height,
                    width=spec.width,
                    num_inference_steps=steps,
                    guidance_scale=spec.guidance,
                    generator=torch.Generator().manual_seed(seed),
                    output_type="latent",
                ).images
            ),
        )

        def decode() -> torch.Tensor:
            vae = pipe.vae
            z = latents / vae.config.scaling_factor + vae.config.shift_factor
            return (vae.decode(z.to(vae.dtype), return_dict=False)[0] / 2 + 0.5).clamp(0, 1)

        image = stage("decode", decode)
    return _Image(latents=latents.float().cpu(), image=image.float().cpu(), times=times, peaks=peaks, reserved=reserved)


def forward_inputs(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Fixed random inputs for one transformer forward of a CFG step (batch 2)."""
    gen = torch.Generator().manual_seed(1234)
    batch = 2 if spec.cfg else 1
    cfg = spec.transformer
    h, w = spec.height // spec.vae_scale_factor, spec.width // spec.vae_scale_factor

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    # The timestep as the pipeline passes it (float32, the scheduler's dtype, one value
    # expanded to the batch; inference tensors, as the harness runs the pipeline in
    # inference mode): anything else makes a compiled transformer compile again.
    with torch.inference_mode():
        return dict(
            hidden_states=rnd(batch, cfg["in_channels"], h, w),
            encoder_hidden_states=rnd(batch, spec.text_tokens, cfg["joint_attention_dim"]),
            pooled_projections=rnd(batch, cfg["pooled_projection_dim"]),
            timestep=torch.full((1,), 500.0, device=device, dtype=torch.float32).expand(batch),
        )


def transformer_forward(transformer, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward called exactly as the SD3 pipeline calls it (the same keywords), so a
    compiled transformer reuses the graph the pipeline compiled instead of compiling again."""
    return transformer(**inputs, joint_attention_kwargs=None, return_dict=False)[0]


# First match wins. Inductor's kernels are all "triton_*" (in FP8 mode they hold the
# activation quantization, fused with the norm/GELU before it, and are named
# after the _scaled_mm they feed); cuBLAS names its FP8 GEMMs "nvjet_sm90_qq*".
KERNEL_KINDS = (
    ("triton (fused)", ("triton",)),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("fp8 matmul", ("_qq", "e4m3", "fp8", "f8f8", "qgmma")),
    ("matmul", ("gemm", "xmma", "nvjet", "cutlass", "cublas", "ampere_", "sm90_")),
    ("copy/cast", ("copy", "cast", "convert")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KERNEL_KINDS:
        if any(k in low for k in keys):
            return kind
    return "other elementwise"


def profile_forward(transformer, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """GPU time (ms) of one transformer forward by kernel kind, and the ten costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        transformer_forward(transformer, inputs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            transformer_forward(transformer, inputs)
            torch.cuda.synchronize()
    by_kind: dict[str, float] = {}
    kernels: list[tuple[str, float]] = []
    for evt in prof.key_averages():
        us = float(getattr(evt, "self_device_time_total", 0.0) or 0.0)
        if us <= 0:
            continue
        kernels.append((evt.key[:90], us / 1e3))
        kind = kernel_kind(evt.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + us / 1e3
    kernels.sort(key=lambda kv: -kv[1])
    by_kind["total"] = sum(v for k, v in by_kind.items())
    return by_kind, kernels[:10]


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device, compile_scope: str = "blocks") -> dict[str, str]:
    """Versions, device, driver and date, for the report."""
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m sd35_provision.bench", *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda (torch)": str(torch.version.cuda),
        "diffusers": version("diffusers"),
        "transformers": version("transformers"),
        "torchao": version("torchao"),
        "triton": version("triton"),
        "host": platform.node() or "?",
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "(unset)"),
        "compile scope": compile_scope,
    }
    try:
        import torch._inductor.config as inductor_config

        if inductor_config.coordinate_descent_tuning:
            env["inductor"] = "coordinate-descent tuning"
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device"] = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, cc {props.major}.{props.minor}, "
            f"{props.multi_processor_count} SMs"
        )
        try:
            env["driver"] = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                .stdout.strip()
                .splitlines()[0]
            )
        except (OSError, IndexError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    else:
        env["device"] = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
        env["driver"] = "-"
    return env


# ---------------------------------------------------------------- the run


def run_benchmark(
    spec: ModelSpec,
    device: torch.device,
    modes: tuple[str, ...] = DEFAULT_MODES,
    reps: int = 3,
    warmup_steps: int = 2,
    steps: int | None = None,
    profile: bool = True,
    quick: bool = False,
    log: Callable[[str], None] = print,
    checkpoint: Callable[[BenchRun], None] | None = None,
    compile_scope: str = "blocks",
) -> BenchRun:
    """Measure ``spec`` in each of ``modes`` on ``device``; see the module docstring."""
    steps = steps or spec.steps
    dtype = torch.bfloat16
    t0 = time.perf_counter()
    rates = measure_rates(device, spec, quick)
    log(
        f"rates: bf16 {rates.bf16_matmul / 1e12:.0f} TFLOP/s, fp8 {_t(rates.fp8_matmul)}, "
        f"fp8 rowwise {_t(rates.fp8_rowwise_matmul)}, sdpa {_t(rates.attention)}, "
        f"copy {(rates.copy_bandwidth or 0) / 1e12:.2f} TB/s, SDPA by backend "
        + (", ".join(f"{k} {_t(v)}" for k, v in rates.attention_backends.items()) or "n/a")
        + f" ({time.perf_counter() - t0:.1f} s)"
    )

    t0 = time.perf_counter()
    pipe = build_pipeline(spec, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    sizes = {name: prec.module_bytes(m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    log(
        f"built {spec.name} in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sizes.items())
    )
    flops = transformer_forward_flops(
        spec.transformer, spec.height, spec.width, spec.vae_scale_factor, spec.text_tokens
    )
    run = BenchRun(
        model=spec.name,
        height=spec.height,
        width=spec.width,
        steps=steps,
        guidance=spec.guidance,
        cfg=spec.cfg,
        reps=reps,
        env=environment(device, compile_scope),
        rates=rates,
        flops_linear=flops.linear,
        flops_attention=flops.attention,
        image_tokens=flops.image_tokens,
        text_tokens=flops.text_tokens,
        transformer_params=sum(p.numel() for p in pipe.transformer.parameters()),
        pipeline_bytes=sizes,
        modes=[],
    )
    info = prec.detect_device() if device.type == "cuda" else prec.DeviceInfo("cpu", "cpu", None, None)
    inputs = forward_inputs(spec, device, dtype)
    reference: dict[str, torch.Tensor] = {}
    previous: Mode | None = None
    lean_applied = False
    batch = 2 if spec.cfg else 1

    for mode in (m for m in MODES if m.key in modes):
        result = ModeResult(mode.key, mode.label, "skipped")
        run.modes.append(result)
        skip = _skip_reason(mode, info, quick, previous, run)
        if skip:
            result.note = skip
            log(f"[{mode.key}] skipped: {skip}")
            continue
        try:
            if not mode.reuse:
                pipe.transformer = None  # drop the last mode's transformer before building the next
                if device.type == "cuda":
                    torch._dynamo.reset()
                _free(device)
                if device.type == "cuda":
                    log(
                        f"[{mode.key}] start: {torch.cuda.memory_allocated(device) / 1e9:.2f} GB allocated "
                        "without a transformer"
                    )
                transformer = (
                    build_transformer(spec, device, dtype)
                    if not spec.tiny
                    else build_pipeline(spec, device, dtype).transformer
                )
                pipe.transformer = transformer
                choice = prec.PrecisionChoice(mode.precision, dtype, mode.compile, "benchmark", compile_scope)
                prec.apply_precision(pipe, choice)
            if mode.lean and not lean_applied:
                prec.apply_memory_plan(pipe, prec.MemoryPlan(True, True, "benchmark"))
                lean_applied = True
                _free(device)
            with sdpa_backend(mode.attention):
                _measure_mode(
                    pipe,
                    spec,
                    device,
                    mode,
                    result,
                    steps,
                    reps,
                    warmup_steps,
                    inputs,
                    reference,
                    profile and device.type == "cuda",
                    log,
                )
            floor_rate = rates.fp8_matmul if mode.precision == "fp8-dynamic" and rates.fp8_matmul else rates.bf16_matmul
            weight_bytes = int(sizes["transformer"] * (0.5 if mode.precision.startswith("fp8") else 1.0))
            floor = step_floor(flops, batch, floor_rate, rates.bf16_matmul, weight_bytes, rates.copy_bandwidth)
            result.floor_step_ms, result.floor_bound = floor.ms, floor.bound
            sdpa_rate = rates.attention_backends.get(mode.attention) if mode.attention else rates.attention
            if sdpa_rate:
                result.sdpa_floor_step_ms = step_floor(
                    flops, batch, floor_rate, sdpa_rate, weight_bytes, rates.copy_bandwidth
                ).ms
            result.status = "ok"
            previous = mode
        except Exception as err:  # one mode failing must not lose the others
            result.status = "failed"
            result.note = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            log(f"[{mode.key}] FAILED: {result.note}")
            traceback.print_exc()
            previous = None
        log(_row_line(result))
        if checkpoint:
            checkpoint(run)
    del pipe
    _free(device)
    return run


def _t(rate: float | None) -> str:
    return f"{rate / 1e12:.0f} TFLOP/s" if rate else "n/a"


def _skip_reason(mode: Mode, info: prec.DeviceInfo, quick: bool, previous: Mode | None, run: BenchRun) -> str:
    if mode.reuse and (previous is None or previous.precision != mode.precision or previous.lean):
        return f"needs {mode.precision} measured just before it"
    if quick and mode.compile:
        return "compile is not run in --quick"
    if mode.attention and mode.attention not in run.rates.attention_backends:
        return f"SDPA's {mode.attention} backend does not run at this shape here"
    if info.kind != "cuda" and mode.precision == "fp8-storage":
        return ""  # layerwise casting itself runs on a CPU; the policy only refuses it there
    try:
        prec.choose_precision(mode.precision, info)
    except ValueError as err:
        return str(err)
    return ""


def _measure_mode(
    pipe,
    spec: ModelSpec,
    device: torch.device,
    mode: Mode,
    result: ModeResult,
    steps: int,
    reps: int,
    warmup_steps: int,
    inputs: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    profile: bool,
    log: Callable[[str], None],
) -> None:
    clock = Clock(device)
    t0 = clock.now()
    # Two short images: the first compiles (and autotunes), the second catches a recompile.
    for _ in range(2):
        generate(pipe, spec, device, warmup_steps)
    result.warmup_s = clock.now() - t0
    log(f"[{mode.key}] warm-up {result.warmup_s:.1f} s")

    with torch.inference_mode():
        out = transformer_forward(pipe.transformer, inputs).float().cpu()
    if mode.key == "bf16":
        reference["forward"] = out
    elif "forward" in reference:
        result.forward_rel_err = _rel_err(out, reference["forward"])

    _free(device)
    if device.type == "cuda":
        result.resident_bytes = torch.cuda.memory_allocated(device)
    images = []
    for rep in range(reps):
        img = generate(pipe, spec, device, steps)
        images.append(img)
        result.reps.append(dict(img.times))
        log(f"[{mode.key}] rep {rep}: " + ", ".join(f"{k} {v:.3f} s" for k, v in img.times.items()))
    med = lambda key: statistics.median(i.times[key] for i in images)  # noqa: E731
    result.encode_s, result.denoise_s, result.decode_s = med("encode"), med("denoise"), med("decode")
    result.image_s = statistics.median(sum(i.times.values()) for i in images)
    result.step_ms = 1e3 * result.denoise_s / steps
    if device.type == "cuda":
        result.stage_peaks = {k: max(i.peaks[k] for i in images) for k in images[0].peaks}
        result.peak_allocated = max(result.stage_peaks.values())
        result.peak_reserved = max(i.reserved for i in images)
    first = images[0]
    result.finite = bool(torch.isfinite(first.image).all() and torch.isfinite(first.latents).all())
    if mode.key == "bf16":
        reference["image"], reference["latents"] = first.image, first.latents
    elif "image" in reference:
        result.image_rel_err = _rel_err(first.image, reference["image"])
        result.latent_rel_err = _rel_err(first.latents, reference["latents"])
    if profile:
        result.profile_ms, result.profile_top = profile_forward(pipe.transformer, inputs)


def _row_line(r: ModeResult) -> str:
    if r.status != "ok":
        return f"[{r.key}] {r.status}: {r.note}"
    peak = f"{r.peak_allocated / 1e9:.2f} GB" if r.peak_allocated else "n/a"
    return (
        f"[{r.key}] {r.image_s:.3f} s/image, {r.step_ms:.1f} ms/step (floor {r.floor_step_ms:.1f}), "
        f"encode {r.encode_s:.3f} s, decode {r.decode_s:.3f} s, peak {peak}, warm-up {r.warmup_s:.1f} s"
    )
