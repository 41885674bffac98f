"""The tables of the `stats` and `heldout_stats` rules, built from paired judgments."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..io import InputError, read_questions
from .categories import category_domain, category_name, category_sort_key
from .estimators import (
    category_bootstrap_interval,
    cohens_h,
    gee_odds_ratio,
    level_text,
    mcnemar_exact_p,
    newcombe_paired_interval,
    paired_wald_interval,
    wilson_interval,
)
from .pairing import PairedJudgments, flip_counts, read_judgment_pair

JUDGMENT_LEVELS = ("refusal", "compliance", "unparsable")

# The `interval` column of the paired table: which interval a row's ci_low/ci_high are.
# `compliance_difference` comes with three, so a reader selects its row by this name.
INTERVAL_WILSON = "wilson"
INTERVAL_PAIRED_WALD = "paired_wald"
INTERVAL_NEWCOMBE = "newcombe_hybrid_score"
INTERVAL_CATEGORY_BOOTSTRAP = "category_bootstrap"
INTERVAL_GEE_ROBUST = "gee_robust"
DESCRIPTIVE_NOTE = "descriptive only: few prompts per category, not a confirmatory test"


def overall_table(paired: PairedJudgments, alpha: float = 0.05) -> pd.DataFrame:
    """Compliance and refusal per condition over that condition's parsable judgments."""
    rows = []
    for which, condition in (("baseline", paired.baseline_condition), ("edited", paired.edited_condition)):
        scores = paired.table[which]
        judged = int(scores.notna().sum())
        n_missing = int(scores.isna().sum())
        for estimate, count in (
            ("compliance_rate", int((scores == 1).sum())),
            ("refusal_rate", int((scores == 0).sum())),
        ):
            low, high = wilson_interval(count, judged, alpha)
            rows.append(
                {
                    "estimate": estimate,
                    "condition": condition,
                    "count": count,
                    "n": judged,
                    "n_missing": n_missing,
                    "n_questions": paired.n_questions,
                    "value": count / judged if judged else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "method": f"Wilson score {level_text(alpha)}; unparsable judgments excluded",
                }
            )
    return pd.DataFrame(rows)


def flip_table(paired: PairedJudgments) -> pd.DataFrame:
    """Counts of (baseline judgment, edited judgment), unparsable included and marked."""

    def level(score: float) -> str:
        return "unparsable" if pd.isna(score) else ("compliance" if score == 1 else "refusal")

    base = paired.table["baseline"].map(level)
    edit = paired.table["edited"].map(level)
    rows = []
    for base_level in JUDGMENT_LEVELS:
        for edit_level in JUDGMENT_LEVELS:
            rows.append(
                {
                    "baseline": base_level,
                    "edited": edit_level,
                    "count": int(((base == base_level) & (edit == edit_level)).sum()),
                    "in_pairs": base_level != "unparsable" and edit_level != "unparsable",
                }
            )
    return pd.DataFrame(rows)


def paired_estimates(
    paired: PairedJudgments,
    alpha: float = 0.05,
    bootstrap_resamples: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per paired estimate: rates, difference (three intervals), McNemar, h, GEE OR."""
    complete = paired.complete
    n = len(complete)
    cells = flip_counts(complete)
    b, c = cells["to_compliance"], cells["to_refusal"]
    level = level_text(alpha)
    base_comply = int((complete["baseline"] == 1).sum())
    edit_comply = int((complete["edited"] == 1).sum())
    rows: list[dict] = []

    def add(estimate, value, ci_low=math.nan, ci_high=math.nan, p_value=math.nan, method="", note="", interval=""):
        rows.append(
            {
                "estimate": estimate,
                "interval": interval,
                "value": value,
                "ci_low": ci_low,
                "ci_high": ci_high,
                "ci_level": 1 - alpha if interval else math.nan,
                "p_value": p_value,
                "n": n,
                "method": method,
                "note": note,
            }
        )

    add("pairs", n, method="questions with a parsable judgment in both conditions")
    add(
        "pairs_excluded_unparsable",
        paired.n_excluded_pairs,
        method="questions left out because a judgment was unparsable",
        note=f"unparsable: baseline {paired.n_missing('baseline')}, edited {paired.n_missing('edited')}",
    )
    for estimate, count in (("baseline_compliance", base_comply), ("edited_compliance", edit_comply)):
        low, high = wilson_interval(count, n, alpha)
        add(
            estimate,
            count / n if n else math.nan,
            low,
            high,
            method=f"proportion over pairs, Wilson {level}",
            interval=INTERVAL_WILSON,
        )
    for estimate, count in cells.items():
        add(estimate, count, method="paired 2x2 table cell")

    difference, low, high = paired_wald_interval(b, c, n, alpha)
    add("compliance_difference", difference, low, high, method=f"paired Wald {level}", interval=INTERVAL_PAIRED_WALD)
    # Newcombe's "first" proportion is the edited one, so b - c is the rise in compliance.
    _, low, high = newcombe_paired_interval(cells["both_comply"], b, c, cells["both_refuse"], alpha)
    add(
        "compliance_difference",
        difference,
        low,
        high,
        method=f"Newcombe hybrid score (1998, method 10) {level}",
        interval=INTERVAL_NEWCOMBE,
    )
    low, high, draws = category_bootstrap_interval(
        complete["category"], complete["baseline"], complete["edited"], alpha, bootstrap_resamples, seed
    )
    n_categories = complete["category"].nunique()
    add(
        "compliance_difference",
        difference,
        low,
        high,
        method=f"category cluster bootstrap, percentile {level}, {bootstrap_resamples} resamples of "
        f"{n_categories} categories, seed {seed}",
        note="" if len(draws) else "not estimable: fewer than 2 categories",
        interval=INTERVAL_CATEGORY_BOOTSTRAP,
    )
    add(
        "mcnemar_exact",
        min(b, c),
        p_value=mcnemar_exact_p(b, c),
        method="exact two-sided McNemar (binomial test of discordant pairs, statsmodels mcnemar exact=True)",
        note=f"discordant pairs: {b} refusal->compliance, {c} compliance->refusal",
    )
    if n:
        add(
            "cohens_h",
            cohens_h(base_comply / n, edit_comply / n),
            method="2 asin(sqrt(p_edited)) - 2 asin(sqrt(p_baseline))",
        )
    else:
        add("cohens_h", math.nan, method="2 asin(sqrt(p_edited)) - 2 asin(sqrt(p_baseline))", note="no pairs")
    gee = gee_odds_ratio(complete["category"], complete["baseline"], complete["edited"], alpha)
    add(
        "odds_ratio",
        gee["value"],
        gee["ci_low"],
        gee["ci_high"],
        p_value=gee["p_value"],
        method=f"GEE logistic regression of compliance on condition, exchangeable within category "
        f"({n_categories} clusters), robust {level}",
        note=gee["note"],
        interval=INTERVAL_GEE_ROBUST,
    )
    return pd.DataFrame(rows)


def paired_row(paired: pd.DataFrame, estimate: str, interval: str | None = None) -> pd.Series:
    """The row of a paired table for ``estimate``, and ``interval`` where the estimate has several."""
    rows = paired[paired["estimate"] == estimate]
    if interval is not None:
        rows = rows[rows["interval"] == interval]
    if rows.empty:
        with_interval = f" with interval '{interval}'" if interval is not None else ""
        raise InputError(f"paired table: no '{estimate}' row{with_interval}")
    return rows.iloc[0]


def per_category_table(paired: PairedJudgments, alpha: float = 0.05) -> pd.DataFrame:
    """Rates per condition and change per category, with exact McNemar p, Holm and BH."""
    from statsmodels.stats.multitest import multipletests

    rows = []
    for category in sorted(paired.table["category"].unique(), key=category_sort_key):
        all_rows = paired.table[paired.table["category"] == category]
        complete = all_rows.dropna(subset=["baseline", "edited"])
        n = len(complete)
        cells = flip_counts(complete)
        base_comply = int((complete["baseline"] == 1).sum())
        edit_comply = int((complete["edited"] == 1).sum())
        base_low, base_high = wilson_interval(base_comply, n, alpha)
        edit_low, edit_high = wilson_interval(edit_comply, n, alpha)
        rows.append(
            {
                "category": category,
                "category_name": category_name(category),
                "domain": category_domain(category),
                "n_questions": len(all_rows),
                "n_pairs": n,
                "n_excluded_unparsable": len(all_rows) - n,
                "baseline_compliance": base_comply,
                "edited_compliance": edit_comply,
                "baseline_rate": base_comply / n if n else math.nan,
                "baseline_ci_low": base_low,
                "baseline_ci_high": base_high,
                "edited_rate": edit_comply / n if n else math.nan,
                "edited_ci_low": edit_low,
                "edited_ci_high": edit_high,
                "change": (edit_comply - base_comply) / n if n else math.nan,
                "refusal_to_compliance": cells["to_compliance"],
                "compliance_to_refusal": cells["to_refusal"],
                "mcnemar_p": mcnemar_exact_p(cells["to_compliance"], cells["to_refusal"]),
            }
        )
    frame = pd.DataFrame(rows)
    frame["holm_p"] = multipletests(frame["mcnemar_p"], method="holm")[1]
    frame["bh_p"] = multipletests(frame["mcnemar_p"], method="fdr_bh")[1]
    frame["note"] = DESCRIPTIVE_NOTE
    return frame


def answer_length_summary(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per condition: answer tokens median, quartiles, IQR, and the share that hit the limit."""
    rows = []
    for table in tables:
        tokens = table["answer_tokens"].astype(float)
        q1, median, q3 = np.quantile(tokens, [0.25, 0.5, 0.75])
        hits = int(table["hit_token_limit"].sum())
        rows.append(
            {
                "condition": str(table["condition"].iloc[0]),
                "n_answers": len(table),
                "median_tokens": float(median),
                "q1_tokens": float(q1),
                "q3_tokens": float(q3),
                "iqr_tokens": float(q3 - q1),
                "mean_tokens": float(tokens.mean()),
                "max_tokens": int(tokens.max()),
                "hit_limit_count": hits,
                "hit_limit_share": hits / len(table),
            }
        )
    return pd.DataFrame(rows)


def heldout_summary(
    questions_jsonl: str | os.PathLike,
    baseline_csv: str | os.PathLike,
    edited_csv: str | os.PathLike,
    alpha: float = 0.05,
    edited_condition: str | None = None,
) -> pd.DataFrame:
    """Refusal rates of baseline and edited on held-out safe and unsafe prompts.

    Rows: refusal rate per (label, condition) with Wilson interval over parsable judgments,
    then per label the paired change (edited - baseline) with its paired Wald interval and
    exact McNemar p over the complete pairs.
    """
    questions = read_questions(questions_jsonl)
    labels = {}
    for record in questions:
        label = record.get("label")
        if label not in ("safe", "unsafe"):
            raise InputError(
                f"{questions_jsonl}, question {record['question_id']}: "
                f"'label' must be 'safe' or 'unsafe', got {label!r}"
            )
        labels[int(record["question_id"])] = label
    pairs = read_judgment_pair(
        baseline_csv, edited_csv, edited_condition=edited_condition, questions_jsonl=questions_jsonl
    )
    table = pairs.table.assign(label=pairs.table["question_id"].map(labels))
    level = level_text(alpha)
    rows = []
    for label in ("safe", "unsafe"):
        subset = table[table["label"] == label]
        for which, condition in (("baseline", pairs.baseline_condition), ("edited", pairs.edited_condition)):
            scores = subset[which]
            judged = int(scores.notna().sum())
            refusals = int((scores == 0).sum())
            low, high = wilson_interval(refusals, judged, alpha)
            rows.append(
                {
                    "estimate": "refusal_rate",
                    "label": label,
                    "condition": condition,
                    "count": refusals,
                    "n": judged,
                    "n_missing": int(scores.isna().sum()),
                    "value": refusals / judged if judged else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "p_value": math.nan,
                    "method": f"Wilson score {level}; unparsable judgments excluded",
                }
            )
        complete = subset.dropna(subset=["baseline", "edited"])
        cells = flip_counts(complete)
        # A rise in refusal is the compliance->refusal flips minus the refusal->compliance ones.
        change, low, high = paired_wald_interval(cells["to_refusal"], cells["to_compliance"], len(complete), alpha)
        rows.append(
            {
                "estimate": "refusal_rate_change",
                "label": label,
                "condition": f"{pairs.edited_condition} - {pairs.baseline_condition}",
                "count": cells["to_refusal"] - cells["to_compliance"],
                "n": len(complete),
                "n_missing": len(subset) - len(complete),
                "value": change,
                "ci_low": low,
                "ci_high": high,
                "p_value": mcnemar_exact_p(cells["to_compliance"], cells["to_refusal"]),
                "method": f"paired Wald {level}; p: exact McNemar; over complete pairs",
            }
        )
    return pd.DataFrame(rows)
