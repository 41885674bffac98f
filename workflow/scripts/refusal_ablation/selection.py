"""Which layer's direction the single-direction ``arditi`` edit removes, chosen as in Arditi et al.

Arditi et al. (2024, "Refusal in language models is mediated by a single direction") take
candidate directions from every layer and keep the one whose removal leaves the least
refusal on held-out harmful prompts, among those that barely move the model on harmless
prompts and that do not sit in the last layers. Here, with one candidate per layer (the
last prompt token's direction the workflow already fits):

- ablation: the candidate d is projected out of the residual stream everywhere, at the
  output of the embedding and of every decoder layer (``x <- x - (x . d) d``), which is
  what the weight edit aims to reproduce;
- refusal score: at the first answer position, ``log p - log(1 - p)`` with p the total
  probability of the configured refusal tokens (the first tokens of refusal openings such
  as "I'm sorry"), averaged over held-out unsafe construction prompts (lower = less refusal);
- KL filter: mean ``KL(P_baseline || P_ablated)`` of the first answer token's distribution
  over held-out safe prompts must be below ``kl_threshold``;
- depth filter: layer < ``max_layer_fraction`` x number of layers.

The selected layer is the candidate with the lowest refusal score among those that pass
both filters. If none passes the KL filter, the shallow candidate that moves the safe
prompts least (lowest KL) is taken, flagged (``passes_kl`` false in the record) and
warned about: the candidate with the least refusal left is then usually one that breaks
the model (measured on the Gemma 3 organism: first-token KL of 35 nats). (Arditi et al. also
require that adding the direction induces refusal on harmless prompts; that filter is not
applied here.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = [
    "layer",
    "refusal_score",
    "baseline_refusal_score",
    "kl_harmless",
    "passes_kl",
    "passes_depth",
    "selected",
]


def refusal_token_ids(tokenizer, prefixes: list[str]) -> list[int]:
    """The first token of each refusal opening, as the model would write it at a turn's start."""
    ids = []
    for prefix in prefixes:
        tokens = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ValueError(f"refusal prefix {prefix!r} encodes to no token")
        if tokens[0] not in ids:
            ids.append(tokens[0])
    return ids


def refusal_scores(log_probs, token_ids: list[int]):
    """Per row of first-answer-token log-probabilities: log-odds of any refusal token."""
    import torch

    chosen = torch.logsumexp(log_probs[:, token_ids], dim=-1)
    # log(1 - p) without cancellation when p is near 1
    rest = torch.log((-torch.expm1(chosen)).clamp_min(1e-30))
    return chosen - rest


def kl_rows(p_log, q_log):
    """KL(P || Q) per row, from float32 log-probabilities."""

    return (p_log.exp() * (p_log - q_log)).sum(dim=-1).clamp_min(0)


@contextmanager
def ablated(stack, direction):
    """Within the block, ``direction`` is projected out of every residual-stream write."""
    import torch

    d = torch.as_tensor(direction, dtype=torch.float32)
    d = d / torch.linalg.vector_norm(d)

    def remove(tensor):
        unit = d.to(device=tensor.device, dtype=tensor.dtype)
        return tensor - (tensor @ unit).unsqueeze(-1) * unit

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (remove(output[0]), *output[1:])
        return remove(output)

    handles = [stack.embedding.register_forward_hook(hook)]
    handles += [layer.register_forward_hook(hook) for layer in stack.layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def first_answer_log_probs(model, tokenizer, encoded: list[list[int]], batch_size: int):
    """float32 [n, vocab] log-probabilities of the first answer token for each encoded prompt."""
    import torch

    from .architecture import accepts_logits_to_keep
    from .prefix import left_padded_batch

    device = next(model.parameters()).device
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    rows = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            ids, attention, positions = left_padded_batch(encoded[start : start + batch_size], tokenizer.pad_token_id)
            out = model(
                input_ids=ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                use_cache=False,
                **extra,
            )
            rows.append(torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu())
    return torch.cat(rows)


def score_candidates(
    model,
    tokenizer,
    directions: np.ndarray,
    harmful: list[str],
    harmless: list[str],
    refusal_prefixes: list[str],
    batch_size: int = 16,
    max_layer_fraction: float = 0.8,
    kl_threshold: float = 0.1,
) -> pd.DataFrame:
    """One row per layer: refusal score and harmless KL with that layer's direction ablated."""
    from .architecture import find_decoder_stack
    from .loading import encode_chat

    if not harmful or not harmless:
        raise ValueError("direction selection needs held-out unsafe and safe prompts; got none of one kind")
    stack = find_decoder_stack(model)
    if directions.shape != (len(stack), stack.hidden_size):
        raise ValueError(
            f"directions have shape {directions.shape}; the model has {len(stack)} layers of {stack.hidden_size}"
        )
    tokens = refusal_token_ids(tokenizer, refusal_prefixes)
    log.info("refusal tokens: %s", [tokenizer.decode([t]) for t in tokens])
    harmful_ids, harmless_ids = encode_chat(tokenizer, harmful), encode_chat(tokenizer, harmless)
    baseline_harmful = first_answer_log_probs(model, tokenizer, harmful_ids, batch_size)
    baseline_harmless = first_answer_log_probs(model, tokenizer, harmless_ids, batch_size)
    baseline_score = float(refusal_scores(baseline_harmful, tokens).mean())
    depth_limit = max_layer_fraction * len(stack)
    rows, started = [], time.monotonic()
    for layer in range(len(stack)):
        row = {"layer": layer, "baseline_refusal_score": baseline_score, "passes_depth": layer < depth_limit}
        if row["passes_depth"]:
            with ablated(stack, directions[layer]):
                harmful_lp = first_answer_log_probs(model, tokenizer, harmful_ids, batch_size)
                harmless_lp = first_answer_log_probs(model, tokenizer, harmless_ids, batch_size)
            row["refusal_score"] = float(refusal_scores(harmful_lp, tokens).mean())
            row["kl_harmless"] = float(kl_rows(baseline_harmless, harmless_lp).mean())
            done = sum(r["passes_depth"] for r in rows) + 1
            log.info(
                "layer %d: refusal score %.3f (baseline %.3f), harmless KL %.4f [%d candidates, %.1f s each]",
                layer,
                row["refusal_score"],
                baseline_score,
                row["kl_harmless"],
                done,
                (time.monotonic() - started) / done,
            )
        else:
            row["refusal_score"] = math.nan
            row["kl_harmless"] = math.nan
        row["passes_kl"] = bool(row["kl_harmless"] < kl_threshold) if row["passes_depth"] else False
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["selected"] = False
    frame.loc[select_layer(frame), "selected"] = True
    return frame[COLUMNS]


def select_layer(frame: pd.DataFrame) -> int:
    """Row index of the chosen candidate (see the module docstring for the rule)."""
    eligible = frame[frame["passes_depth"] & frame["passes_kl"]]
    if not eligible.empty:
        return int(eligible["refusal_score"].idxmin())
    shallow = frame[frame["passes_depth"]]
    if shallow.empty:
        raise ValueError("no layer passes the depth filter; raise edit.selection.max_layer_fraction")
    chosen = int(shallow["kl_harmless"].idxmin())
    log.warning(
        "no candidate passes the KL filter (lowest KL %.3g > edit.selection.kl_threshold); taking the "
        "candidate that moves the safe prompts least, layer %s",
        shallow.loc[chosen, "kl_harmless"],
        shallow.loc[chosen, "layer"],
    )
    return chosen


def run_selection(
    model_dir,
    directions_npz,
    split_csv,
    out_csv,
    out_json,
    selection: dict,
    batch_size: int,
    device: str = "auto",
    threads: int | None = None,
) -> int:
    """Score every candidate layer on the held-out construction prompts and write the choice."""
    from . import io
    from .directions import read_directions
    from .loading import load_model
    from .split import TEST, split_rows

    directions = read_directions(directions_npz)
    held_out = split_rows(split_csv, TEST, selection.get("prompts_per_label_per_area"))
    harmful = held_out[held_out["label"] == "unsafe"]["prompt"].tolist()
    harmless = held_out[held_out["label"] == "safe"]["prompt"].tolist()
    log.info("selection on %d held-out unsafe and %d safe prompts", len(harmful), len(harmless))
    model, tokenizer = load_model(model_dir, device=device, threads=threads)
    frame = score_candidates(
        model,
        tokenizer,
        directions,
        harmful,
        harmless,
        list(selection["refusal_prefixes"]),
        batch_size=batch_size,
        max_layer_fraction=float(selection["max_layer_fraction"]),
        kl_threshold=float(selection["kl_threshold"]),
    )
    chosen = frame[frame["selected"]].iloc[0]
    io.write_csv(out_csv, frame)
    record = {
        "selected_layer": int(chosen["layer"]),
        "refusal_score": float(chosen["refusal_score"]),
        "baseline_refusal_score": float(chosen["baseline_refusal_score"]),
        "kl_harmless": float(chosen["kl_harmless"]),
        "passes_kl": bool(chosen["passes_kl"]),
        "n_unsafe_prompts": len(harmful),
        "n_safe_prompts": len(harmless),
        **{key: selection[key] for key in ("kl_threshold", "max_layer_fraction", "refusal_prefixes")},
        "directions": str(directions_npz),
    }
    with io.atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        "selected layer %d (refusal score %.3f, KL %.4f)",
        record["selected_layer"],
        chosen["refusal_score"],
        chosen["kl_harmless"],
    )
    return record["selected_layer"]


def read_selected_layer(path: str | os.PathLike) -> int:
    from .io import InputError

    try:
        return int(json.loads(open(path).read())["selected_layer"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a direction-selection record with 'selected_layer' ({exc})") from None
