"""Tiny real tokenizers and random checkpoints for tests, built offline in about a second.

Every builder writes a directory that ``AutoTokenizer.from_pretrained(dir)`` and the model's
``from_pretrained(dir)`` both read, like a real Hugging Face checkpoint. The tokenizer is a
byte-level BPE without merges (one token per byte) plus the special tokens of the chat
template, so any text round-trips and the vocabulary stays small.

Chat styles:
- ``gemma``: the template starts with ``{{ bos_token }}`` and the tokenizer's post-processor
  also prepends BOS, as Gemma's does, so rendering then tokenising with special tokens gives
  the double BOS docs/design.md warns about; turns end with ``<end_of_turn>``.
- ``chatml``: SmolLM2's layout, turns end with ``<|im_end|>``; no BOS added anywhere.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=16
)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch for one build without disturbing the caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def one_torch_thread():
    """Run torch single-threaded: on a busy machine, threads contending over matrices this
    small make every forward pass many times slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _byte_level_tokenizer(specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(specials)}
    # the alphabet comes back in a random order per process: sort it for stable token ids
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def build_tiny_tokenizer(
    path, style: str = "gemma", eos_token: str | None = None, pad_token: str | None = "default"
) -> Path:
    """Save a tiny tokenizer with a chat template into ``path``.

    ``eos_token``/``pad_token`` override the style's defaults; ``pad_token=None`` leaves the
    tokenizer without a pad token (as the GGUF-built SmolLM2 tokenizer is).
    """
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if style == "gemma":
        specials, template = GEMMA_SPECIALS, GEMMA_CHAT_TEMPLATE
        defaults = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    elif style == "chatml":
        specials, template = CHATML_SPECIALS, CHATML_CHAT_TEMPLATE
        defaults = dict(
            bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"
        )
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    backend = _byte_level_tokenizer(specials)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if style == "gemma":
        # Gemma's tokenizer prepends BOS itself: the source of the double-BOS pitfall
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", specials.index("<bos>"))]
        )
    if eos_token is not None:
        defaults["eos_token"] = eos_token
    if pad_token is None:
        defaults.pop("pad_token")
    elif pad_token != "default":
        defaults["pad_token"] = pad_token
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **defaults)
    tokenizer.save_pretrained(path)
    return path


def _token_ids(path: Path) -> dict[str, int]:
    """Ids of the special tokens of either style (absent ones left out), plus the vocabulary size."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    vocab = tokenizer.get_vocab()
    ids = {t: vocab[t] for t in GEMMA_SPECIALS + CHATML_SPECIALS if t in vocab}
    return ids | {"__vocab_size__": len(tokenizer)}


def _save_generation_config(model, path: Path, eos_ids: list[int], pad_id: int | None, bos_id: int | None):
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0], pad_token_id=pad_id, bos_token_id=bos_id
    )
    model.save_pretrained(path)


def build_tiny_llama(
    path, style: str = "gemma", max_position_embeddings: int = 256, seed: int = 0, tokenizer_kwargs: dict | None = None
) -> Path:
    """Tiny random LlamaForCausalLM (3 layers, hidden 32) with its tokenizer in ``path``.

    Its generation config names only the tokenizer's eos, not the chat template's
    end-of-turn token, so stopping at the turn's end must come from the template.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    path = build_tiny_tokenizer(path, style=style, **(tokenizer_kwargs or {}))
    ids = _token_ids(path)
    bos = ids.get("<bos>", ids.get("<|im_start|>"))
    eos = ids.get("<eos>", ids.get("<|im_end|>"))
    pad = ids.get("<pad>", ids.get("<|im_end|>"))
    config = LlamaConfig(
        vocab_size=ids["__vocab_size__"],
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
        **TINY_TEXT,
    )
    with _seeded(seed):
        model = LlamaForCausalLM(config).eval()
    _save_generation_config(model, path, [eos], pad, bos)
    return path


def build_tiny_gemma3(path, max_position_embeddings: int = 256, seed: int = 0) -> Path:
    """Tiny random Gemma3ForCausalLM (text only), Gemma-style tokenizer, eos = [<eos>, <end_of_turn>]."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    path = build_tiny_tokenizer(path, style="gemma")
    ids = _token_ids(path)
    config = Gemma3TextConfig(
        vocab_size=ids["__vocab_size__"],
        max_position_embeddings=max_position_embeddings,
        sliding_window=16,
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eos>"],
        pad_token_id=ids["<pad>"],
        **TINY_TEXT,
    )
    with _seeded(seed):
        model = Gemma3ForCausalLM(config).eval()
    _save_generation_config(model, path, [ids["<eos>"], ids["<end_of_turn>"]], ids["<pad>"], ids["<bos>"])
    return path


def build_tiny_gemma4(path, max_position_embeddings: int = 256, seed: int = 0, sliding_window: int = 16) -> Path:
    """Tiny random Gemma4ForConditionalGeneration without vision/audio towers.

    Its decoder layers sit under ``model.model.language_model.layers``, as in the real
    multimodal Gemma 4 checkpoints.
    """
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    path = build_tiny_tokenizer(path, style="gemma")
    ids = _token_ids(path)
    vocab = ids["__vocab_size__"]
    text_config = dict(
        TINY_TEXT,
        vocab_size=vocab,
        vocab_size_per_layer_input=vocab,
        hidden_size_per_layer_input=8,
        max_position_embeddings=max_position_embeddings,
        sliding_window=sliding_window,
        global_head_dim=16,
        layer_types=["sliding_attention"] * (TINY_TEXT["num_hidden_layers"] - 1) + ["full_attention"],
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eos>"],
        pad_token_id=ids["<pad>"],
    )
    config = Gemma4Config(text_config=text_config, vision_config=None, audio_config=None)
    with _seeded(seed):
        model = Gemma4ForConditionalGeneration(config).eval()
    _save_generation_config(model, path, [ids["<eos>"], ids["<end_of_turn>"]], ids["<pad>"], ids["<bos>"])
    return path


def read_config(path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
