"""Where the service's GPU memory goes, component by component (random-weight SD3.5 components, CUDA only).

    python scripts/memory_bench.py t5 --json OUT.json        # T5-XXL bf16 vs 8-bit weights: error, time, size
    python scripts/memory_bench.py vae --variant NAME         # one VAE decode variant (own process)
    python scripts/memory_bench.py vae-all --json OUT.json    # every variant, each in its own process

The T5 check encodes 256 random tokens (batch 1 and 4) with T5-XXL in bf16 and
again with its linears stored in FP8 e4m3 and in INT8 (per-row scales, weight
only): relative L2 error of the last hidden state, median time of 5, bytes.
The VAE check decodes one 1024x1024 latent: peak memory over the weights, time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VAE_VARIANTS = ("plain", "wscap", "tiled512", "tiled768", "channels_last")


def vae(variant: str) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from sd35_provision.bench.models import VAE_CONFIG
    from sd35_provision.service.precision import tile_vae

    torch.manual_seed(0)
    model = AutoencoderKL(**VAE_CONFIG).to("cuda", torch.bfloat16)
    model.eval().requires_grad_(False)
    if variant.startswith("tiled"):
        tile_vae(model)
        model.tile_sample_min_size = int(variant.removeprefix("tiled"))
        model.tile_latent_min_size = model.tile_sample_min_size // 8
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    latents = torch.randn(1, 16, 128, 128, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        model.decode(latents).sample  # noqa: B018 - warm-up (cuDNN picks its algorithms)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model.decode(latents).sample  # noqa: B018
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {
        "variant": variant,
        "over_weights_gib": (torch.cuda.max_memory_allocated() - base) / 2**30,
        "reserved_gib": torch.cuda.memory_reserved() / 2**30,
        "decode_s": sorted(times)[1],
    }


def t5(json_path: Path | None) -> None:
    """T5-XXL (random weights) in bf16 against its linears stored in FP8 (per-row, weight-only): error, time, bytes."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from sd35_provision import tinymodel as tm
    from sd35_provision.bench.models import T5_XXL
    from sd35_provision.service.precision import store_fp8_scaled

    config = T5Config(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **T5_XXL)
    model = tm.seeded_component(0, 3, lambda: T5EncoderModel(config), torch.device("cuda"), torch.bfloat16)
    model.eval().requires_grad_(False)
    ids = torch.randint(2, 32000, (4, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(1))

    def timed(model, batch: int) -> tuple[torch.Tensor, float]:
        with torch.inference_mode():
            out = model(ids[:batch])[0]
            times = []
            for _ in range(5):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(ids[:batch])
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        return out.float(), sorted(times)[2]

    import copy

    from sd35_provision.service.precision import store_int8_scaled

    ref1, bf16_1 = timed(model, 1)
    ref4, bf16_4 = timed(model, 4)
    row: dict = {"bf16_s": [bf16_1, bf16_4]}
    for name, store in (("fp8", store_fp8_scaled), ("int8", store_int8_scaled)):
        try:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            quantized = copy.deepcopy(model)
            store(quantized)
            torch.cuda.empty_cache()
            size = torch.cuda.memory_allocated() - before
            out1, t1 = timed(quantized, 1)
            out4, t4 = timed(quantized, 4)
            row[name] = {
                "s": [t1, t4],
                "rel_err": [((out1 - ref1).norm() / ref1.norm()).item(), ((out4 - ref4).norm() / ref4.norm()).item()],
                "gib": size / 2**30,
                "finite": bool(torch.isfinite(out4).all()),
            }
            del quantized
            torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001
            row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print("t5", json.dumps(row))
    if json_path:
        json_path.write_text(json.dumps(row, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("t5", "vae", "vae-all"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--variant", choices=VAE_VARIANTS, default="plain")
    args = parser.parse_args()
    if args.what == "t5":
        t5(args.json)
    elif args.what == "vae":
        print(json.dumps(vae(args.variant)))
    else:
        rows = []
        for variant in VAE_VARIANTS:
            env = dict(os.environ, **({"CUDNN_CONV_WSCAP_DBG": "256"} if variant == "wscap" else {}))
            out = subprocess.run(
                [sys.executable, __file__, "vae", "--variant", variant], env=env, capture_output=True, text=True
            )
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
            row = json.loads(line) if line.startswith("{") else {"variant": variant, "error": out.stderr[-500:]}
            print(row)
            rows.append(row)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
