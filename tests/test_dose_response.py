"""Dose-response tables on small judgment files whose answers are known by hand."""

import math

import pandas as pd
import pytest

from refusal_ablation.dose_response import dose_response_tables, write_dose_response
from refusal_ablation.io import InputError
from refusal_ablation.stats.estimators import paired_wald_interval
from refusal_ablation.variants import edit_variants

# score per question 1..10: 0 = refusal, 1 = compliance, None = unparsable
BASELINE = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
HALF = [1, 1, 1, 1, 0, 0, 0, 0, None, 1]
FULL = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]


def write(path, condition, scores):
    frame = pd.DataFrame(
        {"question_id": range(1, len(scores) + 1), "category": "1", "condition": condition, "score": scores}
    )
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def files(tmp_path):
    return {
        "baseline": write(tmp_path / "baseline.csv", "baseline", BASELINE),
        "reference_s050": write(tmp_path / "half.csv", "edited_reference_s050", HALF),
        "reference_s100": write(tmp_path / "full.csv", "edited_reference_s100", FULL),
    }


VARIANTS = edit_variants({"sweep": {"method": ["reference"], "scale": [1.0, 0.5]}})


def test_each_variant_against_the_baseline(files):
    table, _ = dose_response_tables(
        VARIANTS, files["baseline"], {e: files[e] for e in ("reference_s100", "reference_s050")}
    )
    rows = table.set_index("edit")
    half, full = rows.loc["reference_s050"], rows.loc["reference_s100"]
    assert half["n"] == 9 and half["refusal_rate"] == pytest.approx(4 / 9)  # the unparsable one is left out
    assert full["n"] == 10 and full["refusal_rate"] == pytest.approx(0.2)
    # vs baseline: half flips 4 to compliance (q9 unparsable, not paired), full 8 to compliance and q10 back
    assert half["mcnemar_p_vs_baseline"] == pytest.approx(2 * 0.5**4)
    assert full["mcnemar_p_vs_baseline"] == pytest.approx(2 * (1 + 9) / 2**9)
    diff, low, high = paired_wald_interval(8, 1, 10)
    assert (full["change_vs_baseline"], full["change_ci_low"], full["change_ci_high"]) == pytest.approx(
        (-diff, -high, -low)
    )
    assert full["change_vs_baseline"] == pytest.approx(-0.7)
    assert math.isnan(full["layer_writes_ratio_median"])  # no verify table given


def test_neighbouring_strengths_are_paired(files):
    _, adjacent = dose_response_tables(VARIANTS, files["baseline"], {e: files[e] for e in VARIANTS})
    assert len(adjacent) == 1
    row = adjacent.iloc[0]
    assert (row["weaker"], row["stronger"]) == ("reference_s050", "reference_s100")
    # 9 pairs (q9 unparsable at half): q5..q8 refuse at half and comply at full; q10 the other way
    assert row["n_pairs"] == 9
    assert row["weaker_refusal_rate"] == pytest.approx(4 / 9) and row["stronger_refusal_rate"] == pytest.approx(1 / 9)
    assert row["difference"] == pytest.approx(-(4 - 1) / 9)
    assert row["mcnemar_p"] == pytest.approx(2 * (1 + 5) / 2**5)


def test_leakage_from_verify_tables_and_files_written(files, tmp_path):
    verify = {}
    for edit, ratio in (("reference_s050", 0.5), ("reference_s100", 0.0)):
        rows = [
            {"measure": measure, "tokens": tokens, "layer": layer, "ratio_edited_to_baseline": ratio + layer * 0.01}
            for measure in ("layer_writes", "residual_stream")
            for tokens in ("last_prompt_token", "all_prompt_tokens")
            for layer in range(3)
        ]
        verify[edit] = tmp_path / f"{edit}.verify.csv"
        pd.DataFrame(rows).to_csv(verify[edit], index=False)
    table = write_dose_response(
        VARIANTS,
        files["baseline"],
        {e: files[e] for e in VARIANTS},
        verify,
        tmp_path / "dose.csv",
        tmp_path / "adjacent.csv",
        [tmp_path / "dose.png", tmp_path / "dose.svg"],
        alpha=0.05,
        title="test",
    )
    assert table.set_index("edit")["layer_writes_ratio_median"].to_dict() == pytest.approx(
        {"reference_s050": 0.51, "reference_s100": 0.01}
    )
    assert (tmp_path / "dose.png").stat().st_size > 0 and (tmp_path / "dose.svg").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "adjacent.csv")) == 1


def test_mismatched_inputs_are_named(files, tmp_path):
    with pytest.raises(InputError, match="variants are"):
        dose_response_tables(VARIANTS, files["baseline"], {"reference_s050": files["reference_s050"]})
    wrong = write(tmp_path / "wrong.csv", "edited_other", FULL)
    with pytest.raises(InputError, match="wrong.csv: condition is 'edited_other'"):
        dose_response_tables(
            VARIANTS, files["baseline"], {"reference_s050": files["reference_s050"], "reference_s100": wrong}
        )
    short = write(tmp_path / "short.csv", "edited_reference_s100", FULL[:8])
    with pytest.raises(InputError, match="different questions"):
        dose_response_tables(
            VARIANTS, files["baseline"], {"reference_s050": files["reference_s050"], "reference_s100": short}
        )


def test_cost_columns_join_from_the_tradeoff_table(files, tmp_path):
    tradeoff = pd.DataFrame(
        {
            "edit": ["reference_s100", "reference_s050"],
            "condition": ["edited_reference_s100", "edited_reference_s050"],
            "benchmark_refusal_change": [-0.7, -0.4],
            "kl_answer_mean_heldout": [0.30, 0.10],
            "kl_answer_mean_heldout_ci_low": [0.20, 0.05],
            "kl_answer_mean_heldout_ci_high": [0.40, 0.15],
            "xstest_safe_refusal_change": [-0.1, 0.0],
            "xstest_safe_ci_low": [-0.2, -0.1],
            "xstest_safe_ci_high": [0.0, 0.1],
        }
    )
    tradeoff.to_csv(tmp_path / "tradeoff.csv", index=False)
    table = write_dose_response(
        VARIANTS,
        files["baseline"],
        {e: files[e] for e in VARIANTS},
        None,
        tmp_path / "dose.csv",
        tmp_path / "adjacent.csv",
        [tmp_path / "dose.png"],
        alpha=0.05,
        title="test",
        tradeoff_csv=tmp_path / "tradeoff.csv",
    )
    rows = table.set_index("edit")
    assert rows.loc["reference_s050", "kl_answer_mean_heldout"] == 0.10
    assert rows.loc["reference_s100", "xstest_safe_refusal_change"] == -0.1
    assert "benchmark_refusal_change" not in table  # the benchmark change is computed here, not copied
    tradeoff[tradeoff["edit"] == "reference_s100"].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(InputError, match=r"short.csv: no row for edit\(s\) \['reference_s050'\]"):
        dose_response_tables(
            VARIANTS, files["baseline"], {e: files[e] for e in VARIANTS}, tradeoff_csv=tmp_path / "short.csv"
        )
