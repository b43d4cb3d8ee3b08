"""The tiny SD3 pipeline used by the tests (and by the provisioner's own tests)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from sd35_provision.tinymodel import generate_tiny_pipeline


def checksums(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = generate_tiny_pipeline(tmp_path / "again", seed=0)
    assert checksums(again) == checksums(tiny_model_dir)
    other = checksums(generate_tiny_pipeline(tmp_path / "other", seed=1))
    first = checksums(tiny_model_dir)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert other[weights] != first[weights]
    assert other["tokenizer/tokenizer.json"] == first["tokenizer/tokenizer.json"]


def test_layout_and_size(tiny_model_dir: Path) -> None:
    files = set(checksums(tiny_model_dir))
    for required in (
        "model_index.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "text_encoder_2/model.safetensors",
        "text_encoder_3/model.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer_3/tokenizer.json",
        "scheduler/scheduler_config.json",
    ):
        assert required in files
    assert not any(name.endswith(".bin") for name in files)
    size = sum(p.stat().st_size for p in tiny_model_dir.rglob("*") if p.is_file())
    assert size < 3_000_000


def test_reloads_and_draws_fast(tiny_model_dir: Path) -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_model_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0
    assert pipe.vae.config.latent_channels == 16 and pipe.transformer.config.num_layers == 1
    assert pipe.tokenizer.model_max_length == 77 and pipe.tokenizer_3.model_max_length == 256
    pipe("warm", num_inference_steps=1, height=64, width=64)
    # One thread and the best of three: a busy neighbour on a 2-core machine
    # stalls every multi-threaded op, which says nothing about the model.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings = []
        for _ in range(3):
            begin = time.monotonic()
            image = pipe(
                "a cat", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0)
            ).images[0]
            timings.append(time.monotonic() - begin)
    finally:
        torch.set_num_threads(threads)
    assert min(timings) < 1.0, timings
    assert image.size == (64, 64)
    assert len(set(image.tobytes())) > 1


def test_cli(tmp_path: Path, capsys) -> None:
    from sd35_provision.tinymodel import main

    assert main([str(tmp_path / "cli"), "--seed", "2"]) == 0
    assert (tmp_path / "cli" / "model_index.json").is_file()
    assert "tiny SD3 pipeline" in capsys.readouterr().out
