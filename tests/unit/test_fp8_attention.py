"""The FP8 attention path (service/fp8_attention.py) on the CPU: its quantization and the processor swap.

cuDNN's kernel needs a Hopper GPU (measured in docs/benchmarks.md); here the
op's CPU kernel does the same arithmetic in fp32, so what is checked is the
caller's side: K smoothing, per-tensor e4m3 scales, O at V's scale, the layout,
and that the swapped processor keeps the transformer's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sd35_provision.service.fp8_attention import Fp8JointAttnProcessor, fp8_attention, use_fp8_attention


def _qkv(batch=2, heads=3, tokens=77, dim=64, k_offset=0.0):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, tokens, heads, dim, generator=gen).transpose(1, 2) for _ in range(3))
    return q, k + k_offset, v


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref).norm() / ref.norm()).item()


def test_fp8_attention_is_close_to_sdpa_and_keeps_the_layout():
    q, k, v = _qkv()
    out = fp8_attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert 0 < _rel(out, ref) < 0.08  # e4m3 has 3 mantissa bits: a few percent, never exact
    assert out.transpose(1, 2).is_contiguous()


def test_k_smoothing_takes_a_shared_offset_out_before_quantizing():
    q, k, v = _qkv(k_offset=8.0)  # an offset in K dwarfs its spread: unsmoothed, e4m3 would lose K's content
    ref = F.scaled_dot_product_attention(q, k, v)
    assert _rel(fp8_attention(q, k, v), ref) < 0.08


def test_the_processor_swap_keeps_the_transformers_output():
    from sd35_provision.tinymodel import build_tiny_pipeline

    transformer = build_tiny_pipeline(seed=0).transformer.float()
    config = transformer.config
    gen = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, config.in_channels, 16, 16, generator=gen),
        "encoder_hidden_states": torch.randn(1, 7, config.joint_attention_dim, generator=gen),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=gen),
        "timestep": torch.tensor([500.0]),
    }
    with torch.no_grad():
        ref = transformer(**inputs).sample
        swapped = use_fp8_attention(transformer)
        out = transformer(**inputs).sample
    assert swapped == config.num_layers
    assert all(isinstance(b.attn.processor, Fp8JointAttnProcessor) for b in transformer.transformer_blocks)
    assert 0 < _rel(out, ref) < 0.1
