"""Statistics of the paired baseline/edited judgments, against published and hand values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from statsmodels.stats.proportion import proportion_confint

from refusal_ablation.benchmark import CATEGORY_NAMES
from refusal_ablation.io import InputError
from refusal_ablation.stats.categories import category_label
from refusal_ablation.stats.estimators import (
    category_bootstrap_interval,
    cohens_h,
    gee_odds_ratio,
    mcnemar_exact_p,
    newcombe_paired_interval,
    paired_wald_interval,
    wilson_interval,
)
from refusal_ablation.stats.pairing import pair_judgments, read_answer_lengths, read_judgment_pair
from refusal_ablation.stats.rules import write_stats
from refusal_ablation.stats.tables import (
    answer_length_summary,
    flip_table,
    heldout_summary,
    overall_table,
    paired_estimates,
    per_category_table,
)

EDITED = "edited_reference"


def judgments_from_flips(cells: dict[tuple[int, int], int], categories: int, seed: int = 0) -> pd.DataFrame:
    """A long judgments table with the given (baseline, edited) pair counts, spread over categories."""
    pairs = [pair for pair, count in cells.items() for _ in range(count)]
    order = np.random.default_rng(seed).permutation(len(pairs))
    per_category = len(pairs) // categories
    rows = []
    for position, index in enumerate(order):
        question_id = position + 1
        category = str(min(position // per_category, categories - 1) + 1)
        base, edit = pairs[index]
        rows.append({"question_id": question_id, "category": category, "condition": "baseline", "score": base})
        rows.append({"question_id": question_id, "category": category, "condition": EDITED, "score": edit})
    return pd.DataFrame(rows)


# The published flip table: 247 refusal->compliance, 4 compliance->refusal, 99 both refuse, 90 both comply.
REFERENCE_CELLS = {(0, 1): 247, (1, 0): 4, (0, 0): 99, (1, 1): 90}


def estimate(frame: pd.DataFrame, name: str, interval: str | None = None) -> pd.Series:
    rows = frame[frame["estimate"] == name]
    if interval is not None:
        rows = rows[rows["interval"] == interval]
    assert len(rows) == 1, (name, interval)
    return rows.iloc[0]


def write_inputs(tmp_path, judgments: pd.DataFrame, lengths: dict[str, list[tuple[int, bool]]] | None = None):
    """Write questions, per-condition judgment files and lengths tables like the workflow does."""
    ids = judgments.drop_duplicates("question_id")[["question_id", "category"]].sort_values("question_id")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"question_id": int(q), "category": c, "turns": [f"prompt {q}"], "prompt_style": "base"}) + "\n"
            for q, c in ids.itertuples(index=False)
        )
    )
    paths = {}
    for condition in ("baseline", EDITED):
        frame = judgments[judgments["condition"] == condition].assign(
            judgment="", judge_model="strmatch", judge_prompt="refusal phrases"
        )
        paths[condition] = tmp_path / f"{condition}.csv"
        frame.to_csv(paths[condition], index=False)
        rows = lengths[condition] if lengths else [(10, False)] * len(ids)
        paths[f"{condition}_lengths"] = tmp_path / f"{condition}.lengths.csv"
        pd.DataFrame(
            {
                "question_id": ids["question_id"].to_numpy(),
                "category": ids["category"].to_numpy(),
                "condition": condition,
                "answer_tokens": [r[0] for r in rows],
                "hit_token_limit": [r[1] for r in rows],
            }
        ).to_csv(paths[f"{condition}_lengths"], index=False)
    return questions, paths


def run_write_stats(tmp_path, judgments, lengths=None, resamples=200):
    questions, paths = write_inputs(tmp_path, judgments, lengths)
    out = tmp_path / "stats"
    write_stats(
        baseline_judgments=paths["baseline"],
        edited_judgments=paths[EDITED],
        baseline_lengths=paths["baseline_lengths"],
        edited_lengths=paths[f"{EDITED}_lengths"],
        questions=questions,
        overall=out / "overall.csv",
        paired=out / "paired.csv",
        flip_table_csv=out / "flip_table.csv",
        per_category=out / "per_category.csv",
        answer_lengths=out / "answer_lengths.csv",
        summary=out / "summary.md",
        summary_page=out / "summary.html",
        alpha=0.05,
        bootstrap_resamples=resamples,
        seed=2445,
        edited_condition=EDITED,
    )
    return out


# ---------------------------------------------------------------- the published reference


def test_reference_flip_table_gives_published_numbers(tmp_path):
    out = run_write_stats(tmp_path, judgments_from_flips(REFERENCE_CELLS, categories=44))
    overall = pd.read_csv(out / "overall.csv")
    compliance = overall[overall["estimate"] == "compliance_rate"].set_index("condition")
    assert (compliance.loc["baseline", "count"], compliance.loc["baseline", "n"]) == (94, 440)
    assert (compliance.loc[EDITED, "count"], compliance.loc[EDITED, "n"]) == (337, 440)

    paired = pd.read_csv(out / "paired.csv")
    assert f"{estimate(paired, 'mcnemar_exact')['p_value']:.3g}" == "9.07e-68"
    wald = estimate(paired, "compliance_difference", "paired_wald")
    assert wald["ci_level"] == 0.95 and wald["method"].startswith("paired Wald 95% CI")
    intervals = paired.loc[paired["estimate"] == "compliance_difference", "interval"]
    assert intervals.tolist() == ["paired_wald", "newcombe_hybrid_score", "category_bootstrap"]
    assert paired.loc[paired["interval"].isna(), "ci_level"].isna().all()
    assert round(100 * wald["value"], 1) == 55.2
    assert (round(100 * wald["ci_low"], 1), round(100 * wald["ci_high"], 1)) == (50.4, 60.0)
    assert estimate(paired, "to_compliance")["value"] == 247
    assert estimate(paired, "to_refusal")["value"] == 4

    summary = (out / "summary.md").read_text()
    assert "Compliance rose from 21.4% (94/440)" in summary
    assert "to 76.6% (337/440)" in summary
    assert "+55.2 points, 95% CI 50.4 to 60.0" in summary
    assert "247 prompts flipped to compliance, 4 the other way" in summary
    assert "exact McNemar p = 9.07e-68" in summary
    assert "Judge: strmatch." in summary
    assert "Compliance rose from 21.4%" in (out / "summary.html").read_text()

    per_category = pd.read_csv(out / "per_category.csv", dtype={"category": str})
    assert len(per_category) == 44 and set(per_category["n_pairs"]) == {10}
    assert per_category["refusal_to_compliance"].sum() == 247
    assert per_category["compliance_to_refusal"].sum() == 4
    assert per_category["category_name"].tolist() == [CATEGORY_NAMES[str(i)] for i in range(1, 45)]


def test_reference_intervals_are_ordered_and_bracket_the_difference():
    paired = pair_judgments(judgments_from_flips(REFERENCE_CELLS, categories=44))
    frame = paired_estimates(paired, alpha=0.05, bootstrap_resamples=300, seed=1)
    for row in frame[frame["estimate"] == "compliance_difference"].itertuples():
        assert row.ci_low < row.value < row.ci_high, row.method
    odds = estimate(frame, "odds_ratio")
    assert 1 < odds["ci_low"] < odds["value"] < odds["ci_high"]
    # The marginal odds ratio (337/103) / (94/346) is what a GEE of one binary covariate estimates.
    assert odds["value"] == pytest.approx((337 / 103) / (94 / 346), rel=1e-3)


# ---------------------------------------------------------------- elementary estimates


@pytest.mark.parametrize("to_compliance,to_refusal", [(0, 0), (1, 0), (3, 3), (6, 1), (10, 2), (0, 9), (25, 17)])
def test_mcnemar_exact_matches_scipy_binomial_test(to_compliance, to_refusal):
    discordant = to_compliance + to_refusal
    expected = 1.0 if discordant == 0 else binomtest(to_refusal, discordant, 0.5).pvalue
    assert mcnemar_exact_p(to_compliance, to_refusal) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_hand_value():
    # 6 vs 1 discordant: 2 * P(X <= 1 | 7, 1/2) = 2 * (1 + 7) / 128.
    assert mcnemar_exact_p(6, 1) == pytest.approx(16 / 128)


@pytest.mark.parametrize(
    "successes,n,expected",
    # Newcombe (1998), Stat Med 17:857, Table II: Wilson score intervals.
    [(15, 148, (0.0624, 0.1605)), (0, 20, (0.0, 0.1611)), (1, 29, (0.0061, 0.1718))],
)
def test_wilson_interval_textbook_values(successes, n, expected):
    low, high = wilson_interval(successes, n, 0.05)
    assert (round(low, 4), round(high, 4)) == expected
    reference = proportion_confint(successes, n, alpha=0.05, method="wilson")
    assert (low, high) == pytest.approx(reference, abs=1e-12)


def test_wilson_interval_empty_and_bounds():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


@pytest.mark.parametrize(
    "cells,expected,digits",
    [
        # Newcombe (1998), Stat Med 17:2635, worked example: method 10 interval 0.0562 to 0.3292.
        ((20, 12, 2, 16), (0.0562, 0.3292), 4),
        # Fagerland, Lydersen & Laake (2014): Bentur et al. and Cavo et al. examples.
        ((1, 1, 7, 12), (-0.507, -0.026), 3),
        ((59, 6, 16, 80), (-0.1186, -0.0046), 4),
    ],
)
def test_newcombe_paired_interval_published_examples(cells, expected, digits):
    a, b, c, d = cells
    difference, low, high = newcombe_paired_interval(a, b, c, d, 0.05)
    assert difference == pytest.approx((b - c) / sum(cells))
    assert (round(low, digits), round(high, digits)) == expected


def test_paired_wald_hand_value():
    # b=8, c=2, n=20: diff 0.3, var = (10 - 36/20) / 400 = 0.0205.
    difference, low, high = paired_wald_interval(8, 2, 20, 0.05)
    half = 1.959963984540054 * math.sqrt(0.0205)
    assert difference == pytest.approx(0.3)
    assert (low, high) == pytest.approx((0.3 - half, 0.3 + half))


def test_cohens_h():
    assert cohens_h(0.4, 0.4) == 0
    assert cohens_h(0.0, 1.0) == pytest.approx(math.pi)
    assert cohens_h(0.8, 0.2) == pytest.approx(-cohens_h(0.2, 0.8))


# ---------------------------------------------------------------- bootstrap and GEE


def small_table(seed=0):
    rng = np.random.default_rng(seed)
    categories = np.repeat([str(i) for i in range(1, 9)], 10)
    baseline = (rng.random(80) < 0.2).astype(float)
    edited = np.maximum(baseline, (rng.random(80) < 0.6).astype(float))
    return categories, baseline, edited


def test_category_bootstrap_is_reproducible_under_its_seed():
    categories, baseline, edited = small_table()
    first = category_bootstrap_interval(categories, baseline, edited, 0.05, 500, seed=7)
    second = category_bootstrap_interval(categories, baseline, edited, 0.05, 500, seed=7)
    other = category_bootstrap_interval(categories, baseline, edited, 0.05, 500, seed=8)
    assert first[:2] == second[:2]
    np.testing.assert_array_equal(first[2], second[2])
    assert not np.array_equal(first[2], other[2])
    difference = (edited - baseline).mean()
    assert first[0] <= difference <= first[1]


def test_category_bootstrap_resamples_whole_categories():
    # Every category has the same change (3 of 10 flip), so any resample of whole categories
    # gives exactly that change, while resampling single prompts would not.
    categories = np.repeat(["a", "b", "c", "d"], 10)
    baseline = np.zeros(40)
    edited = np.tile([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], 4).astype(float)
    low, high, draws = category_bootstrap_interval(categories, baseline, edited, 0.05, 200, seed=1)
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)
    assert np.allclose(draws, 0.3)


def test_category_bootstrap_needs_two_categories():
    low, high, draws = category_bootstrap_interval(["a"] * 5, [0] * 5, [1, 1, 0, 0, 1], 0.05, 50, 0)
    assert math.isnan(low) and math.isnan(high) and len(draws) == 0


def test_gee_odds_ratio_direction():
    categories, baseline, edited = small_table(seed=3)
    rising = gee_odds_ratio(categories, baseline, edited, 0.05)
    assert rising["value"] > 1 and rising["ci_low"] < rising["value"] < rising["ci_high"]
    falling = gee_odds_ratio(categories, edited, baseline, 0.05)
    assert falling["value"] < 1
    assert falling["value"] == pytest.approx(1 / rising["value"], rel=1e-6)


def test_gee_odds_ratio_reports_separation_instead_of_failing():
    categories = np.repeat(["a", "b"], 5)
    result = gee_odds_ratio(categories, np.zeros(10), np.r_[np.ones(5), np.zeros(5)], 0.05)
    assert math.isnan(result["value"]) and "separation" in result["note"]


# ---------------------------------------------------------------- missing judgments


def test_unparsable_judgments_are_counted_and_leave_the_pairs():
    judgments = judgments_from_flips({(0, 1): 6, (0, 0): 4, (1, 1): 2}, categories=2)
    judgments.loc[(judgments["question_id"] == 1) & (judgments["condition"] == "baseline"), "score"] = np.nan
    judgments.loc[(judgments["question_id"] == 2) & (judgments["condition"] == EDITED), "score"] = np.nan
    paired = pair_judgments(judgments)
    assert (paired.n_missing("baseline"), paired.n_missing("edited"), paired.n_excluded_pairs) == (1, 1, 2)
    overall = overall_table(paired).set_index(["estimate", "condition"])
    assert overall.loc[("compliance_rate", "baseline"), "n"] == 11
    assert overall.loc[("compliance_rate", "baseline"), "n_missing"] == 1
    flips = flip_table(paired)
    assert flips["count"].sum() == 12
    assert flips.loc[flips["in_pairs"], "count"].sum() == 10
    frame = paired_estimates(paired, 0.05, 50, 0)
    assert estimate(frame, "pairs")["value"] == 10
    assert estimate(frame, "pairs_excluded_unparsable")["value"] == 2


# ---------------------------------------------------------------- per category


def test_per_category_table_adjustments_and_labels():
    judgments = judgments_from_flips({(0, 1): 20, (1, 0): 2, (0, 0): 10, (1, 1): 8}, categories=4, seed=5)
    table = per_category_table(pair_judgments(judgments))
    assert table["category"].tolist() == ["1", "2", "3", "4"]
    assert (table["holm_p"] >= table["mcnemar_p"] - 1e-12).all()
    assert (table["bh_p"] <= table["holm_p"] + 1e-12).all()
    assert (table["change"] == (table["edited_compliance"] - table["baseline_compliance"]) / table["n_pairs"]).all()
    assert table["note"].str.contains("descriptive").all()
    assert table["category_name"].iloc[0] == "Personal Insulting Words"


def test_policy_area_categories_are_labelled_by_name():
    assert category_label("12") == "System Intrusion (12)"
    assert category_label("hate_harassment_or_bullying") == "hate harassment or bullying"


# ---------------------------------------------------------------- answer lengths


def test_answer_length_summary_hand_values(tmp_path):
    path = tmp_path / "lengths.csv"
    pd.DataFrame(
        {
            "question_id": [1, 2, 3, 4, 5],
            "category": ["1"] * 5,
            "condition": "baseline",
            "answer_tokens": [10, 20, 30, 40, 48],
            "hit_token_limit": ["False", "False", "False", "False", "True"],
        }
    ).to_csv(path, index=False)
    table = read_answer_lengths(path, "baseline")
    row = answer_length_summary([table]).iloc[0]
    assert (row["median_tokens"], row["q1_tokens"], row["q3_tokens"], row["iqr_tokens"]) == (30, 20, 40, 20)
    assert row["hit_limit_count"] == 1 and row["hit_limit_share"] == pytest.approx(0.2)


def test_answer_lengths_bad_inputs(tmp_path):
    path = tmp_path / "lengths.csv"
    base = {"question_id": [1, 2], "category": ["1", "1"], "condition": "baseline", "hit_token_limit": [False, False]}
    pd.DataFrame({**base, "answer_tokens": [5, -1]}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"lengths\.csv.*answer_tokens.*lines 3"):
        read_answer_lengths(path, "baseline")
    pd.DataFrame({**base, "answer_tokens": [5, 6]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="expected condition edited_reference"):
        read_answer_lengths(path, EDITED)


# ---------------------------------------------------------------- bad inputs fail clearly


def base_judgments():
    return judgments_from_flips({(0, 1): 3, (0, 0): 2, (1, 1): 1}, categories=2)


def test_question_judged_twice_fails():
    judgments = base_judgments()
    judgments = pd.concat([judgments, judgments.iloc[[0]]], ignore_index=True)
    with pytest.raises(InputError, match="judged more than once.*ids \\[1\\]"):
        pair_judgments(judgments)


def test_question_judged_twice_in_a_file_names_the_file(tmp_path):
    judgments = base_judgments()
    questions, paths = write_inputs(tmp_path, judgments)
    text = paths[EDITED].read_text().splitlines()
    paths[EDITED].write_text("\n".join(text + [text[1]]) + "\n")
    with pytest.raises(InputError, match=f"{paths[EDITED].name}.*more than once"):
        read_judgment_pair(paths["baseline"], paths[EDITED], questions_jsonl=questions)


def test_missing_condition_fails():
    judgments = base_judgments()
    with pytest.raises(InputError, match="no edited condition"):
        pair_judgments(judgments[judgments["condition"] == "baseline"])
    with pytest.raises(InputError, match="condition 'baseline' missing"):
        pair_judgments(judgments[judgments["condition"] == EDITED])
    with pytest.raises(InputError, match="condition 'edited_other' missing"):
        pair_judgments(judgments, edited_condition="edited_other")


def test_wrong_condition_in_file_fails(tmp_path):
    questions, paths = write_inputs(tmp_path, base_judgments())
    with pytest.raises(
        InputError, match=f"{paths['baseline'].name}: condition is 'baseline', expected edited_reference"
    ):
        read_judgment_pair(paths["baseline"], paths["baseline"], edited_condition=EDITED)


@pytest.mark.parametrize("bad_score", [0.5, 2, -1, "yes"])
def test_scores_other_than_0_1_missing_fail(bad_score):
    judgments = base_judgments().astype({"score": object})
    judgments.loc[3, "score"] = bad_score
    with pytest.raises(InputError, match="scores must be 0 \\(refusal\\), 1 \\(compliance\\) or empty.*row 3"):
        pair_judgments(judgments)


def test_bad_score_in_file_names_file_and_line(tmp_path):
    questions, paths = write_inputs(tmp_path, base_judgments())
    frame = pd.read_csv(paths[EDITED])
    frame.loc[2, "score"] = 3
    frame.to_csv(paths[EDITED], index=False)
    with pytest.raises(InputError, match=f"{paths[EDITED].name}.*scores must be 0, 1 or empty.*4"):
        read_judgment_pair(paths["baseline"], paths[EDITED])


def test_different_question_sets_fail():
    judgments = base_judgments()
    dropped = judgments[~((judgments["question_id"] == 2) & (judgments["condition"] == EDITED))]
    with pytest.raises(
        InputError, match="different questions; 'edited_reference' against 'baseline': missing question ids: 2"
    ):
        pair_judgments(dropped)


def test_questions_not_matching_the_question_file_fail(tmp_path):
    judgments = base_judgments()
    questions, paths = write_inputs(tmp_path, judgments)
    lines = questions.read_text().splitlines()
    questions.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match="do not match the question file: ids that are not questions: 6"):
        read_judgment_pair(paths["baseline"], paths[EDITED], questions_jsonl=questions)


def test_category_disagreement_fails():
    judgments = base_judgments()
    judgments.loc[(judgments["question_id"] == 1) & (judgments["condition"] == EDITED), "category"] = "9"
    with pytest.raises(InputError, match="question 1 has category"):
        pair_judgments(judgments)


def test_lengths_covering_other_questions_fail(tmp_path):
    judgments = base_judgments()
    lengths = {c: [(5, False)] * 6 for c in ("baseline", EDITED)}
    questions, paths = write_inputs(tmp_path, judgments, lengths)
    frame = pd.read_csv(paths["baseline_lengths"])
    frame.loc[0, "question_id"] = 99
    frame.to_csv(paths["baseline_lengths"], index=False)
    with pytest.raises(
        InputError,
        match=r"baseline.lengths.csv: answers cover other questions.*missing question ids: 1; ids that are not",
    ):
        write_stats(
            baseline_judgments=paths["baseline"],
            edited_judgments=paths[EDITED],
            baseline_lengths=paths["baseline_lengths"],
            edited_lengths=paths[f"{EDITED}_lengths"],
            questions=questions,
            overall=tmp_path / "o.csv",
            paired=tmp_path / "p.csv",
            flip_table_csv=tmp_path / "f.csv",
            per_category=tmp_path / "c.csv",
            answer_lengths=tmp_path / "l.csv",
            summary=tmp_path / "s.md",
            bootstrap_resamples=10,
        )
    assert not (tmp_path / "o.csv").exists()


# ---------------------------------------------------------------- held-out prompts


def test_heldout_summary_refusal_rates(tmp_path):
    labels = ["unsafe"] * 6 + ["safe"] * 4
    baseline = [0, 0, 0, 0, 0, 1, 0, 1, 1, 1]
    edited = [1, 1, 1, 0, 0, 1, 0, 1, 1, None]
    questions = tmp_path / "heldout.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"question_id": i + 1, "category": "sexual_content", "turns": ["p"], "label": label}) + "\n"
            for i, label in enumerate(labels)
        )
    )
    for condition, scores in (("baseline", baseline), (EDITED, edited)):
        pd.DataFrame(
            {"question_id": range(1, 11), "category": "sexual_content", "condition": condition, "score": scores}
        ).to_csv(tmp_path / f"{condition}.csv", index=False)
    frame = heldout_summary(questions, tmp_path / "baseline.csv", tmp_path / f"{EDITED}.csv", 0.05)
    rates = frame[frame["estimate"] == "refusal_rate"].set_index(["label", "condition"])
    assert (rates.loc[("unsafe", "baseline"), "count"], rates.loc[("unsafe", "baseline"), "n"]) == (5, 6)
    assert (rates.loc[("unsafe", EDITED), "count"], rates.loc[("unsafe", EDITED), "n"]) == (2, 6)
    assert (rates.loc[("safe", EDITED), "count"], rates.loc[("safe", EDITED), "n"]) == (1, 3)
    assert rates.loc[("safe", EDITED), "n_missing"] == 1
    low, high = wilson_interval(5, 6)
    assert (rates.loc[("unsafe", "baseline"), "ci_low"], rates.loc[("unsafe", "baseline"), "ci_high"]) == (low, high)
    change = frame[frame["estimate"] == "refusal_rate_change"].set_index("label")
    assert change.loc["unsafe", "value"] == pytest.approx(-3 / 6)
    assert change.loc["unsafe", "p_value"] == pytest.approx(binomtest(0, 3, 0.5).pvalue)
    assert change.loc["safe", "n"] == 3


def test_heldout_summary_requires_labels(tmp_path):
    questions = tmp_path / "heldout.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "category": "a", "turns": ["p"]}) + "\n")
    with pytest.raises(InputError, match="heldout.jsonl, question 1: 'label' must be 'safe' or 'unsafe'"):
        heldout_summary(questions, tmp_path / "b.csv", tmp_path / "e.csv")
