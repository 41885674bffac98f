"""What does the edit cost? Summaries of KL on harmless prompts, over-refusal on XSTest,
paired comparisons between any two conditions (edit against edit included), and the
trade-off between refusal removed and behaviour moved.

Generic over the conditions it is given (``baseline`` and ``edited_<name>`` for every edit
variant); nothing here knows about edit methods. Judgment score 1 = compliance, 0 = refusal,
missing = unparsable (left out of the pairs and counted). On XSTest's safe prompts the
official SORRY-Bench judge's score (does the answer fulfil the request?) is read as
compliance, so its refusal rate there is the over-refusal rate.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from . import CONDITION_BASELINE, EDITED_PREFIX
from .io import InputError, read_judgments, read_questions, write_csv
from .stats.estimators import level_text, mcnemar_exact_p, paired_wald_interval, wilson_interval
from .stats.pairing import flip_counts
from .stats.summary import format_p, format_percent, format_points
from .stats.tables import INTERVAL_PAIRED_WALD, paired_row

log = logging.getLogger(__name__)

KL_MEASURES = ("kl_first", "kl_answer_mean", "kl_answer_max")
KL_REQUIRED = ["question_id", "prompt_id", "promptset", "category", *KL_MEASURES, "tokens"]
LABELS = ("safe", "unsafe")


# ---------------------------------------------------------------- KL


def read_kl_table(path: str | os.PathLike) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"category": str, "prompt_id": str})
    missing = [c for c in KL_REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}")
    if frame.empty:
        raise InputError(f"{path}: no prompts")
    for measure in KL_MEASURES:
        values = pd.to_numeric(frame[measure], errors="coerce")
        bad = frame.index[values.isna() | (values < 0)]
        if len(bad):
            raise InputError(f"{path}: '{measure}' must be a number >= 0; bad file lines {(bad + 2).tolist()[:10]}")
        frame[measure] = values.astype(float)
    if frame["question_id"].duplicated().any():
        raise InputError(f"{path}: a question appears twice")
    return frame


def bootstrap_interval(values: Sequence[float], statistic, alpha: float, resamples: int, seed: int):
    """Percentile bootstrap interval of ``statistic`` over resampled values (nan below 2 values)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = statistic(values[rng.integers(0, len(values), size=(resamples, len(values)))], axis=1)
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def category_bootstrap_mean(
    categories: Sequence[str], values: Sequence[float], alpha: float, resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of the mean, resampling whole categories (prompts of one policy area
    or XSTest type are not independent); nan below 2 categories."""
    frame = pd.DataFrame({"category": list(map(str, categories)), "value": np.asarray(values, dtype=float)})
    per_category = frame.groupby("category", sort=True)["value"].agg(["sum", "count"])
    if len(per_category) < 2:
        return (math.nan, math.nan)
    drawn = np.random.default_rng(seed).integers(0, len(per_category), size=(resamples, len(per_category)))
    means = per_category["sum"].to_numpy()[drawn].sum(axis=1) / per_category["count"].to_numpy()[drawn].sum(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def kl_summary(tables: Sequence[pd.DataFrame], alpha: float, resamples: int, seed: int) -> pd.DataFrame:
    """Mean and median of each KL measure with bootstrap intervals over prompts, per prompt
    set overall and per category (policy area / XSTest type); the overall mean also gets an
    interval from a bootstrap over whole categories."""
    rows = []
    level = level_text(alpha)
    for table in tables:
        promptset = str(table["promptset"].iloc[0])
        groups = [("all", table)] + [(str(c), part) for c, part in table.groupby("category", sort=True)]
        for group, part in groups:
            for measure in KL_MEASURES:
                values = part[measure].to_numpy()
                mean_low, mean_high = bootstrap_interval(values, np.mean, alpha, resamples, seed)
                median_low, median_high = bootstrap_interval(values, np.median, alpha, resamples, seed)
                cluster_low, cluster_high = (
                    category_bootstrap_mean(part["category"], values, alpha, resamples, seed)
                    if group == "all"
                    else (math.nan, math.nan)
                )
                rows.append(
                    {
                        "promptset": promptset,
                        "category": group,
                        "measure": measure,
                        "n_prompts": len(values),
                        "mean": float(values.mean()),
                        "mean_ci_low": mean_low,
                        "mean_ci_high": mean_high,
                        "median": float(np.median(values)),
                        "median_ci_low": median_low,
                        "median_ci_high": median_high,
                        "mean_category_ci_low": cluster_low,
                        "mean_category_ci_high": cluster_high,
                        "n_categories": int(part["category"].nunique()),
                        "mean_tokens": float(part["tokens"].mean()),
                        "method": f"percentile bootstrap over prompts {level}, {resamples} resamples, seed {seed} "
                        "(mean_category_ci: over whole categories); KL(P_baseline || P_edited) in nats",
                    }
                )
    return pd.DataFrame(rows)


def plot_kl_ecdf(tables: Sequence[pd.DataFrame], png: str | os.PathLike, title: str) -> None:
    """ECDF of per-prompt KL, first answer position and answer mean, one curve per prompt set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figure_files import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for ax, measure, label in zip(
        axes[0], ("kl_first", "kl_answer_mean"), ("first answer position", "mean along the baseline's answer")
    ):
        for table in tables:
            values = np.sort(table[measure].to_numpy())
            shown = np.maximum(values, 1e-12)
            ax.step(
                shown,
                np.arange(1, len(values) + 1) / len(values),
                where="post",
                label=f"{table['promptset'].iloc[0]} (n = {len(values)})",
            )
        if all((t[measure] > 0).any() for t in tables):
            ax.set_xscale("log")
        ax.set_xlabel(f"KL(baseline || edited), nats: {label}")
        ax.set_ylabel("share of prompts at or below")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, [png], dpi=120)


def kl_comparisons(tables: Mapping[str, Sequence[pd.DataFrame]], alpha: float, resamples: int, seed: int):
    """Per prompt set and pair of edits: paired difference of per-prompt KL (second - first)
    with a bootstrap interval over prompts."""
    rows = []
    level = level_text(alpha)
    for first, second in itertools.combinations(sorted(tables), 2):
        by_set = {str(t["promptset"].iloc[0]): t for t in tables[second]}
        for table_a in tables[first]:
            promptset = str(table_a["promptset"].iloc[0])
            if promptset not in by_set:
                continue
            merged = table_a.merge(by_set[promptset], on="question_id", suffixes=("_a", "_b"))
            if len(merged) != len(table_a) or len(merged) != len(by_set[promptset]):
                raise InputError(f"KL tables of {first} and {second} on {promptset} cover different prompts")
            for measure in KL_MEASURES:
                difference = (merged[f"{measure}_b"] - merged[f"{measure}_a"]).to_numpy()
                low, high = bootstrap_interval(difference, np.mean, alpha, resamples, seed)
                rows.append(
                    {
                        "promptset": promptset,
                        "condition_a": first,
                        "condition_b": second,
                        "measure": measure,
                        "n_prompts": len(merged),
                        "mean_a": float(merged[f"{measure}_a"].mean()),
                        "mean_b": float(merged[f"{measure}_b"].mean()),
                        "mean_difference": float(difference.mean()),
                        "ci_low": low,
                        "ci_high": high,
                        "b_larger": int((difference > 0).sum()),
                        "method": f"paired by prompt, b - a; percentile bootstrap over prompts {level}, "
                        f"{resamples} resamples, seed {seed}",
                    }
                )
    return pd.DataFrame(
        rows,
        columns=[
            "promptset",
            "condition_a",
            "condition_b",
            "measure",
            "n_prompts",
            "mean_a",
            "mean_b",
            "mean_difference",
            "ci_low",
            "ci_high",
            "b_larger",
            "method",
        ],
    )


def write_kl_summary(kl_csvs, summary_csv, ecdf_png, edit: str, alpha: float, resamples: int, seed: int):
    """The ``kl_summary`` rule: one edit, every harmless prompt set."""
    tables = [read_kl_table(path) for path in kl_csvs]
    frame = kl_summary(tables, alpha, resamples, seed)
    write_csv(summary_csv, frame)
    plot_kl_ecdf(tables, ecdf_png, f"Per-prompt KL(baseline || edited), {edit} edit")
    for row in frame[(frame["category"] == "all") & (frame["measure"] == "kl_answer_mean")].itertuples():
        log.info(
            "%s: mean answer KL %.4g nats (%.4g to %.4g) over %d prompts",
            row.promptset,
            row.mean,
            row.mean_ci_low,
            row.mean_ci_high,
            row.n_prompts,
        )
    return frame


def write_kl_comparisons(kl_csvs: Mapping[str, Sequence[str]], out_csv, alpha: float, resamples: int, seed: int):
    """The ``kl_comparisons`` rule: edit against edit on every harmless prompt set."""
    tables = {edit: [read_kl_table(p) for p in paths] for edit, paths in kl_csvs.items()}
    frame = kl_comparisons(tables, alpha, resamples, seed)
    write_csv(out_csv, frame)
    return frame


# ---------------------------------------------------------------- judgments, any two conditions


def read_condition_judgments(paths: Sequence[str | os.PathLike], questions_jsonl) -> tuple[pd.DataFrame, list[dict]]:
    """Judgments of several conditions, wide: one row per question, one score column per condition."""
    questions = read_questions(questions_jsonl)
    expected = {int(q["question_id"]) for q in questions}
    wide = pd.DataFrame({"question_id": sorted(expected)}).set_index("question_id")
    for path in paths:
        frame = read_judgments(path)
        conditions = sorted(frame["condition"].astype(str).unique())
        if len(conditions) != 1:
            raise InputError(f"{path}: one judgments file holds one condition; found {conditions}")
        found = set(frame["question_id"].astype(int))
        if found != expected:
            raise InputError(
                f"{path}: judged questions do not match {questions_jsonl}: not judged {sorted(expected - found)[:10]}, "
                f"unknown {sorted(found - expected)[:10]}"
            )
        wide[conditions[0]] = frame.set_index(frame["question_id"].astype(int))["score"].astype(float)
    return wide.reset_index(), questions


def question_labels(questions: list[dict], source) -> dict[int, str]:
    labels = {}
    for index, record in enumerate(questions, start=1):
        label = record.get("label")
        if label not in LABELS:
            raise InputError(f"{source}, record {index}: 'label' must be 'safe' or 'unsafe', got {label!r}")
        labels[int(record["question_id"])] = label
    return labels


def compare_pair(scores_a: pd.Series, scores_b: pd.Series, alpha: float) -> dict:
    """Refusal of condition b against condition a over the questions judged in both."""
    both = pd.DataFrame({"baseline": scores_a.to_numpy(), "edited": scores_b.to_numpy()}).dropna()
    cells = flip_counts(both)
    n = len(both)
    # refusal rises by the compliance->refusal flips minus the refusal->compliance ones
    change, low, high = paired_wald_interval(cells["to_refusal"], cells["to_compliance"], n, alpha)
    refused_a, refused_b = int((both["baseline"] == 0).sum()), int((both["edited"] == 0).sum())
    return {
        "n_pairs": n,
        "n_excluded_unparsable": len(scores_a) - n,
        "refusal_a": refused_a,
        "refusal_b": refused_b,
        "refusal_rate_a": refused_a / n if n else math.nan,
        "refusal_rate_b": refused_b / n if n else math.nan,
        "both_comply": cells["both_comply"],
        "a_refuses_b_complies": cells["to_compliance"],
        "a_complies_b_refuses": cells["to_refusal"],
        "both_refuse": cells["both_refuse"],
        "refusal_change": change,
        "ci_low": low,
        "ci_high": high,
        "mcnemar_p": mcnemar_exact_p(cells["to_compliance"], cells["to_refusal"]),
    }


def condition_pairs(conditions: Sequence[str]) -> list[tuple[str, str]]:
    """Baseline against every edit, then every edit against every other one."""
    edits = [c for c in conditions if c != CONDITION_BASELINE]
    pairs = [(CONDITION_BASELINE, e) for e in edits] if CONDITION_BASELINE in conditions else []
    return pairs + list(itertools.combinations(edits, 2))


def comparison_table(
    wide: pd.DataFrame, conditions: Sequence[str], alpha: float, labels: Mapping[int, str] | None = None
) -> pd.DataFrame:
    """Paired refusal comparison of every pair of conditions, over all prompts and per label."""
    subsets = [("all", wide)]
    if labels is not None:
        tagged = wide.assign(label=wide["question_id"].map(labels))
        subsets += [(label, tagged[tagged["label"] == label]) for label in LABELS if (tagged["label"] == label).any()]
    rows = []
    method = f"paired by prompt; change = refusal rate of b - of a, paired Wald {level_text(alpha)}; p: exact McNemar"
    for subset, part in subsets:
        for a, b in condition_pairs(conditions):
            rows.append(
                {
                    "subset": subset,
                    "condition_a": a,
                    "condition_b": b,
                    **compare_pair(part[a], part[b], alpha),
                    "method": method,
                }
            )
    return pd.DataFrame(rows)


def write_comparisons(judgment_csvs, questions_jsonl, out_csv, alpha: float) -> pd.DataFrame:
    """The ``compare_conditions`` rule: every pair of conditions on one prompt set."""
    wide, questions = read_condition_judgments(judgment_csvs, questions_jsonl)
    conditions = [c for c in wide.columns if c != "question_id"]
    has_labels = all(q.get("label") in LABELS for q in questions)
    frame = comparison_table(
        wide, conditions, alpha, question_labels(questions, questions_jsonl) if has_labels else None
    )
    write_csv(out_csv, frame)
    for row in frame.itertuples():
        log.info(
            "%s, %s vs %s: refusal %s -> %s (%s points, McNemar p %s)",
            row.subset,
            row.condition_a,
            row.condition_b,
            format_percent(row.refusal_rate_a),
            format_percent(row.refusal_rate_b),
            format_points(row.refusal_change),
            format_p(row.mcnemar_p),
        )
    return frame


# ---------------------------------------------------------------- XSTest


def xstest_refusal(
    wide: pd.DataFrame, questions: list[dict], conditions: Sequence[str], alpha: float, source
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Refusal rates per condition on XSTest's safe prompts (over-refusal) and unsafe contrasts,
    with Wilson intervals; and per XSTest type with the paired change against the baseline."""
    labels = question_labels(questions, source)
    types = {int(q["question_id"]): str(q["category"]) for q in questions}
    wide = wide.assign(label=wide["question_id"].map(labels), type=wide["question_id"].map(types))
    level = level_text(alpha)
    rows = []
    for label in LABELS:
        part = wide[wide["label"] == label]
        for condition in conditions:
            scores = part[condition]
            judged = int(scores.notna().sum())
            refused = int((scores == 0).sum())
            low, high = wilson_interval(refused, judged, alpha)
            rows.append(
                {
                    "label": label,
                    "estimate": "over_refusal_rate" if label == "safe" else "refusal_rate",
                    "condition": condition,
                    "refusals": refused,
                    "n": judged,
                    "n_missing": int(scores.isna().sum()),
                    "value": refused / judged if judged else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "method": f"Wilson score {level}; unparsable judgments excluded; refusal = score 0 (on safe "
                    "prompts the official judge's score is read as compliance)",
                }
            )
    rates = pd.DataFrame(rows)
    type_rows = []
    for (kind, label), part in wide.groupby(["type", "label"], sort=True):
        for condition in conditions:
            scores = part[condition]
            judged = int(scores.notna().sum())
            refused = int((scores == 0).sum())
            low, high = wilson_interval(refused, judged, alpha)
            row = {
                "type": kind,
                "label": label,
                "condition": condition,
                "refusals": refused,
                "n": judged,
                "refusal_rate": refused / judged if judged else math.nan,
                "ci_low": low,
                "ci_high": high,
            }
            if condition != CONDITION_BASELINE and CONDITION_BASELINE in conditions:
                compared = compare_pair(part[CONDITION_BASELINE], part[condition], alpha)
                row.update(change_vs_baseline=compared["refusal_change"], mcnemar_p=compared["mcnemar_p"])
            else:
                row.update(change_vs_baseline=math.nan, mcnemar_p=math.nan)
            type_rows.append(row)
    per_type = pd.DataFrame(type_rows)
    per_type["note"] = "descriptive only: few prompts per type"
    return rates, per_type


def write_xstest_stats(judgment_csvs, questions_jsonl, rates_csv, per_type_csv, alpha: float):
    """The ``xstest_stats`` rule: over-refusal and contrast refusal per condition and per type."""
    wide, questions = read_condition_judgments(judgment_csvs, questions_jsonl)
    conditions = [c for c in wide.columns if c != "question_id"]
    rates, per_type = xstest_refusal(wide, questions, conditions, alpha, questions_jsonl)
    write_csv(rates_csv, rates)
    write_csv(per_type_csv, per_type)
    for row in rates.itertuples():
        log.info(
            "XSTest %s, %s: refusal %s (%d/%d)",
            row.label,
            row.condition,
            format_percent(row.value),
            row.refusals,
            row.n,
        )
    return rates, per_type


# ---------------------------------------------------------------- trade-off


def tradeoff_table(
    benchmark_paired: Mapping[str, pd.DataFrame],
    kl_summaries: Mapping[str, pd.DataFrame],
    xstest_comparisons: pd.DataFrame | None,
) -> pd.DataFrame:
    """Per edit: refusal change on the benchmark, mean answer KL per harmless prompt set, and
    the change in over-refusal on XSTest's safe prompts; each with its interval."""
    rows = []
    for edit in sorted(benchmark_paired):
        condition = f"{EDITED_PREFIX}{edit}"
        wald = paired_row(benchmark_paired[edit], "compliance_difference", INTERVAL_PAIRED_WALD)
        mcnemar = paired_row(benchmark_paired[edit], "mcnemar_exact")
        row = {
            "edit": edit,
            "condition": condition,
            # refusal change = - compliance change (both over the same pairs)
            "benchmark_refusal_change": -float(wald["value"]),
            "benchmark_ci_low": -float(wald["ci_high"]),
            "benchmark_ci_high": -float(wald["ci_low"]),
            "benchmark_mcnemar_p": float(mcnemar["p_value"]),
        }
        summary = kl_summaries[edit]
        overall = summary[(summary["category"] == "all") & (summary["measure"] == "kl_answer_mean")]
        for item in overall.itertuples():
            row[f"kl_answer_mean_{item.promptset}"] = item.mean
            row[f"kl_answer_mean_{item.promptset}_ci_low"] = item.mean_ci_low
            row[f"kl_answer_mean_{item.promptset}_ci_high"] = item.mean_ci_high
        if xstest_comparisons is not None:
            match = xstest_comparisons[
                (xstest_comparisons["subset"] == "safe")
                & (xstest_comparisons["condition_a"] == CONDITION_BASELINE)
                & (xstest_comparisons["condition_b"] == condition)
            ]
            if match.empty:
                raise InputError(f"XSTest comparisons: no baseline vs {condition} row on safe prompts")
            found = match.iloc[0]
            row.update(
                xstest_safe_refusal_change=float(found["refusal_change"]),
                xstest_safe_ci_low=float(found["ci_low"]),
                xstest_safe_ci_high=float(found["ci_high"]),
                xstest_safe_mcnemar_p=float(found["mcnemar_p"]),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def plot_tradeoff(table: pd.DataFrame, png: str | os.PathLike, title: str) -> None:
    """Refusal change on the benchmark (left) and over-refusal change on XSTest safe prompts
    (right) against mean answer KL, one point per edit and harmless prompt set, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figure_files import save_figure

    promptsets = [
        c.removeprefix("kl_answer_mean_")
        for c in table.columns
        if c.startswith("kl_answer_mean_") and not c.endswith(("_ci_low", "_ci_high"))
    ]
    panels = [("benchmark", "refusal change on the benchmark (points)")]
    if "xstest_safe_refusal_change" in table.columns:
        panels.append(("xstest_safe", "over-refusal change on XSTest safe prompts (points)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.2), squeeze=False)
    markers = "osD^v<>"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes[0], panels):
        y_name = "benchmark_refusal_change" if key == "benchmark" else "xstest_safe_refusal_change"
        for e, row in enumerate(table.itertuples()):
            values = row._asdict()
            y = 100 * values[y_name]
            yerr = [[y - 100 * values[f"{key}_ci_low"]], [100 * values[f"{key}_ci_high"] - y]]
            for s, promptset in enumerate(promptsets):
                x = values[f"kl_answer_mean_{promptset}"]
                xerr = [
                    [x - values[f"kl_answer_mean_{promptset}_ci_low"]],
                    [values[f"kl_answer_mean_{promptset}_ci_high"] - x],
                ]
                ax.errorbar(
                    x,
                    y,
                    xerr=np.nan_to_num(xerr),
                    yerr=np.nan_to_num(yerr),
                    fmt=markers[s % len(markers)],
                    color=colours[e % len(colours)],
                    capsize=3,
                    label=f"{row.edit}, KL on {promptset}",
                )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("mean KL(baseline || edited) along the baseline's answers, nats")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, [png], dpi=120)


def write_tradeoff(
    paired_csvs: Mapping[str, str],
    kl_summary_csvs: Mapping[str, str],
    xstest_comparison_csv,
    out_csv,
    out_png,
    judge: str,
) -> pd.DataFrame:
    """The ``tradeoff`` rule: one table and one figure per judge, every edit."""
    paired = {edit: pd.read_csv(path) for edit, path in paired_csvs.items()}
    summaries = {edit: pd.read_csv(path, dtype={"category": str}) for edit, path in kl_summary_csvs.items()}
    xstest = pd.read_csv(xstest_comparison_csv) if xstest_comparison_csv else None
    table = tradeoff_table(paired, summaries, xstest)
    write_csv(out_csv, table)
    plot_tradeoff(table, out_png, f"Refusal removed against behaviour moved ({judge} judge)")
    return table


# ---------------------------------------------------------------- plain words


def cost_sentences(
    kl_summary_frame: pd.DataFrame | None,
    xstest_comparisons: pd.DataFrame | None,
    edited_condition: str,
    alpha: float,
    judge_is_official: bool,
) -> list[str]:
    """The cost of one edit in plain sentences, for summary.md."""
    sentences = []
    level = level_text(alpha)
    if kl_summary_frame is not None:
        parts = []
        overall = kl_summary_frame[kl_summary_frame["category"] == "all"]
        for promptset, part in overall.groupby("promptset", sort=False):
            answer = part[part["measure"] == "kl_answer_mean"].iloc[0]
            first = part[part["measure"] == "kl_first"].iloc[0]
            parts.append(
                f"on {int(answer['n_prompts'])} {promptset} safe prompts, mean {answer['mean']:.3g} nats per token "
                f"along the baseline's own answers "
                f"({level} {answer['mean_ci_low']:.3g} to {answer['mean_ci_high']:.3g}; "
                f"median {answer['median']:.3g}) and {first['mean']:.3g} nats at the first answer token "
                f"({first['mean_ci_low']:.3g} to {first['mean_ci_high']:.3g})"
            )
        sentences.append(
            "Cost on harmless prompts, KL(baseline || edited) of the next-token distributions: "
            + "; ".join(parts)
            + ". 0 means the edited model predicts exactly as the baseline does."
        )
    if xstest_comparisons is not None:
        rows = xstest_comparisons[
            (xstest_comparisons["condition_a"] == CONDITION_BASELINE)
            & (xstest_comparisons["condition_b"] == edited_condition)
        ]
        texts = []
        for subset, name in (("safe", "safe prompts (over-refusal)"), ("unsafe", "unsafe contrast prompts")):
            found = rows[rows["subset"] == subset]
            if found.empty:
                continue
            r = found.iloc[0]
            texts.append(
                f"on its {int(r['n_pairs'])} {name} refusal went from {format_percent(r['refusal_rate_a'])} to "
                f"{format_percent(r['refusal_rate_b'])} "
                f"({'+' if r['refusal_change'] > 0 else ''}{format_points(r['refusal_change'])} points, "
                f"{level} {format_points(r['ci_low'])} to {format_points(r['ci_high'])}; "
                f"exact McNemar p = {format_p(r['mcnemar_p'])})"
            )
        if texts:
            note = (
                " On safe prompts the official judge's score (does the answer fulfil the request?) is read as "
                "compliance."
                if judge_is_official
                else ""
            )
            sentences.append("XSTest: " + "; ".join(texts) + "." + note)
    return sentences


def xstest_baseline_comparison(baseline_csv, edited_csv, questions_jsonl, alpha: float) -> pd.DataFrame:
    """Baseline against one edit on XSTest, over all prompts and per label (as ``compare_conditions``)."""
    wide, questions = read_condition_judgments([baseline_csv, edited_csv], questions_jsonl)
    conditions = [c for c in wide.columns if c != "question_id"]
    return comparison_table(wide, conditions, alpha, question_labels(questions, questions_jsonl))


def cost_sentences_from_files(
    kl_summary_csv, xstest_judgments, edited_condition: str, alpha: float, judge: str
) -> list[str]:
    """``cost_sentences`` from one edit's cost outputs; none where the cost is not measured.

    ``xstest_judgments`` is (baseline judgments, edited judgments, XSTest questions) or None:
    read per edit, so that adding a variant does not rerun every other variant's summary.
    """
    kl = pd.read_csv(kl_summary_csv, dtype={"category": str}) if kl_summary_csv else None
    xstest = xstest_baseline_comparison(*xstest_judgments, alpha) if xstest_judgments else None
    return cost_sentences(kl, xstest, edited_condition, alpha, judge_is_official=judge == "official")
