"""A tiny but real Stable Diffusion 3 pipeline: a test fixture that ships in the package.

It lives in the product, not under tests/, because ``sd35-provision demo``
pushes it to the local test fleet (the whole flow without gated weights) and
the benchmark (sd35_provision.bench.models) builds its random full-size SD3.5
Large and Medium pipelines with ``build_sd3_pipeline``, from the published
configs; the unit, service and fleet tests use it too. Only the demo and the
tests put it on a host: a real spec names real weights.

It has the same structure as SD3.5 (two CLIP text encoders, a T5 encoder, an
MMDiT transformer, a 16-channel VAE and a flow-matching scheduler) with every
width shrunk, so the service, the smoke test and the provisioner's model step
can be exercised end to end without the gated multi-GB weights. It is about
2 MB on disk and draws a 64x64 image in well under a second on a CPU.

The same seed gives byte-identical files (with the same library versions), so
tests can pin checksums.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where the tiny model's limits come from: one VAE block means no downsampling
# (vae_scale_factor 1) and patch size 2, so the largest image side is
# pos_embed_max_size * 2 pixels.
TINY_SAMPLE_SIZE = 64
TINY_PATCH_SIZE = 2
TINY_POS_EMBED_MAX_SIZE = 64
TINY_WIDTH = 32
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 256

# The tiny SD3 transformer; public so the benchmark can size its cost model from it.
TINY_TRANSFORMER_CONFIG: dict[str, object] = dict(
    sample_size=TINY_SAMPLE_SIZE,
    patch_size=TINY_PATCH_SIZE,
    in_channels=16,
    num_layers=1,
    attention_head_dim=8,
    num_attention_heads=4,
    joint_attention_dim=TINY_WIDTH,
    caption_projection_dim=TINY_WIDTH,
    pooled_projection_dim=2 * TINY_WIDTH,  # the two CLIP projections, concatenated
    out_channels=16,
    pos_embed_max_size=TINY_POS_EMBED_MAX_SIZE,
    qk_norm="rms_norm",
)

# SD3's flow-matching scheduler and its VAE's latent space: the same in every SD3.5
# model (shared/SD35.md) and in the tiny one.
SD3_SCHEDULER_CONFIG: dict[str, Any] = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
SD3_VAE_LATENT_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
)

# A few merges so the BPE actually merges something; the rest of the text is
# tokenized byte by byte, which is all a random-weight model needs.
_CLIP_WORD_MERGES = ["a", "the", "cat", "dog", "red", "blue", "photo", "of", "an", "astronaut"]
_T5_WORDS = ["a", "the", "cat", "dog", "red", "blue", "photo", "of", "an", "astronaut"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table (byte-level BPE alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=False))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The hand-written CLIP BPE vocabulary (vocab.json) and merge rules (merges.txt)."""
    alphabet = sorted(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    tokens += alphabet
    tokens += [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in _CLIP_WORD_MERGES:
        # Left-to-right merges: ((c0 c1) c2) ... with the end-of-word marker on the last char.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            rule = f"{current} {piece}"
            current = current + piece
            if rule not in merges:
                merges.append(rule)
            if current not in tokens:
                tokens.append(current)
    return {tok: i for i, tok in enumerate(tokens)}, merges


def t5_unigram_vocab() -> list[tuple[str, float]]:
    """The T5 Unigram vocabulary: specials first (T5 ids 0, 1, 2), then pieces with log-probs."""
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,!?-'":
        vocab.append((ch, -5.0))
    for word in _T5_WORDS:
        vocab.append(("▁" + word, -3.0))
    return vocab


def build_tokenizers(work_dir: Path):
    """(clip, t5, clip_vocab_size, t5_vocab_size): CLIP loaded from hand-written vocab.json + merges.txt
    written to ``work_dir``, T5 from a Unigram vocabulary."""
    # T5TokenizerFast is a lazy alias transformers resolves at import time; its stubs do not list it.
    from transformers import CLIPTokenizer, T5TokenizerFast  # type: ignore[attr-defined]

    vocab, merges = clip_vocab_and_merges()
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (work_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    clip = CLIPTokenizer.from_pretrained(str(work_dir), model_max_length=CLIP_MAX_LENGTH, local_files_only=True)
    # extra_ids=0: no sentinel tokens, they only matter for T5 pre-training.
    t5_vocab = t5_unigram_vocab()
    t5 = T5TokenizerFast(vocab=t5_vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)
    return clip, t5, len(vocab), len(t5_vocab)


@dataclass(frozen=True)
class SD3Configs:
    """The configs of an SD3 pipeline's random-weight components.

    + clip_l, clip_g: CLIPTextConfig keywords (vocab_size included) of text_encoder, text_encoder_2
    + t5: T5Config keywords of text_encoder_3
    + transformer: SD3Transformer2DModel keywords
    + vae: AutoencoderKL keywords
    """

    clip_l: dict[str, Any]
    clip_g: dict[str, Any]
    t5: dict[str, Any]
    transformer: dict[str, Any]
    vae: dict[str, Any]


@contextlib.contextmanager
def _built_on(device: Any = None, dtype: Any = None) -> Iterator[None]:
    """Construct modules directly on ``device`` in ``dtype`` (no float32 CPU copy first); nothing if both None."""
    if device is None and dtype is None:
        yield
        return
    import torch

    old = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            yield
    finally:
        torch.set_default_dtype(old)


def seeded_component(seed: int, offset: int, build: Any, device: Any = None, dtype: Any = None) -> Any:
    """``build()`` with the RNG at ``seed * 1000 + offset``, in eval mode.

    Each component has its own offset (CLIP-L 1, CLIP-G 2, T5 3, transformer 4,
    VAE 5), so changing one never reshuffles the others' weights.
    """
    import torch

    torch.manual_seed(seed * 1000 + offset)
    with _built_on(device, dtype):
        return build().eval()


TRANSFORMER_SEED_OFFSET = 4


def build_sd3_transformer(config: dict[str, Any], seed: int = 0, device: Any = None, dtype: Any = None) -> Any:
    """The random-weight SD3 transformer that ``build_sd3_pipeline`` with ``seed`` would hold."""
    from diffusers import SD3Transformer2DModel

    return seeded_component(seed, TRANSFORMER_SEED_OFFSET, lambda: SD3Transformer2DModel(**config), device, dtype)


def build_sd3_pipeline(
    configs: SD3Configs, clip_tokenizer: Any, t5_tokenizer: Any, seed: int = 0, device: Any = None, dtype: Any = None
) -> Any:
    """A StableDiffusion3Pipeline of random-weight components (``seed``), built on ``device`` in ``dtype``
    (default: the CPU in float32); both CLIP encoders share ``clip_tokenizer``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def clip(config: dict[str, Any], offset: int) -> Any:
        full = CLIPTextConfig(
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
            **config,
        )
        return seeded_component(seed, offset, lambda: CLIPTextModelWithProjection(full), device, dtype)

    text_encoder = clip(configs.clip_l, 1)
    text_encoder_2 = clip(configs.clip_g, 2)
    # decoder_start_token_id goes through PreTrainedConfig's **kwargs, which T5Config's typed fields do not show.
    t5_config = T5Config(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **configs.t5)  # type: ignore[call-arg]
    text_encoder_3 = seeded_component(seed, 3, lambda: T5EncoderModel(t5_config), device, dtype)
    transformer = build_sd3_transformer(configs.transformer, seed, device, dtype)
    vae = seeded_component(seed, 5, lambda: AutoencoderKL(**configs.vae), device, dtype)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer,
    )


def tiny_configs(clip_vocab_size: int, t5_vocab_size: int) -> SD3Configs:
    """The tiny pipeline's component configs, for tokenizers of these vocabulary sizes."""
    clip = dict(
        vocab_size=clip_vocab_size,
        hidden_size=TINY_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=TINY_WIDTH,
        hidden_act="gelu",
    )
    return SD3Configs(
        clip_l=clip,
        clip_g=dict(clip),
        t5=dict(
            vocab_size=t5_vocab_size,
            d_model=TINY_WIDTH,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
        ),
        transformer=dict(TINY_TRANSFORMER_CONFIG),
        vae=dict(
            SD3_VAE_LATENT_CONFIG,
            down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",),
            block_out_channels=(TINY_WIDTH,),
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=TINY_SAMPLE_SIZE,
        ),
    )


def build_tiny_pipeline(seed: int = 0):
    """Build the tiny StableDiffusion3Pipeline in memory (random weights from ``seed``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        clip_tok, t5_tok, clip_vocab_size, t5_vocab_size = build_tokenizers(Path(tmp) / "clip")
    return build_sd3_pipeline(tiny_configs(clip_vocab_size, t5_vocab_size), clip_tok, t5_tok, seed)


def generate_tiny_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny SD3 pipeline and save it (safetensors) to ``out_dir``; returns ``out_dir``.

    The directory loads with ``StableDiffusion3Pipeline.from_pretrained(out_dir,
    local_files_only=True)``.
    """
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(seed)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sd35_provision.tinymodel",
        description="Write a tiny random-weight Stable Diffusion 3 pipeline (for tests) to OUT.",
    )
    parser.add_argument("out", type=Path, help="directory to write the pipeline into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same bytes)")
    args = parser.parse_args(argv)
    out = generate_tiny_pipeline(args.out, seed=args.seed)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: tiny SD3 pipeline, {size / 1e6:.1f} MB, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
