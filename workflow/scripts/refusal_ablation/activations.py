"""Last-prompt-token hidden states at the output of every decoder layer.

Each prompt is one user turn in the chat template with the generation prompt, so the last
prompt token is where the model is about to start its answer: the position whose state
carries the refuse/comply decision the refusal direction is fit from.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from . import io
from .loading import encode_chat, load_model
from .prefix import SharedPrefix, left_padded_batch, prefix_to_share
from .split import read_split

log = logging.getLogger(__name__)


def extract_last_token_states(
    model, tokenizer, prompts: list[str], batch_size: int, share_prefix: bool = True
) -> np.ndarray:
    """float32 [n_prompts, n_layers, hidden]: the last prompt token's state after each layer.

    Layer l is ``hidden_states[l + 1]`` of the forward pass (entry 0 is the embeddings). As
    in the reference code, the final entry is what the model returns there; transformers
    returns it after the final norm. With ``share_prefix``, tokens every prompt starts with
    (a default system prompt) are run once (see ``prefix``); the states are the same.
    """
    import torch
    from tqdm import tqdm

    from .architecture import accepts_logits_to_keep

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = encode_chat(tokenizer, prompts)
    # similar lengths share a batch: less padding, same result
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    device = next(model.parameters()).device
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    states: list[np.ndarray | None] = [None] * len(encoded)
    start = time.monotonic()
    n_shared = prefix_to_share(model, encoded) if share_prefix else 0
    shared = SharedPrefix(model, encoded[0][:n_shared]) if n_shared else None
    if shared is not None:
        log.info("the first %d tokens of every prompt are shared: computed once", n_shared)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="activations", unit="batch", file=sys.stderr):
            if shared is None:
                input_ids, attention, positions = left_padded_batch([encoded[i] for i in batch], tokenizer.pad_token_id)
                cache = {"use_cache": False}
            else:
                input_ids, attention, positions = shared.batch(
                    [encoded[i][n_shared:] for i in batch], tokenizer.pad_token_id
                )
                cache = {"use_cache": True, "past_key_values": shared.cache_for(len(batch))}
            out = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                output_hidden_states=True,
                **cache,
                **extra,
            )
            # left padding puts every prompt's last token in the last column
            last = torch.stack([h[:, -1, :] for h in out.hidden_states[1:]], dim=1)
            last = last.float().cpu().numpy()
            for row, i in enumerate(batch):
                states[i] = last[row]
    if not states:
        raise ValueError("no prompts to extract activations for")
    result = np.stack(states).astype(np.float32, copy=False)
    log.info("extracted %s states for %d prompts in %.1f s", result.shape, len(prompts), time.monotonic() - start)
    return result


def run_activations(
    split_csv, model_dir, out_npz, batch_size: int, device: str = "auto", threads: int | None = None
) -> None:
    """Activations of every prompt in the split file, saved keyed by prompt id."""
    frame = read_split(split_csv)
    model, tokenizer = load_model(model_dir, device=device, threads=threads)
    states = extract_last_token_states(model, tokenizer, frame["prompt"].tolist(), int(batch_size))
    io.save_activations(out_npz, frame["id"].tolist(), states)
    log.info("wrote %s: %d prompts x %d layers x %d hidden", out_npz, *states.shape)
