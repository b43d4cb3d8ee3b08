"""cuDNN's FP8 attention (sd35_provision/service/fp8_attention.py) against PyTorch's SDPA at SD3.5's shapes.

    python scripts/attention_bench.py --json OUT.json

Fresh random q, k, v per shape (q and k as SD3.5's RMSNorm leaves them: unit
RMS per head, times a per-channel gain so some scores are peaked; an offset in
K, which smoothing removes); each kernel against SDPA in fp32, timed with
triton's do_bench (median), the quantization included. Needs a Hopper GPU and
the nvidia-cudnn-frontend wheel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {  # (batch, heads, tokens, head dim): one image with CFG, four images with CFG (1024x1024)
    "large-b2": (2, 38, 4096 + 333, 64),
    "large-b8": (8, 38, 4096 + 333, 64),
    "medium-b2": (2, 24, 4096 + 333, 64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    import triton

    from sd35_provision.service.fp8_attention import fp8_attention

    results = []
    compiled = torch.compile(fp8_attention)  # as in the model: the quantization fused around the cuDNN call
    for name, (b, h, n, d) in SHAPES.items():
        gen = torch.Generator(device="cuda").manual_seed(0)

        def rnd(gain: float, gen=gen, b=b, h=h, n=n, d=d) -> torch.Tensor:
            x = torch.randn(b, n, h, d, device="cuda", generator=gen)
            x = x * (1 + gain * torch.rand(d, device="cuda", generator=gen))
            return x.to(torch.bfloat16).transpose(1, 2)  # [B, H, N, D], as diffusers' processor has it

        q, k, v = rnd(2.0), rnd(2.0) + 0.5, rnd(0.0)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        flops = 4 * b * h * n * n * d
        row: dict = {"shape": name, "dims": [b, h, n, d]}
        for label, fn in (
            ("sdpa", F.scaled_dot_product_attention),
            ("cudnn-fp8", fp8_attention),
            ("cudnn-fp8 compiled", compiled),
        ):
            try:
                out = fn(q, k, v)
                ms = triton.testing.do_bench(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v), rep=200, return_mode="median")
                err = ((out.float() - ref).norm() / ref.norm()).item()
                row[label] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_err": err}
                print(f"{name} {label:20s} {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s err {err:.4f}", flush=True)
            except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others
                row[label] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
                print(f"{name} {label:20s} FAILED {row[label]['error']}", flush=True)
        results.append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
