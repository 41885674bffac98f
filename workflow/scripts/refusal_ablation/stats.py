"""Paired statistics of baseline vs edited judgments.

Every prompt is judged twice (baseline model, edited model), so the analysis is paired by
question: the 2x2 flip table, exact McNemar, paired intervals for the compliance change,
a bootstrap over whole categories (prompts of one category are not independent), and a
GEE logistic model with category clusters. Score 1 = compliance, 0 = refusal, missing =
the judge's output could not be parsed; missing judgments are counted and reported, and a
question with a missing judgment in either condition leaves the pairs explicitly.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
import pandas as pd
from scipy.stats import norm

from . import CONDITION_BASELINE
from .io import InputError, atomic_path, read_answer_table, read_judgments, read_questions, write_csv

logger = logging.getLogger(__name__)

# SORRY-Bench 2025-03: the question's `category` field is the id as a string.
CATEGORY_NAMES = {
    "1": "Personal Insulting Words",
    "2": "Social-group Insulting Words",
    "3": "Threatening Words",
    "4": "Lewd and Obscene Words",
    "5": "Libelous Words",
    "6": "Self-Harm",
    "7": "Violent Crimes",
    "8": "Harassment",
    "9": "Sexual Crimes",
    "10": "Property Crimes",
    "11": "Public Order Crimes",
    "12": "System Intrusion",
    "13": "Malware Code Generation",
    "14": "Fraud",
    "15": "Financial Crimes",
    "16": "IP Infringement",
    "17": "PII Violations",
    "18": "Illegal Crafting",
    "19": "Terrorism",
    "20": "Child-related Crimes",
    "21": "Animal-related Crimes",
    "22": "Environmental Crimes",
    "23": "Evasion of Law Enforcement",
    "24": "Human Elimination",
    "25": "Advice on Adult Content",
    "26": "Sexual Explicit Content Generation",
    "27": "Non-sexual Explicit Content Generation",
    "28": "Fake News Generation",
    "29": "False Advertising",
    "30": "Advice on Discrimination Behaviors",
    "31": "Military Use",
    "32": "Political Belief Promotion",
    "33": "Ethical Belief Promotion",
    "34": "Religion Promotion",
    "35": "Social Stereotype Promotion",
    "36": "Extremist Content Promotion",
    "37": "Conspiracy Theories Promotion",
    "38": "False Common Knowledge Promotion",
    "39": "Harmful & Unhealthy Behaviors Promotion",
    "40": "Medical Advice",
    "41": "Financial Advice",
    "42": "Legal Consulting Advice",
    "43": "Governance Decision Advice",
    "44": "Dangerous Machinery Operation Advice",
}

_DOMAIN_RANGES = [
    (1, 5, "hate speech generation"),
    (6, 24, "assistance with crimes or torts"),
    (25, 39, "potentially inappropriate topics"),
    (40, 44, "potentially unqualified advice"),
]

JUDGMENT_LEVELS = ("refusal", "compliance", "unparsable")
DESCRIPTIVE_NOTE = "descriptive only: few prompts per category, not a confirmatory test"


# ---------------------------------------------------------------- category labels


def category_name(category: str) -> str:
    """Readable name of a category: SORRY-Bench id -> name; policy area -> words."""
    category = str(category)
    if category in CATEGORY_NAMES:
        return CATEGORY_NAMES[category]
    return category.replace("_", " ")


def category_label(category: str) -> str:
    """Axis label: the name, plus the SORRY-Bench id where there is one."""
    category = str(category)
    if category in CATEGORY_NAMES:
        return f"{CATEGORY_NAMES[category]} ({category})"
    return category_name(category)


def category_domain(category: str) -> str:
    category = str(category)
    if category.isdigit():
        number = int(category)
        for low, high, domain in _DOMAIN_RANGES:
            if low <= number <= high:
                return domain
    return ""


def category_sort_key(category: str):
    """Numeric ids in numeric order, then names alphabetically."""
    category = str(category)
    return (0, int(category), "") if category.isdigit() else (1, 0, category)


# ---------------------------------------------------------------- elementary estimates


def z_value(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    return float(norm.ppf(1 - alpha / 2))


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n is 0."""
    if n == 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..n, got {successes} of {n}")
    z = z_value(alpha)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bound is exactly 0 or 1; float rounding would miss it.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == n else min(1.0, centre + half_width)
    return (low, high)


def mcnemar_exact_p(to_compliance: int, to_refusal: int) -> float:
    """Exact two-sided McNemar p: binomial test of the discordant pairs against 1/2."""
    from statsmodels.stats.contingency_tables import mcnemar

    if to_compliance + to_refusal == 0:
        return 1.0
    table = [[0, to_refusal], [to_compliance, 0]]
    return float(mcnemar(table, exact=True).pvalue)


def paired_wald_interval(to_compliance: int, to_refusal: int, n: int, alpha: float = 0.05):
    """Difference in paired proportions (b - c)/n with its Wald interval.

    Var = ((b + c) - (b - c)^2 / n) / n^2, the usual asymptotic variance for matched pairs.
    """
    if n == 0:
        return (math.nan, math.nan, math.nan)
    b, c = to_compliance, to_refusal
    difference = (b - c) / n
    variance = max((b + c) - (b - c) ** 2 / n, 0.0) / n**2
    half_width = z_value(alpha) * math.sqrt(variance)
    return (difference, difference - half_width, difference + half_width)


def newcombe_paired_interval(a: int, b: int, c: int, d: int, alpha: float = 0.05):
    """Newcombe's (1998) hybrid score interval for a difference of paired proportions.

    Method 10 of Newcombe, Stat Med 17:2635. Table of pairs: ``a`` positive in both,
    ``b`` positive only in the first, ``c`` positive only in the second, ``d`` in neither;
    the difference is p1 - p2 = (b - c)/n. Wilson intervals of the two marginal proportions
    are combined square-and-add style, with the correlation of the marginals estimated by
    phi, which is shrunk towards 0 by n/2 when positive (Newcombe's correction).
    """
    n = a + b + c + d
    if n == 0:
        return (math.nan, math.nan, math.nan)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, alpha)
    l2, u2 = wilson_interval(a + c, n, alpha)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if margins == 0:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    elif cross >= 0:
        phi = 0.0
    else:
        phi = cross / math.sqrt(margins)
    difference = p1 - p2
    lower_term = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    upper_term = (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2
    return (
        difference,
        max(-1.0, difference - math.sqrt(max(lower_term, 0.0))),
        min(1.0, difference + math.sqrt(max(upper_term, 0.0))),
    )


def cohens_h(p_before: float, p_after: float) -> float:
    """Cohen's h = 2 asin(sqrt(p_after)) - 2 asin(sqrt(p_before))."""
    return 2 * math.asin(math.sqrt(p_after)) - 2 * math.asin(math.sqrt(p_before))


def category_bootstrap_interval(
    categories: Sequence[str],
    baseline_scores: Sequence[float],
    edited_scores: Sequence[float],
    alpha: float = 0.05,
    resamples: int = 10000,
    seed: int = 0,
) -> tuple[float, float, np.ndarray]:
    """Percentile interval of the paired compliance difference, resampling whole categories.

    Each resample draws as many categories as there are, with replacement, and pools all of
    their prompts; returns (low, high, the resampled differences).
    """
    if resamples < 1:
        raise ValueError(f"bootstrap resamples must be at least 1, got {resamples}")
    frame = pd.DataFrame(
        {
            "category": list(map(str, categories)),
            "change": np.asarray(edited_scores, dtype=float) - np.asarray(baseline_scores, dtype=float),
        }
    )
    per_category = frame.groupby("category", sort=True)["change"].agg(["sum", "count"])
    n_categories = len(per_category)
    if n_categories < 2:
        return (math.nan, math.nan, np.array([]))
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_categories, size=(resamples, n_categories))
    sums = per_category["sum"].to_numpy()[drawn].sum(axis=1)
    counts = per_category["count"].to_numpy()[drawn].sum(axis=1)
    differences = sums / counts
    low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high), differences)


def gee_odds_ratio(
    categories: Sequence[str],
    baseline_scores: Sequence[float],
    edited_scores: Sequence[float],
    alpha: float = 0.05,
) -> dict:
    """GEE logistic regression of compliance on condition, exchangeable within category.

    Returns the odds ratio (edited vs baseline), its robust (sandwich) interval and Wald p,
    or NaNs with the reason in ``note`` where the model is not estimable.
    """
    import statsmodels.api as sm

    categories = list(map(str, categories))
    baseline_scores = np.asarray(baseline_scores, dtype=float)
    edited_scores = np.asarray(edited_scores, dtype=float)
    result = {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "note": ""}
    if len(set(categories)) < 2:
        result["note"] = "not estimable: fewer than 2 category clusters"
        return result
    for name, scores in (("baseline", baseline_scores), ("edited", edited_scores)):
        if scores.min() == scores.max():
            outcome = "compliance" if scores.max() == 1 else "refusal"
            result["note"] = f"not estimable: every {name} judgment is {outcome} (separation)"
            return result
    n = len(categories)
    endog = np.concatenate([baseline_scores, edited_scores])
    edited_indicator = np.concatenate([np.zeros(n), np.ones(n)])
    exog = np.column_stack([np.ones(2 * n), edited_indicator])
    groups = pd.factorize(pd.Series(categories + categories))[0]
    model = sm.GEE(
        endog,
        exog,
        groups=groups,
        family=sm.families.Binomial(),
        cov_struct=sm.cov_struct.Exchangeable(),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = model.fit()
        except Exception as exc:  # statsmodels raises several types on degenerate data
            result["note"] = f"not estimable: GEE failed ({type(exc).__name__}: {exc})"
            return result
    # Convergence and numerical warnings qualify the estimate; library deprecations do not.
    ignored = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    messages = sorted({str(w.message).splitlines()[0] for w in caught if not issubclass(w.category, ignored)})
    for message in messages:
        logger.warning("GEE: %s", message)
    coefficient = float(fit.params[1])
    low, high = (float(v) for v in np.asarray(fit.conf_int(alpha=alpha))[1])
    result.update(
        value=math.exp(coefficient),
        ci_low=math.exp(low),
        ci_high=math.exp(high),
        p_value=float(fit.pvalues[1]),
        note="; ".join(messages),
    )
    return result


# ---------------------------------------------------------------- pairing and validation


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
    only_base = sorted(set(base.index) - set(edit.index))
    only_edit = sorted(set(edit.index) - set(base.index))
    if only_base or only_edit:
        raise InputError(
            f"{source}: the two conditions judged different questions: only in '{CONDITION_BASELINE}': "
            f"{only_base[:10]} ({len(only_base)}), only in '{edited_condition}': {only_edit[:10]} ({len(only_edit)})"
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
        not_judged = sorted(set(expected) - set(ids_sorted))
        not_asked = sorted(set(ids_sorted) - set(expected))
        if not_judged or not_asked:
            raise InputError(
                f"{source}: judged questions do not match the question file: not judged {not_judged[:10]} "
                f"({len(not_judged)}), not in the question file {not_asked[:10]} ({len(not_asked)})"
            )
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


def _read_judgment_file(path: str | os.PathLike) -> pd.DataFrame:
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
    baseline = _read_judgment_file(baseline_csv)
    edited = _read_judgment_file(edited_csv)
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


# ---------------------------------------------------------------- tables


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
                    "method": f"Wilson score {_level(alpha)}; unparsable judgments excluded",
                }
            )
    return pd.DataFrame(rows)


def flip_counts(complete: pd.DataFrame) -> dict[str, int]:
    """Cells of the paired 2x2 table, named by the change from baseline to edited."""
    base, edit = complete["baseline"], complete["edited"]
    return {
        "both_comply": int(((base == 1) & (edit == 1)).sum()),
        "to_compliance": int(((base == 0) & (edit == 1)).sum()),
        "to_refusal": int(((base == 1) & (edit == 0)).sum()),
        "both_refuse": int(((base == 0) & (edit == 0)).sum()),
    }


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
    level = _level(alpha)
    base_comply = int((complete["baseline"] == 1).sum())
    edit_comply = int((complete["edited"] == 1).sum())
    rows: list[dict] = []

    def add(estimate, value, ci_low=math.nan, ci_high=math.nan, p_value=math.nan, method="", note=""):
        rows.append(
            {
                "estimate": estimate,
                "value": value,
                "ci_low": ci_low,
                "ci_high": ci_high,
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
        add(estimate, count / n if n else math.nan, low, high, method=f"proportion over pairs, Wilson {level}")
    for estimate, count in cells.items():
        add(estimate, count, method="paired 2x2 table cell")

    difference, low, high = paired_wald_interval(b, c, n, alpha)
    add("compliance_difference", difference, low, high, method=f"paired Wald {level}")
    # Newcombe's "first" proportion is the edited one, so b - c is the rise in compliance.
    _, low, high = newcombe_paired_interval(cells["both_comply"], b, c, cells["both_refuse"], alpha)
    add("compliance_difference", difference, low, high, method=f"Newcombe hybrid score (1998, method 10) {level}")
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
    )
    return pd.DataFrame(rows)


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


# ---------------------------------------------------------------- plain-words summary


def _level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}% CI"


def _pct(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}%"


def _points(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}"


def _tokens(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _p(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.3g}".replace("e-0", "e-")


def summary_sentences(
    paired: PairedJudgments,
    paired_frame: pd.DataFrame,
    per_category: pd.DataFrame,
    lengths: pd.DataFrame | None,
    alpha: float,
) -> list[str]:
    """The findings as short plain sentences, in the order a reader needs them."""

    def row(estimate: str, method_start: str = "") -> pd.Series:
        rows = paired_frame[
            (paired_frame["estimate"] == estimate) & paired_frame["method"].str.startswith(method_start)
        ]
        return rows.iloc[0]

    n = int(row("pairs")["value"])
    level = _level(alpha)
    excluded = paired.n_excluded_pairs
    missing_sentence = (
        f"Unparsable judgments: {paired.n_missing('baseline')} baseline, {paired.n_missing('edited')} edited; "
        f"{excluded} of {paired.n_questions} questions left out of the pairs."
        if excluded
        else f"Every one of the {paired.n_questions} questions has a parsable judgment in both conditions."
    )
    if n == 0:
        return ["No question has a parsable judgment in both conditions.", missing_sentence]
    base, edit = row("baseline_compliance"), row("edited_compliance")
    wald = row("compliance_difference", "paired Wald")
    newcombe = row("compliance_difference", "Newcombe")
    boot = row("compliance_difference", "category cluster bootstrap")
    cells = flip_counts(paired.complete)
    base_count, edit_count = cells["both_comply"] + cells["to_refusal"], cells["both_comply"] + cells["to_compliance"]
    difference = wald["value"]
    intervals = (
        f"{'+' if difference > 0 else ''}{_points(difference)} points, {level} {_points(wald['ci_low'])} to "
        f"{_points(wald['ci_high'])} by the paired Wald interval; {_points(newcombe['ci_low'])} to "
        f"{_points(newcombe['ci_high'])} by Newcombe's hybrid score interval; "
        + (
            f"{_points(boot['ci_low'])} to {_points(boot['ci_high'])} by a bootstrap over categories"
            if not pd.isna(boot["ci_low"])
            else "category bootstrap not estimable"
        )
    )
    if difference == 0:
        first = (
            f"Compliance was unchanged at {_pct(base['value'])} ({base_count}/{n}) under both "
            f"{paired.baseline_condition} and {paired.edited_condition} ({intervals})."
        )
    else:
        first = (
            f"Compliance {'rose' if difference > 0 else 'fell'} from {_pct(base['value'])} ({base_count}/{n}) "
            f"under {paired.baseline_condition} to {_pct(edit['value'])} ({edit_count}/{n}) under "
            f"{paired.edited_condition} ({intervals})."
        )
    sentences = [first]
    sentences.append(
        f"{cells['to_compliance']} prompts flipped to compliance, {cells['to_refusal']} the other way; "
        f"{cells['both_refuse']} were refused and {cells['both_comply']} answered under both; "
        f"exact McNemar p = {_p(row('mcnemar_exact')['p_value'])}."
    )
    odds = row("odds_ratio")
    if pd.isna(odds["value"]):
        odds_text = f"the GEE odds ratio is {odds['note']}"
    else:
        odds_text = (
            f"a GEE logistic model with category clusters gives an odds ratio of compliance (edited vs "
            f"baseline) of {odds['value']:#.3g} ({level} {odds['ci_low']:#.3g} to {odds['ci_high']:#.3g}, robust)"
        )
    sentences.append(f"Cohen's h = {row('cohens_h')['value']:.2f}; {odds_text}.")
    sentences.append(missing_sentence)
    sentences.append(_per_category_sentence(per_category, alpha))
    if lengths is not None:
        parts = [
            f"{r.condition} median {_tokens(r.median_tokens)} tokens (IQR {_tokens(r.q1_tokens)} to "
            f"{_tokens(r.q3_tokens)}), "
            f"{_pct(r.hit_limit_share)} hit the token limit"
            for r in lengths.itertuples()
        ]
        sentences.append("Answer length: " + "; ".join(parts) + ".")
    return sentences


def _per_category_sentence(per_category: pd.DataFrame, alpha: float) -> str:
    ranked = per_category.dropna(subset=["change"])
    rises = ranked[ranked["change"] > 0].sort_values(["change", "category"], ascending=[False, True]).head(3)
    falls = ranked[ranked["change"] < 0].sort_values(["change", "category"], ascending=[True, True]).head(3)

    def listing(rows: pd.DataFrame) -> str:
        return ", ".join(f"{category_name(r.category)} ({100 * r.change:+.1f})" for r in rows.itertuples())

    details = [f"largest rises: {listing(rises)}"] if len(rises) else []
    details += [f"largest falls: {listing(falls)}"] if len(falls) else []
    holm = int((per_category["holm_p"] < alpha).sum())
    return (
        f"Per category (descriptive only; median {per_category['n_pairs'].median():g} prompts per category): "
        f"compliance rose in {int((ranked['change'] > 0).sum())} of {len(per_category)} categories, fell in "
        f"{int((ranked['change'] < 0).sum())}, was unchanged in {int((ranked['change'] == 0).sum())}"
        + "".join(f"; {d}" for d in details)
        + f"; {holm} categories with Holm-adjusted p < {alpha:g}."
    )


def summary_markdown(title: str, sentences: Sequence[str], judge_models: Sequence[str]) -> str:
    lines = [f"# {title}", ""]
    if judge_models:
        lines += [f"Judge: {', '.join(judge_models)}.", ""]
    lines += sentences
    return "\n\n".join(line for line in lines if line) + "\n"


def summary_html(
    title: str, sentences: Sequence[str], judge_models: Sequence[str], tables: Mapping[str, pd.DataFrame]
) -> str:
    """A self-contained page with the summary and every table, for the Snakemake report."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:1em auto;}"
        "table{border-collapse:collapse;font-size:0.85em;margin-bottom:2em;}"
        "td,th{border:1px solid #bbb;padding:2px 6px;text-align:right;}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if judge_models:
        parts.append(f"<p>Judge: {escape(', '.join(judge_models))}.</p>")
    parts += [f"<p>{escape(s)}</p>" for s in sentences]
    for name, table in tables.items():
        parts.append(f"<h2>{escape(name)}</h2>")
        parts.append(table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0))
    parts.append("</body></html>")
    return "\n".join(parts)


def _write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- workflow entry points


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
        if set(table["question_id"]) != question_ids:
            raise InputError(
                f"{path}: answers cover questions {len(set(table['question_id']))}, judgments cover "
                f"{len(question_ids)}; differing ids {sorted(set(table['question_id']) ^ question_ids)[:10]}"
            )
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
    level = _level(alpha)
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


def write_heldout_summary(
    questions_jsonl, baseline_csv, edited_csv, output_csv, alpha: float = 0.05, edited_condition: str | None = None
) -> pd.DataFrame:
    """The `heldout_stats` rule."""
    frame = heldout_summary(questions_jsonl, baseline_csv, edited_csv, alpha, edited_condition)
    write_csv(output_csv, frame)
    for row in frame.itertuples():
        logger.info("%s %s %s: %s (%s/%s)", row.estimate, row.label, row.condition, _pct(row.value), row.count, row.n)
    return frame
