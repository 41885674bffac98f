"""Batch-invariant GPU kernels for the decode step: attention and RMSNorm (Triton).

A row's result from either kernel depends on that row's own data alone: not on the number of
rows, the length of the key buffer, or the slot. Each kernel runs one program per row (per
row and key/value head for attention) with a launch configuration fixed by the model's
shapes, and reduces in one fixed order:

- ``decode_attention``: one query token per row; the program walks the row's OWN valid keys
  (the first ``n_valid[row]`` columns of its buffer) in blocks of ``ATTENTION_BLOCK`` keys
  with an online softmax in float32, the grouped-query heads of one key/value head together.
  Keys past a row's own count are never read, so the length bucket, the stale keys of a slot's
  earlier occupant and the other rows cannot change a bit of it; it also reads fewer bytes
  than a matmul over the whole bucket. ``n_valid`` stays on the device (CUDA-graph
  capturable: no host synchronisation).
- ``rms_norm``: one program per row over the whole hidden size (BLOCK = its next power of two,
  fixed warps), in float32, times the module's effective scale (``norm_scale_of``).

Triton compiles for CUDA only; ``available()`` says whether it can run here. The engine uses
its own torch code where it cannot (the CPU, or shapes these kernels do not take).
"""

from __future__ import annotations

import functools
import math

import torch

try:  # Triton ships with CUDA builds of torch; a CPU build has none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

ATTENTION_BLOCK = 32  # keys per block of decode attention (fixed: part of the reduction order)
ATTENTION_WARPS = 4
NORM_WARPS = 4


def available(device) -> bool:
    """Whether the Triton kernels can run on ``device``."""
    return triton is not None and torch.device(device).type == "cuda"


def attention_supported(head_dim: int, value_dim: int) -> bool:
    """Shapes the attention kernel takes: power-of-two head sizes from 16 to 512."""
    return all(16 <= d <= 512 and d & (d - 1) == 0 for d in (head_dim, value_dim))


if triton is not None:

    @triton.jit
    def _decode_attention_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        n_valid_ptr,
        out_ptr,
        stride_qb,
        stride_qh,
        stride_kb,
        stride_kh,
        stride_kn,
        stride_vb,
        stride_vh,
        stride_vn,
        scale,
        softcap,
        GROUP: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_N: tl.constexpr,
        D: tl.constexpr,
        DV: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        n_valid = tl.load(n_valid_ptr + row)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, D)
        dv = tl.arange(0, DV)
        heads = kv_head * GROUP + g
        in_group = g < GROUP
        q_rows = q_ptr + row * stride_qb + heads[:, None] * stride_qh + d[None, :]
        q = tl.load(q_rows, mask=in_group[:, None], other=0.0)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, DV], tl.float32)
        k_base = k_ptr + row * stride_kb + kv_head * stride_kh
        v_base = v_ptr + row * stride_vb + kv_head * stride_vh
        for start in range(0, n_valid, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            valid = cols < n_valid
            k = tl.load(k_base + cols[None, :] * stride_kn + d[:, None], mask=valid[None, :], other=0.0)
            if IEEE:
                s = tl.dot(q, k, input_precision="ieee")
            else:
                s = tl.dot(q, k)
            s = s * scale
            if HAS_SOFTCAP:
                s = (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0) * softcap
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + cols[:, None] * stride_vn + dv[None, :], mask=valid[:, None], other=0.0)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        out = acc / l_i[:, None]
        out_rows = out_ptr + (row * GROUP * tl.num_programs(1) + heads[:, None]) * DV + dv[None, :]
        tl.store(out_rows, out.to(out_ptr.dtype.element_ty), mask=in_group[:, None])

    @triton.jit
    def _rms_norm_kernel(x_ptr, scale_ptr, out_ptr, n_cols, eps, HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        inside = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=inside, other=0.0).to(tl.float32)
        mean_square = tl.sum(x * x, 0) / n_cols + eps
        y = x / tl.sqrt(mean_square)
        if HAS_SCALE:
            y = y * tl.load(scale_ptr + cols, mask=inside, other=0.0)
        tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=inside)


def decode_attention(query, key, value, n_valid, scale: float, softcap: float | None = None) -> torch.Tensor:
    """Attention of one query token per row over each row's first ``n_valid[row]`` keys.

    ``query`` [batch, heads, 1, head dim]; ``key``/``value`` [batch, kv heads, buffer, dim]
    (last dim contiguous); ``n_valid`` [batch] integer counts (on the device). Returns
    [batch, 1, heads, value dim], as the attention interface expects.
    """
    batch, n_heads, _, head_dim = query.shape
    n_kv, value_dim = key.shape[1], value.shape[-1]
    group = n_heads // n_kv
    query = query.contiguous()
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    out = torch.empty((batch, 1, n_heads, value_dim), dtype=query.dtype, device=query.device)
    _decode_attention_kernel[(batch, n_kv)](
        query,
        key,
        value,
        n_valid.to(torch.int32),
        out,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        value.stride(0),
        value.stride(1),
        value.stride(2),
        float(scale),
        float(softcap) if softcap else 1.0,
        GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_N=ATTENTION_BLOCK,
        D=head_dim,
        DV=value_dim,
        HAS_SOFTCAP=bool(softcap),
        IEEE=query.dtype == torch.float32,
        num_warps=ATTENTION_WARPS,
    )
    return out


def rms_norm(x: torch.Tensor, scale: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, one program per row; ``scale`` float32 or None."""
    n_cols = x.shape[-1]
    flat = x.reshape(-1, n_cols).contiguous()
    out = torch.empty_like(flat)
    _rms_norm_kernel[(flat.shape[0],)](
        flat,
        scale if scale is not None else flat,
        out,
        n_cols,
        float(eps),
        HAS_SCALE=scale is not None,
        BLOCK=triton.next_power_of_2(n_cols),
        num_warps=NORM_WARPS,
    )
    return out.reshape(x.shape)


def norm_scale_of(module: torch.nn.Module, hidden_size: int) -> tuple[torch.Tensor | None, float] | None:
    """(effective float32 scale or None, eps) of an RMSNorm module, or None if it is not one of the known forms.

    The forms: ``weight`` (Llama, Gemma 4), ``1 + weight`` (Gemma 2/3), no scale (Gemma 4's
    scale-less norms). Which one is read off the module itself: its output for an all-ones
    input must be the candidate times 1/sqrt(1 + eps), in float32.
    """
    eps = getattr(module, "eps", None)
    if eps is None:
        eps = getattr(module, "variance_epsilon", None)
    if eps is None:
        return None
    weight = getattr(module, "weight", None)
    device = weight.device if weight is not None else torch.device("cpu")
    with torch.no_grad():
        got = module(torch.ones(hidden_size, device=device, dtype=torch.float32)).float() * math.sqrt(1.0 + eps)
    candidates = [None]
    if weight is not None and weight.shape == (hidden_size,):
        candidates = [weight.detach().float(), 1.0 + weight.detach().float()]
    for scale in candidates:
        want = torch.ones_like(got) if scale is None else scale
        if torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            return (None if scale is None else scale.contiguous()), float(eps)
    return None


def invariant_norm_forwards(model, device) -> list[tuple[torch.nn.Module, object]]:
    """(module, forward) for each RMSNorm of a known form, computed by ``rms_norm`` (see the module docstring).

    Put in place (like the compiled norms) only inside the decode steps. An RMSNorm of
    another form keeps its eager forward.
    """
    if not available(device):
        return []
    pairs = []
    for module in model.modules():
        if not type(module).__name__.endswith("RMSNorm") or "forward" in vars(module):
            continue
        weight = getattr(module, "weight", None)
        # a scale-less norm takes any width: probe it with 64
        form = norm_scale_of(module, weight.shape[-1] if weight is not None else 64)
        if form is None:
            continue
        scale, eps = form
        pairs.append((module, functools.partial(rms_norm, scale=scale, eps=eps)))
    return pairs
