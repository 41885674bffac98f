"""Loading a prepared checkpoint and talking to it in chat form.

``load_model`` reads a checkpoint directory that ``model_prep.prepare_model`` wrote (or any
plain Hugging Face checkpoint with a chat template). Model-family knowledge about special
tokens lives here: ``encode_chat`` never adds a second BOS, and ``stop_token_ids`` stops at
every end-of-turn token the checkpoint names, not only ``tokenizer.eos_token``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from .io import InputError

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
END_OF_TURN_PROBE = "refusal-ablation-end-of-turn-probe"


def check_checkpoint(model_dir: str | os.PathLike, where: str) -> None:
    """Fail unless ``model_dir`` holds a config, every weight file it needs, and a tokenizer."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{where}: {model_dir} is not a directory")
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{where}: {model_dir} has no config.json")
    weights = [p for pattern in WEIGHT_PATTERNS for p in model_dir.glob(pattern)]
    if not weights:
        raise InputError(f"{where}: {model_dir} has no weights (*.safetensors or *.bin)")
    for index in model_dir.glob("*.index.json"):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (model_dir / s).is_file())
        if missing:
            raise InputError(f"{where}: {index} names weight shards that are missing: {missing[:5]}")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"{where}: {model_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")


# ---------------------------------------------------------------- special tokens


def _id_list(value) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set)):
        return {int(v) for v in value}
    return {int(value)}


def special_tokens(tokenizer) -> set[str]:
    specials = set(tokenizer.all_special_tokens)
    specials |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return specials


def end_of_turn_token(tokenizer) -> str | None:
    """The special token the chat template puts right after a message's content, if any."""
    if not tokenizer.chat_template:
        return None
    specials = special_tokens(tokenizer)
    probes = (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": END_OF_TURN_PROBE}],
        [{"role": "user", "content": END_OF_TURN_PROBE}],
    )
    for messages in probes:
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # some templates reject a conversation ending with the assistant
            continue
        at = text.rfind(END_OF_TURN_PROBE)
        if at < 0:
            continue
        tail_ids = tokenizer(text[at + len(END_OF_TURN_PROBE) :], add_special_tokens=False)["input_ids"]
        for token in tokenizer.convert_ids_to_tokens(tail_ids):
            if token in specials:
                return token
            if tokenizer.convert_tokens_to_string([token]).strip():
                break
    return None


def text_configs(model) -> list:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return [config] if text is config else [text, config]


def stop_token_ids(tokenizer, model) -> list[int]:
    """Every id that ends an answer: generation config eos, model config eos, tokenizer eos,
    and the chat template's end-of-turn token."""
    ids = _id_list(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    for config in text_configs(model):
        ids |= _id_list(getattr(config, "eos_token_id", None))
    ids |= _id_list(tokenizer.eos_token_id)
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        ids.add(int(tokenizer.convert_tokens_to_ids(eot)))
    return sorted(ids)


# ---------------------------------------------------------------- load and encode


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"config compute.device is {device!r} but no CUDA device is visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    return str(device)


def as_torch_dtype(name, where: str):
    import torch

    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"{where}: {name!r} is not a torch dtype (e.g. float32, bfloat16)")
    return dtype


def _resolve_dtype(dtype: str, config, device: str):
    import torch

    if dtype != "auto":
        return as_torch_dtype(dtype, "dtype")
    saved = getattr(config, "dtype", None) or getattr(config.get_text_config(), "dtype", None)
    saved = as_torch_dtype(saved, "config.json dtype") if saved is not None else torch.float32
    if device == "cpu" and saved in (torch.float16, torch.bfloat16):
        # half-precision matmuls on CPU are slow and, for float16, poorly supported
        return torch.float32
    return saved


def _model_class(config):
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    if type(config) in AutoModelForCausalLM._model_mapping:
        return AutoModelForCausalLM
    return AutoModelForImageTextToText


def load_model(model_dir: str | os.PathLike, dtype: str = "auto", device: str = "auto", threads: int | None = None):
    """(model, tokenizer) of a checkpoint dir, in eval mode, tokenizer padding on the left.

    The model is the class named in ``config.architectures`` (e.g. the multimodal
    Gemma4ForConditionalGeneration), whose forward takes ``input_ids`` and gives text logits.
    ``threads`` caps torch's CPU threads (the job's share of the machine).
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer

    if threads:
        # torch otherwise takes every core of the node; oversubscribed CPU threads slow tiny matmuls many times over
        torch.set_num_threads(int(threads))
    model_dir = Path(model_dir)
    check_checkpoint(model_dir, "model")
    device = resolve_device(device)
    config = AutoConfig.from_pretrained(model_dir)
    torch_dtype = _resolve_dtype(dtype, config, device)
    cls = _model_class(config)
    start = time.monotonic()
    model = cls.from_pretrained(model_dir, config=config, dtype=torch_dtype, device_map=device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template and (model_dir / "chat_template.json").is_file():
        tokenizer.chat_template = json.loads((model_dir / "chat_template.json").read_text())["chat_template"]
    if not tokenizer.chat_template:
        raise InputError(
            f"{model_dir}: the tokenizer has no chat template (a model that ships none needs "
            f"config model.chat_template when it is prepared)"
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        log.warning("%s: tokenizer has no pad token; padding with eos %r", model_dir, tokenizer.eos_token)
    log.info("loaded %s (%s, %s, %s) in %.1f s", model_dir, cls.__name__, torch_dtype, device, time.monotonic() - start)
    return model, tokenizer


def encode_chat(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt as one user turn plus the generation prompt; no system prompt.

    The rendered template already holds every special token it needs (BOS included), so it
    is tokenised without adding special tokens: otherwise Gemma-family tokenizers add a
    second BOS.
    """
    encoded = []
    bos = tokenizer.bos_token_id
    for index, prompt in enumerate(prompts):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if bos is not None and ids[:2] == [bos, bos]:
            raise InputError(f"prompt {index}: the chat template itself renders two BOS tokens")
        encoded.append(ids)
    return encoded


def context_window(model) -> int:
    """Maximum sequence length (prompt + answer) the model's config declares."""
    for config in text_configs(model):
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    raise InputError(f"{type(model.config).__name__}: no context window in the model config")


def checkpoint_fingerprint(model_dir: str | os.PathLike) -> dict:
    """Cheap fingerprint of a checkpoint dir: name, size and mtime of every file (no hashing
    of multi-GB weights), enough to tell a rebuilt or different model apart."""
    model_dir = Path(model_dir)
    files = {}
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            stat = path.stat()
            files[str(path.relative_to(model_dir))] = [stat.st_size, stat.st_mtime_ns]
    return {"path": str(model_dir.resolve()), "files": files}
