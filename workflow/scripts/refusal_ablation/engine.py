"""Greedy generation engine: prompt token ids in, answer token ids out.

``iter_greedy`` yields each finished sequence as soon as its batch is done, so callers can
write answers as they come (and resume after an interruption).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

log = logging.getLogger(__name__)


@dataclass
class Finished:
    index: int  # position of the prompt in the caller's list
    tokens: list[int]  # answer tokens, without the stop token
    hit_limit: bool  # stopped by its token cap, not by a stop token


def _cut(tokens: Sequence[int], cap: int, stop_ids: set[int]) -> tuple[list[int], bool]:
    for pos, tok in enumerate(tokens[:cap]):
        if tok in stop_ids:
            return list(tokens[:pos]), False
    return list(tokens[:cap]), len(tokens) >= cap


def iter_greedy(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    batch_size: int = 8,
) -> Iterator[Finished]:
    """Greedy decoding with ``model.generate``, batches of similar prompt length."""
    import torch

    stop_ids = set(int(t) for t in stop_token_ids)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = torch.as_tensor(prompts[i], dtype=torch.long)
            input_ids[row, width - len(ids) :] = ids
            attention[row, width - len(ids) :] = 1
        cap = max(max_new_tokens[i] for i in batch)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=cap,
                do_sample=False,
                eos_token_id=sorted(stop_ids),
                pad_token_id=pad_token_id,
            )
        new = out[:, width:].tolist()
        for row, i in enumerate(batch):
            tokens, hit = _cut(new[row], max_new_tokens[i], stop_ids)
            yield Finished(index=i, tokens=tokens, hit_limit=hit)
