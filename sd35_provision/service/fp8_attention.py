"""FP8 attention for the SD3.5 transformer on Hopper, through cuDNN's fused FP8 SDPA (``sdpa_fp8``).

PyTorch's SDPA has no FP8 path; cuDNN has one (FlashAttention-style, Q·Kᵀ and
P·V on e4m3 tensor cores, per-tensor scales), reached through the cuDNN
frontend's Python graph API (the ``nvidia-cudnn-frontend`` wheel). The
quantization is plain torch in the caller, so under torch.compile it fuses with
the q/k RMSNorm and the concatenation before it: K is smoothed first (its mean
over the tokens subtracted, per head and channel, which leaves softmax
unchanged and takes K's shared offset out before it is quantized), then Q, K
and V are scaled to e4m3's range by their absolute maximum. The cuDNN call is a
torch custom op, opaque to the compiler; its graph is built once per shape.
On Hopper cuDNN writes O in FP8 too (at V's scale, since every output row is a
convex combination of V's rows); the caller dequantizes it.

Measured against SDPA in docs/benchmarks.md (``scripts/attention_bench.py``);
the bench's ``fp8-dynamic-cudnnattn`` modes use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

FP8_MAX = 448.0  # e4m3's largest finite value
FP8 = torch.float8_e4m3fn


@dataclass
class _Plan:
    graph: Any
    tensors: tuple[Any, ...]  # q, k, v, descale q/k/v/s, scale s/o, o, amax s/o (graph tensors)
    workspace: torch.Tensor
    constants: tuple[torch.Tensor, torch.Tensor]  # descale_s, scale_s
    amax: tuple[torch.Tensor, torch.Tensor]


_HANDLES: dict[int, Any] = {}
_PLANS: dict[tuple, _Plan] = {}


def _handle(device: torch.device) -> Any:
    import cudnn

    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _HANDLES:
        _HANDLES[index] = cudnn.create_handle()
    return _HANDLES[index]


def _plan(q8: torch.Tensor, handle: Any) -> _Plan:
    """The cuDNN graph for q8's shape and strides ([B, H, N, D] e4m3; k, v and o share them)."""
    key = (tuple(q8.shape), tuple(q8.stride()), q8.device.index)
    if key in _PLANS:
        return _PLANS[key]
    import cudnn

    e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
    shape, stride = list(q8.shape), list(q8.stride())
    q, k, v = (graph.tensor(name=n, dim=shape, stride=stride, data_type=e4m3) for n in ("q", "k", "v"))
    scalar = {"dim": [1, 1, 1, 1], "stride": [1, 1, 1, 1], "data_type": fp32}
    dq, dk, dv, ds, ss, so = (graph.tensor(name=n, **scalar) for n in ("dq", "dk", "dv", "ds", "ss", "so"))
    o, _stats, amax_s, amax_o = graph.sdpa_fp8(
        q=q,
        k=k,
        v=v,
        descale_q=dq,
        descale_k=dk,
        descale_v=dv,
        descale_s=ds,
        scale_s=ss,
        scale_o=so,
        generate_stats=False,
        attn_scale=1.0 / math.sqrt(q8.shape[-1]),
        use_causal_mask=False,
        name="sdpa_fp8",
    )
    o.set_output(True).set_dim(shape).set_stride(stride).set_data_type(e4m3)
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(fp32)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    device = q8.device
    one = {"dtype": torch.float32, "device": device}
    plan = _Plan(
        graph=graph,
        tensors=(q, k, v, dq, dk, dv, ds, ss, so, o, amax_s, amax_o),
        workspace=torch.empty(max(graph.get_workspace_size(), 1), dtype=torch.uint8, device=device),
        constants=(torch.full((1, 1, 1, 1), 1.0 / FP8_MAX, **one), torch.full((1, 1, 1, 1), FP8_MAX, **one)),
        amax=(torch.empty((1, 1, 1, 1), **one), torch.empty((1, 1, 1, 1), **one)),
    )
    _PLANS[key] = plan
    return plan


@torch.library.custom_op("sd35::cudnn_sdpa_fp8", mutates_args=())
def cudnn_sdpa_fp8(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
    scale_o: torch.Tensor,
) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v on e4m3 [B, H, N, D] tensors; returns O in e4m3 at ``scale_o``."""
    import cudnn

    handle = _handle(q8.device)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
    plan = _plan(q8, handle)
    out = torch.empty_strided(q8.shape, q8.stride(), dtype=FP8, device=q8.device)
    q, k, v, dq, dk, dv, ds, ss, so, o, amax_s, amax_o = plan.tensors
    pack = {
        q: q8,
        k: k8,
        v: v8,
        dq: descale_q.reshape(1, 1, 1, 1),
        dk: descale_k.reshape(1, 1, 1, 1),
        dv: descale_v.reshape(1, 1, 1, 1),
        ds: plan.constants[0],
        ss: plan.constants[1],
        so: scale_o.reshape(1, 1, 1, 1),
        o: out,
        amax_s: plan.amax[0],
        amax_o: plan.amax[1],
    }
    plan.graph.execute(pack, plan.workspace, handle=handle)
    return out


@cudnn_sdpa_fp8.register_fake
def _(q8, k8, v8, descale_q, descale_k, descale_v, scale_o):
    return torch.empty_strided(q8.shape, q8.stride(), dtype=FP8, device=q8.device)


@cudnn_sdpa_fp8.register_kernel("cpu")
def _(q8, k8, v8, descale_q, descale_k, descale_v, scale_o):
    """The same arithmetic in fp32 SDPA (no cuDNN on a CPU): what the GPU kernel is checked against."""
    q, k, v = (x.float() * s for x, s in ((q8, descale_q), (k8, descale_k), (v8, descale_v)))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v) * scale_o
    return out.to(FP8).transpose(1, 2).contiguous().transpose(1, 2)


def _to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` scaled by its absolute maximum into e4m3, as [B, N, H, D]-contiguous memory seen as [B, H, N, D]."""
    amax = x.abs().amax().float().clamp(min=1e-6)
    values = (x.float() * (FP8_MAX / amax)).to(FP8)
    values = values.transpose(1, 2).contiguous().transpose(1, 2)  # one layout for q, k, v and o
    return values, amax / FP8_MAX


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v for [B, H, N, D] tensors through cuDNN's FP8 SDPA; returns q's dtype."""
    k = k - k.mean(dim=2, keepdim=True)
    q8, descale_q = _to_fp8(q)
    k8, descale_k = _to_fp8(k)
    v8, descale_v = _to_fp8(v)
    out = cudnn_sdpa_fp8(q8, k8, v8, descale_q, descale_k, descale_v, 1.0 / descale_v)
    return (out.float() * descale_v).to(q.dtype)


class Fp8JointAttnProcessor:
    """diffusers' JointAttnProcessor2_0 (SD3's joint attention) with ``fp8_attention`` in place of SDPA."""

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
        hidden_states = fp8_attention(query, key, value)
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


def use_fp8_attention(transformer: torch.nn.Module) -> int:
    """Swap each block's joint attention for ``Fp8JointAttnProcessor``; returns how many were swapped.

    Only SD3's joint attention (``JointAttnProcessor2_0``); Medium's extra
    self-attention (``attn2``) keeps SDPA.
    """
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    swapped = 0
    for module in transformer.modules():
        if isinstance(getattr(module, "processor", None), JointAttnProcessor2_0):
            module.set_processor(Fp8JointAttnProcessor())
            swapped += 1
    return swapped
