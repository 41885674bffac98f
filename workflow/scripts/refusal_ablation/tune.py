"""Refusal tune: turn a model that never refuses into a small refusal "model organism".

The demo model (SmolLM2-135M-Instruct) complies with every harmful request, so a
refusal-direction edit would have nothing to remove. A short, seeded full fine-tune on the
construction split teaches it one fixed refusal sentence for the unsafe prompts, while the
safe prompts are trained on the model's own greedy answers, so its harmless behaviour is
kept. Only construction-split prompts are ever trained on: held-out test areas and the
benchmark stay unseen, which is what makes the later measurements meaningful.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .io import InputError, atomic_dir, read_questions, write_csv
from .split import CONSTRUCTION, first_per_area_and_label, split_rows

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the causal-LM loss skips
LOSS_COLUMNS = ["epoch", "step", "loss"]
TUNE_KEYS = ("refusal", "epochs", "learning_rate", "batch_size", "safe_answer_tokens")
REPORT_FILE = "refusal_tune.json"


@dataclass
class TrainingExample:
    prompt_id: str
    label: str  # safe / unsafe
    input_ids: list[int]  # chat prompt followed by the target answer
    labels: list[int]  # IGNORE_INDEX on the prompt, the answer tokens on the answer


# ---------------------------------------------------------------- inputs


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def check_disjoint_from_benchmark(
    rows: pd.DataFrame, questions: Sequence[dict], split_csv: str, benchmark_path: str
) -> None:
    """Fail if any construction prompt is (up to case and spacing) a benchmark prompt."""
    benchmark = {}
    for record in questions:
        for turn in record["turns"]:
            benchmark.setdefault(_normalised(turn), record["question_id"])
    clashes = [
        (row.id, benchmark[_normalised(row.prompt)])
        for row in rows.itertuples()
        if _normalised(row.prompt) in benchmark
    ]
    if clashes:
        listed = ", ".join(f"prompt id {pid} = question_id {qid}" for pid, qid in clashes[:10])
        raise InputError(
            f"{split_csv}: construction prompts that are also benchmark prompts in "
            f"{benchmark_path} (tuning on them would contaminate the benchmark): {listed}"
        )


# ---------------------------------------------------------------- training examples


def end_of_turn_id(tokenizer, stop_ids: Sequence[int]) -> int:
    """Id of the token the chat template puts right after an assistant answer.

    It is the template's own end-of-turn marker (``<|im_end|>`` for ChatML,
    ``<end_of_turn>`` for Gemma), not whatever the tokenizer calls eos, and it must be a
    stop token, or the tuned model would learn to end its turn where generation runs on.
    """
    from .loading import end_of_turn_token

    token = end_of_turn_token(tokenizer)
    if token is None:
        raise InputError("chat template: no special token follows an assistant answer, so a turn has no end token")
    token_id = int(tokenizer.convert_tokens_to_ids(token))
    if token_id not in set(int(i) for i in stop_ids):
        raise InputError(
            f"chat template: the turn-end token {token!r} (id {token_id}) is not one of the model's stop "
            f"tokens {sorted(stop_ids)}; fix the tokenizer / generation config first"
        )
    return token_id


def training_example(
    prompt_id: str, label: str, prompt_ids: Sequence[int], answer_ids: Sequence[int], end_of_turn: int
) -> TrainingExample:
    """Prompt + answer + end-of-turn; only the answer and its end-of-turn token carry loss."""
    target = list(answer_ids) + [int(end_of_turn)]
    return TrainingExample(
        prompt_id=str(prompt_id),
        label=label,
        input_ids=list(prompt_ids) + target,
        labels=[IGNORE_INDEX] * len(prompt_ids) + target,
    )


def build_examples(
    model, tokenizer, rows: pd.DataFrame, refusal: str, safe_answer_tokens: int, stop_ids: Sequence[int]
) -> list[TrainingExample]:
    """Unsafe prompts -> the refusal sentence; safe prompts -> the model's own greedy answer."""
    from .engine import iter_greedy
    from .loading import encode_chat

    eot = end_of_turn_id(tokenizer, stop_ids)
    prompt_ids = encode_chat(tokenizer, rows["prompt"].tolist())
    refusal_ids = tokenizer(refusal, add_special_tokens=False)["input_ids"]
    safe_rows = [i for i, label in enumerate(rows["label"]) if label == "safe"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot

    started = time.monotonic()
    own_answers: dict[int, list[int]] = {}
    for done in iter_greedy(
        model,
        [prompt_ids[i] for i in safe_rows],
        [safe_answer_tokens] * len(safe_rows),
        stop_ids,
        pad_id,
        batch_size="auto",
    ):
        own_answers[safe_rows[done.index]] = done.tokens
        if len(own_answers) % 16 == 0 or len(own_answers) == len(safe_rows):
            log.info("own answers for safe prompts: %d/%d", len(own_answers), len(safe_rows))
    log.info("generated %d safe answers in %.1f s", len(safe_rows), time.monotonic() - started)

    examples = []
    for i, row in enumerate(rows.itertuples()):
        answer = own_answers[i] if row.label == "safe" else refusal_ids
        examples.append(training_example(row.id, row.label, prompt_ids[i], answer, eot))
    return examples


# ---------------------------------------------------------------- training


def _batch_tensors(batch: Sequence[TrainingExample], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    # right padding: positions stay 0..n-1 exactly as at generation time for the real tokens
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.as_tensor(example.input_ids)
        labels[row, :n] = torch.as_tensor(example.labels)
        attention[row, :n] = 1
    return input_ids, attention, labels


def answer_loss(model, input_ids, attention, labels):
    """Mean next-token cross-entropy over the labelled (answer) tokens of a right-padded batch.

    The same number as ``model(..., labels=labels).loss``, but the output layer runs only from
    the first position that predicts an answer token onwards: on a 49k-word vocabulary the
    logits of the prompt positions are a large share of a small model's training cost.
    """
    import torch
    import torch.nn.functional as F

    from .architecture import accepts_logits_to_keep

    if not accepts_logits_to_keep(model):
        return model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    labelled = labels != IGNORE_INDEX
    if not bool(labelled[:, 1:].any()):
        raise ValueError("answer_loss: no labelled token after the first position")
    width = labels.shape[1]
    # position p predicts token p + 1
    first = int(labelled[:, 1:].int().argmax(dim=1)[labelled[:, 1:].any(dim=1)].min())
    keep = torch.arange(first, width - 1, device=input_ids.device)
    logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep).logits
    targets = labels[:, first + 1 :]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def train(
    model,
    examples: Sequence[TrainingExample],
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    pad_id: int,
) -> pd.DataFrame:
    """Full fine-tune with AdamW; returns the loss of every optimiser step."""
    import torch

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(learning_rate))
    order_rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(examples) // batch_size)
    losses = []
    model.train()
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        epoch_started = time.monotonic()
        order = order_rng.permutation(len(examples))
        epoch_losses = []
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            input_ids, attention, labels = _batch_tensors(batch, pad_id)
            batch_loss = answer_loss(model, input_ids.to(device), attention.to(device), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            loss = float(batch_loss.detach())
            epoch_losses.append(loss)
            losses.append({"epoch": epoch, "step": len(losses) + 1, "loss": loss})
            log.info("epoch %d step %d/%d loss %.4f", epoch, len(epoch_losses), steps_per_epoch, loss)
        log.info(
            "epoch %d/%d: mean loss %.4f, %.1f s (%.1f s total)",
            epoch,
            epochs,
            float(np.mean(epoch_losses)),
            time.monotonic() - epoch_started,
            time.monotonic() - started,
        )
    model.eval()
    return pd.DataFrame(losses, columns=LOSS_COLUMNS)


def save_checkpoint(model, tokenizer, out_dir: str | os.PathLike, report: dict) -> None:
    """Write safetensors + tokenizer + generation config to a temp dir, then rename it into place."""
    with atomic_dir(out_dir, suffix=".part") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- the step


def refusal_tune(
    model_dir: str | os.PathLike,
    split_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    out_losses_csv: str | os.PathLike,
    tune: dict,
    seed: int,
    device: str = "cpu",
    benchmark_questions: str | os.PathLike | None = None,
    threads: int | None = None,
) -> dict:
    """Refusal-tune the model in ``model_dir`` on the construction split of ``split_csv``.

    Writes the tuned checkpoint to ``out_dir`` and the per-step loss curve
    (``epoch,step,loss``) to ``out_losses_csv``; returns the run report (also saved in the
    checkpoint as ``refusal_tune.json``). With ``benchmark_questions``, refuses to run if a
    construction prompt is also a benchmark prompt.
    """
    import torch

    from .loading import load_model, stop_token_ids

    # the settings were checked by the config schema (refusal_tune, required when enabled)
    rows = split_rows(split_csv, CONSTRUCTION)
    if benchmark_questions is not None:
        questions = read_questions(benchmark_questions)
        check_disjoint_from_benchmark(rows, questions, str(split_csv), str(benchmark_questions))
    rows = first_per_area_and_label(rows, tune.get("prompts_per_label_per_area"))
    log.info(
        "tuning on %d construction prompts (%d unsafe, %d safe) from %d areas of %s",
        len(rows),
        int((rows["label"] == "unsafe").sum()),
        int((rows["label"] == "safe").sum()),
        rows["category"].nunique(),
        split_csv,
    )

    caller_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    started = time.monotonic()
    try:
        # float32 whatever the checkpoint stores: AdamW steps this small vanish in bfloat16
        model, tokenizer = load_model(model_dir, dtype="float32", device=device)
        stop_ids = stop_token_ids(tokenizer, model)
        examples = build_examples(model, tokenizer, rows, tune["refusal"], int(tune["safe_answer_tokens"]), stop_ids)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        # training starts from the same random state whatever generation consumed
        torch.manual_seed(seed)
        losses = train(
            model,
            examples,
            epochs=int(tune["epochs"]),
            learning_rate=float(tune["learning_rate"]),
            batch_size=int(tune["batch_size"]),
            seed=seed,
            pad_id=pad_id,
        )
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(caller_threads)
    seconds = time.monotonic() - started

    report = {
        "base_model": str(model_dir),
        "seed": int(seed),
        "settings": {k: tune.get(k) for k in (*TUNE_KEYS, "prompts_per_label_per_area")},
        "trained_prompt_ids": [e.prompt_id for e in examples],
        "construction_areas": sorted(rows["category"].unique().tolist()),
        "examples": len(examples),
        "optimizer_steps": len(losses),
        "first_epoch_mean_loss": float(losses[losses["epoch"] == 1]["loss"].mean()),
        "last_epoch_mean_loss": float(losses[losses["epoch"] == losses["epoch"].max()]["loss"].mean()),
        "seconds": round(seconds, 1),
    }
    save_checkpoint(model, tokenizer, out_dir, report)
    write_csv(out_losses_csv, losses)
    log.info(
        "refusal tune done in %.1f s: %d steps, mean loss %.4f -> %.4f; saved %s",
        seconds,
        len(losses),
        report["first_epoch_mean_loss"],
        report["last_epoch_mean_loss"],
        out_dir,
    )
    return report
