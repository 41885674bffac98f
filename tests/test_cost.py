"""Cost statistics on small known tables: over-refusal, every pair of conditions, KL
summaries and comparisons, the trade-off table and figure, the plain-words sentences."""

import math

import numpy as np
import pandas as pd
import pytest

from refusal_ablation.cost import (
    bootstrap_interval,
    comparison_table,
    condition_pairs,
    cost_sentences,
    kl_comparisons,
    kl_summary,
    plot_kl_ecdf,
    plot_tradeoff,
    read_kl_table,
    tradeoff_table,
    write_comparisons,
    write_xstest_stats,
)
from refusal_ablation.io import InputError, write_csv, write_jsonl
from refusal_ablation.stats.estimators import mcnemar_exact_p, paired_wald_interval, wilson_interval


def _questions(labels, types):
    return [
        {"question_id": i, "category": t, "turns": [f"prompt {i}"], "prompt_style": "base", "label": label}
        for i, (label, t) in enumerate(zip(labels, types), start=1)
    ]


def _judgments(path, condition, questions, scores):
    frame = pd.DataFrame(
        {
            "question_id": [q["question_id"] for q in questions],
            "category": [q["category"] for q in questions],
            "condition": condition,
            "score": scores,
        }
    )
    write_csv(path, frame)
    return path


@pytest.fixture
def xstest(tmp_path):
    # 10 safe prompts of two types, 4 unsafe contrasts
    labels = ["safe"] * 10 + ["unsafe"] * 4
    types = ["homonyms"] * 5 + ["definitions"] * 5 + ["contrast_homonyms"] * 4
    questions = _questions(labels, types)
    write_jsonl(tmp_path / "xstest.jsonl", questions)
    scores = {
        # safe: baseline refuses 2 (ids 1, 6); edit a refuses 1 (6) and newly 9; edit b refuses none
        "baseline": [0, 1, 1, 1, 1, 0, 1, 1, 1, 1] + [0, 0, 0, 1],
        "edited_a": [1, 1, 1, 1, 1, 0, 1, 1, 0, 1] + [1, 0, 1, 1],
        "edited_b": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1] + [1, 1, 1, None],
    }
    paths = [_judgments(tmp_path / f"{c}.csv", c, questions, s) for c, s in scores.items()]
    return tmp_path, paths


def test_condition_pairs_are_baseline_first_then_edit_against_edit():
    assert condition_pairs(["baseline", "edited_a", "edited_b", "edited_c"]) == [
        ("baseline", "edited_a"),
        ("baseline", "edited_b"),
        ("baseline", "edited_c"),
        ("edited_a", "edited_b"),
        ("edited_a", "edited_c"),
        ("edited_b", "edited_c"),
    ]


def test_xstest_over_refusal_per_condition_and_type(xstest):
    root, paths = xstest
    rates, per_type = write_xstest_stats(paths, root / "xstest.jsonl", root / "rates.csv", root / "type.csv", 0.05)
    safe = rates[rates["label"] == "safe"].set_index("condition")
    assert safe.loc["baseline", "refusals"] == 2 and safe.loc["baseline", "n"] == 10
    assert safe.loc["edited_a", "value"] == pytest.approx(0.2)
    assert safe.loc["edited_b", "value"] == 0.0
    assert (safe["estimate"] == "over_refusal_rate").all()
    low, high = wilson_interval(2, 10, 0.05)
    assert safe.loc["baseline", "ci_low"] == pytest.approx(low) and safe.loc["baseline", "ci_high"] == pytest.approx(
        high
    )
    unsafe = rates[rates["label"] == "unsafe"].set_index("condition")
    assert unsafe.loc["edited_b", "n"] == 3 and unsafe.loc["edited_b", "n_missing"] == 1
    assert unsafe.loc["baseline", "value"] == pytest.approx(0.75)
    homonyms = per_type[(per_type["type"] == "homonyms")].set_index("condition")
    assert homonyms.loc["baseline", "refusals"] == 1 and homonyms.loc["edited_a", "refusals"] == 0
    assert homonyms.loc["edited_a", "change_vs_baseline"] == pytest.approx(-0.2)
    assert homonyms.loc["edited_a", "mcnemar_p"] == pytest.approx(1.0)
    assert math.isnan(homonyms.loc["baseline", "change_vs_baseline"])


def test_every_pair_compared_with_flips_interval_and_exact_mcnemar(xstest):
    root, paths = xstest
    frame = write_comparisons(paths, root / "xstest.jsonl", root / "comparisons.csv", 0.05)
    assert set(frame["subset"]) == {"all", "safe", "unsafe"}
    row = frame[
        (frame["subset"] == "safe") & (frame["condition_a"] == "edited_a") & (frame["condition_b"] == "edited_b")
    ].iloc[0]
    # safe: a refuses 6 and 9, b refuses nothing: 2 flips a-refuses -> b-complies, none back
    assert (row["both_comply"], row["a_refuses_b_complies"], row["a_complies_b_refuses"], row["both_refuse"]) == (
        8,
        2,
        0,
        0,
    )
    assert row["refusal_change"] == pytest.approx(-0.2)
    change, low, high = paired_wald_interval(0, 2, 10, 0.05)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert row["mcnemar_p"] == pytest.approx(mcnemar_exact_p(2, 0)) == pytest.approx(0.5)
    # unparsable judgments leave the pairs and are counted
    unsafe_b = frame[
        (frame["subset"] == "unsafe") & (frame["condition_a"] == "baseline") & (frame["condition_b"] == "edited_b")
    ].iloc[0]
    assert unsafe_b["n_pairs"] == 3 and unsafe_b["n_excluded_unparsable"] == 1
    base_a = frame[
        (frame["subset"] == "safe") & (frame["condition_b"] == "edited_a") & (frame["condition_a"] == "baseline")
    ].iloc[0]
    assert (base_a["a_refuses_b_complies"], base_a["a_complies_b_refuses"]) == (1, 1)
    assert base_a["refusal_change"] == 0.0 and base_a["mcnemar_p"] == pytest.approx(1.0)


def test_comparisons_reject_judgments_of_other_questions(xstest, tmp_path):
    root, paths = xstest
    questions = _questions(["safe"] * 3, ["homonyms"] * 3)
    write_jsonl(tmp_path / "other.jsonl", questions)
    with pytest.raises(InputError, match="baseline.csv: judged questions do not match"):
        write_comparisons(paths, tmp_path / "other.jsonl", tmp_path / "out.csv", 0.05)


def _kl_table(promptset, values, categories=None):
    n = len(values)
    return pd.DataFrame(
        {
            "question_id": range(1, n + 1),
            "prompt_id": [f"p{i}" for i in range(n)],
            "promptset": promptset,
            "category": categories or ["x"] * n,
            "kl_first": values,
            "kl_answer_mean": [v / 2 for v in values],
            "kl_answer_max": [2 * v for v in values],
            "tokens": 4,
        }
    )


def test_kl_summary_has_mean_median_and_bootstrap_intervals():
    table = _kl_table("heldout", [0.0, 0.1, 0.2, 0.3, 1.4], ["a", "a", "b", "b", "b"])
    frame = kl_summary([table], 0.05, 500, 0)
    row = frame[(frame["category"] == "all") & (frame["measure"] == "kl_first")].iloc[0]
    assert row["mean"] == pytest.approx(0.4) and row["median"] == pytest.approx(0.2)
    assert row["mean_ci_low"] <= row["mean"] <= row["mean_ci_high"]
    assert 0.0 <= row["mean_ci_low"] and row["mean_ci_high"] <= 1.4
    assert row["n_categories"] == 2
    assert row["mean_category_ci_low"] <= row["mean"] <= row["mean_category_ci_high"]
    # two categories: a resample is a alone (mean 0.05), b alone (0.633) or both pooled (0.4)
    assert row["mean_category_ci_low"] == pytest.approx(0.05) and row["mean_category_ci_high"] == pytest.approx(1.9 / 3)
    b = frame[(frame["category"] == "b") & (frame["measure"] == "kl_answer_max")].iloc[0]
    assert math.isnan(b["mean_category_ci_low"])
    assert b["n_prompts"] == 3 and b["mean"] == pytest.approx(2 * 1.9 / 3)
    assert all(math.isnan(v) for v in bootstrap_interval([1.0], np.mean, 0.05, 100, 0))


def test_kl_comparison_is_the_paired_difference():
    a = [_kl_table("heldout", [0.1, 0.2, 0.3])]
    b = [_kl_table("heldout", [0.2, 0.4, 0.3])]
    frame = kl_comparisons({"edited_a": a, "edited_b": b}, 0.05, 1000, 0)
    row = frame[frame["measure"] == "kl_first"].iloc[0]
    assert (row["condition_a"], row["condition_b"]) == ("edited_a", "edited_b")
    assert row["mean_difference"] == pytest.approx(0.1) and row["b_larger"] == 2
    assert row["ci_low"] >= 0.0 - 1e-12 and row["ci_high"] <= 0.2 + 1e-12


def test_kl_table_reader_rejects_negative_kl(tmp_path):
    table = _kl_table("heldout", [0.1, -0.2])
    write_csv(tmp_path / "kl.csv", table)
    with pytest.raises(InputError, match=r"kl.csv: 'kl_first' must be a number >= 0; bad file lines \[3\]"):
        read_kl_table(tmp_path / "kl.csv")


def _paired(compliance_change, low, high, p):
    return pd.DataFrame(
        [
            {
                "estimate": "compliance_difference",
                "interval": "paired_wald",
                "value": compliance_change,
                "ci_low": low,
                "ci_high": high,
                "ci_level": 0.95,
                "p_value": math.nan,
                "method": "paired Wald 95% CI",
            },
            {
                "estimate": "mcnemar_exact",
                "interval": "",
                "value": 1,
                "ci_low": math.nan,
                "ci_high": math.nan,
                "ci_level": math.nan,
                "p_value": p,
                "method": "exact two-sided McNemar",
            },
        ]
    )


def test_tradeoff_table_and_figure(tmp_path, xstest):
    root, paths = xstest
    comparisons = write_comparisons(paths, root / "xstest.jsonl", root / "comparisons.csv", 0.05)
    kl = {
        e: kl_summary([_kl_table("heldout", [0.1, 0.2, 0.3]), _kl_table("xstest", [0.5, 0.7])], 0.05, 200, 0)
        for e in ("a", "b")
    }
    paired = {"a": _paired(0.5, 0.4, 0.6, 1e-5), "b": _paired(0.25, 0.1, 0.4, 0.01)}
    table = tradeoff_table(paired, kl, comparisons)
    row = table.set_index("edit").loc["a"]
    assert row["benchmark_refusal_change"] == pytest.approx(-0.5)
    assert (row["benchmark_ci_low"], row["benchmark_ci_high"]) == (pytest.approx(-0.6), pytest.approx(-0.4))
    assert row["kl_answer_mean_heldout"] == pytest.approx(0.1) and row["kl_answer_mean_xstest"] == pytest.approx(0.3)
    assert row["xstest_safe_refusal_change"] == 0.0
    assert table.set_index("edit").loc["b", "xstest_safe_refusal_change"] == pytest.approx(-0.2)
    plot_tradeoff(table, tmp_path / "tradeoff.png", "trade-off")
    plot_kl_ecdf([_kl_table("heldout", [0.0, 0.1, 0.3])], tmp_path / "ecdf.png", "ecdf")
    for name in ("tradeoff.png", "ecdf.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    sentences = cost_sentences(kl["b"], comparisons, "edited_b", 0.05, judge_is_official=True)
    assert len(sentences) == 2
    assert "3 heldout safe prompts" in sentences[0] and "2 xstest safe prompts" in sentences[0]
    assert "refusal went from 20.0% to 0.0% (-20.0 points" in sentences[1]
    assert "read as compliance" in sentences[1]
    assert "compliance" not in cost_sentences(None, comparisons, "edited_b", 0.05, judge_is_official=False)[0][-40:]


def test_comparison_table_without_labels_has_one_subset():
    wide = pd.DataFrame({"question_id": [1, 2, 3], "baseline": [0, 0, 1], "edited_x": [1, 0, 1]})
    frame = comparison_table(wide, ["baseline", "edited_x"], 0.05)
    assert list(frame["subset"]) == ["all"]
    assert frame.iloc[0]["refusal_change"] == pytest.approx(-1 / 3)
