"""The benchmark's FLOP counter against SD35.md's numbers and against torch's own counter."""

from __future__ import annotations

import pytest
import torch

from sd35_provision.bench.flops import step_floor, transformer_forward_flops
from sd35_provision.bench.models import LARGE, MEDIUM, tiny_spec


def test_large_matches_sd35_md():
    # SD35.md: 4096 image + 333 text tokens, about 3.11e13 FLOPs per forward, 6.22e13 per CFG step.
    f = transformer_forward_flops(LARGE.transformer, 1024, 1024)
    assert (f.image_tokens, f.text_tokens) == (4096, 333)
    assert f.total == pytest.approx(3.11e13, rel=0.005)
    assert 2 * f.total == pytest.approx(6.22e13, rel=0.005)


def test_large_floors_match_sd35_md():
    # SD35.md: on an H100 (800 TFLOP/s bf16, about 1600 fp8) BF16 about 78 ms/step, FP8 linears
    # + BF16 attention about 48 ms/step.
    f = transformer_forward_flops(LARGE.transformer, 1024, 1024)
    assert step_floor(f, 2, 800e12, 800e12).ms == pytest.approx(78, rel=0.02)
    assert step_floor(f, 2, 1600e12, 800e12).ms == pytest.approx(48, rel=0.02)
    assert 28 * step_floor(f, 2, 800e12, 800e12).ms / 1e3 == pytest.approx(2.18, rel=0.02)


def test_floor_is_bytes_bound_when_weights_dominate():
    f = transformer_forward_flops(LARGE.transformer, 64, 64)
    floor = step_floor(f, 1, 800e12, 800e12, weight_bytes=16_000_000_000, bytes_per_s=3e12)
    assert floor.bound == "memory" and floor.ms == pytest.approx(16e9 / 3e12 * 1e3)


def _torch_count(config: dict, height: int, width: int, text_tokens: int, vae_scale: int, device: str) -> int:
    from diffusers import SD3Transformer2DModel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device(device):
        model = SD3Transformer2DModel(**config)
        h, w = height // vae_scale, width // vae_scale
        inputs = dict(
            hidden_states=torch.randn(1, config["in_channels"], h, w),
            encoder_hidden_states=torch.randn(1, text_tokens, config["joint_attention_dim"]),
            pooled_projections=torch.randn(1, config["pooled_projection_dim"]),
            timestep=torch.ones(1),
        )
    # The math SDPA backend runs attention as matmuls, which the counter sees on any device
    # (the CPU's fused flash kernel is not in its table).
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(**inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("spec", [LARGE, MEDIUM], ids=["large", "medium"])
def test_formula_equals_torch_counter_on_meta(spec):
    # The real shapes on the meta device: torch counts every matmul, conv and SDPA without computing.
    pytest.importorskip("diffusers")
    ours = transformer_forward_flops(spec.transformer, 1024, 1024)
    assert ours.total == _torch_count(spec.transformer, 1024, 1024, 333, 8, "meta")


def test_formula_equals_torch_counter_on_tiny_cpu_model():
    pytest.importorskip("diffusers")
    spec = tiny_spec()
    config = dict(spec.transformer, dual_attention_layers=(0,), num_layers=2)
    ours = transformer_forward_flops(config, 64, 48, vae_scale_factor=1, text_tokens=40)
    assert ours.total == _torch_count(config, 64, 48, 40, 1, "cpu")
