"""Precision policy over a table of devices, and apply_precision on the tiny CPU pipeline."""

from __future__ import annotations

import pytest
import torch

from sd35_provision.service import precision
from sd35_provision.service.precision import DeviceInfo, PrecisionChoice, apply_precision, choose_precision

GiB = 1 << 30
CPU = DeviceInfo("cpu", "x86_64", None, None)
H100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 80 * GiB)
L4 = DeviceInfo("cuda", "NVIDIA L4", (8, 9), 24 * GiB)
RTX4090 = DeviceInfo("cuda", "NVIDIA GeForce RTX 4090", (8, 9), 24 * GiB)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-80GB", (8, 0), 80 * GiB)
A10G = DeviceInfo("cuda", "NVIDIA A10G", (8, 6), 24 * GiB)
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 16 * GiB)
RTX4060TI = DeviceInfo("cuda", "NVIDIA GeForce RTX 4060 Ti", (8, 9), 16 * GiB)
# bf16 weights of the whole SD3.5 Large pipeline (transformer 8.1 B + encoders 5.6 B params).
LARGE_BYTES = int(27.5e9)
MEDIUM_BYTES = int(15.0e9)


@pytest.fixture
def env(monkeypatch):
    """Set what the software offers: torchao importable, torch with float8."""

    def set_env(torchao: bool = True, float8: bool = True) -> None:
        monkeypatch.setattr(precision, "torchao_available", lambda: torchao)
        monkeypatch.setattr(precision, "torch_has_float8", lambda: float8)

    set_env()
    return set_env


AUTO_TABLE = [
    # device, model_bytes, torchao, float8 -> mode, compile
    (CPU, None, True, True, "fp32", False),
    (CPU, LARGE_BYTES, False, False, "fp32", False),
    (H100, LARGE_BYTES, True, True, "fp8-dynamic", True),
    (L4, LARGE_BYTES, True, True, "fp8-dynamic", True),
    (RTX4090, MEDIUM_BYTES, True, True, "fp8-dynamic", True),
    (H100, LARGE_BYTES, False, True, "bf16", True),  # no torchao: fits in bf16
    (RTX4090, LARGE_BYTES, False, True, "fp8-storage", False),  # no torchao, too big for bf16
    (A100, LARGE_BYTES, True, True, "bf16", True),
    (A10G, LARGE_BYTES, True, True, "fp8-storage", False),
    (A10G, MEDIUM_BYTES, True, True, "bf16", True),
    (A10G, None, True, True, "bf16", True),  # size unknown: assume it fits
    (T4, LARGE_BYTES, True, True, "fp8-storage", False),
    (A10G, LARGE_BYTES, True, False, "bf16", True),  # old torch: no FP8 storage to fall back to
    (H100, LARGE_BYTES, True, False, "bf16", True),  # old torch: no FP8 at all
]


@pytest.mark.parametrize("device,model_bytes,torchao,float8,mode,compiled", AUTO_TABLE)
def test_auto_policy(env, device, model_bytes, torchao, float8, mode, compiled):
    env(torchao=torchao, float8=float8)
    choice = choose_precision("auto", device, model_bytes=model_bytes)
    assert (choice.mode, choice.compile) == (mode, compiled), choice.reason
    assert choice.compute_dtype == (torch.float32 if mode == "fp32" else torch.bfloat16)
    assert choice.reason.startswith("auto:")


EXPLICIT_OK = [
    ("fp8", H100, "fp8-dynamic"),
    ("fp8", A100, "fp8-storage"),
    ("fp8", T4, "fp8-storage"),
    ("fp8-dynamic", L4, "fp8-dynamic"),
    ("fp8-storage", H100, "fp8-storage"),
    ("bf16", H100, "bf16"),
    ("bf16", CPU, "bf16"),
    ("fp32", H100, "fp32"),
    ("fp32", CPU, "fp32"),
]


@pytest.mark.parametrize("requested,device,mode", EXPLICIT_OK)
def test_explicit_requests(env, requested, device, mode):
    assert choose_precision(requested, device).mode == mode


EXPLICIT_REFUSED = [
    # requested, device, torchao, float8, words the message must contain
    (
        "fp8-dynamic",
        A100,
        True,
        True,
        ["fp8-dynamic needs compute capability >= 8.9", "this GPU (NVIDIA A100-SXM4-80GB) has 8.0"],
    ),
    ("fp8-dynamic", T4, True, True, ["8.9", "Tesla T4", "7.5"]),
    ("fp8-dynamic", CPU, True, True, ["CUDA GPU", "CPU"]),
    ("fp8-storage", CPU, True, True, ["CUDA GPU"]),
    ("fp8", CPU, True, True, ["CUDA GPU"]),
    ("fp8-dynamic", H100, False, True, ["torchao"]),
    ("fp8-dynamic", H100, True, False, ["torch >= 2.3", torch.__version__]),
    ("fp8-storage", H100, True, False, ["torch >= 2.3"]),
    ("fp8", H100, True, False, ["torch >= 2.3"]),
    ("int4", H100, True, True, ["'int4' is not one of"]),
]


@pytest.mark.parametrize("requested,device,torchao,float8,words", EXPLICIT_REFUSED)
def test_explicit_requests_refused(env, requested, device, torchao, float8, words):
    env(torchao=torchao, float8=float8)
    with pytest.raises(ValueError) as err:
        choose_precision(requested, device)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "compile,mode,device,expected",
    [
        ("on", "fp32", CPU, True),
        ("off", "fp8-dynamic", H100, False),
        ("auto", "fp8-storage", H100, False),
        ("auto", "bf16", H100, True),
        ("auto", "bf16", CPU, False),
        ("on", "fp8-storage", H100, True),
    ],
)
def test_compile_choice(env, compile, mode, device, expected):
    choice = choose_precision(mode, device, compile=compile)
    assert choice.compile is expected


def test_fp8_dynamic_without_compile_says_it_is_slow(env):
    assert "slower" in choose_precision("fp8-dynamic", H100, compile="off").reason


# What the H100 measured (docs/benchmarks.md): dynamic FP8 is the fastest only when
# compiled (0.58x BF16 eager's time) and the slowest without (2.24x), so without
# compile auto takes bf16, and "fp8" takes FP8 storage (1.13x) over eager dynamic FP8.
POLICY_WITHOUT_COMPILE = [
    # requested, device, compile, warmup, model_bytes -> mode, compiled, words in the reason
    ("auto", H100, "off", True, LARGE_BYTES, "bf16", False, ["compile off", "needs compile to beat bf16"]),
    ("auto", RTX4090, "off", True, MEDIUM_BYTES, "bf16", False, ["compile off"]),
    ("auto", RTX4060TI, "off", True, LARGE_BYTES, "fp8-storage", False, ["do not fit", "compile off"]),
    ("auto", H100, "auto", False, LARGE_BYTES, "bf16", False, ["no warm-up"]),
    ("auto", RTX4060TI, "auto", False, LARGE_BYTES, "fp8-storage", False, ["no warm-up"]),
    ("auto", H100, "on", False, LARGE_BYTES, "fp8-dynamic", True, ["the first request waits"]),
    ("auto", A100, "auto", False, LARGE_BYTES, "bf16", False, ["no warm-up"]),
    ("fp8", H100, "off", True, None, "fp8-storage", False, ["slower than bf16", "stored in FP8"]),
    ("fp8", H100, "auto", False, None, "fp8-storage", False, ["no warm-up"]),
    ("fp8", H100, "auto", True, None, "fp8-dynamic", True, ["FP8 tensor cores"]),
    # An explicit fp8-dynamic is what it says; without a warm-up it still compiles, the first request waiting.
    ("fp8-dynamic", H100, "auto", False, None, "fp8-dynamic", True, ["the first request waits"]),
    ("fp8-dynamic", H100, "off", True, None, "fp8-dynamic", False, ["slower than bf16"]),
    ("bf16", H100, "auto", False, None, "bf16", False, ["no warm-up"]),
    ("bf16", H100, "auto", True, None, "bf16", True, ["compiled"]),
]


@pytest.mark.parametrize("requested,device,compile,warmup,model_bytes,mode,compiled,words", POLICY_WITHOUT_COMPILE)
def test_fp8_dynamic_only_when_compiled(env, requested, device, compile, warmup, model_bytes, mode, compiled, words):
    choice = choose_precision(requested, device, compile=compile, model_bytes=model_bytes, warmup=warmup)
    assert (choice.mode, choice.compile) == (mode, compiled), choice.reason
    for word in words:
        assert word in choice.reason


def test_auto_on_a_cpu_ignores_warmup(env):
    assert choose_precision("auto", CPU, warmup=False).mode == "fp32"


def test_compile_scope_defaults_to_blocks(env):
    assert choose_precision("auto", H100, model_bytes=LARGE_BYTES).compile_scope == "blocks"


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)


class _Transformer(torch.nn.Module):
    def __init__(self, blocks: int):
        super().__init__()
        self.proj_in = torch.nn.Linear(4, 4)
        if blocks:
            self.transformer_blocks = torch.nn.ModuleList(_Block() for _ in range(blocks))


@pytest.fixture
def compiled(monkeypatch):
    """Which modules nn.Module.compile was called on, and how (nothing is compiled)."""
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    return calls


@pytest.mark.parametrize(
    "blocks,scope,expected",
    [
        (3, "blocks", ["_Block"] * 3),  # regional: each block, the rest eager
        (3, "model", ["_Transformer"]),
        (0, "blocks", ["_Transformer"]),  # no transformer_blocks: the whole model
    ],
)
def test_compile_transformer_scopes(compiled, blocks, scope, expected):
    assert precision.compile_transformer(_Transformer(blocks), scope) == len(expected)
    assert [name for name, _ in compiled] == expected
    assert all(kw == {"fullgraph": True} for _, kw in compiled)


def test_compile_transformer_refuses_an_unknown_scope(compiled):
    with pytest.raises(ValueError, match="compile scope 'layers'"):
        precision.compile_transformer(_Transformer(2), "layers")
    assert compiled == []


@pytest.mark.parametrize("mode,fullgraph", [("fp8-storage", False), ("bf16", True)])
def test_apply_precision_compiles_per_block(compiled, mode, fullgraph):
    """Layerwise casting's hooks break graphs, so FP8 storage is never compiled as one graph."""

    class Pipe:
        transformer = _Transformer(2)

    if mode == "fp8-storage":
        Pipe.transformer.enable_layerwise_casting = lambda **kw: None
    apply_precision(Pipe, PrecisionChoice(mode, torch.bfloat16, True, "test"))
    assert compiled == [("_Block", {"fullgraph": fullgraph})] * 2


def test_bad_compile_value(env):
    with pytest.raises(ValueError, match="compile 'maybe'"):
        choose_precision("auto", CPU, compile="maybe")


def test_detect_device_on_this_machine():
    info = precision.detect_device()
    assert info.kind in ("cuda", "cpu")
    if info.kind == "cpu":
        assert info.compute_capability is None and info.total_memory_bytes is None
    else:
        assert info.compute_capability is not None and info.total_memory_bytes > 0


def test_torch_here_has_float8():
    assert precision.torch_has_float8()


@pytest.mark.parametrize(
    "shape,expected",
    [
        ((2432, 2432), True),  # attention projection in SD3.5 Large
        ((9728, 2432), True),  # MLP
        ((64, 2432), False),  # proj_out: too small to pay
        ((2432, 256), False),  # timestep embedder: too small
        ((1000, 1000), False),  # not multiples of 16
        ((4096, 1001), False),
    ],
)
def test_fp8_linear_filter(shape, expected):
    out_features, in_features = shape
    layer = torch.nn.Linear(in_features, out_features, device="meta")
    assert precision.fp8_linear_filter(layer, "x") is expected
    assert precision.fp8_linear_filter(torch.nn.LayerNorm(16), "x") is False


@pytest.fixture(scope="module")
def tiny_pipe():
    pytest.importorskip("diffusers")
    from sd35_provision.tinymodel import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


def _generate(pipe) -> torch.Tensor:
    out = pipe(
        "a red cat",
        num_inference_steps=2,
        guidance_scale=3.5,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    return out.images


def test_apply_fp32_on_cpu(tiny_pipe):
    choice = choose_precision("auto", CPU)
    assert choice == PrecisionChoice("fp32", torch.float32, False, choice.reason)
    apply_precision(tiny_pipe, choice)
    image = _generate(tiny_pipe)
    assert torch.isfinite(image).all()
    assert tiny_pipe.transformer.dtype == torch.float32


def test_apply_fp8_storage_on_cpu():
    # fp8-storage is refused on a CPU by the policy, but the mechanism itself
    # runs anywhere: check it on the tiny pipeline in bf16.
    pytest.importorskip("diffusers")
    from sd35_provision.tinymodel import build_tiny_pipeline

    reference = build_tiny_pipeline(seed=0).to(torch.bfloat16)
    pipe = build_tiny_pipeline(seed=0).to(torch.bfloat16)
    choice = PrecisionChoice("fp8-storage", torch.bfloat16, False, "test")
    apply_precision(pipe, choice)
    linear = pipe.transformer.transformer_blocks[0].attn.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn
    ref_image = _generate(reference).float()
    image = _generate(pipe).float()
    assert torch.isfinite(image).all()
    rel = (image - ref_image).norm() / ref_image.norm()
    assert rel < 0.5, rel


# Whole-pipeline weights in bf16: SD3.5 Large's transformer and its three text encoders.
LARGE_TRANSFORMER = 16_110_000_000
TEXT_ENCODERS = 11_160_000_000


@pytest.mark.parametrize(
    "device,mode,lean",
    [
        (H100, "bf16", False),
        (H100, "fp8-dynamic", False),
        (RTX4090, "fp8-dynamic", False),  # 8 GB transformer + 11 GB encoders + headroom fit 24 GB
        (RTX4060TI, "fp8-dynamic", True),  # but not 16 GB
        (T4, "fp8-storage", True),
        (A100, "bf16", False),
        (CPU, "fp32", False),
    ],
)
def test_memory_plan(env, device, mode, lean):
    choice = PrecisionChoice(mode, torch.bfloat16, False, "test")
    plan = precision.choose_memory_plan(choice, device, LARGE_TRANSFORMER, TEXT_ENCODERS)
    assert (plan.text_encoders_fp8, plan.vae_tiling) == (lean, lean), plan.reason


def test_memory_plan_without_sizes_keeps_everything_resident():
    choice = PrecisionChoice("fp8-dynamic", torch.bfloat16, True, "test")
    assert not precision.choose_memory_plan(choice, RTX4090, None, None).text_encoders_fp8


def test_apply_memory_plan_without_torchao(monkeypatch):
    # Without torchao the text encoders fall back to plain layerwise FP8 casting.
    pytest.importorskip("diffusers")
    from sd35_provision.tinymodel import build_tiny_pipeline

    monkeypatch.setattr(precision, "torchao_available", lambda: False)
    pipe = build_tiny_pipeline(seed=0).to(torch.bfloat16)
    reference = _generate(build_tiny_pipeline(seed=0).to(torch.bfloat16)).float()
    precision.apply_memory_plan(pipe, precision.MemoryPlan(True, True, "test"))
    t5_linear = pipe.text_encoder_3.encoder.block[0].layer[0].SelfAttention.q
    assert t5_linear.weight.dtype == torch.float8_e4m3fn
    assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_size == precision.VAE_TILE_PIXELS
    image = _generate(pipe).float()
    assert torch.isfinite(image).all()
    assert (image - reference).norm() / reference.norm() < 0.5


def test_module_bytes():
    layer = torch.nn.Linear(16, 32)
    assert precision.module_bytes(layer) == (16 * 32 + 32) * 2
    assert precision.module_bytes(layer, torch.float32) == (16 * 32 + 32) * 4
    assert precision.module_bytes(None) == 0
