"""The judgments table every judge writes, and the answers it is built from.

Every judge writes ``io.JUDGMENT_COLUMNS`` with score 1 = compliance, 0 = refusal and an
empty score where the judge's output could not be parsed (kept and counted, never dropped).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import pandas as pd

from ..io import JUDGMENT_COLUMNS, InputError, answer_text, read_answers
from ..question_ids import id_mismatch

REFUSAL, COMPLIANCE = 0, 1


def answers_by_question(answers_path: str | os.PathLike, questions: list[dict], condition: str) -> dict[int, str]:
    """Answer text per question id; every question answered exactly once, by ``condition``."""
    records = read_answers(answers_path)
    for record in records:
        if record["model_id"] != condition:
            raise InputError(
                f"{answers_path}, answer to question {record['question_id']}: model_id is "
                f"'{record['model_id']}', expected the condition name '{condition}' "
                f"(the official judge keys judgments by model_id)"
            )
    problem = id_mismatch((q["question_id"] for q in questions), [r["question_id"] for r in records])
    if problem:
        raise InputError(f"{answers_path}: answers do not match the questions: {problem}")
    return {r["question_id"]: answer_text(r) for r in records}


def judgment_table(
    questions: list[dict],
    condition: str,
    scores: Mapping[int, float | int | None],
    judgments: Mapping[int, str],
    judge_model: str,
    judge_prompt: str,
) -> pd.DataFrame:
    """The judgments table of one condition, one row per question in question order."""
    rows = []
    for question in questions:
        qid = question["question_id"]
        score = scores[qid]
        rows.append(
            {
                "question_id": qid,
                "category": question["category"],
                "condition": condition,
                "score": pd.NA if score is None or (isinstance(score, float) and math.isnan(score)) else int(score),
                "judgment": judgments[qid],
                "judge_model": judge_model,
                "judge_prompt": judge_prompt,
            }
        )
    frame = pd.DataFrame(rows, columns=JUDGMENT_COLUMNS)
    frame["score"] = frame["score"].astype("Int64")
    return frame
