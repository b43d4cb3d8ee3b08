"""SD3.5 pipelines with random weights, built from the published configs (docs: shared/SD35.md).

No weights can be downloaded where the benchmark runs, and speed and memory do
not depend on the weights' values, so the components are built from their
configs and randomly initialised, directly on the target device in the target
dtype (T5-XXL alone is 4.7 B parameters: a float32 copy on the CPU would cost
19 GB and minutes of initialisation).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sd35_provision import tinymodel as tm

_LARGE_TRANSFORMER: dict[str, Any] = dict(
    attention_head_dim=64,
    caption_projection_dim=2432,
    in_channels=16,
    joint_attention_dim=4096,
    num_attention_heads=38,
    num_layers=38,
    out_channels=16,
    patch_size=2,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
    sample_size=128,
)
_MEDIUM_TRANSFORMER: dict[str, Any] = dict(
    _LARGE_TRANSFORMER,
    caption_projection_dim=1536,
    num_attention_heads=24,
    num_layers=24,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
)
VAE_CONFIG: dict[str, Any] = dict(
    tm.SD3_VAE_LATENT_CONFIG,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=1024,
)
CLIP_VOCAB = 49408
CLIP_L: dict[str, Any] = dict(
    vocab_size=CLIP_VOCAB,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    projection_dim=768,
    hidden_act="quick_gelu",
)
CLIP_G: dict[str, Any] = dict(
    vocab_size=CLIP_VOCAB,
    hidden_size=1280,
    num_hidden_layers=32,
    num_attention_heads=20,
    intermediate_size=5120,
    projection_dim=1280,
    hidden_act="gelu",
)
T5_XXL: dict[str, Any] = dict(
    vocab_size=32128,
    d_model=4096,
    num_layers=24,
    num_heads=64,
    d_kv=64,
    d_ff=10240,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
)


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model and its recommended sampling settings."""

    name: str
    transformer: dict[str, Any]
    steps: int
    guidance: float
    height: int = 1024
    width: int = 1024
    tiny: bool = False  # the tests' tiny pipeline (sd35_provision.tinymodel) instead of these configs
    vae_scale_factor: int = 8
    text_tokens: int = 77 + 256
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0


LARGE = ModelSpec("SD3.5 Large", _LARGE_TRANSFORMER, steps=28, guidance=3.5)
MEDIUM = ModelSpec("SD3.5 Medium", _MEDIUM_TRANSFORMER, steps=40, guidance=4.5)


def tiny_spec() -> ModelSpec:
    """The tests' tiny pipeline, 64x64, 2 steps: runs the whole harness on a CPU in seconds."""
    transformer = dict(tm.TINY_TRANSFORMER_CONFIG)
    return ModelSpec(
        "tiny (tests)",
        transformer,
        steps=2,
        guidance=3.5,
        height=64,
        width=64,
        tiny=True,
        vae_scale_factor=1,
        text_tokens=tm.CLIP_MAX_LENGTH + tm.T5_MAX_LENGTH,
    )


SPECS = {"large": LARGE, "medium": MEDIUM}


def build_transformer(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A randomly initialised transformer: the same weights as ``build_pipeline(spec, ..., seed)``'s."""
    model = tm.build_sd3_transformer(spec.transformer, seed, device, dtype)
    return model.to(device=device, dtype=dtype).requires_grad_(False)


def build_pipeline(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The whole StableDiffusion3Pipeline for ``spec`` on ``device``, random weights from ``seed``."""
    if spec.tiny:
        pipe = tm.build_tiny_pipeline(seed).to(device=device, dtype=dtype)
    else:
        # The real tokenizers are gated downloads; the tests' tokenizers pad to the
        # same lengths (77 CLIP, 256 T5), which is all that cost depends on.
        with tempfile.TemporaryDirectory() as tmp:
            clip_tok, t5_tok, _, _ = tm.build_tokenizers(Path(tmp))
        configs = tm.SD3Configs(clip_l=CLIP_L, clip_g=CLIP_G, t5=T5_XXL, transformer=spec.transformer, vae=VAE_CONFIG)
        pipe = tm.build_sd3_pipeline(configs, clip_tok, t5_tok, seed, device, dtype)
        pipe.to(device=device, dtype=dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return pipe
