"""Entry points of the `stats` and `heldout_stats` rules: read, check, pair, write."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from ..io import InputError, atomic_path, write_csv
from ..question_ids import id_mismatch
from .pairing import PairedJudgments, read_answer_lengths, read_judgment_pair
from .summary import format_percent, summary_html, summary_markdown, summary_sentences
from .tables import (
    answer_length_summary,
    flip_table,
    heldout_summary,
    overall_table,
    paired_estimates,
    per_category_table,
)

logger = logging.getLogger(__name__)


def _write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_stats(
    *,
    baseline_judgments: str | os.PathLike,
    edited_judgments: str | os.PathLike,
    baseline_lengths: str | os.PathLike,
    edited_lengths: str | os.PathLike,
    questions: str | os.PathLike | None,
    overall: str | os.PathLike,
    paired: str | os.PathLike,
    flip_table_csv: str | os.PathLike,
    per_category: str | os.PathLike,
    answer_lengths: str | os.PathLike,
    summary: str | os.PathLike,
    summary_page: str | os.PathLike | None = None,
    alpha: float = 0.05,
    bootstrap_resamples: int = 10000,
    seed: int = 0,
    edited_condition: str | None = None,
    title: str | None = None,
    extra_sentences: Sequence[str] = (),
) -> PairedJudgments:
    """The `stats` rule: read, check and pair the judgments, write every table and the summary.

    ``extra_sentences`` (e.g. the cost of the edit) follow the refusal result in the summary."""
    pairs = read_judgment_pair(
        baseline_judgments, edited_judgments, edited_condition=edited_condition, questions_jsonl=questions
    )
    logger.info(
        "%d questions, %d complete pairs (%s vs %s)",
        pairs.n_questions,
        len(pairs.complete),
        pairs.baseline_condition,
        pairs.edited_condition,
    )
    question_ids = set(pairs.table["question_id"])
    length_tables = []
    for path, condition in ((baseline_lengths, pairs.baseline_condition), (edited_lengths, pairs.edited_condition)):
        table = read_answer_lengths(path, condition)
        problem = id_mismatch(question_ids, table["question_id"].tolist())
        if problem:
            raise InputError(f"{path}: answers cover other questions than the judgments: {problem}")
        length_tables.append(table)

    overall_frame = overall_table(pairs, alpha)
    paired_frame = paired_estimates(pairs, alpha, bootstrap_resamples, seed)
    logger.info("paired estimates done (%d bootstrap resamples)", bootstrap_resamples)
    flips = flip_table(pairs)
    categories = per_category_table(pairs, alpha)
    lengths = answer_length_summary(length_tables)
    sentences = summary_sentences(pairs, paired_frame, categories, lengths, alpha) + list(extra_sentences)
    title = title or f"Refusal ablation: {pairs.edited_condition} vs {pairs.baseline_condition}"

    write_csv(overall, overall_frame)
    write_csv(paired, paired_frame)
    write_csv(flip_table_csv, flips)
    write_csv(per_category, categories)
    write_csv(answer_lengths, lengths)
    _write_text(summary, summary_markdown(title, sentences, pairs.judge_models))
    if summary_page is not None:
        tables = {
            "Overall, per condition": overall_frame,
            "Paired estimates": paired_frame,
            "Flip table": flips,
            "Per category (descriptive)": categories,
            "Answer length": lengths,
        }
        _write_text(summary_page, summary_html(title, sentences, pairs.judge_models, tables))
    for sentence in sentences:
        logger.info("%s", sentence)
    return pairs


def write_heldout_summary(
    questions_jsonl, baseline_csv, edited_csv, output_csv, alpha: float = 0.05, edited_condition: str | None = None
) -> pd.DataFrame:
    """The `heldout_stats` rule."""
    frame = heldout_summary(questions_jsonl, baseline_csv, edited_csv, alpha, edited_condition)
    write_csv(output_csv, frame)
    for row in frame.itertuples():
        logger.info(
            "%s %s %s: %s (%s/%s)", row.estimate, row.label, row.condition, format_percent(row.value), row.count, row.n
        )
    return frame
