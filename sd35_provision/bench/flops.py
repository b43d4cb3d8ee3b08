"""Floating-point operations of one SD3/SD3.5 transformer forward, from its config.

Counted per image (batch 1): classifier-free guidance doubles the batch, so a
denoising step with CFG costs twice this. Multiply-adds count as 2 FLOPs;
attention counts Q·Kᵀ and P·V (4·N²·D), the same convention as
``torch.utils.flop_counter`` so the two can be checked against each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# SD3's VAE halves the image three times (four blocks) and its text sequence is
# 77 CLIP tokens followed by 256 T5 tokens.
CLIP_TOKENS = 77
T5_TOKENS = 256
TIMESTEP_CHANNELS = 256  # sinusoidal timestep features fed to the time embedder


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one transformer forward for one image, split by what runs them."""

    linear: float  # matmuls against weights (linears, the patch-embedding conv): what FP8 speeds up
    attention: float  # Q·Kᵀ and P·V: stays bf16 (SDPA)
    image_tokens: int
    text_tokens: int

    @property
    def total(self) -> float:
        return self.linear + self.attention


def image_tokens(config: Mapping[str, Any], height: int, width: int, vae_scale_factor: int = 8) -> int:
    """Tokens the transformer sees for an image of ``height`` x ``width`` pixels."""
    p = config["patch_size"]
    return (height // vae_scale_factor // p) * (width // vae_scale_factor // p)


def transformer_forward_flops(
    config: Mapping[str, Any],
    height: int,
    width: int,
    vae_scale_factor: int = 8,
    text_tokens: int = CLIP_TOKENS + T5_TOKENS,
) -> ForwardFlops:
    """FLOPs of one SD3Transformer2DModel forward (batch 1) at ``height`` x ``width``.

    + config: the transformer's config (SD3Transformer2DModel keys)
    + vae_scale_factor: pixels per latent (8 for SD3's VAE)
    + text_tokens: joint-attention text tokens (77 CLIP + 256 T5 for SD3.5)
    """
    d = config["num_attention_heads"] * config["attention_head_dim"]
    cap = config.get("caption_projection_dim", d)
    p = config["patch_size"]
    out = config.get("out_channels") or config["in_channels"]
    layers = config["num_layers"]
    dual = set(config.get("dual_attention_layers") or ())
    n_img = image_tokens(config, height, width, vae_scale_factor)
    n_txt = text_tokens
    n = n_img + n_txt

    mm = 0.0  # multiply-adds against weights
    mm += n_img * config["in_channels"] * p * p * d  # patch embedding (a strided conv)
    mm += TIMESTEP_CHANNELS * d + d * d  # timestep embedder
    mm += config["pooled_projection_dim"] * d + d * d  # pooled text embedder
    mm += n_txt * config["joint_attention_dim"] * cap  # context embedder
    att = 0.0
    for i in range(layers):
        last = i == layers - 1  # the last block only reads the text stream (context_pre_only)
        mm += d * (9 * d if i in dual else 6 * d)  # adaLN-Zero modulation of the image stream
        mm += d * (2 * d if last else 6 * d)  # modulation of the text stream
        mm += n_img * 4 * d * d  # image q, k, v, out
        mm += n_txt * (3 if last else 4) * d * d  # text q, k, v (, out)
        mm += n_img * 8 * d * d  # image MLP (4x)
        if not last:
            mm += n_txt * 8 * d * d  # text MLP
        att += 4.0 * n * n * d  # joint attention over image + text tokens
        if i in dual:  # SD3.5 Medium: a second, image-only attention
            mm += n_img * 4 * d * d
            att += 4.0 * n_img * n_img * d
    mm += d * 2 * d  # final adaLN
    mm += n_img * d * p * p * out  # unpatchify projection
    return ForwardFlops(linear=2.0 * mm, attention=att, image_tokens=n_img, text_tokens=n_txt)


@dataclass(frozen=True)
class StepFloor:
    """The fastest a denoising step can run on a device, from FLOPs and bytes."""

    flop_s: float  # linear FLOPs at the linear rate + attention FLOPs at the attention rate
    bytes_s: float  # weights read once per forward over memory bandwidth
    ms: float  # the larger of the two, in milliseconds

    @property
    def bound(self) -> str:
        return "compute" if self.flop_s >= self.bytes_s else "memory"


def step_floor(
    flops: ForwardFlops,
    batch: int,
    linear_flops_per_s: float,
    attention_flops_per_s: float,
    weight_bytes: int = 0,
    bytes_per_s: float | None = None,
) -> StepFloor:
    """Floor of one step of ``batch`` images (2 with CFG) at the given rates."""
    flop_s = batch * (flops.linear / linear_flops_per_s + flops.attention / attention_flops_per_s)
    bytes_s = weight_bytes / bytes_per_s if bytes_per_s else 0.0
    return StepFloor(flop_s=flop_s, bytes_s=bytes_s, ms=1e3 * max(flop_s, bytes_s))
