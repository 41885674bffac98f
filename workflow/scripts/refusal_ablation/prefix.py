"""Shared prompt prefixes: the tokens every prompt starts with are run through the model once.

Chat templates put the same tokens in front of every prompt; SmolLM2's default system prompt
is 24 of the demo's 36-49 prompt tokens, so without sharing more than half of every prefill
recomputes identical keys and values. ``SharedPrefix`` runs those tokens once and hands each
batch a copy of their cache; the batch then carries only each prompt's own tokens, left-padded
behind the prefix:

    [prefix (P tokens)] [pads] [prompt's own tokens]

The attention mask hides the pads and the position ids continue from P, so every prompt sees
the positions and context it would see alone. Sharing starts at ``MIN_SHARED_PREFIX`` tokens
(Gemma's 4-token turn header is not worth a cache copy).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

MIN_SHARED_PREFIX = 8


def shared_prefix_length(sequences: Sequence[Sequence[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """Tokens shared by the start of every sequence, leaving each at least one of its own; 0 below ``minimum``."""
    if not sequences:
        return 0
    first = sequences[0]
    limit = min(len(s) for s in sequences) - 1
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return length if length >= minimum else 0


def prefix_to_share(model, sequences: Sequence[Sequence[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """How many leading tokens of ``sequences`` to compute once for ``model`` (0: none).

    Sliding-window layers measure distance in cache columns, and their caches keep only the
    last window - 1 columns; the pads between prefix and a prompt's own tokens would stretch
    the one and push prefix columns out of the other, so with sliding-window layers sharing
    is only used where every sequence fits inside the cache.
    """
    from .architecture import sliding_window, uses_sliding_window

    if uses_sliding_window(model) and max((len(s) for s in sequences), default=0) >= int(sliding_window(model)) - 1:
        return 0
    return shared_prefix_length(sequences, minimum)


def left_padded_batch(sequences: Sequence[Sequence[int]], pad_token_id: int):
    """(input_ids, attention_mask, position_ids) with every sequence right-aligned.

    Position ids count real tokens only, so a padded prompt sees exactly the positions it
    would see alone.
    """
    import torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attention, positions


class SharedPrefix:
    """The key/value cache of a token prefix, computed once, copied per batch."""

    def __init__(self, model, tokens: Sequence[int]):
        import torch

        if len(tokens) == 0:
            raise ValueError("SharedPrefix: empty prefix")
        self.tokens = [int(t) for t in tokens]
        device = next(model.parameters()).device
        ids = torch.as_tensor([self.tokens], dtype=torch.long, device=device)
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values

    def __len__(self) -> int:
        return len(self.tokens)

    def cache_for(self, batch: int):
        """A fresh cache holding the prefix for ``batch`` rows (the forward appends to it)."""
        cache = copy.deepcopy(self.cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    def batch(self, suffixes: Sequence[Sequence[int]], pad_token_id: int):
        """(input_ids, attention_mask, position_ids) of left-padded suffixes that follow the prefix.

        The attention mask spans prefix + batch width, as the model expects alongside a cache.
        """
        import torch

        n = len(self.tokens)
        input_ids, own, positions = left_padded_batch(suffixes, pad_token_id)
        attention = torch.cat([torch.ones((len(suffixes), n), dtype=torch.long), own], dim=1)
        return input_ids, attention, positions + n
