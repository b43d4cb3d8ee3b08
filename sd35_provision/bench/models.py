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
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    act_fn="silu",
    force_upcast=True,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
    sample_size=1024,
)
CLIP_L: dict[str, Any] = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, projection_dim=768, hidden_act="quick_gelu")
CLIP_G: dict[str, Any] = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20,
                              intermediate_size=5120, projection_dim=1280, hidden_act="gelu")
CLIP_VOCAB = 49408
T5_XXL: dict[str, Any] = dict(vocab_size=32128, d_model=4096, num_layers=24, num_heads=64, d_kv=64,
                              d_ff=10240, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                              relative_attention_max_distance=128)
SCHEDULER: dict[str, Any] = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


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
    from sd35_provision import tinymodel as tm

    transformer = dict(tm.TINY_TRANSFORMER_CONFIG)
    return ModelSpec("tiny (tests)", transformer, steps=2, guidance=3.5, height=64, width=64, tiny=True,
                     vae_scale_factor=1, text_tokens=tm.CLIP_MAX_LENGTH + tm.T5_MAX_LENGTH)


SPECS = {"large": LARGE, "medium": MEDIUM}


class _DefaultDtype:
    """Construct modules directly in ``dtype`` on ``device`` (no float32 CPU copy first)."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype

    def __enter__(self):
        self._old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        self._dev = torch.device(self.device)
        self._dev.__enter__()

    def __exit__(self, *exc):
        self._dev.__exit__(*exc)
        torch.set_default_dtype(self._old)


def build_transformer(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A randomly initialised transformer; the same seed gives the same weights on the same device."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    with _DefaultDtype(device, dtype):
        model = SD3Transformer2DModel(**spec.transformer)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_pipeline(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The whole StableDiffusion3Pipeline for ``spec`` on ``device``, random weights from ``seed``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    if spec.tiny:
        from sd35_provision.tinymodel import build_tiny_pipeline

        pipe = build_tiny_pipeline(seed).to(device=device, dtype=dtype)
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        return pipe

    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from sd35_provision.tinymodel import build_tokenizers

    # The real tokenizers are gated downloads; the tests' tokenizers pad to the
    # same lengths (77 CLIP, 256 T5), which is all that cost depends on.
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok, t5_tok, _, _ = build_tokenizers(Path(tmp))

    def clip(cfg: dict[str, Any], offset: int):
        torch.manual_seed(seed * 1000 + offset)
        config = CLIPTextConfig(vocab_size=CLIP_VOCAB, max_position_embeddings=77,
                                bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                                pad_token_id=clip_tok.pad_token_id, **cfg)
        with _DefaultDtype(device, dtype):
            return CLIPTextModelWithProjection(config)

    text_encoder = clip(CLIP_L, 1)
    text_encoder_2 = clip(CLIP_G, 2)
    torch.manual_seed(seed * 1000 + 3)
    with _DefaultDtype(device, dtype):
        text_encoder_3 = T5EncoderModel(T5Config(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                                 **T5_XXL))
    torch.manual_seed(seed * 1000 + 5)
    with _DefaultDtype(device, dtype):
        vae = AutoencoderKL(**VAE_CONFIG)
    pipe = StableDiffusion3Pipeline(
        transformer=build_transformer(spec, device, dtype, seed * 1000 + 4),
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tok,
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tok,
    )
    pipe.to(device=device, dtype=dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return pipe
