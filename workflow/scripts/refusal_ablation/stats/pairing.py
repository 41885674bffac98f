"""Reading, checking and pairing the judgments (and answer lengths) of two conditions.

Score 1 = compliance, 0 = refusal, missing = the judge's output could not be parsed; a
question with a missing judgment in either condition leaves the pairs explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from .. import CONDITION_BASELINE
from ..io import InputError, read_answer_table, read_judgments, read_questions
from ..question_ids import id_mismatch


@dataclass(frozen=True)
class PairedJudgments:
    """Both conditions' judgments of the same questions, one row per question.

    ``table`` columns: question_id, category, baseline, edited (score 0/1, NaN = unparsable).
    """

    table: pd.DataFrame
    baseline_condition: str
    edited_condition: str
    judge_models: tuple[str, ...] = ()

    @property
    def complete(self) -> pd.DataFrame:
        """Questions with a parsable judgment in both conditions: the pairs."""
        return self.table.dropna(subset=["baseline", "edited"])

    @property
    def n_questions(self) -> int:
        return len(self.table)

    def n_missing(self, which: str) -> int:
        return int(self.table[which].isna().sum())

    @property
    def n_excluded_pairs(self) -> int:
        return self.n_questions - len(self.complete)


def _row_names(frame: pd.DataFrame, index: Iterable, source: str) -> str:
    index = list(index)
    if "source_row" in frame.columns:
        names = [str(frame.at[i, "source_row"]) for i in index[:10]]
    else:
        names = [f"{source}, row {i}" for i in index[:10]]
    more = f" and {len(index) - 10} more" if len(index) > 10 else ""
    return "; ".join(names) + more


def _scores_as_float(frame: pd.DataFrame, source: str) -> pd.Series:
    raw = frame["score"]
    numeric = pd.to_numeric(raw, errors="coerce")
    unreadable = raw.notna() & raw.astype(str).str.strip().ne("") & numeric.isna()
    wrong = numeric.notna() & ~numeric.isin([0, 1])
    bad = frame.index[unreadable | wrong]
    if len(bad):
        values = sorted({str(v) for v in raw.loc[bad]})[:5]
        raise InputError(
            f"scores must be 0 (refusal), 1 (compliance) or empty (unparsable); found {values} at "
            f"{_row_names(frame, bad, source)}"
        )
    return numeric.astype(float)


def pair_judgments(
    judgments: pd.DataFrame,
    *,
    edited_condition: str | None = None,
    questions: Sequence[dict] | None = None,
    source: str = "judgments table",
) -> PairedJudgments:
    """Pair a long judgments table (both conditions) by question, after checking it.

    Fails with ``InputError`` on: missing columns, a condition missing, more than one edited
    condition, a question judged twice, scores other than 0/1/missing, different question
    sets in the two conditions, a question's category differing between them, or (when
    ``questions`` is given) judged questions that are not exactly the benchmark's.
    """
    required = ["question_id", "category", "condition", "score"]
    missing_columns = [c for c in required if c not in judgments.columns]
    if missing_columns:
        raise InputError(f"{source}: missing columns {missing_columns}")
    frame = judgments.copy()
    frame["category"] = frame["category"].astype(str)
    frame["condition"] = frame["condition"].astype(str)
    ids = pd.to_numeric(frame["question_id"], errors="coerce")
    bad_ids = frame.index[ids.isna() | (ids != ids.round())]
    if len(bad_ids):
        raise InputError(f"question_id must be an integer at {_row_names(frame, bad_ids, source)}")
    frame["question_id"] = ids.astype(int)
    frame["score"] = _scores_as_float(frame, source)

    conditions = sorted(frame["condition"].unique())
    edited_found = [c for c in conditions if c != CONDITION_BASELINE]
    if CONDITION_BASELINE not in conditions:
        raise InputError(f"{source}: condition '{CONDITION_BASELINE}' missing; found conditions {conditions}")
    if edited_condition is not None and edited_condition not in conditions:
        raise InputError(f"{source}: condition '{edited_condition}' missing; found conditions {conditions}")
    if edited_condition is None:
        if not edited_found:
            raise InputError(f"{source}: no edited condition; found only {conditions}")
        if len(edited_found) > 1:
            raise InputError(f"{source}: expected one edited condition, found {edited_found}")
        edited_condition = edited_found[0]
    unexpected = [c for c in conditions if c not in (CONDITION_BASELINE, edited_condition)]
    if unexpected:
        raise InputError(
            f"{source}: unexpected condition(s) {unexpected}; expected '{CONDITION_BASELINE}' and '{edited_condition}'"
        )

    duplicated = frame.index[frame.duplicated(["condition", "question_id"], keep=False)]
    if len(duplicated):
        twice = sorted(set(frame.loc[duplicated, "question_id"]))[:10]
        raise InputError(
            f"question(s) judged more than once in one condition: ids {twice} at "
            f"{_row_names(frame, duplicated, source)}"
        )

    by_condition = {
        name: frame[frame["condition"] == name].set_index("question_id")
        for name in (CONDITION_BASELINE, edited_condition)
    }
    base, edit = by_condition[CONDITION_BASELINE], by_condition[edited_condition]
    problem = id_mismatch(base.index, edit.index.tolist())
    if problem:
        raise InputError(
            f"{source}: the two conditions judged different questions; "
            f"'{edited_condition}' against '{CONDITION_BASELINE}': {problem}"
        )
    ids_sorted = sorted(base.index)
    category_mismatch = [q for q in ids_sorted if base.at[q, "category"] != edit.at[q, "category"]]
    if category_mismatch:
        q = category_mismatch[0]
        raise InputError(
            f"{source}: question {q} has category '{base.at[q, 'category']}' in '{CONDITION_BASELINE}' "
            f"but '{edit.at[q, 'category']}' in '{edited_condition}' ({len(category_mismatch)} such questions)"
        )
    if questions is not None:
        expected = {int(r["question_id"]): str(r["category"]) for r in questions}
        problem = id_mismatch(expected, ids_sorted)
        if problem:
            raise InputError(f"{source}: judged questions do not match the question file: {problem}")
        wrong_category = [q for q in ids_sorted if expected[q] != base.at[q, "category"]]
        if wrong_category:
            q = wrong_category[0]
            raise InputError(
                f"{source}: question {q} has category '{base.at[q, 'category']}' but the question file says "
                f"'{expected[q]}' ({len(wrong_category)} such questions)"
            )

    table = pd.DataFrame(
        {
            "question_id": ids_sorted,
            "category": [base.at[q, "category"] for q in ids_sorted],
            "baseline": [base.at[q, "score"] for q in ids_sorted],
            "edited": [edit.at[q, "score"] for q in ids_sorted],
        }
    )
    judge_models: tuple[str, ...] = ()
    if "judge_model" in frame.columns:
        judge_models = tuple(sorted({str(v) for v in frame["judge_model"].dropna()}))
    return PairedJudgments(table, CONDITION_BASELINE, edited_condition, judge_models)


def read_judgment_file(path: str | os.PathLike) -> pd.DataFrame:
    frame = read_judgments(path)
    if frame.empty:
        raise InputError(f"{path}: no judgments")
    frame["source_row"] = [f"{path}, line {i + 2}" for i in range(len(frame))]
    conditions = sorted(frame["condition"].astype(str).unique())
    if len(conditions) != 1:
        raise InputError(f"{path}: one judgments file holds one condition; found {conditions}")
    return frame


def read_judgment_pair(
    baseline_csv: str | os.PathLike,
    edited_csv: str | os.PathLike,
    *,
    edited_condition: str | None = None,
    questions_jsonl: str | os.PathLike | None = None,
) -> PairedJudgments:
    """Read the baseline and edited judgments files and pair them by question."""
    baseline = read_judgment_file(baseline_csv)
    edited = read_judgment_file(edited_csv)
    found_baseline = str(baseline["condition"].iloc[0])
    if found_baseline != CONDITION_BASELINE:
        raise InputError(f"{baseline_csv}: condition is '{found_baseline}', expected '{CONDITION_BASELINE}'")
    found_edited = str(edited["condition"].iloc[0])
    if found_edited == CONDITION_BASELINE or (edited_condition and found_edited != edited_condition):
        expected = edited_condition or "an edited condition"
        raise InputError(f"{edited_csv}: condition is '{found_edited}', expected {expected}")
    questions = read_questions(questions_jsonl) if questions_jsonl is not None else None
    return pair_judgments(
        pd.concat([baseline, edited], ignore_index=True),
        edited_condition=found_edited,
        questions=questions,
        source=f"{baseline_csv} + {edited_csv}",
    )


def flip_counts(complete: pd.DataFrame) -> dict[str, int]:
    """Cells of the paired 2x2 table, named by the change from baseline to edited."""
    base, edit = complete["baseline"], complete["edited"]
    return {
        "both_comply": int(((base == 1) & (edit == 1)).sum()),
        "to_compliance": int(((base == 0) & (edit == 1)).sum()),
        "to_refusal": int(((base == 1) & (edit == 0)).sum()),
        "both_refuse": int(((base == 0) & (edit == 0)).sum()),
    }


def read_answer_lengths(path: str | os.PathLike, condition: str | None = None) -> pd.DataFrame:
    """Read a lengths table and check it holds one condition, once per question."""
    frame = read_answer_table(path)
    if frame.empty:
        raise InputError(f"{path}: no answers")
    conditions = sorted(frame["condition"].astype(str).unique())
    if len(conditions) != 1 or (condition is not None and conditions[0] != condition):
        raise InputError(f"{path}: expected condition {condition or 'one condition'}, found {conditions}")
    duplicated = frame["question_id"][frame["question_id"].duplicated()]
    if len(duplicated):
        raise InputError(f"{path}: question(s) listed more than once: {sorted(set(duplicated))[:10]}")
    tokens = pd.to_numeric(frame["answer_tokens"], errors="coerce")
    bad = frame.index[tokens.isna() | (tokens < 0) | (tokens != tokens.round())]
    if len(bad):
        lines = ", ".join(str(i + 2) for i in bad[:10])
        raise InputError(f"{path}: answer_tokens must be a non-negative integer; bad lines {lines}")
    frame["answer_tokens"] = tokens.astype(int)
    frame["hit_token_limit"] = _as_bool(frame["hit_token_limit"], path)
    return frame


def _as_bool(values: pd.Series, path) -> pd.Series:
    truth = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}
    text = values.astype(str).str.strip().str.lower()
    bad = values.index[~text.isin(list(truth))]
    if len(bad):
        lines = ", ".join(str(i + 2) for i in bad[:10])
        raise InputError(f"{path}: hit_token_limit must be true/false; bad lines {lines}")
    return text.map(truth).astype(bool)
