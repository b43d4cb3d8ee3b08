"""8-bit attention for the SD3.5 transformer on Hopper: a Triton kernel in the style of SageAttention.

Q·Kᵀ runs on 8-bit operands (INT8 or FP8 e4m3, one scale per token), P·V in
bf16 or FP8, online softmax in fp32. K is smoothed first (its mean over the
tokens subtracted, per head and channel): softmax is unchanged by it, since it
shifts every score of a query row by the same amount, and it takes the shared
offset out of K before it is quantized (SageAttention's observation). The
quantization is plain torch, so under torch.compile it fuses with the q/k
RMSNorm before it; the kernel is a torch custom op (opaque to the compiler).

Measured against PyTorch's SDPA (cuDNN at this shape) in docs/benchmarks.md;
the service uses it only where it won (``SD35_ATTENTION``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

KINDS = ("int8", "fp8", "int8-fp8pv", "fp8-fp8pv", "bf16")
FP8_MAX = 448.0
LOG2E = 1.4426950408889634


def _configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm in (128,)
        for bn in (64, 128)
        for w in (4, 8)
        for s in (2, 3)
    ]


@triton.jit
def _inner(
    acc,
    m_i,
    l_i,
    q,
    qs,
    k_base,
    v_base,
    ks_base,
    stride_kn,
    stride_vn,
    stride_vd,
    start_n,
    n_ctx,
    offs_n,
    offs_d,
    BLOCK_N: tl.constexpr,
    MASK: tl.constexpr,
    QK_INT: tl.constexpr,
    PV_FP8: tl.constexpr,
):
    cols = start_n + offs_n
    # Past the last token the loads repeat it (no masked loads: 8-bit types take no fill
    # value, and garbage in V could be NaN); its scores are -inf, so it weighs nothing.
    if MASK:
        safe = tl.minimum(cols, n_ctx - 1)
    else:
        safe = cols
    k = tl.load(k_base + safe[:, None] * stride_kn + offs_d[None, :])
    ks = tl.load(ks_base + safe)
    if QK_INT:
        s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32)
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * qs[:, None] * ks[None, :]
    if MASK:
        s = tl.where((cols < n_ctx)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    v = tl.load(v_base + safe[:, None] * stride_vn + offs_d[None, :] * stride_vd)
    if PV_FP8:
        acc = tl.dot(p.to(tl.float8e4nv), v, acc)
    else:
        acc = tl.dot(p.to(tl.bfloat16), v, acc)
    return acc, m_new, l_i


@triton.autotune(configs=_configs(), key=["n_ctx", "HEAD_DIM", "QK_INT", "PV_FP8"])
@triton.jit
def _attn_fwd(
    Q,
    K,
    V,
    QS,
    KS,
    VS,
    O,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_on,
    heads,
    n_ctx,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QK_INT: tl.constexpr,
    PV_FP8: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < n_ctx
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None])
    qs = tl.load(QS + pid_bh * n_ctx + offs_m, mask=row_ok, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    ks_base = KS + pid_bh * n_ctx
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    full = (n_ctx // BLOCK_N) * BLOCK_N
    for start_n in range(0, full, BLOCK_N):
        acc, m_i, l_i = _inner(
            acc, m_i, l_i, q, qs, k_base, v_base, ks_base, stride_kn, stride_vn, stride_vd,
            start_n, n_ctx, offs_n, offs_d, BLOCK_N, False, QK_INT, PV_FP8,
        )  # fmt: skip
    if full < n_ctx:
        acc, m_i, l_i = _inner(
            acc, m_i, l_i, q, qs, k_base, v_base, ks_base, stride_kn, stride_vn, stride_vd,
            full, n_ctx, offs_n, offs_d, BLOCK_N, True, QK_INT, PV_FP8,
        )  # fmt: skip
    acc = acc / l_i[:, None]
    if PV_FP8:
        acc = acc * tl.load(VS + pid_bh * HEAD_DIM + offs_d)[None, :]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


def _launch(q8, k8, v, qs, ks, vs, out, qk_int: bool, pv_fp8: bool) -> None:
    batch, heads, n_ctx, head_dim = q8.shape

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (triton.cdiv(n_ctx, meta["BLOCK_M"]), batch * heads)

    # V for FP8 P·V is stored transposed ([B, H, D, N], N contiguous): Hopper's FP8
    # MMA takes its second operand K-major only.
    if pv_fp8:
        stride_vn, stride_vd = v.stride(3), v.stride(2)
    else:
        stride_vn, stride_vd = v.stride(2), v.stride(3)
    _attn_fwd[grid](
        q8, k8, v, qs, ks, vs, out,
        q8.stride(0), q8.stride(1), q8.stride(2),
        k8.stride(0), k8.stride(1), k8.stride(2),
        v.stride(0), v.stride(1), stride_vn, stride_vd,
        out.stride(0), out.stride(1), out.stride(2),
        heads, n_ctx,
        HEAD_DIM=head_dim, QK_INT=qk_int, PV_FP8=pv_fp8,
    )  # fmt: skip


@torch.library.custom_op("sd35::qattn", mutates_args=())
def _qattn(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v: torch.Tensor,
    qs: torch.Tensor,
    ks: torch.Tensor,
    vs: torch.Tensor,
    qk_int: bool,
    pv_fp8: bool,
) -> torch.Tensor:
    batch, heads, n_ctx, head_dim = q8.shape
    out = torch.empty((batch, n_ctx, heads, head_dim), dtype=torch.bfloat16, device=q8.device).transpose(1, 2)
    _launch(q8, k8, v, qs, ks, vs, out, qk_int, pv_fp8)
    return out


@_qattn.register_fake
def _(q8, k8, v, qs, ks, vs, qk_int, pv_fp8):
    batch, heads, n_ctx, head_dim = q8.shape
    return torch.empty((batch, n_ctx, heads, head_dim), dtype=torch.bfloat16, device=q8.device).transpose(1, 2)


def _quantize_rows(x: torch.Tensor, integer: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric 8-bit quantization of ``x`` [B, H, N, D]; returns (values, scales [B*H, N] fp32)."""
    amax = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)
    if integer:
        step = amax / 127.0
        values = (x.float() / step).round().clamp(-127, 127).to(torch.int8)
    else:
        step = amax / FP8_MAX
        values = (x.float() / step).to(torch.float8_e4m3fn)
    return values, (step * scale).reshape(-1, x.shape[2])


def quantized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str = "int8") -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v for [B, H, N, D] bf16 tensors, Q·Kᵀ in 8 bits (``kind``: see KINDS)."""
    if kind not in KINDS:
        raise ValueError(f"attention kind {kind!r} is not one of {', '.join(KINDS)}")
    head_dim = q.shape[-1]
    scale = math.sqrt(LOG2E / math.sqrt(head_dim))  # the softmax scale and log2(e), shared by q and k
    qk_int = kind.startswith("int8")
    pv_fp8 = kind.endswith("fp8pv")
    if kind == "bf16":
        q8, k8 = q, k
        qs = torch.full(q.shape[:3], scale, device=q.device, dtype=torch.float32).reshape(-1, q.shape[2])
        ks = torch.full(k.shape[:3], scale, device=k.device, dtype=torch.float32).reshape(-1, k.shape[2])
        qk_int = False
    else:
        k = k - k.mean(dim=2, keepdim=True)
        q8, qs = _quantize_rows(q, qk_int, scale)
        k8, ks = _quantize_rows(k, qk_int, scale)
    if pv_fp8:
        vamax = v.float().abs().amax(dim=2, keepdim=True).clamp(min=1e-6)  # per head and channel
        vs = (vamax / FP8_MAX).reshape(-1, head_dim)
        v = (v.float() / (vamax / FP8_MAX)).to(torch.float8_e4m3fn).transpose(2, 3).contiguous()
    else:
        vs = qs.new_ones(1)
    return _qattn(q8, k8, v, qs, ks, vs, qk_int, pv_fp8)


class QuantizedJointAttnProcessor:
    """diffusers' JointAttnProcessor2_0 (SD3's joint attention) with ``quantized_attention`` in place of SDPA."""

    def __init__(self, kind: str = "int8"):
        self.kind = kind

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None, *args, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            cq = heads(attn.add_q_proj(encoder_hidden_states))
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            query = torch.cat([query, cq], dim=2)
            key = torch.cat([key, ck], dim=2)
            value = torch.cat([value, cv], dim=2)
        hidden_states = quantized_attention(query, key, value, self.kind)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]],
                hidden_states[:, residual.shape[1] :],
            )
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


def use_quantized_attention(transformer: torch.nn.Module, kind: str = "int8") -> int:
    """Swap the joint attention of each transformer block for the 8-bit kernel; returns how many were swapped.

    Only SD3's joint attention (``JointAttnProcessor2_0``); Medium's extra
    self-attention (``attn2``) keeps SDPA.
    """
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    swapped = 0
    for module in transformer.modules():
        if isinstance(getattr(module, "processor", None), JointAttnProcessor2_0):
            module.set_processor(QuantizedJointAttnProcessor(kind))
            swapped += 1
    return swapped
