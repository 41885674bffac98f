"""Agreement between two judges of the same answers: Cohen's kappa and the confusion table."""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..io import InputError, read_judgments, write_csv
from .records import COMPLIANCE, REFUSAL

log = logging.getLogger(__name__)


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
