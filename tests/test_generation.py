"""Answer generation: stopping, lengths, sharding and resuming, on a tiny real model."""

import json
import shutil

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from refusal_ablation import io
from refusal_ablation.generation import generate_shard, load_partial, partial_paths, shard_questions
from refusal_ablation.loading import encode_chat
from tiny_models import build_tiny_llama, one_torch_thread

QUESTIONS = [
    "Hi",
    "Write a poem about the sea.",
    "How do I pick a lock?",
    "What is 2 + 2?",
    "Tell me a joke.",
    "Name three rivers.",
    "Why is the sky blue?",
]
MAX_NEW_TOKENS = 10
GENERATION = {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": 3}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def reference_greedy(model, ids, n_tokens):
    """Plain argmax decoding, one unpadded prompt, no cache, no stopping."""
    sequence, new = list(ids), []
    with torch.inference_mode():
        for _ in range(n_tokens):
            token = int(model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax())
            new.append(token)
            sequence.append(token)
    return new


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """Tiny Llama whose <end_of_turn> is planted to replace one token wherever that token wins.

    Its generation config names only <eos>, so stopping there must come from the chat template.
    """
    path = build_tiny_llama(tmp_path_factory.mktemp("model"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path).eval()
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    prompts = encode_chat(tokenizer, QUESTIONS)
    first_answer = reference_greedy(model, prompts[1], 4)
    with torch.no_grad():
        # where that token is the greedy choice (positive logit), <end_of_turn> now outscores it by 2 %
        model.lm_head.weight[end_of_turn] = 1.02 * model.lm_head.weight[first_answer[2]]
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def expected(chat_model):
    """Answer tokens and limit flags by an independent decoding loop."""
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    model = LlamaForCausalLM.from_pretrained(chat_model).eval()
    stops = set(tokenizer.convert_tokens_to_ids(["<eos>", "<end_of_turn>"]))
    rows = []
    for qid, ids in enumerate(encode_chat(tokenizer, QUESTIONS), start=1):
        raw = reference_greedy(model, ids, MAX_NEW_TOKENS)
        cut = next((i for i, t in enumerate(raw) if t in stops), None)
        tokens = raw if cut is None else raw[:cut]
        rows.append(
            {
                "question_id": qid,
                "answer_tokens": len(tokens),
                "hit_token_limit": cut is None,
                "stop": None if cut is None else tokenizer.convert_ids_to_tokens(raw[cut]),
                "text": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def questions_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("questions") / "questions.jsonl"
    io.write_jsonl(
        path,
        [
            {"question_id": i, "category": str(1 + i % 3), "turns": [q], "prompt_style": "base"}
            for i, q in enumerate(QUESTIONS, start=1)
        ],
    )
    return path


def _run(questions, model, out_dir, shard=0, n_shards=1, generation=GENERATION, condition="baseline"):
    answers = out_dir / f"shard-{shard}-of-{n_shards}.jsonl"
    lengths = out_dir / f"shard-{shard}-of-{n_shards}.lengths.csv"
    summary = generate_shard(questions, model, answers, lengths, condition, shard, n_shards, generation, "cpu")
    return answers, lengths, summary


@pytest.fixture(scope="module")
def whole_run(chat_model, questions_jsonl, tmp_path_factory):
    """One uninterrupted, unsharded run: (answers path, lengths path, summary)."""
    return _run(questions_jsonl, chat_model, tmp_path_factory.mktemp("whole"), condition="edited_reference")


def test_generation_stops_at_end_of_turn_and_records_lengths(expected, whole_run):
    # the test means something only if some answers stop at <end_of_turn> and some hit the cap
    assert (expected["stop"] == "<end_of_turn>").any() and expected["hit_token_limit"].any()

    answers_path, lengths_path, summary = whole_run
    assert (summary.n_generated, summary.n_reused) == (len(QUESTIONS), 0)
    lengths = io.read_answer_table(lengths_path)
    assert list(lengths.columns) == io.ANSWER_TABLE_COLUMNS
    assert lengths["question_id"].tolist() == expected["question_id"].tolist()
    assert lengths["answer_tokens"].tolist() == expected["answer_tokens"].tolist()
    assert lengths["hit_token_limit"].tolist() == expected["hit_token_limit"].tolist()
    assert set(lengths["condition"]) == {"edited_reference"}
    assert lengths["category"].astype(str).tolist() == [str(1 + i % 3) for i in range(1, len(QUESTIONS) + 1)]

    answers = io.read_answers(answers_path)
    assert [a["question_id"] for a in answers] == expected["question_id"].tolist()
    assert [io.answer_text(a) for a in answers] == expected["text"].tolist()
    assert {a["model_id"] for a in answers} == {"edited_reference"}
    assert not any(p.exists() for p in partial_paths(answers_path))


def test_context_window_caps_new_tokens(chat_model, questions_jsonl, tmp_path):
    model = tmp_path / "short_context"
    shutil.copytree(chat_model, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt_lengths = [len(ids) for ids in encode_chat(tokenizer, QUESTIONS)]
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = max(prompt_lengths) + 2
    (model / "config.json").write_text(json.dumps(config))

    _, lengths_path, _ = _run(questions_jsonl, model, tmp_path / "out")
    lengths = io.read_answer_table(lengths_path)
    room = [config["max_position_embeddings"] - n for n in prompt_lengths]
    assert all(n <= min(MAX_NEW_TOKENS, r) for n, r in zip(lengths["answer_tokens"], room))
    longest = prompt_lengths.index(max(prompt_lengths))
    capped = lengths.iloc[longest]
    assert capped["answer_tokens"] == 2 or not capped["hit_token_limit"]

    config["max_position_embeddings"] = max(prompt_lengths)
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(io.InputError, match=rf"question_id {longest + 1}: prompt is {max(prompt_lengths)} tokens"):
        _run(questions_jsonl, model, tmp_path / "out2")


def test_shard_questions_round_robin_covers_every_question_once():
    questions = [{"question_id": i} for i in range(1, 11)]
    shards = [shard_questions(questions, k, 3) for k in range(3)]
    ids = sorted(q["question_id"] for shard in shards for q in shard)
    assert ids == list(range(1, 11))
    assert sorted(len(s) for s in shards) == [3, 3, 4]
    with pytest.raises(ValueError):
        shard_questions(questions, 3, 3)


def test_sharded_answers_equal_the_unsharded_run(chat_model, questions_jsonl, whole_run, tmp_path):
    whole = whole_run[0]
    seen = []
    for shard in range(3):
        answers, lengths, summary = _run(
            questions_jsonl, chat_model, tmp_path / "sharded", shard, 3, condition="edited_reference"
        )
        seen += [a["question_id"] for a in io.read_answers(answers)]
        assert summary.n_questions == len(io.read_answer_table(lengths))
    assert sorted(seen) == list(range(1, len(QUESTIONS) + 1))
    by_id = {
        a["question_id"]: a
        for shard in range(3)
        for a in io.read_answers(tmp_path / "sharded" / f"shard-{shard}-of-3.jsonl")
    }
    assert [by_id[a["question_id"]] for a in io.read_answers(whole)] == io.read_answers(whole)


def _interrupted_run(questions, model, out_dir, keep: int, condition="baseline"):
    """A run that dies after ``keep`` answers (and half of the next) were written."""
    blocked = out_dir / "lengths-dir-is-a-file"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("")
    answers = out_dir / "shard-0-of-1.jsonl"
    # the final write of the lengths table fails after every answer reached the sidecar
    with pytest.raises(OSError):
        generate_shard(questions, model, answers, blocked / "x.csv", condition, 0, 1, GENERATION, "cpu")
    partial, meta = partial_paths(answers)
    lines = partial.read_text().splitlines(keepends=True)
    assert len(lines) == len(QUESTIONS) and meta.exists()
    partial.write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])
    answers.unlink(missing_ok=True)  # Snakemake deletes the declared outputs of a failed job
    return partial


def test_resume_generates_only_the_missing_answers_with_identical_output(
    chat_model, questions_jsonl, whole_run, tmp_path
):
    whole, whole_lengths, _ = whole_run
    _interrupted_run(questions_jsonl, chat_model, tmp_path / "resumed", keep=3, condition="edited_reference")

    answers, lengths, summary = _run(questions_jsonl, chat_model, tmp_path / "resumed", condition="edited_reference")
    assert (summary.n_reused, summary.n_generated) == (3, len(QUESTIONS) - 3)
    assert answers.read_bytes() == whole.read_bytes()
    assert lengths.read_bytes() == whole_lengths.read_bytes()
    assert not any(p.exists() for p in partial_paths(answers))


def test_resume_with_another_token_cap_moves_old_work_aside(chat_model, questions_jsonl, tmp_path):
    partial = _interrupted_run(questions_jsonl, chat_model, tmp_path / "out", keep=4)
    old = partial.read_text()

    _, _, summary = _run(questions_jsonl, chat_model, tmp_path / "out", generation={**GENERATION, "max_new_tokens": 5})
    assert (summary.n_reused, summary.n_generated) == (0, len(QUESTIONS))
    (stale,) = (tmp_path / "out").glob("shard-0-of-1.jsonl.partial.jsonl.stale-*")
    assert stale.read_text() == old


def test_garbage_meta_moves_old_answers_aside_with_the_right_reason(tmp_path, caplog):
    out = tmp_path / "shard-0-of-1.jsonl"
    partial, meta_path = partial_paths(out)
    partial.write_text(
        json.dumps({"question_id": 1, "text": "hi", "answer_tokens": 1, "hit_token_limit": False}) + "\n"
    )
    meta_path.write_bytes(b"\x00\xffnot json")
    meta = {
        "condition": "baseline",
        "model": "m",
        "max_new_tokens": 4,
        "question_ids": [1],
        "questions_sha256": "x",
        "decoding": "greedy",
    }
    caplog.set_level("WARNING")
    assert load_partial(out, meta) == {}
    assert "is unreadable" in caplog.text and "another" not in caplog.text
    assert list(tmp_path.glob("*.partial.jsonl.stale-*"))


def test_partial_line_of_an_unknown_question_is_logged(tmp_path, caplog):
    out = tmp_path / "shard-0-of-1.jsonl"
    partial, meta_path = partial_paths(out)
    meta = {
        "condition": "baseline",
        "model": "m",
        "max_new_tokens": 4,
        "question_ids": [1, 2],
        "questions_sha256": "x",
        "decoding": "greedy",
    }
    meta_path.write_text(json.dumps(meta))
    rows = [{"question_id": q, "text": "hi", "answer_tokens": 1, "hit_token_limit": False} for q in (1, 7)]
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows))
    caplog.set_level("WARNING")
    done = load_partial(out, meta)
    assert list(done) == [1]
    assert "1 line(s) answer a question id that is not among this shard's questions" in caplog.text
    assert "line(s) 2" in caplog.text
