"""Greedy generation engine: prompt token ids in, answer token ids out.

``iter_greedy`` yields each finished sequence as soon as it is done, so callers can write
answers as they come (and resume after an interruption). Two engines sit behind it:

- ``"continuous"``: a slot decoder. Every slot of a fixed-size batch holds one sequence with
  its own position; a sequence that stops leaves its slot at once and a waiting prompt takes
  it (continuous batching). Keys and values live in preallocated per-slot buffers (a ring
  of the window size for sliding-window layers); attention reads only a length bucket of
  them. On CUDA each (batch bucket, length bucket) decode step is captured once as a CUDA
  graph and replayed, which removes the per-step host overhead that dominates
  ``model.generate`` for a 42-layer model; inside those steps every RMSNorm runs its own
  forward compiled by ``torch.compile`` into one kernel instead of about nine.
- ``"generate"``: plain ``model.generate`` on length-sorted, left-padded batches.

Both are greedy and deterministic and compute what ``model.generate`` with
``do_sample=False`` computes for each prompt alone: token for token in float32 on the CPU
(tests/test_engine.py); on a GPU, batched kernels round differently, which can flip an
argmax between near-tied logits (see docs/performance.md). ``"auto"`` picks ``"continuous"``
when the model's structure and generation config allow it.

With ``batch_invariant=True`` every answer is a function of its own prompt (with the model,
dtype and cap) alone, bit for bit, whatever the batch size, the other prompts decoded beside
it, its slot or the point a run resumed from. On a GPU in bf16 the fast mode does not give
that: the reduction order of some kernels depends on tensor shapes that the other sequences
set (the length bucket of the key buffer, the padded prefill batch, the decode batch). The
invariant mode removes each such dependence (see ``_SlotDecoder``): prompts are not prefilled
but fed through the decode steps one token per step (teacher forcing), so they share the
decode batches and no prefill shape depends on another prompt; decode attention reads each
row's own valid keys only, in a fixed order (``kernels.decode_attention`` on CUDA; on the CPU
fixed 256-key chunks whose partial sums are added one chunk after another, so the keys beyond
a sequence's own length add exact zeros whatever the bucket); sliding-window rings always have
the window's length; RMSNorms in the decode steps run a Triton kernel with one launch
configuration per hidden size (``kernels.rms_norm``; a compiled kernel's launch configuration
is tuned per process); no decode batch is narrower than ``INVARIANT_MIN_BATCH`` rows
(PyTorch's remaining row reductions pick their thread layout from the number of rows below
that); and cuBLAS may not reduce in bf16. The GEMMs need nothing: a row of a cuBLAS GEMM was
measured bit-identical for any number of rows from 1 to 440 (docs/performance.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache

from refusal_ablation import architecture, kernels
from refusal_ablation.architecture import ArchitectureError, find_decoder_stack
from refusal_ablation.prefix import SharedPrefix, left_padded_batch, prefix_to_share
from refusal_ablation.runtime import RateLogger

log = logging.getLogger(__name__)

ENGINES = ("auto", "continuous", "generate")
CPU_MAX_SLOTS = 64
CPU_CACHE_BUDGET = 2 * 2**30  # bytes of key/value buffers on a CPU
DECODE_ATTENTION = "refusal_ablation_decode"
INVARIANT_ATTENTION = "refusal_ablation_decode_invariant"
INVARIANT_CHUNK = 256  # keys per attention chunk in batch-invariant mode
INVARIANT_MIN_BATCH = 16  # narrowest decode batch in batch-invariant mode
# generation-config fields that make model.generate's greedy choice differ from a plain argmax
_GREEDY_CHANGING_FIELDS = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "forced_decoder_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
}


@dataclass
class Finished:
    index: int  # position of the prompt in the caller's list
    tokens: list[int]  # answer tokens, without the stop token
    hit_limit: bool  # stopped by its token cap, not by a stop token


def iter_greedy(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    batch_size: int | str = "auto",
    engine: str = "auto",
    cuda_graphs: bool | None = None,
    share_prefix: bool = True,
    fuse_norms: bool | None = None,
    batch_invariant: bool = False,
) -> Iterator[Finished]:
    """Greedy answers for token-id prompts, yielded in the order they finish.

    ``max_new_tokens[i]`` caps prompt i's answer; an answer ends at the first id in
    ``stop_token_ids`` (not included). ``batch_size`` is the number of sequences decoded
    together (``"auto"``: as many as free GPU memory holds). ``cuda_graphs`` (continuous
    engine on CUDA only) defaults to on. ``share_prefix`` (continuous engine): prefill the tokens
    every prompt starts with once (see ``prefix``). ``fuse_norms`` (with CUDA graphs; default
    on): decode with each RMSNorm compiled into one kernel. ``batch_invariant``: each answer
    depends on its own prompt alone (see the module docstring); it turns prefix sharing off,
    decodes with the Triton norms instead of compiled ones (``fuse_norms`` is ignored), feeds
    prompts through the decode steps instead of prefilling them, and the ``"generate"``
    engine then decodes one prompt at a time.
    """
    if len(prompts) != len(max_new_tokens):
        raise ValueError(f"iter_greedy: {len(prompts)} prompts but {len(max_new_tokens)} max_new_tokens values")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"iter_greedy: prompt {i} has no tokens")
        if int(max_new_tokens[i]) < 0:
            raise ValueError(f"iter_greedy: max_new_tokens[{i}] = {max_new_tokens[i]} is negative")
    if engine not in ENGINES:
        raise ValueError(f"iter_greedy: engine must be one of {ENGINES}, got {engine!r}")
    if not (batch_size == "auto" or (isinstance(batch_size, int) and batch_size >= 1)):
        raise ValueError(f"iter_greedy: batch_size must be a positive int or 'auto', got {batch_size!r}")
    if not prompts:
        return
    stop_ids = sorted({int(t) for t in stop_token_ids})
    caps = [int(c) for c in max_new_tokens]

    if engine == "auto":
        reason = continuous_unsupported_reason(model)
        engine = "continuous" if reason is None else "generate"
        if reason is not None:
            log.info("using model.generate: %s", reason)
    elif engine == "continuous":
        reason = continuous_unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"iter_greedy: the continuous engine cannot run this model: {reason}")

    if engine == "generate":
        # one prompt at a time is the only model.generate batch whose shapes no other prompt sets
        size = 1 if batch_invariant else 8 if batch_size == "auto" else batch_size
        yield from _iter_generate(model, prompts, caps, stop_ids, pad_token_id, size)
        return
    decoder = _SlotDecoder(
        model,
        prompts,
        caps,
        stop_ids,
        pad_token_id,
        batch_size,
        cuda_graphs,
        share_prefix,
        fuse_norms,
        batch_invariant=batch_invariant,
    )
    with _exact_cublas_reductions(batch_invariant and decoder.device.type == "cuda"):
        yield from decoder.run()


def _cut(tokens: Sequence[int], cap: int, stop_ids: set[int]) -> tuple[list[int], bool]:
    for pos, tok in enumerate(tokens[:cap]):
        if tok in stop_ids:
            return list(tokens[:pos]), False
    return list(tokens[:cap]), len(tokens) >= cap


def _iter_generate(model, prompts, caps, stop_ids, pad_token_id, batch_size) -> Iterator[Finished]:
    """Greedy decoding with ``model.generate``, batches of similar prompt length."""
    stop_set = set(stop_ids)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        cap = max(caps[i] for i in batch)
        if cap == 0:
            for i in batch:
                yield Finished(index=i, tokens=[], hit_limit=True)
            continue
        input_ids, attention, _ = left_padded_batch([prompts[i] for i in batch], pad_token_id)
        width = input_ids.shape[1]
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=cap,
                do_sample=False,
                eos_token_id=stop_ids or None,
                pad_token_id=pad_token_id,
            )
        new = out[:, width:].tolist()
        for row, i in enumerate(batch):
            tokens, hit = _cut(new[row], caps[i], stop_set)
            yield Finished(index=i, tokens=tokens, hit_limit=hit)


def continuous_unsupported_reason(model) -> str | None:
    """Why the continuous engine cannot reproduce ``model.generate`` greedy for this model, or None."""
    try:
        layers = find_decoder_stack(model).layers
    except ArchitectureError as err:
        return str(err)
    layer_types = architecture.layer_types(model)
    if layer_types is not None:
        unknown = set(layer_types) - {"full_attention", "sliding_attention"}
        if unknown:
            return f"layer types {sorted(unknown)} are not supported"
        if len(layer_types) != len(layers):
            return f"{len(layer_types)} layer types for {len(layers)} decoder layers"
    elif architecture.sliding_window(model) and architecture.uses_sliding_window(model):
        return "sliding-window attention without per-layer layer_types"
    for layer in layers:
        if not hasattr(layer.self_attn, "config"):
            return "attention modules without a config (not on the attention interface)"
    if getattr(model.config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    gen = getattr(model, "generation_config", None)
    for field, neutral in _GREEDY_CHANGING_FIELDS.items():
        value = getattr(gen, field, None) if gen is not None else None
        if value not in neutral and value != []:
            return f"generation_config.{field} = {value!r} changes greedy decoding"
    return None


def _decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
    """Attention for one query token per row, grouped-query without repeating the keys."""
    batch, n_heads, q_len, head_dim = query.shape
    if q_len != 1:
        raise ValueError(f"{DECODE_ATTENTION} handles one query token per row, got {q_len}")
    n_kv = key.shape[1]
    scale = scaling if scaling is not None else head_dim**-0.5
    grouped = query.reshape(batch, n_kv, n_heads // n_kv, head_dim)
    scores = torch.matmul(grouped, key.transpose(2, 3))
    if scale != 1.0:
        scores = scores * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        # [batch, 1, 1, keys] boolean: True = attend
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [batch, kv heads, group, value dim]
    return out.reshape(batch, 1, n_heads, value.shape[-1]), None


def _invariant_decode_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs
):
    """``_decode_attention`` whose result for a row depends on that row's own keys alone.

    On CUDA (with Triton, power-of-two head sizes) this is ``kernels.decode_attention``: one
    program per row and key/value head reads the row's valid keys only (the mask is a prefix
    mask, see ``_SlotDecoder._masks``: its row sum is the count), so neither the length
    bucket, nor the batch, nor the slot can change a bit of the result.

    Elsewhere (the CPU) it is this torch code: keys are taken in chunks of ``INVARIANT_CHUNK``
    (a buffer of another length, a sliding ring, is one chunk: its length is fixed). Every
    reduction has a fixed shape: scores and value products per chunk (one product each), the
    softmax's maximum over all keys (a maximum is exact in any order), and the chunks' partial
    sums added in order. Masked keys contribute exact zeros, so a longer bucket leaves the sum
    bit for bit the same.
    """
    batch, n_heads, q_len, head_dim = query.shape
    if q_len != 1:
        raise ValueError(f"{INVARIANT_ATTENTION} handles one query token per row, got {q_len}")
    n_kv, length = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else head_dim**-0.5
    if kernels.available(query.device) and kernels.attention_supported(head_dim, value.shape[-1]):
        if attention_mask is None:
            n_valid = torch.full((batch,), length, dtype=torch.int32, device=query.device)
        else:
            n_valid = attention_mask.reshape(batch, -1).sum(-1, dtype=torch.int32)
        return kernels.decode_attention(query, key, value, n_valid, scale, softcap), None
    chunk = INVARIANT_CHUNK if length % INVARIANT_CHUNK == 0 else length
    grouped = query.reshape(batch, n_kv, n_heads // n_kv, head_dim)
    # one product per chunk, each of the same shape: a batched product over all chunks at
    # once lets the BLAS pick its kernel by the chunk count (measured: on the CPU in float32
    # at 512 and 1,024 keys; cuBLAS at 1,024 and 4,096)
    scores = []
    for start in range(0, length, chunk):
        part = torch.matmul(grouped, key[:, :, start : start + chunk].transpose(-1, -2))  # [batch, kv, group, chunk]
        if scale != 1.0:
            part = part * scale
        if softcap is not None:
            part = torch.tanh(part / softcap) * softcap
        if attention_mask is not None:
            mask = attention_mask[..., start : start + chunk].reshape(batch, 1, 1, chunk)
            part = part.masked_fill(~mask, torch.finfo(part.dtype).min)
        scores.append(part.float())
    top = scores[0].amax(dim=-1, keepdim=True)
    for part in scores[1:]:
        top = torch.maximum(top, part.amax(dim=-1, keepdim=True))  # a maximum is exact in any order
    total = out = None
    for start, part in zip(range(0, length, chunk), scores):
        weights = torch.exp(part - top)
        values = torch.matmul(weights.to(value.dtype), value[:, :, start : start + chunk]).float()
        total = weights.sum(dim=-1) if total is None else total + weights.sum(dim=-1)
        out = values if out is None else out + values
    out = (out / total[..., None]).to(value.dtype)
    return out.reshape(batch, 1, n_heads, value.shape[-1]), None


def _register_decode_attention() -> None:
    AttentionInterface.register(DECODE_ATTENTION, _decode_attention)
    AttentionInterface.register(INVARIANT_ATTENTION, _invariant_decode_attention)


class _exact_cublas_reductions:
    """While active: cuBLAS may not reduce bf16/fp16 products in reduced precision (restored after)."""

    def __init__(self, active: bool) -> None:
        self.active = active

    def __enter__(self):
        if self.active:
            matmul = torch.backends.cuda.matmul
            self.saved = (matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction)
            matmul.allow_bf16_reduced_precision_reduction = False
            matmul.allow_fp16_reduced_precision_reduction = False
        return self

    def __exit__(self, *exc):
        if self.active:
            matmul = torch.backends.cuda.matmul
            matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction = self.saved
        return False


def _fused_norm_forwards(model) -> list[tuple[torch.nn.Module, object]]:
    """Each RMSNorm module with its class's own ``forward``, compiled once per class.

    An RMSNorm in eager mode is about nine element-wise kernels (casts, square, mean, power,
    products); Gemma 4 runs eight or more per layer, most of a decode step's kernel count.
    ``torch.compile`` of the class's unchanged forward fuses each into one kernel; with
    parameters as graph inputs and dynamic shapes, one compilation serves every instance and
    every batch bucket.
    """
    import functools

    compiled: dict[type, object] = {}
    pairs = []
    for module in model.modules():
        cls = type(module)
        if not cls.__name__.endswith("RMSNorm") or "forward" in vars(module):
            continue
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward, dynamic=True)
        pairs.append((module, functools.partial(compiled[cls], module)))
    return pairs


def _batch_buckets(limit: int, smallest: int = 1) -> list[int]:
    sizes = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256]
    size = 256
    while size < limit:
        size += 64
        sizes.append(size)
    return sorted({s for s in sizes if smallest <= s < limit} | {max(limit, smallest)})


def _length_bucket(needed: int, limit: int) -> int:
    # finer buckets for short contexts, where most steps happen; coarser ones keep the graph count small
    grain = 256 if needed <= 1024 else 512 if needed <= 2048 else 1024
    return min(limit, math.ceil(needed / grain) * grain)


class _SlotCache(Cache):
    """Per-slot key/value buffers behind the ``Cache.update`` call the attention layers make.

    Full-attention layers keep every position of a slot; sliding-window layers keep a ring of
    the window's size. ``set_step`` names the positions being written; the batch and length
    buckets come from tensor shapes.
    """

    def __init__(self, layouts: dict[int, tuple], slots: int, max_len: int, device, full_rings: bool = False) -> None:
        super().__init__(layers=[])
        self.keys, self.values, self.sliding = {}, {}, set()
        self.ring = None
        for layer_idx, (n_kv, key_dim, value_dim, dtype, window) in layouts.items():
            # full_rings: a ring of the window's length even when no sequence reaches it
            length = max_len if window is None else window if full_rings else min(window, max_len)
            if window is not None:
                self.sliding.add(layer_idx)
                self.ring = length
            self.keys[layer_idx] = torch.zeros((slots, n_kv, length, key_dim), dtype=dtype, device=device)
            self.values[layer_idx] = torch.zeros((slots, n_kv, length, value_dim), dtype=dtype, device=device)
        self.rows = torch.arange(slots, device=device)
        self.positions = self.ring_columns = self.columns = None

    def set_step(self, positions, columns) -> None:
        """``positions`` [batch]: where each row writes; ``columns``: arange of the length bucket."""
        self.positions, self.columns = positions, columns
        self.ring_columns = positions % self.ring if self.ring else None

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        batch = key_states.shape[0]
        rows = self.rows[:batch]
        column = self.ring_columns if layer_idx in self.sliding else self.positions
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[rows, :, column, :] = key_states[:, :, 0, :]
        values[rows, :, column, :] = value_states[:, :, 0, :]
        if layer_idx in self.sliding:
            return keys[:batch], values[:batch]
        length = self.columns.shape[0]
        return keys[:batch, :, :length], values[:batch, :, :length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def move_slot(self, src: int, dst: int) -> None:
        for store in (self.keys, self.values):
            for buf in store.values():
                buf[dst].copy_(buf[src])

    def load_prefill(self, prefill_cache, batch_rows, slots, prompt_lengths, shared: int = 0) -> None:
        """Copy a left-padded prefill's keys/values of ``batch_rows`` into ``slots``.

        With ``shared`` > 0 the prefill cache starts with that many prefix columns common to
        every row, followed by the rows' own left-padded tokens.
        """
        for layer_idx, layer in enumerate(prefill_cache.layers):
            if layer_idx not in self.keys:
                continue
            window = self.ring if layer_idx in self.sliding else None
            stored = layer.keys.shape[2]
            device = layer.keys.device
            for row, slot, n_tokens in zip(batch_rows, slots, prompt_lengths):
                if shared:
                    # the prefix, then the row's own tokens at the right end (no pads between)
                    columns = torch.cat([torch.arange(shared), torch.arange(stored - (n_tokens - shared), stored)])
                else:
                    columns = torch.arange(stored - min(n_tokens, stored), stored)
                if window is not None:
                    columns = columns[-min(len(columns), window) :]
                keep = len(columns)
                columns = columns.to(device)
                src_k = layer.keys[row].index_select(1, columns)
                src_v = layer.values[row].index_select(1, columns)
                if window is None:
                    self.keys[layer_idx][slot, :, :keep].copy_(src_k)
                    self.values[layer_idx][slot, :, :keep].copy_(src_v)
                else:
                    ring = torch.arange(n_tokens - keep, n_tokens, device=device) % window
                    self.keys[layer_idx][slot].index_copy_(1, ring, src_k)
                    self.values[layer_idx][slot].index_copy_(1, ring, src_v)


class _SlotDecoder:
    """Continuous-batching greedy decoder over a fixed number of slots (see the module docstring)."""

    def __init__(
        self,
        model,
        prompts,
        caps,
        stop_ids,
        pad_token_id,
        batch_size,
        cuda_graphs,
        share_prefix=True,
        fuse_norms=None,
        batch_invariant=False,
    ):
        self.model, self.prompts, self.caps = model, prompts, caps
        self.stop_ids, self.pad = stop_ids, int(pad_token_id)
        self.device = next(model.parameters()).device
        self.use_graphs = self.device.type == "cuda" and cuda_graphs is not False
        self.invariant = bool(batch_invariant)
        if self.invariant:
            # a shared prefix is chosen from all prompts, and a compiled norm's kernel per process
            share_prefix, fuse_norms = False, False
        # (module, forward) pairs put in place for the captured decode steps only: compiled
        # norms in the fast mode, the fixed-launch Triton norm in the batch-invariant mode
        if not self.use_graphs:
            self.fused_norms = []
        elif self.invariant:
            self.fused_norms = kernels.invariant_norm_forwards(model, self.device)
        else:
            self.fused_norms = _fused_norm_forwards(model) if fuse_norms is not False else []
        layers = find_decoder_stack(model).layers
        self.attn_configs = list({id(l.self_attn.config): l.self_attn.config for l in layers}.values())
        self.layer_types = architecture.layer_types(model)
        self.window = architecture.sliding_window(model)
        self.max_len = max(len(p) + c for p, c in zip(prompts, caps))
        if self.invariant:
            # every length bucket a whole number of attention chunks
            self.max_len = math.ceil(self.max_len / INVARIANT_CHUNK) * INVARIANT_CHUNK
        # a prefix every prompt starts with (a default system prompt) is prefilled once
        self.n_shared = prefix_to_share(model, prompts) if share_prefix else 0
        self.shared: SharedPrefix | None = None
        _register_decode_attention()
        with torch.inference_mode():
            layouts = self._cache_layouts()
        per_slot = sum(
            n_kv
            * (self.max_len if w is None else w if self.invariant else min(w, self.max_len))
            * (kd + vd)
            * dtype.itemsize
            for n_kv, kd, vd, dtype, w in layouts.values()
        )
        self.slots = self._slot_count(batch_size, per_slot, len(prompts))
        # decode batches pad up to INVARIANT_MIN_BATCH rows in batch-invariant mode: the cache holds them
        rows = max(self.slots, INVARIANT_MIN_BATCH) if self.invariant else self.slots
        self.cache = _SlotCache(layouts, rows, self.max_len, self.device, full_rings=self.invariant)
        log.info(
            "continuous engine: %d prompts, %d slots, %.1f MiB cache per slot, %d positions, cuda graphs %s, %s",
            len(prompts),
            self.slots,
            per_slot / 2**20,
            self.max_len,
            "on" if self.use_graphs else "off",
            "batch-invariant" if self.invariant else "fast (not batch-invariant)",
        )
        self.batch_buckets = _batch_buckets(self.slots, INVARIANT_MIN_BATCH if self.invariant else 1)
        # device-side step inputs and outputs: fixed addresses so that graphs can replay them
        self.token_in = torch.full((rows,), self.pad, dtype=torch.long, device=self.device)
        self.position_in = torch.zeros((rows,), dtype=torch.long, device=self.device)
        self.token_out = torch.zeros((rows,), dtype=torch.long, device=self.device)
        self.columns = torch.arange(self.max_len, device=self.device)
        self.graphs: dict[tuple[int, int], object] = {}
        self.graph_pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.capture_seconds = self.prefill_seconds = self.decode_seconds = 0.0
        self.steps = 0
        # set to a list to record each decode step's context lengths (for benchmarks)
        self.trace: list | None = None

    def _cache_layouts(self) -> dict[int, tuple]:
        """Per stored layer: (kv heads, key dim, value dim, dtype, sliding window or None), from a 1-token probe."""
        probe = torch.as_tensor([list(self.prompts[0][:1])], dtype=torch.long, device=self.device)
        out = self.model(input_ids=probe, use_cache=True, logits_to_keep=1)
        layouts = {}
        for layer_idx, layer in enumerate(out.past_key_values.layers):
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            sliding = self.layer_types is not None and self.layer_types[layer_idx] == "sliding_attention"
            layouts[layer_idx] = (
                layer.keys.shape[1],
                layer.keys.shape[3],
                layer.values.shape[3],
                layer.keys.dtype,
                int(self.window) if sliding else None,
            )
        if not layouts:
            raise ValueError(f"{type(self.model).__name__} stored no keys/values in its cache")
        return layouts

    def _slot_count(self, batch_size, per_slot: int, n_prompts: int) -> int:
        if batch_size != "auto":
            return max(1, min(int(batch_size), n_prompts))
        if self.device.type != "cuda":
            # a CPU decode step costs nearly the same for 1 or 64 rows (skinny matmuls), so take
            # many, within a modest cache budget
            fit = max(1, CPU_CACHE_BUDGET // max(per_slot, 1))
            return max(1, min(CPU_MAX_SLOTS, n_prompts, fit))
        free, total = torch.cuda.mem_get_info(self.device)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        # logits and their soft-capped copies per slot, kept in the graphs' memory pool
        per_slot_total = per_slot + 8 * vocab
        reserve = max(4 * 2**30, int(0.08 * total))
        fit = max(1, (free - reserve) // per_slot_total)
        slots = int(min(n_prompts, fit, 1024))
        log.info(
            "batch size %d from %.1f GiB free (%.1f MiB per slot, %.1f GiB reserved)",
            slots,
            free / 2**30,
            per_slot_total / 2**20,
            reserve / 2**30,
        )
        return slots

    def _prefill(self, indices: list[int]):
        """First answer token of each prompt and the prefill cache (left-padded batch)."""
        if self.n_shared:
            if self.shared is None:
                self.shared = SharedPrefix(self.model, self.prompts[indices[0]][: self.n_shared])
                log.info("the first %d tokens of every prompt are shared: prefilled once", self.n_shared)
            ids, mask, positions = self.shared.batch([self.prompts[i][self.n_shared :] for i in indices], self.pad)
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                past_key_values=self.shared.cache_for(len(indices)),
                use_cache=True,
                logits_to_keep=1,
            )
            return out.logits[:, -1].argmax(-1).tolist(), out.past_key_values
        # positions count from each prompt's first real token, as model.generate does
        ids, mask, positions = left_padded_batch([self.prompts[i] for i in indices], self.pad)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=1,
        )
        first = out.logits[:, -1].argmax(-1).tolist()
        return first, out.past_key_values

    def _masks(self, positions, columns):
        """Boolean [batch, 1, 1, keys] masks per layer type (a single tensor for one-type models)."""
        full = (columns[None, :] <= positions[:, None])[:, None, None, :]
        if self.layer_types is None:
            return full
        masks = {"full_attention": full}
        if self.cache.ring:
            # ring column c holds the newest position congruent to c: valid once written
            ring = torch.arange(self.cache.ring, device=positions.device)
            masks["sliding_attention"] = (ring[None, :] <= positions[:, None])[:, None, None, :]
        return masks

    def _decode(self, tokens, positions, columns):
        """Next greedy token per row; the batch and length buckets are the inputs' shapes."""
        self.cache.set_step(positions, columns)
        out = self.model(
            input_ids=tokens[:, None],
            position_ids=positions[:, None],
            attention_mask=self._masks(positions, columns),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].argmax(-1)

    def _step(self, batch: int, length: int) -> None:
        """One decode step on slots [0, batch): reads token_in/position_in, writes token_out."""
        saved = [c._attn_implementation_internal for c in self.attn_configs]
        for config in self.attn_configs:
            config._attn_implementation_internal = INVARIANT_ATTENTION if self.invariant else DECODE_ATTENTION
        for module, forward in self.fused_norms:
            module.forward = forward
        try:
            tokens = self._decode(self.token_in[:batch], self.position_in[:batch], self.columns[:length])
        finally:
            for config, impl in zip(self.attn_configs, saved):
                config._attn_implementation_internal = impl
            for module, _ in self.fused_norms:
                del module.forward
        self.token_out[:batch].copy_(tokens)

    def _run_step(self, batch: int, length: int) -> None:

        if not self.use_graphs:
            self._step(batch, length)
            return
        graph = self.graphs.get((batch, length))
        if graph is None:
            start = time.monotonic()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            # a warm-up step repeats this step's cache writes with the same values, so it is harmless
            with torch.cuda.stream(side):
                try:
                    self._step(batch, length)
                except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, do not fail the job
                    if not self.fused_norms:
                        raise
                    # e.g. no C compiler for Triton on this machine: slower, same answers
                    log.warning("compiled RMSNorms failed, decoding with eager ones: %s", err)
                    self.fused_norms = []
                    self._step(batch, length)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self.graph_pool):
                    self._step(batch, length)
            except RuntimeError as err:
                # e.g. a model whose forward synchronises with the host: slower, still correct
                log.warning("CUDA graph capture failed, decoding without graphs: %s", err)
                self.use_graphs = False
                self._step(batch, length)
                return
            self.graphs[(batch, length)] = graph
            self.capture_seconds += time.monotonic() - start
        graph.replay()

    def run(self) -> Iterator[Finished]:
        """Decode every prompt; yields each answer when it finishes (outside inference mode)."""
        n = len(self.prompts)
        progress = RateLogger(log, total=n, unit="answers", every_s=30.0)
        # waiting prompts, shortest first so that prefill batches pad little
        self.pending = deque(sorted(range(n), key=lambda i: (len(self.prompts[i]), i)))
        self.slot_prompt: list[int] = []  # prompt index of each active slot (slots [0, active))
        self.slot_answer: list[list[int]] = []
        rows = self.token_in.shape[0]  # slots, or more in batch-invariant mode (padding rows)
        self.token = np.full(rows, self.pad, dtype=np.int64)
        self.position = np.zeros(rows, dtype=np.int64)
        self.generated = 0
        started = time.monotonic()
        while self.pending or self.slot_prompt:
            free = self.slots - len(self.slot_prompt)
            with torch.inference_mode():
                # batch-invariant: admitting costs no prefill (prompts go through decode steps), so
                # every free slot is filled at once
                if self.pending and (
                    free >= max(1, self.slots // 8)
                    or not self.slot_prompt
                    or len(self.pending) <= free
                    or (self.invariant and free > 0)
                ):
                    done = self._admit([self.pending.popleft() for _ in range(min(free, len(self.pending)))])
                else:
                    done = self._decode_step()
            for finished in done:
                progress.update(1, tokens_per_s=f"{self.generated / (time.monotonic() - started):.0f}")
                yield finished
        log.info(
            "continuous engine: %d tokens in %d decode steps (%.1f s) after %.1f s of prefill; "
            "%d graphs captured in %.1f s of that",
            self.generated,
            self.steps,
            self.decode_seconds,
            self.prefill_seconds,
            len(self.graphs),
            self.capture_seconds,
        )

    def _decode_step(self) -> list[Finished]:
        """One step for every active slot; returns the answers it finished."""
        active = len(self.slot_prompt)
        token, position = self.token, self.position
        batch = next(b for b in self.batch_buckets if b >= active)
        length = _length_bucket(int(position[:active].max()) + 1, self.max_len)
        # padding rows attend to their own column 0 only and are never read
        token[active:batch] = self.pad
        position[active:batch] = 0
        step_start = time.monotonic()
        self.token_in[:batch].copy_(torch.from_numpy(token[:batch]))
        self.position_in[:batch].copy_(torch.from_numpy(position[:batch]))
        self._run_step(batch, length)
        new = self.token_out[:active].cpu().numpy().copy()
        self.decode_seconds += time.monotonic() - step_start
        self.steps += 1
        if self.trace is not None:
            self.trace.append(position[:active] + 1)
        stopped = np.isin(new, self.stop_ids) if self.stop_ids else np.zeros(active, dtype=bool)
        ended = []
        for slot in range(active):
            prompt = self.prompts[self.slot_prompt[slot]]
            if position[slot] + 1 < len(prompt):
                # batch-invariant prefill: the slot is still reading its prompt (teacher forcing)
                new[slot] = prompt[position[slot] + 1]
                continue
            self.generated += 1
            if stopped[slot]:
                ended.append((slot, False))
                continue
            answer = self.slot_answer[slot]
            answer.append(int(new[slot]))
            if len(answer) >= self.caps[self.slot_prompt[slot]]:
                ended.append((slot, True))
        token[:active] = new
        position[:active] += 1
        return self._release(ended)

    def _admit(self, admitted: list[int]) -> list[Finished]:
        """Prefill admitted prompts into the free slots after the active ones."""
        if self.invariant:
            return self._admit_teacher_forced(admitted)
        budget = 32768 if self.device.type == "cuda" else 4096
        chunks, chunk = [], []
        for i in admitted:  # already sorted by prompt length
            width = max([len(self.prompts[j]) for j in chunk] + [len(self.prompts[i])])
            if chunk and width * (len(chunk) + 1) > budget:
                chunks.append(chunk)
                chunk = []
            chunk.append(i)
        if chunk:
            chunks.append(chunk)
        done = [Finished(index=i, tokens=[], hit_limit=True) for i in admitted if self.caps[i] == 0]
        for chunk in chunks:
            todo = [i for i in chunk if self.caps[i] > 0]
            if not todo:
                continue
            prefill_start = time.monotonic()
            first, prefill_cache = self._prefill(todo)
            base = len(self.slot_prompt)
            slots = list(range(base, base + len(todo)))
            self.cache.load_prefill(
                prefill_cache, range(len(todo)), slots, [len(self.prompts[i]) for i in todo], self.n_shared
            )
            del prefill_cache
            self.prefill_seconds += time.monotonic() - prefill_start
            ended = []
            for slot, i, tok in zip(slots, todo, first):
                stop = tok in self.stop_ids
                self.slot_prompt.append(i)
                self.slot_answer.append([] if stop else [tok])
                self.token[slot] = tok
                self.position[slot] = len(self.prompts[i])
                if stop or self.caps[i] == 1:
                    ended.append((slot, not stop))
            done += self._release(ended)
        return done

    def _admit_teacher_forced(self, admitted: list[int]) -> list[Finished]:
        """Batch-invariant prefill: each admitted prompt enters a free slot at its first token.

        The decode steps then feed it its own prompt one token per step (teacher forcing, beside
        the other slots' answers) and the argmax after its last prompt token is its first answer
        token. So no prefill shape depends on another prompt (a prefill batch, its padding, its
        length), and prompts share the decode batches instead of being prefilled one by one.
        Measured on the H200 against prefilling each prompt alone: see docs/performance.md.
        """
        done = []
        for i in admitted:
            if self.caps[i] == 0:
                done.append(Finished(index=i, tokens=[], hit_limit=True))
                continue
            slot = len(self.slot_prompt)
            self.slot_prompt.append(i)
            self.slot_answer.append([])
            self.token[slot] = self.prompts[i][0]
            self.position[slot] = 0
        return done

    def _release(self, ended: list[tuple[int, bool]]) -> list[Finished]:
        """Finish the (slot, hit_limit) pairs, moving the last active sequences into the holes."""
        done = [Finished(index=self.slot_prompt[s], tokens=self.slot_answer[s], hit_limit=hit) for s, hit in ended]
        for slot in sorted((s for s, _ in ended), reverse=True):
            last = len(self.slot_prompt) - 1
            if slot != last:
                self.cache.move_slot(last, slot)
                self.slot_prompt[slot], self.slot_answer[slot] = self.slot_prompt[last], self.slot_answer[last]
                self.token[slot], self.position[slot] = self.token[last], self.position[last]
            self.slot_prompt.pop()
            self.slot_answer.pop()
        return done
