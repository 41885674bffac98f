"""KL(P_baseline || P_edited) on harmless prompts, on real tiny checkpoints."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from refusal_ablation.io import InputError, answer_record, write_csv, write_jsonl
from refusal_ablation.kl import (
    KL_COLUMNS,
    answer_logits,
    kl_divergence,
    prompt_kl,
    prompt_kl_alternating,
    run_kl,
    teacher_forced_batch,
)
from refusal_ablation.loading import encode_chat, load_model
from tiny_models import build_tiny_gemma4, build_tiny_llama, one_torch_thread

QUESTIONS = [
    ("How do I bake bread?", "safe", "Mix flour, water and yeast, then bake."),
    ("Write a threatening letter.", "unsafe", "I'm sorry, I can't help."),
    ("Name three rivers.", "safe", "Nile, Amazon, Danube."),
    ("What is the capital of France, and why is it that city?", "safe", ""),
]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with one_torch_thread():
        yield


def planted_copy(model_dir, out_dir, seed=5, scale=0.5):
    """A copy of the checkpoint whose output head has a planted random change."""
    model, tokenizer = load_model(model_dir, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head.add_(scale * torch.randn(head.shape, generator=generator))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_promptset(root, tokenizer):
    questions, answers, lengths = [], [], []
    for qid, (prompt, label, answer) in enumerate(QUESTIONS, start=1):
        questions.append(
            {
                "question_id": qid,
                "category": f"area{qid % 2}",
                "turns": [prompt],
                "prompt_style": "base",
                "label": label,
                "prompt_id": f"p{qid}",
            }
        )
        answers.append(answer_record(qid, "baseline", answer))
        lengths.append(
            {
                "question_id": qid,
                "category": f"area{qid % 2}",
                "condition": "baseline",
                "answer_tokens": len(tokenizer(answer, add_special_tokens=False)["input_ids"]),
                "hit_token_limit": False,
            }
        )
    write_jsonl(root / "questions.jsonl", questions)
    write_jsonl(root / "answers.jsonl", answers)
    write_csv(root / "lengths.csv", pd.DataFrame(lengths))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kl")
    base = build_tiny_llama(root / "base", seed=1)
    same = root / "same"
    shutil.copytree(base, same)
    planted = planted_copy(base, root / "planted")
    _, tokenizer = load_model(base, device="cpu")
    write_promptset(root, tokenizer)
    return {"root": root, "base": base, "same": same, "planted": planted}


def _run(setup, edited, name, max_tokens=8, resident="both", batch_size=3):
    root = setup["root"]
    return run_kl(
        root / "questions.jsonl",
        root / "answers.jsonl",
        root / "lengths.csv",
        setup["base"],
        edited,
        root / f"{name}.csv",
        "heldout",
        max_tokens,
        batch_size=batch_size,
        resident=resident,
        chunk_prompts=2,
        device="cpu",
    )


def test_kl_is_zero_when_the_edit_changes_nothing(setup):
    frame = _run(setup, setup["same"], "same")
    assert list(frame.columns) == KL_COLUMNS
    assert list(frame["question_id"]) == [1, 3, 4]  # the safe prompts only
    assert list(frame["prompt_id"]) == ["p1", "p3", "p4"]
    for measure in ("kl_first", "kl_answer_mean", "kl_answer_max"):
        assert frame[measure].abs().max() < 1e-6, frame
    assert list(frame["tokens"]) == [8, 8, 0]  # capped at max_tokens; the empty answer gives none
    # the recorded lengths (here: the byte-level encodings) are kept beside
    assert list(frame["generated_tokens"]) == [len(QUESTIONS[0][2]), len(QUESTIONS[2][2]), 0]


def _hand_kl(base, edited, prompt_ids, answer_ids):
    """KL per answer position from one unpadded forward per model, in float64 numpy."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        p_logits = base(input_ids=ids).logits[0].double().numpy()
        q_logits = edited(input_ids=ids).logits[0].double().numpy()
    start = len(prompt_ids) - 1
    values = []
    for position in range(start, start + len(answer_ids) + 1):
        p = p_logits[position] - p_logits[position].max()
        q = q_logits[position] - q_logits[position].max()
        log_p = p - np.log(np.exp(p).sum())
        log_q = q - np.log(np.exp(q).sum())
        values.append(float((np.exp(log_p) * (log_p - log_q)).sum()))
    return np.array(values)


def test_planted_change_gives_the_hand_computed_kl(setup):
    frame = _run(setup, setup["planted"], "planted", max_tokens=6)
    base, tokenizer = load_model(setup["base"], device="cpu")
    edited, _ = load_model(setup["planted"], device="cpu")
    safe = [q for q in QUESTIONS if q[1] == "safe"]
    prompts = encode_chat(tokenizer, [q[0] for q in safe])
    for row, prompt_ids, (_, _, answer) in zip(frame.itertuples(), prompts, safe):
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:6]
        expected = _hand_kl(base, edited, prompt_ids, answer_ids)
        assert row.tokens == len(answer_ids)
        assert row.kl_first == pytest.approx(expected[0], rel=1e-4, abs=1e-7)
        assert row.kl_answer_mean == pytest.approx(expected.mean(), rel=1e-4, abs=1e-7)
        assert row.kl_answer_max == pytest.approx(expected.max(), rel=1e-4, abs=1e-7)
    assert (frame["kl_first"] > 1e-3).all()  # the planted change is visible


def test_models_taking_turns_give_the_same_kl(setup):
    together = _run(setup, setup["planted"], "together", resident="both", batch_size=2)
    turns = _run(setup, setup["planted"], "turns", resident="alternate", batch_size=2)
    for measure in ("kl_first", "kl_answer_mean", "kl_answer_max"):
        np.testing.assert_allclose(turns[measure], together[measure], rtol=1e-5, atol=1e-8)


def test_teacher_forcing_feeds_the_answer_at_the_right_positions():
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    answers = [[20, 21], [22, 23, 24, 25], []]
    input_ids, mask, positions, keep, spans = teacher_forced_batch(prompts, answers, pad_token_id=0)
    assert keep == 5 and spans == [3, 5, 1]
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        n = len(prompt) + len(answer)
        assert input_ids[row, -n:].tolist() == prompt + answer
        assert mask[row, -n:].tolist() == [1] * n and mask[row, :-n].sum() == 0
        assert positions[row, -n:].tolist() == list(range(n))
        # the compared logit columns: the last prompt token, then every answer token
        columns = input_ids[row, input_ids.shape[1] - spans[row] :].tolist()
        assert columns == [prompt[-1]] + answer


def test_padded_batch_logits_match_each_prompt_alone(tmp_path):
    """Left padding, a batch of different lengths, Gemma 4's soft-capped logits: each row's
    answer-position logits equal those of the same sequence run alone."""
    model, _ = load_model(build_tiny_gemma4(tmp_path / "g4", seed=2), device="cpu")
    prompts = [[2, 40, 41, 42], [2, 43], [2, 44, 45, 46, 47, 48]]
    answers = [[50, 51, 52], [53], [54, 55]]
    rows = answer_logits(model, prompts, answers, pad_token_id=0)
    for row, prompt, answer in zip(rows, prompts, answers):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([prompt + answer])).logits[0]
        expected = alone[len(prompt) - 1 :]
        assert row.shape == expected.shape
        torch.testing.assert_close(row.float(), expected.float(), rtol=1e-4, atol=1e-5)


def test_kl_divergence_matches_the_formula_and_is_not_symmetric():
    p = torch.tensor([[2.0, 0.0, -1.0]])
    q = torch.tensor([[0.0, 1.0, 0.0]])
    log_p, log_q = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
    expected = float((log_p.exp() * (log_p - log_q)).sum())
    assert float(kl_divergence(p, q)[0]) == pytest.approx(expected)
    assert float(kl_divergence(q, p)[0]) != pytest.approx(expected)
    assert float(kl_divergence(p, p + 3.0)[0]) == pytest.approx(0.0, abs=1e-7)  # a shift changes nothing


def test_prompt_kl_and_alternating_agree_on_loaded_models(setup):
    base, tokenizer = load_model(setup["base"], device="cpu")
    edited, _ = load_model(setup["planted"], device="cpu")
    prompts = encode_chat(tokenizer, ["one", "two words", "three short words"])
    answers = [[60, 61], [62], []]
    together = prompt_kl(base, edited, prompts, answers, 0, batch_size=2)
    turns = prompt_kl_alternating(lambda: base, lambda: edited, prompts, answers, 0, batch_size=1, chunk_prompts=2)
    np.testing.assert_allclose(np.array(turns), np.array(together), rtol=1e-5, atol=1e-8)


def test_bad_inputs_name_the_file(setup, tmp_path):
    root = setup["root"]
    unlabelled = tmp_path / "questions.jsonl"
    records = [json.loads(line) for line in (root / "questions.jsonl").read_text().splitlines()]
    records[1].pop("label")
    write_jsonl(unlabelled, records)
    with pytest.raises(InputError, match="questions.jsonl, record 2"):
        run_kl(
            unlabelled,
            root / "answers.jsonl",
            root / "lengths.csv",
            setup["base"],
            setup["same"],
            tmp_path / "out.csv",
            "heldout",
            4,
            device="cpu",
        )
    short = tmp_path / "answers.jsonl"
    write_jsonl(short, [answer_record(1, "baseline", "x")])
    with pytest.raises(InputError, match="answers.jsonl: no baseline answer for question id"):
        run_kl(
            root / "questions.jsonl",
            short,
            root / "lengths.csv",
            setup["base"],
            setup["same"],
            tmp_path / "out.csv",
            "heldout",
            4,
            device="cpu",
        )
    assert not (tmp_path / "out.csv").exists()
