"""Figures of the compliance analysis, drawn from the tables that `stats` writes.

Every figure is saved once per requested path (PNG and SVG, chosen by suffix), titled,
labelled, and coloured with the Okabe-Ito palette so that it reads under colour-vision
deficiency; the flip table uses the perceptually uniform, colour-blind-safe "cividis" map.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import CONDITION_BASELINE  # noqa: E402
from .figure_files import save_figure  # noqa: E402
from .io import InputError  # noqa: E402
from .stats.categories import category_label  # noqa: E402
from .stats.estimators import level_text  # noqa: E402
from .stats.pairing import read_answer_lengths  # noqa: E402
from .stats.tables import INTERVAL_PAIRED_WALD, JUDGMENT_LEVELS  # noqa: E402

# Okabe & Ito (2008) colour-blind-safe palette.
OKABE_ITO = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "bluish_green": "#009E73",
    "reddish_purple": "#CC79A7",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "grey": "#999999",
}
BASELINE_COLOUR = OKABE_ITO["blue"]
EDITED_COLOURS = [OKABE_ITO[name] for name in ("vermillion", "bluish_green", "reddish_purple", "orange")]

plt.rcParams.update(
    {
        "svg.fonttype": "none",  # keep SVG text as text: searchable and smaller
        "axes.titleweight": "bold",
    }
)


def condition_colours(conditions: Sequence[str]) -> dict[str, str]:
    """Baseline is always blue; edited conditions take the next Okabe-Ito colours."""
    colours, edited = {}, iter(EDITED_COLOURS)
    for condition in conditions:
        if condition not in colours:
            colours[condition] = BASELINE_COLOUR if condition == CONDITION_BASELINE else next(edited)
    return colours


def read_table(path: str | os.PathLike, required: Sequence[str]) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"category": str})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}")
    if frame.empty:
        raise InputError(f"{path}: empty table")
    return frame


def _footnote(ax: plt.Axes, text: str) -> None:
    """Small print under the x-axis label; bbox_inches="tight" keeps it in the file."""
    ax.annotate(
        text, xy=(0, 0), xycoords="axes fraction", xytext=(0, -36), textcoords="offset points", fontsize=8, va="top"
    )


def _title(ax: plt.Axes, title: str, subtitle: str) -> None:
    ax.set_title(title, loc="left", fontsize=11, pad=20 if subtitle else 8)
    if subtitle:
        ax.annotate(
            subtitle,
            xy=(0, 1),
            xycoords="axes fraction",
            xytext=(0, 6),
            textcoords="offset points",
            fontsize=9,
            color="#333333",
        )


# ---------------------------------------------------------------- figures


def plot_overall_compliance(
    overall: pd.DataFrame,
    paired: pd.DataFrame | None,
    paths: Sequence[str | os.PathLike],
    subtitle: str = "",
) -> None:
    """Bars of compliance per condition with their intervals, and the paired change below."""
    rates = overall[overall["estimate"] == "compliance_rate"].reset_index(drop=True)
    if len(rates) < 2:
        raise InputError("overall table: need a compliance_rate row for each condition")
    colours = condition_colours(rates["condition"].tolist())
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    x = np.arange(len(rates))
    values = 100 * rates["value"].to_numpy(dtype=float)
    errors = np.vstack(
        [values - 100 * rates["ci_low"].to_numpy(dtype=float), 100 * rates["ci_high"].to_numpy(dtype=float) - values]
    )
    ax.bar(x, values, width=0.6, color=[colours[c] for c in rates["condition"]], edgecolor="black", linewidth=0.6)
    ax.errorbar(x, values, yerr=errors, fmt="none", ecolor="black", capsize=6, linewidth=1.2)
    for xi, row in zip(x, rates.itertuples()):
        ax.annotate(
            f"{100 * row.value:.1f}%\n{row.count}/{row.n}",
            (xi, 100 * row.ci_high),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_xticks(x, rates["condition"])
    ax.set_xlabel("Model")
    ax.set_ylabel("Compliance (% of judged prompts)")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.spines[["top", "right"]].set_visible(False)
    level = rates["method"].iloc[0].split(";")[0] if "method" in rates else "95% CI"
    note = f"Error bars: {level.replace('Wilson score', 'Wilson')}."
    if paired is not None:
        note = _paired_note(paired) + "\n" + note
    _footnote(ax, note)
    _title(ax, "Compliance before and after the edit", subtitle)
    save_figure(fig, paths)


def _paired_note(paired: pd.DataFrame) -> str:
    wald = paired[(paired["estimate"] == "compliance_difference") & (paired["interval"] == INTERVAL_PAIRED_WALD)]
    mcnemar = paired[paired["estimate"] == "mcnemar_exact"]
    parts = []
    if len(wald):
        row = wald.iloc[0]
        parts.append(
            f"Change {100 * row['value']:+.1f} points ({level_text(1 - row['ci_level'])} {100 * row['ci_low']:.1f} to "
            f"{100 * row['ci_high']:.1f}, paired Wald)"
        )
    if len(mcnemar):
        parts.append(f"exact McNemar p = {mcnemar.iloc[0]['p_value']:.3g}")
    return "; ".join(parts) + "." if parts else ""


def plot_category_change(per_category: pd.DataFrame, paths: Sequence[str | os.PathLike], subtitle: str = "") -> None:
    """Dumbbell plot: baseline and edited compliance per category, sorted by the change."""
    frame = per_category.dropna(subset=["change"]).copy()
    if frame.empty:
        raise InputError("per-category table: no category has a complete pair")
    frame["label"] = frame["category"].map(category_label)
    # Largest rise at the top: the first row is drawn at the bottom.
    frame = frame.sort_values(["change", "label"], ascending=[True, False]).reset_index(drop=True)
    y = np.arange(len(frame))
    fig, ax = plt.subplots(figsize=(7.5, max(3.0, 0.27 * len(frame) + 1.6)))
    ax.hlines(
        y, 100 * frame["baseline_rate"], 100 * frame["edited_rate"], color=OKABE_ITO["grey"], linewidth=2, zorder=1
    )
    ax.scatter(100 * frame["baseline_rate"], y, color=BASELINE_COLOUR, s=36, zorder=2, label="baseline", marker="o")
    ax.scatter(100 * frame["edited_rate"], y, color=EDITED_COLOURS[0], s=36, zorder=3, label="edited", marker="D")
    for yi, row in zip(y, frame.itertuples()):
        ax.text(103, yi, f"{100 * row.change:+.0f}", va="center", ha="left", fontsize=7)
    ax.set_yticks(y, frame["label"], fontsize=8)
    ax.set_ylim(-0.7, len(frame) - 0.3)
    ax.set_xlim(-3, 112)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("Compliance (% of prompts in the category)")
    ax.set_ylabel("Category")
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)
    n_text = _count_range(frame["n_pairs"])
    _footnote(ax, f"Numbers at the right: change in points. Descriptive only: {n_text} prompts per category.")
    _title(ax, "Compliance per category, sorted by change", subtitle)
    save_figure(fig, paths)


def _count_range(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low} to {high}"


def plot_flip_table(flips: pd.DataFrame, paths: Sequence[str | os.PathLike], subtitle: str = "") -> None:
    """The paired table (baseline judgment x edited judgment) as an annotated heatmap."""
    counts = flips.pivot_table(index="baseline", columns="edited", values="count", aggfunc="sum", fill_value=0)
    levels = [level for level in JUDGMENT_LEVELS if level in counts.index or level in counts.columns]
    counts = counts.reindex(index=levels, columns=levels, fill_value=0)
    if "unparsable" in levels and counts.loc["unparsable"].sum() == 0 and counts["unparsable"].sum() == 0:
        counts = counts.drop(index="unparsable", columns="unparsable")
    total = int(counts.to_numpy().sum())
    if total == 0:
        raise InputError("flip table: all counts are zero")
    annotations = counts.map(lambda v: f"{v}\n({100 * v / total:.1f}%)")
    fig, ax = plt.subplots(figsize=(4.8 + 0.8 * (len(counts) - 2), 4.0))
    sns.heatmap(
        counts,
        annot=annotations,
        fmt="",
        cmap="cividis",
        cbar_kws={"label": "Prompts"},
        linewidths=1,
        linecolor="white",
        square=True,
        ax=ax,
        annot_kws={"fontsize": 10},
    )
    ax.set_xlabel("Edited model's judgment")
    ax.set_ylabel("Baseline model's judgment")
    ax.tick_params(axis="y", rotation=0)
    _title(ax, f"Paired judgments of {total} prompts", subtitle)
    save_figure(fig, paths)


def plot_answer_lengths(
    lengths: Sequence[pd.DataFrame], paths: Sequence[str | os.PathLike], subtitle: str = ""
) -> None:
    """Distribution of answer length in tokens per condition, with medians and limit hits."""
    frame = pd.concat(lengths, ignore_index=True)
    conditions = list(dict.fromkeys(frame["condition"]))
    colours = condition_colours(conditions)
    labels = {}
    for condition in conditions:
        rows = frame[frame["condition"] == condition]
        labels[condition] = (
            f"{condition}: median {rows['answer_tokens'].median():g}, "
            f"{100 * rows['hit_token_limit'].mean():.1f}% hit the limit"
        )
    frame["model"] = frame["condition"].map(labels)
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    sns.histplot(
        data=frame,
        x="answer_tokens",
        hue="model",
        hue_order=[labels[c] for c in conditions],
        palette=[colours[c] for c in conditions],
        element="step",
        stat="percent",
        common_norm=False,
        bins=min(40, max(5, frame["answer_tokens"].nunique())),
        ax=ax,
    )
    for condition in conditions:
        median = frame.loc[frame["condition"] == condition, "answer_tokens"].median()
        ax.axvline(median, color=colours[condition], linestyle="--", linewidth=1.2)
    ax.set_xlabel("Answer length (tokens)")
    ax.set_ylabel("Answers (% of the condition)")
    ax.spines[["top", "right"]].set_visible(False)
    legend = ax.get_legend()
    if legend is not None:
        legend.set_title("Model (dashed line: median)")
    _title(ax, "Answer length per condition", subtitle)
    save_figure(fig, paths)


# ---------------------------------------------------------------- workflow entry point


def write_figures(
    *,
    overall_csv: str | os.PathLike,
    paired_csv: str | os.PathLike,
    flip_table_csv: str | os.PathLike,
    per_category_csv: str | os.PathLike,
    baseline_lengths: str | os.PathLike,
    edited_lengths: str | os.PathLike,
    overall: Sequence[str | os.PathLike],
    category_change: Sequence[str | os.PathLike],
    flip_table: Sequence[str | os.PathLike] = (),
    answer_lengths: Sequence[str | os.PathLike] = (),
    subtitle: str = "",
) -> None:
    """The `figures` rule: draw each figure from the stats tables into its PNG/SVG paths."""
    overall_frame = read_table(overall_csv, ["estimate", "condition", "count", "n", "value", "ci_low", "ci_high"])
    paired_frame = read_table(
        paired_csv, ["estimate", "interval", "value", "ci_low", "ci_high", "ci_level", "p_value", "method"]
    )
    plot_overall_compliance(overall_frame, paired_frame, overall, subtitle)
    per_category = read_table(per_category_csv, ["category", "n_pairs", "baseline_rate", "edited_rate", "change"])
    plot_category_change(per_category, category_change, subtitle)
    if flip_table:
        plot_flip_table(read_table(flip_table_csv, ["baseline", "edited", "count"]), flip_table, subtitle)
    if answer_lengths:
        tables = [read_answer_lengths(baseline_lengths), read_answer_lengths(edited_lengths)]
        plot_answer_lengths(tables, answer_lengths, subtitle)
