"""How far did the edit move the model on harmless prompts? KL(P_baseline || P_edited) per prompt.

For every harmless prompt both models see the same tokens: the prompt as generation encodes
it (chat template, generation prompt, one BOS, no system prompt) followed by the first
``max_tokens`` tokens of the baseline's OWN greedy answer (teacher forcing). At each
position the two next-token distributions are compared in float32 over the full vocabulary
of whatever the forward returns (final soft-capping included):

- ``kl_first``: the first answer position (right after the generation prompt);
- ``kl_answer_mean`` / ``kl_answer_max``: over the first answer position and the position
  after each of the ``tokens`` teacher-forced answer tokens (``tokens + 1`` positions).

Only these per-prompt numbers are kept; full-vocabulary logits never leave the device.
Both models stay loaded where they fit; otherwise they take turns over chunks of prompts,
holding the baseline's log-probabilities of one chunk in host memory in between.

The answer tokens are the stored answer text re-encoded without special tokens: the answer
files keep text, not ids. Where that gives another length than generation recorded, the
count is logged (a tokenizer whose decode/encode round trip is not exact, or an answer whose
leading whitespace generation stripped); ``generated_tokens`` keeps the recorded length beside
``tokens`` for every prompt.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .io import InputError, answer_text, read_answer_table, read_answers, read_questions, write_csv
from .runtime import RateLogger

log = logging.getLogger(__name__)

KL_COLUMNS = [
    "question_id",
    "prompt_id",
    "promptset",
    "category",
    "kl_first",
    "kl_answer_mean",
    "kl_answer_max",
    "tokens",
    "generated_tokens",
]
RESIDENT_CHOICES = ("auto", "both", "alternate")


def kl_divergence(baseline_logits, edited_logits):
    """KL(P_baseline || P_edited) over the last axis, in float32; shape of the leading axes.

    Rounding can give -1e-9 where the two distributions are equal; KL is never negative, so
    values are clamped at 0.
    """
    import torch

    log_p = torch.log_softmax(baseline_logits.float(), dim=-1)
    log_q = torch.log_softmax(edited_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp(min=0.0)


def teacher_forced_batch(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_token_id: int):
    """Left-padded prompt + answer rows, and which logit columns to compare.

    Returns (input_ids, attention_mask, position_ids, keep, spans): the forward keeps the
    logits of the last ``keep`` columns; row i's positions of interest are the last
    ``spans[i] = len(answers[i]) + 1`` of those (first answer position, then one after each
    answer token), because left padding right-aligns every row.
    """
    from .prefix import left_padded_batch

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    rows = [list(p) + list(a) for p, a in zip(prompts, answers)]
    input_ids, mask, positions = left_padded_batch(rows, pad_token_id)
    spans = [len(a) + 1 for a in answers]
    return input_ids, mask, positions, max(spans), spans


def answer_logits(model, prompts, answers, pad_token_id: int):
    """Per row, the logits [len(answer) + 1, vocab] at its answer positions (on the model's device)."""
    import torch

    from .architecture import accepts_logits_to_keep

    device = next(model.parameters()).device
    input_ids, mask, positions, keep, spans = teacher_forced_batch(prompts, answers, pad_token_id)
    extra = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    with torch.inference_mode():
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=False,
            **extra,
        ).logits
    logits = logits[:, -keep:]
    return [logits[row, keep - span :] for row, span in enumerate(spans)]


def _row_result(kl) -> tuple[float, float, float]:
    values = kl.double().cpu().numpy()
    return float(values[0]), float(values.mean()), float(values.max())


def _weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in model_dir.glob(pattern))


def both_fit(baseline_dir, edited_dir, device: str) -> bool:
    """Whether both checkpoints fit in the device's free memory at once (with a 25% margin
    for activations and logits); on the CPU float32 weights of a half-precision checkpoint count double."""
    import torch

    need = _weights_bytes(Path(baseline_dir)) + _weights_bytes(Path(edited_dir))
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
    else:
        need *= 2  # a bfloat16 checkpoint is loaded in float32 on the CPU
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return need * 1.25 < free


def prompt_kl(
    baseline,
    edited,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int,
) -> list[tuple[float, float, float]]:
    """(kl_first, kl_answer_mean, kl_answer_max) per prompt, both models loaded."""
    results: list = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(answers[i]))
    progress = RateLogger(log, len(prompts), "prompts")
    edited_device = next(edited.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        base_rows = answer_logits(baseline, [prompts[i] for i in batch], [answers[i] for i in batch], pad_token_id)
        edit_rows = answer_logits(edited, [prompts[i] for i in batch], [answers[i] for i in batch], pad_token_id)
        for index, base, edit in zip(batch, base_rows, edit_rows):
            results[index] = _row_result(kl_divergence(base.to(edited_device), edit))
        del base_rows, edit_rows
        progress.update(len(batch), positions=sum(len(answers[i]) + 1 for i in batch))
    return results


def prompt_kl_alternating(
    load_baseline,
    load_edited,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int,
    chunk_prompts: int,
) -> list[tuple[float, float, float]]:
    """As ``prompt_kl`` with one model loaded at a time: per chunk of prompts the baseline's
    float32 log-probabilities wait in host memory while the edited model is loaded."""
    import torch

    results: list = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(answers[i]))
    progress = RateLogger(log, len(prompts), "prompts")
    for chunk_start in range(0, len(order), chunk_prompts):
        chunk = order[chunk_start : chunk_start + chunk_prompts]
        batches = [chunk[s : s + batch_size] for s in range(0, len(chunk), batch_size)]
        held: dict[int, torch.Tensor] = {}
        model = load_baseline()
        for batch in batches:
            rows = answer_logits(model, [prompts[i] for i in batch], [answers[i] for i in batch], pad_token_id)
            for index, row in zip(batch, rows):
                held[index] = torch.log_softmax(row.float(), dim=-1).cpu()
        del model
        gc.collect()
        model = load_edited()
        device = next(model.parameters()).device
        for batch in batches:
            rows = answer_logits(model, [prompts[i] for i in batch], [answers[i] for i in batch], pad_token_id)
            for index, row in zip(batch, rows):
                results[index] = _row_result(kl_divergence(held.pop(index).to(device), row))
            progress.update(len(batch))
        del model
        gc.collect()
    return results


def harmless_prompts(questions_jsonl: str | os.PathLike) -> list[dict]:
    """The safe-labelled questions of a prompt set (held-out construction prompts, XSTest)."""
    questions = read_questions(questions_jsonl)
    for index, record in enumerate(questions, start=1):
        if record.get("label") not in ("safe", "unsafe"):
            raise InputError(
                f"{questions_jsonl}, record {index}: 'label' must be 'safe' or 'unsafe' to pick the harmless "
                f"prompts, got {record.get('label')!r}"
            )
    safe = [q for q in questions if q["label"] == "safe"]
    if not safe:
        raise InputError(f"{questions_jsonl}: no safe prompts to measure KL on")
    return safe


def baseline_answers(answers_jsonl, lengths_csv, questions: list[dict]) -> tuple[dict[int, str], dict[int, int]]:
    """Baseline answer text and recorded answer token count per question id."""
    by_id = {int(r["question_id"]): answer_text(r) for r in read_answers(answers_jsonl)}
    missing = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if missing:
        raise InputError(f"{answers_jsonl}: no baseline answer for question id(s) {missing[:20]}")
    lengths = read_answer_table(lengths_csv)
    counts = dict(zip(lengths["question_id"].astype(int), lengths["answer_tokens"].astype(int)))
    return by_id, counts


def run_kl(
    questions_jsonl,
    baseline_answers_jsonl,
    baseline_lengths_csv,
    baseline_model,
    edited_model,
    out_csv,
    promptset: str,
    max_tokens: int,
    batch_size: int = 8,
    resident: str = "auto",
    chunk_prompts: int = 64,
    device: str = "auto",
    threads: int | None = None,
) -> pd.DataFrame:
    """The ``kl_divergence`` rule: per-prompt KL of one edit on one harmless prompt set."""
    from .loading import encode_chat, load_model, resolve_device

    if int(max_tokens) < 0:
        raise InputError(f"config cost.kl.max_tokens must be >= 0, got {max_tokens}")
    if resident not in RESIDENT_CHOICES:
        raise InputError(f"config cost.kl.resident must be one of {RESIDENT_CHOICES}, got {resident!r}")
    questions = harmless_prompts(questions_jsonl)
    texts, recorded = baseline_answers(baseline_answers_jsonl, baseline_lengths_csv, questions)
    device = resolve_device(device)

    baseline, tokenizer = load_model(baseline_model, device=device, threads=threads)
    prompts = encode_chat(tokenizer, [q["turns"][0] for q in questions])
    encoded = [tokenizer(texts[q["question_id"]], add_special_tokens=False)["input_ids"] for q in questions]
    answers = [ids[: int(max_tokens)] for ids in encoded]
    mismatched = sum(
        len(ids) != min(recorded[q["question_id"]], int(max_tokens))
        for ids, q in zip(answers, questions)
        if q["question_id"] in recorded
    )
    if mismatched:
        log.warning(
            "%d of %d baseline answers re-encode to another number of tokens (within the first %d) than "
            "generation recorded: their teacher-forced tokens are the text's own encoding",
            mismatched,
            len(questions),
            max_tokens,
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    log.info(
        "%s: %d harmless prompts, %d teacher-forced answer tokens in all (cap %d per prompt)",
        promptset,
        len(questions),
        sum(map(len, answers)),
        max_tokens,
    )
    together = resident == "both" or (resident == "auto" and both_fit(baseline_model, edited_model, device))
    if together:
        log.info("both models resident on %s", device)
        edited, _ = load_model(edited_model, device=device, threads=threads)
        results = prompt_kl(baseline, edited, prompts, answers, pad_id, int(batch_size))
        del edited
    else:
        log.info("the models take turns on %s over chunks of %d prompts", device, chunk_prompts)
        del baseline
        gc.collect()
        results = prompt_kl_alternating(
            lambda: load_model(baseline_model, device=device, threads=threads)[0],
            lambda: load_model(edited_model, device=device, threads=threads)[0],
            prompts,
            answers,
            pad_id,
            int(batch_size),
            int(chunk_prompts),
        )
    frame = pd.DataFrame(
        [
            {
                "question_id": q["question_id"],
                "prompt_id": q.get("prompt_id", str(q["question_id"])),
                "promptset": promptset,
                "category": q["category"],
                "kl_first": first,
                "kl_answer_mean": mean,
                "kl_answer_max": peak,
                "tokens": len(ids),
                "generated_tokens": recorded.get(q["question_id"], -1),
            }
            for q, ids, (first, mean, peak) in zip(questions, answers, results)
        ],
        columns=KL_COLUMNS,
    )
    write_csv(out_csv, frame)
    log.info(
        "%s: mean KL at the first answer position %.4g nats, along the answer %.4g nats (median %.4g)",
        promptset,
        frame["kl_first"].mean(),
        frame["kl_answer_mean"].mean(),
        float(np.median(frame["kl_answer_mean"])),
    )
    return frame
