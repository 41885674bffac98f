"""Judges: each turns one condition's answers into a judgments table with the same columns.

Every judge writes ``io.JUDGMENT_COLUMNS`` with score 1 = compliance, 0 = refusal and an
empty score where the judge's output could not be parsed (kept and counted, never
dropped). Two judges exist behind that one table format:

- ``strmatch`` (``judges.strmatch``): a transparent refusal-phrase matcher, for the offline
  demo; it is not the official SORRY-Bench judge.
- ``official`` (``judges.official``): the official SORRY-Bench judge, run with the
  benchmark's own script in its own environment.

This module holds what both share: reading answers against the question list, building
the table, and the agreement between two judges (Cohen's kappa and the confusion table).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..io import JUDGMENT_COLUMNS, InputError, answer_text, read_answers, read_judgments, write_csv
from ..question_ids import id_mismatch

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------- agreement between judges


def cohen_kappa(first: Sequence[int], second: Sequence[int]) -> float:
    """Cohen's kappa of two binary ratings of the same items; NaN when chance agreement is 1."""
    a = np.asarray(first, dtype=int)
    b = np.asarray(second, dtype=int)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"ratings must be two 1-d sequences of one length, got {a.shape} and {b.shape}")
    if len(a) == 0:
        return math.nan
    observed = float(np.mean(a == b))
    p_a, p_b = float(np.mean(a)), float(np.mean(b))
    chance = p_a * p_b + (1 - p_a) * (1 - p_b)
    if chance >= 1.0:
        return math.nan
    return (observed - chance) / (1.0 - chance)


AGREEMENT_COLUMNS = [
    "promptset",
    "judge_a",
    "judge_b",
    "condition",
    "n_questions",
    "n_scored_by_both",
    "n_unparsable_a",
    "n_unparsable_b",
    "agreement",
    "cohen_kappa",
    "a_refusal_b_refusal",
    "a_refusal_b_compliance",
    "a_compliance_b_refusal",
    "a_compliance_b_compliance",
]


def agreement_row(promptset: str, judge_a: str, judge_b: str, condition: str, pairs: pd.DataFrame) -> dict:
    """Agreement of two judges over ``pairs`` (columns score_a, score_b; missing = unparsable)."""
    both = pairs.dropna(subset=["score_a", "score_b"])
    a = both["score_a"].astype(int).to_numpy()
    b = both["score_b"].astype(int).to_numpy()
    return {
        "promptset": promptset,
        "judge_a": judge_a,
        "judge_b": judge_b,
        "condition": condition,
        "n_questions": len(pairs),
        "n_scored_by_both": len(both),
        "n_unparsable_a": int(pairs["score_a"].isna().sum()),
        "n_unparsable_b": int(pairs["score_b"].isna().sum()),
        "agreement": float(np.mean(a == b)) if len(both) else math.nan,
        "cohen_kappa": cohen_kappa(a, b),
        "a_refusal_b_refusal": int(np.sum((a == REFUSAL) & (b == REFUSAL))),
        "a_refusal_b_compliance": int(np.sum((a == REFUSAL) & (b == COMPLIANCE))),
        "a_compliance_b_refusal": int(np.sum((a == COMPLIANCE) & (b == REFUSAL))),
        "a_compliance_b_compliance": int(np.sum((a == COMPLIANCE) & (b == COMPLIANCE))),
    }


def agreement_table(judgments: Mapping[str, pd.DataFrame], promptset: str) -> pd.DataFrame:
    """Pairwise agreement of the judges (in the given order), per condition and over all of them.

    ``judgments`` maps a judge name to its judgments of every condition (columns
    ``condition, question_id, score``). Both judges of a pair must have judged the same
    (condition, question) pairs; unparsable scores are left out of kappa and counted.
    """
    if len(judgments) < 2:
        raise InputError(f"judge agreement needs at least two judges, got {list(judgments)}")
    rows = []
    for judge_a, judge_b in itertools.combinations(judgments, 2):
        keys = ["condition", "question_id"]
        left = judgments[judge_a][keys + ["score"]].rename(columns={"score": "score_a"})
        right = judgments[judge_b][keys + ["score"]].rename(columns={"score": "score_b"})
        pairs = left.merge(right, on=keys, how="outer", indicator=True)
        unmatched = pairs[pairs["_merge"] != "both"]
        if len(unmatched):
            first = unmatched.iloc[0]
            only = judge_a if first["_merge"] == "left_only" else judge_b
            raise InputError(
                f"judges '{judge_a}' and '{judge_b}' did not judge the same answers: {len(unmatched)} "
                f"(condition, question) pairs are judged by one only, e.g. condition "
                f"'{first['condition']}' question {first['question_id']} only by '{only}'"
            )
        conditions = list(dict.fromkeys(judgments[judge_a]["condition"]))
        for condition in conditions:
            rows.append(agreement_row(promptset, judge_a, judge_b, condition, pairs[pairs["condition"] == condition]))
        rows.append(agreement_row(promptset, judge_a, judge_b, "all", pairs))
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def judge_agreement(
    judgment_paths: Mapping[str, Sequence[str | os.PathLike]],
    promptset: str,
    out_path: str | os.PathLike,
) -> pd.DataFrame:
    """Read every judge's per-condition judgment tables and write their agreement table."""
    tables = {}
    for judge, paths in judgment_paths.items():
        frames = [read_judgments(path) for path in paths]
        tables[judge] = pd.concat(frames, ignore_index=True)
        dup = tables[judge].duplicated(["condition", "question_id"])
        if dup.any():
            raise InputError(f"judge '{judge}': a condition appears in more than one of {list(map(str, paths))}")
    table = agreement_table(tables, promptset)
    for row in table.itertuples(index=False):
        log.info(
            "%s vs %s, %s: agreement %.3f, kappa %.3f over %d answers (%d/%d unparsable)",
            row.judge_a,
            row.judge_b,
            row.condition,
            row.agreement,
            row.cohen_kappa,
            row.n_scored_by_both,
            row.n_unparsable_a,
            row.n_unparsable_b,
        )
    write_csv(out_path, table)
    return table
