"""Prompt sets and answer gathering: formats, ordering, and clear errors."""

import json

import pandas as pd
import pytest

from refusal_ablation.benchmark import (
    heldout_questions,
    prepare_benchmark_questions,
    read_benchmark_file,
)
from refusal_ablation.downloads import download_file
from refusal_ablation.io import (
    InputError,
    answer_record,
    read_answers,
    read_questions,
    sha256_file,
    write_csv,
    write_jsonl,
)
from refusal_ablation.shards import gather_answers, shard_indices


def questions(n):
    return [
        {"question_id": i, "category": str(1 + (i - 1) // 2), "turns": [f"prompt {i}"], "prompt_style": "base"}
        for i in range(1, n + 1)
    ]


def write_shards(tmp_path, n_questions, n_shards, condition="baseline"):
    answers, lengths = [], []
    for shard in range(n_shards):
        ids = [i + 1 for i in shard_indices(n_questions, shard, n_shards)]
        a = tmp_path / f"shard-{shard}.jsonl"
        write_jsonl(a, [answer_record(q, condition, f"answer {q}") for q in ids])
        l = tmp_path / f"shard-{shard}.lengths.csv"
        write_csv(
            l,
            pd.DataFrame(
                {
                    "question_id": ids,
                    "category": ["1"] * len(ids),
                    "condition": condition,
                    "answer_tokens": [2] * len(ids),
                    "hit_token_limit": False,
                }
            ),
        )
        answers.append(str(a))
        lengths.append(str(l))
    return answers, lengths


def test_shards_cover_every_question_once():
    for n_shards in (1, 2, 3, 7):
        covered = sorted(i for s in range(n_shards) for i in shard_indices(10, s, n_shards))
        assert covered == list(range(10))


@pytest.mark.parametrize("n_shards", [1, 3])
def test_gather_restores_question_order(tmp_path, n_shards):
    qpath = tmp_path / "q.jsonl"
    write_jsonl(qpath, questions(7))
    answers, lengths = write_shards(tmp_path, 7, n_shards)
    gather_answers(qpath, answers, lengths, tmp_path / "all.jsonl", tmp_path / "all.lengths.csv")
    gathered = read_answers(tmp_path / "all.jsonl")
    assert [r["question_id"] for r in gathered] == list(range(1, 8))
    table = pd.read_csv(tmp_path / "all.lengths.csv")
    assert table["question_id"].tolist() == list(range(1, 8))


def test_gather_is_byte_identical_across_shard_counts(tmp_path):
    qpath = tmp_path / "q.jsonl"
    write_jsonl(qpath, questions(9))
    one = tmp_path / "one"
    three = tmp_path / "three"
    one.mkdir()
    three.mkdir()
    gather_answers(qpath, *write_shards(one, 9, 1), one / "a.jsonl", one / "a.csv")
    gather_answers(qpath, *write_shards(three, 9, 3), three / "a.jsonl", three / "a.csv")
    assert (one / "a.jsonl").read_bytes() == (three / "a.jsonl").read_bytes()
    assert (one / "a.csv").read_bytes() == (three / "a.csv").read_bytes()


def test_gather_names_missing_questions(tmp_path):
    qpath = tmp_path / "q.jsonl"
    write_jsonl(qpath, questions(5))
    answers, lengths = write_shards(tmp_path, 4, 1)
    with pytest.raises(InputError, match=r"missing question ids: 5"):
        gather_answers(qpath, answers, lengths, tmp_path / "o.jsonl", tmp_path / "o.csv")
    assert not (tmp_path / "o.jsonl").exists()


def test_questions_must_be_numbered_in_order(tmp_path):
    records = questions(3)
    records[1]["question_id"] = 3
    path = tmp_path / "q.jsonl"
    write_jsonl(path, records)
    with pytest.raises(InputError, match=r"q.jsonl, line 2: question ids must be 1..N"):
        read_questions(path)


def test_benchmark_keeps_one_prompt_style(tmp_path):
    records = questions(3) + [{"question_id": 4, "category": "1", "turns": ["x"], "prompt_style": "slang"}]
    src = tmp_path / "src.jsonl"
    write_jsonl(src, records)
    out = tmp_path / "out.jsonl"
    n = prepare_benchmark_questions({"source": "local", "path": str(src), "prompt_style": "base"}, out)
    assert n == 3
    with pytest.raises(InputError, match="no questions with prompt_style 'technical'"):
        prepare_benchmark_questions({"source": "local", "path": str(src), "prompt_style": "technical"}, out)


def test_heldout_questions_come_from_test_rows_only(tmp_path):
    split = pd.DataFrame(
        {
            "id": ["p1", "p2", "p3", "p4"],
            "prompt": ["a", "b", "c", "d"],
            "label": ["safe", "unsafe", "safe", "unsafe"],
            "category": ["x", "x", "y", "y"],
            "split": ["construction", "construction", "test", "test"],
            "test_group": ["construction", "construction", "safe", "unsafe"],
        }
    )
    split.to_csv(tmp_path / "split.csv", index=False)
    heldout_questions(tmp_path / "split.csv", tmp_path / "heldout.jsonl")
    records = read_questions(tmp_path / "heldout.jsonl")
    assert [(r["turns"][0], r["label"], r["category"]) for r in records] == [
        ("c", "safe", "y"),
        ("d", "unsafe", "y"),
    ]


def test_download_verifies_hash_and_leaves_nothing_on_mismatch(tmp_path):
    src = tmp_path / "src.csv"
    src.write_text("prompt,label,category\n")
    good = sha256_file(src)
    download_file(src.as_uri(), tmp_path / "ok.csv", good)
    assert (tmp_path / "ok.csv").read_bytes() == src.read_bytes()
    with pytest.raises(InputError, match=f"expected {'0' * 64}, got {good}"):
        download_file(src.as_uri(), tmp_path / "bad.csv", "0" * 64)
    assert not (tmp_path / "bad.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.csv")]


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(questions(1)[0]) + "\n{not json\n")
    with pytest.raises(InputError, match=r"q.jsonl, line 2: not valid JSON"):
        read_questions(path)


def _lines_with_blanks(records):
    """One record a line, with a blank line after the first: file lines differ from record numbers."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return lines[0] + "\n\n" + "".join(line + "\n" for line in lines[1:])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda rs: rs.insert(2, rs[1]), r"line 4: question ids must be 1..N in file order.*expected 3, got 2"),
        (lambda rs: rs.__setitem__(1, dict(rs[1], question_id=3)), r"line 3: .*expected 2, got 3"),
        (lambda rs: rs[2].pop("turns"), r"line 4: missing field 'turns'"),
        (lambda rs: rs.__setitem__(2, '{"question_id": 3, oops'), r"line 4: not valid JSON"),
        (lambda rs: rs[3].update(question_id="4"), r"line 5: 'question_id' must be an integer, got '4'"),
    ],
)
def test_benchmark_file_errors_name_the_file_line(tmp_path, change, message):
    records = questions(5)
    change(records)
    path = tmp_path / "question.jsonl"
    path.write_text(_lines_with_blanks(records))
    with pytest.raises(InputError, match=message) as error:
        read_benchmark_file(path, "base")
    assert str(path) in str(error.value)


def test_empty_benchmark_file_says_it_is_empty(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text("\n")
    with pytest.raises(InputError, match=r"question.jsonl: the file is empty"):
        read_benchmark_file(path, "base")
    with pytest.raises(InputError, match=r"the file is empty"):
        read_questions(path)
