"""The findings in plain words: sentences, and the Markdown and HTML pages that hold them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

import pandas as pd

from .categories import category_name
from .estimators import level_text
from .pairing import PairedJudgments, flip_counts
from .tables import INTERVAL_CATEGORY_BOOTSTRAP, INTERVAL_NEWCOMBE, INTERVAL_PAIRED_WALD, paired_row


def format_percent(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}%"


def format_points(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}"


def format_tokens(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def format_p(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.3g}".replace("e-0", "e-")


def summary_sentences(
    paired: PairedJudgments,
    paired_frame: pd.DataFrame,
    per_category: pd.DataFrame,
    lengths: pd.DataFrame | None,
    alpha: float,
) -> list[str]:
    """The findings as short plain sentences, in the order a reader needs them."""

    def row(estimate: str, interval: str | None = None) -> pd.Series:
        return paired_row(paired_frame, estimate, interval)

    n = int(row("pairs")["value"])
    level = level_text(alpha)
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
    wald = row("compliance_difference", INTERVAL_PAIRED_WALD)
    newcombe = row("compliance_difference", INTERVAL_NEWCOMBE)
    boot = row("compliance_difference", INTERVAL_CATEGORY_BOOTSTRAP)
    cells = flip_counts(paired.complete)
    base_count, edit_count = cells["both_comply"] + cells["to_refusal"], cells["both_comply"] + cells["to_compliance"]
    difference = wald["value"]
    intervals = (
        f"{'+' if difference > 0 else ''}{format_points(difference)} points, "
        f"{level} {format_points(wald['ci_low'])} to {format_points(wald['ci_high'])} by the paired Wald interval; "
        f"{format_points(newcombe['ci_low'])} to {format_points(newcombe['ci_high'])} by Newcombe's hybrid score "
        "interval; "
        + (
            f"{format_points(boot['ci_low'])} to {format_points(boot['ci_high'])} by a bootstrap over categories"
            if not pd.isna(boot["ci_low"])
            else "category bootstrap not estimable"
        )
    )
    if difference == 0:
        first = (
            f"Compliance was unchanged at {format_percent(base['value'])} ({base_count}/{n}) under both "
            f"{paired.baseline_condition} and {paired.edited_condition} ({intervals})."
        )
    else:
        first = (
            f"Compliance {'rose' if difference > 0 else 'fell'} from {format_percent(base['value'])} "
            f"({base_count}/{n}) under {paired.baseline_condition} to {format_percent(edit['value'])} "
            f"({edit_count}/{n}) under {paired.edited_condition} ({intervals})."
        )
    sentences = [first]
    sentences.append(
        f"{cells['to_compliance']} prompts flipped to compliance, {cells['to_refusal']} the other way; "
        f"{cells['both_refuse']} were refused and {cells['both_comply']} answered under both; "
        f"exact McNemar p = {format_p(row('mcnemar_exact')['p_value'])}."
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
            f"{r.condition} median {format_tokens(r.median_tokens)} tokens (IQR {format_tokens(r.q1_tokens)} to "
            f"{format_tokens(r.q3_tokens)}), "
            f"{format_percent(r.hit_limit_share)} hit the token limit"
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
