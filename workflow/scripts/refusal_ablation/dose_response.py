"""How much editing does it take: refusal, leakage and cost of every edit variant side by side.

One row per edit variant (``refusal_ablation.variants``) with its method, scale, layer band
and write paths; its refusal rate on the benchmark with a Wilson interval; the paired change
against the baseline (exact McNemar p, paired Wald interval); and the direction it leaves in
what each layer writes to the residual stream (median over layers of ``verify_edit``'s
edited/baseline ratio at the last prompt token). When the cost of the edit is measured, the
per-variant columns of the trade-off table join it (mean answer KL per harmless prompt set
and the change in over-refusal on XSTest's safe prompts, each with its interval). A second table compares neighbouring
strengths of the same method and band (is scale 0.5 already as effective as 1.0?) with the
same paired statistics, on the questions both variants have a parsable judgment for.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import pandas as pd

from . import CONDITION_BASELINE, edited_condition
from .io import InputError, write_csv
from .stats.estimators import mcnemar_exact_p, paired_wald_interval, wilson_interval
from .stats.pairing import read_judgment_file

log = logging.getLogger(__name__)

VARIANT_COLUMNS = ["edit", "method", "scale", "layers", "components"]
DOSE_COLUMNS = VARIANT_COLUMNS + [
    "n",
    "refusal_rate",
    "refusal_ci_low",
    "refusal_ci_high",
    "change_vs_baseline",
    "change_ci_low",
    "change_ci_high",
    "mcnemar_p_vs_baseline",
    "layer_writes_ratio_median",
    "residual_stream_ratio_median",
]
ADJACENT_COLUMNS = [
    "method",
    "layers",
    "components",
    "weaker",
    "stronger",
    "weaker_scale",
    "stronger_scale",
    "n_pairs",
    "weaker_refusal_rate",
    "stronger_refusal_rate",
    "difference",
    "ci_low",
    "ci_high",
    "mcnemar_p",
]


def _scores(path, condition: str) -> pd.Series:
    frame = read_judgment_file(path)
    found = str(frame["condition"].iloc[0])
    if found != condition:
        raise InputError(f"{path}: condition is '{found}', expected '{condition}'")
    return frame.set_index("question_id")["score"].astype(float)


def _paired(a: pd.Series, b: pd.Series, where: str) -> tuple[int, int, int]:
    """(pairs, a refuses and b complies, a complies and b refuses) over questions judged in both."""
    if set(a.index) != set(b.index):
        raise InputError(f"{where}: the two conditions judged different questions")
    both = pd.concat([a, b], axis=1, keys=["a", "b"]).dropna()
    return len(both), int(((both["a"] == 0) & (both["b"] == 1)).sum()), int(((both["a"] == 1) & (both["b"] == 0)).sum())


def _leakage(path, measure: str) -> float:
    frame = pd.read_csv(path)
    missing = {"measure", "tokens", "ratio_edited_to_baseline"} - set(frame)
    if missing:
        raise InputError(f"{path}: missing column(s) {sorted(missing)}")
    part = frame[(frame["measure"] == measure) & (frame["tokens"] == "last_prompt_token")]
    return float(part["ratio_edited_to_baseline"].median()) if len(part) else math.nan


def _layers_text(layers) -> str:
    return layers if isinstance(layers, str) else ",".join(map(str, layers))


def _with_cost(table: pd.DataFrame, tradeoff_csv) -> pd.DataFrame:
    """The trade-off table's KL and XSTest columns, joined on the edit name."""
    cost = pd.read_csv(tradeoff_csv)
    if "edit" not in cost:
        raise InputError(f"{tradeoff_csv}: no 'edit' column")
    missing = sorted(set(table["edit"]) - set(cost["edit"]))
    if missing:
        raise InputError(f"{tradeoff_csv}: no row for edit(s) {missing}")
    keep = ["edit"] + [c for c in cost.columns if c.startswith(("kl_", "xstest_"))]
    return table.merge(cost[keep], on="edit", how="left")


def dose_response_tables(
    variants: Mapping[str, dict],
    baseline_judgments: str | os.PathLike,
    edited_judgments: Mapping[str, str | os.PathLike],
    verify_tables: Mapping[str, str | os.PathLike] | None = None,
    alpha: float = 0.05,
    tradeoff_csv: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-variant table and the neighbouring-strength comparisons (see the module docstring)."""
    if set(edited_judgments) != set(variants):
        raise InputError(f"judgments given for {sorted(edited_judgments)}, variants are {sorted(variants)}")
    baseline = _scores(baseline_judgments, CONDITION_BASELINE)
    scores, rows = {}, []
    for edit, variant in variants.items():
        edited = _scores(edited_judgments[edit], edited_condition(edit))
        scores[edit] = edited
        n, to_compliance, to_refusal = _paired(baseline, edited, f"{baseline_judgments} + {edited_judgments[edit]}")
        parsable = edited.dropna()
        refusals = int((parsable == 0).sum())
        low, high = wilson_interval(refusals, len(parsable), alpha)
        # refusal change = -(compliance change): refusal->compliance flips lower the refusal rate
        diff, diff_low, diff_high = paired_wald_interval(to_compliance, to_refusal, n, alpha)
        verify = (verify_tables or {}).get(edit)
        rows.append(
            {
                "edit": edit,
                "method": variant["method"],
                "scale": float(variant["scale"]),
                "layers": _layers_text(variant["layers"]),
                "components": ",".join(variant["components"]) if variant["components"] else "method default",
                "n": len(parsable),
                "refusal_rate": refusals / len(parsable) if len(parsable) else math.nan,
                "refusal_ci_low": low,
                "refusal_ci_high": high,
                "change_vs_baseline": -diff,
                "change_ci_low": -diff_high,
                "change_ci_high": -diff_low,
                "mcnemar_p_vs_baseline": mcnemar_exact_p(to_compliance, to_refusal),
                "layer_writes_ratio_median": _leakage(verify, "layer_writes") if verify else math.nan,
                "residual_stream_ratio_median": _leakage(verify, "residual_stream") if verify else math.nan,
            }
        )
    table = pd.DataFrame(rows, columns=DOSE_COLUMNS)
    if tradeoff_csv:
        table = _with_cost(table, tradeoff_csv)
    adjacent = []
    for (method, layers, components), group in table.groupby(["method", "layers", "components"], sort=False):
        group = group.sort_values("scale")
        for (_, weaker), (_, stronger) in zip(group.iloc[:-1].iterrows(), group.iloc[1:].iterrows()):
            n, to_compliance, to_refusal = _paired(
                scores[weaker["edit"]], scores[stronger["edit"]], "adjacent variants"
            )
            both = pd.concat([scores[weaker["edit"]], scores[stronger["edit"]]], axis=1, keys=["w", "s"]).dropna()
            diff, low, high = paired_wald_interval(to_compliance, to_refusal, n, alpha)
            adjacent.append(
                {
                    "method": method,
                    "layers": layers,
                    "components": components,
                    "weaker": weaker["edit"],
                    "stronger": stronger["edit"],
                    "weaker_scale": weaker["scale"],
                    "stronger_scale": stronger["scale"],
                    "n_pairs": n,
                    "weaker_refusal_rate": float((both["w"] == 0).mean()) if n else math.nan,
                    "stronger_refusal_rate": float((both["s"] == 0).mean()) if n else math.nan,
                    # stronger minus weaker refusal rate; a to_compliance flip lowers it
                    "difference": -diff,
                    "ci_low": -high,
                    "ci_high": -low,
                    "mcnemar_p": mcnemar_exact_p(to_compliance, to_refusal),
                }
            )
    return table, pd.DataFrame(adjacent, columns=ADJACENT_COLUMNS)


def _panels(table: pd.DataFrame) -> list[tuple[str, str, str | None, str | None]]:
    """(column, axis label, low column, high column) for each panel the table can fill."""
    panels = [("refusal_rate", "refusal rate on the benchmark\n(95% Wilson)", "refusal_ci_low", "refusal_ci_high")]
    if table["layer_writes_ratio_median"].notna().any():
        panels.append(
            (
                "layer_writes_ratio_median",
                "component along d left in layer\nwrites (median, edited/baseline)",
                None,
                None,
            )
        )
    if "xstest_safe_refusal_change" in table:
        panels.append(
            (
                "xstest_safe_refusal_change",
                "over-refusal change on XSTest\nsafe prompts (paired Wald)",
                "xstest_safe_ci_low",
                "xstest_safe_ci_high",
            )
        )
    for column in table.columns:
        if column.startswith("kl_answer_mean_") and not column.endswith(("_ci_low", "_ci_high")):
            promptset = column.removeprefix("kl_answer_mean_")
            panels.append(
                (column, f"mean answer KL, {promptset}\n(95% bootstrap)", f"{column}_ci_low", f"{column}_ci_high")
            )
    return panels


def plot_dose_response(table: pd.DataFrame, baseline_rate: float, out_paths, title: str) -> None:
    import matplotlib.pyplot as plt

    from .figure_files import save_figure
    from .figures import EDITED_COLOURS

    panels = _panels(table)
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.8 * rows), squeeze=False)
    groups = list(table.groupby(["method", "layers"], sort=False))
    for ax, (column, label, low, high) in zip(axes.flat, panels):
        if column == "refusal_rate":
            ax.axhline(baseline_rate, color="grey", ls="--", label="baseline")
            ax.set_ylim(-0.02, 1.02)
        elif column.startswith("xstest"):
            ax.axhline(0, color="grey", lw=0.8)
        for colour, ((method, layers), group) in zip(EDITED_COLOURS * 4, groups):
            group = group.sort_values("scale")
            name = method if layers == "all" else f"{method}, layers {layers}"
            errors = None
            if low and high and low in group and high in group:
                errors = [(group[column] - group[low]).clip(lower=0), (group[high] - group[column]).clip(lower=0)]
            ax.errorbar(group["scale"], group[column], yerr=errors, marker="o", capsize=3, color=colour, label=name)
        ax.set_xlabel("edit scale s  (W - s d d^T W)")
        ax.set_ylabel(label)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out_paths)


def write_dose_response(
    variants: Mapping[str, dict],
    baseline_judgments,
    edited_judgments: Mapping[str, str],
    verify_tables: Mapping[str, str] | None,
    table_csv,
    adjacent_csv,
    figure_paths,
    alpha: float,
    title: str,
    tradeoff_csv=None,
) -> pd.DataFrame:
    table, adjacent = dose_response_tables(
        variants, baseline_judgments, edited_judgments, verify_tables, alpha, tradeoff_csv
    )
    write_csv(table_csv, table)
    write_csv(adjacent_csv, adjacent)
    baseline = _scores(baseline_judgments, CONDITION_BASELINE).dropna()
    plot_dose_response(table, float((baseline == 0).mean()), figure_paths, title)
    for row in table.itertuples():
        log.info(
            "%s: refusal %.3f (change %+.3f, McNemar p %.3g)",
            row.edit,
            row.refusal_rate,
            row.change_vs_baseline,
            row.mcnemar_p_vs_baseline,
        )
    return table
