"""Answer shards: which questions a shard answers, and gathering the shards back.

A condition's answers may be generated in several shards (``generation.shards``); each
shard answers a round-robin slice of the questions, and ``gather_answers`` merges the
shards into one file per condition in question order, byte-identical to an unsharded run.
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from .io import (
    ANSWER_TABLE_COLUMNS,
    InputError,
    read_answer_table,
    read_answers,
    read_questions,
    write_csv,
    write_jsonl,
)
from .question_ids import id_mismatch

log = logging.getLogger(__name__)


def shard_indices(n_questions: int, shard: int, n_shards: int) -> list[int]:
    """Round-robin shard membership: keeps long and short prompts spread over shards."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in 0..{n_shards - 1}")
    return list(range(shard, n_questions, n_shards))


def gather_answers(
    questions_path: str | os.PathLike,
    shard_answers: list[str],
    shard_lengths: list[str],
    out_answers: str | os.PathLike,
    out_lengths: str | os.PathLike,
) -> None:
    """Merge answer shards into one file in question order; every question exactly once."""
    questions = read_questions(questions_path)
    by_id: dict[int, dict] = {}
    for path in shard_answers:
        for record in read_answers(path):
            qid = record["question_id"]
            if qid in by_id:
                raise InputError(f"{path}: question {qid} is also answered in another shard")
            by_id[qid] = record
    expected = [q["question_id"] for q in questions]
    problem = id_mismatch(expected, list(by_id))
    if problem:
        raise InputError(f"answer shards {shard_answers} do not match {questions_path}: {problem}")
    lengths = pd.concat([read_answer_table(p) for p in shard_lengths], ignore_index=True)
    problem = id_mismatch(expected, lengths["question_id"].tolist())
    if problem:
        raise InputError(f"answer-length shards {shard_lengths} do not match {questions_path}: {problem}")
    lengths = lengths.set_index("question_id").loc[expected].reset_index()
    write_jsonl(out_answers, (by_id[qid] for qid in expected))
    write_csv(out_lengths, lengths[ANSWER_TABLE_COLUMNS])
    log.info("gathered %d answers from %d shard(s)", len(expected), len(shard_answers))
