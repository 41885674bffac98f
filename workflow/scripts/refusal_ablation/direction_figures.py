"""Figures about the refusal directions: stability across policy areas, per-layer separation.

Each figure is written as PNG and, beside it with the same stem, as SVG.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from refusal_ablation.directions import GENERALIZATION_COLUMNS, load_directions  # noqa: E402
from refusal_ablation.figure_files import save_figure  # noqa: E402
from refusal_ablation.io import InputError, load_activations  # noqa: E402
from refusal_ablation.split import CONSTRUCTION, TEST, read_split  # noqa: E402

log = logging.getLogger(__name__)

PALETTE = sns.color_palette("colorblind")
LABEL_COLORS = {"unsafe": PALETTE[3], "safe": PALETTE[0]}


def read_generalization_table(path: str | os.PathLike) -> pd.DataFrame:
    table = pd.read_csv(path)
    missing = [c for c in GENERALIZATION_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}")
    if table.empty:
        raise InputError(f"{path}: no rows")
    return table.sort_values("used_policy_areas")


def plot_direction_stability(
    generalization_csv: str | os.PathLike,
    png: str | os.PathLike,
    directions_npz: str | os.PathLike | None = None,
) -> None:
    """Layer cosine to the held-out direction against the number of used policy areas.

    The left panel shows the median and 10th percentile over layers x repeats from the
    generalization table. When ``directions_npz`` holds the per-layer cosines (written by
    ``run_fit``), every layer x repeat cosine is drawn behind them and a right panel shows
    the cosine per layer for each number of used areas.
    """
    table = read_generalization_table(generalization_csv)
    layer_cosines = budgets = None
    if directions_npz is not None:
        arrays = load_directions(directions_npz)
        cosines = arrays.get("generalization_layer_cosines")
        if cosines is not None and cosines.size:
            budgets = arrays["generalization_used_policy_areas"].tolist()
            if sorted(budgets) != table["used_policy_areas"].tolist():
                raise InputError(
                    f"{directions_npz}: per-layer cosines cover budgets {budgets}, but "
                    f"{generalization_csv} has {table['used_policy_areas'].tolist()}"
                )
            layer_cosines = cosines

    panels = 2 if layer_cosines is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    summary_ax = axes[0, 0]
    if layer_cosines is not None:
        rng = np.random.default_rng(0)
        for b_index, budget in enumerate(budgets):
            values = layer_cosines[b_index].ravel()
            jitter = rng.uniform(-0.15, 0.15, size=values.size)
            summary_ax.scatter(
                budget + jitter,
                values,
                s=6,
                color="0.6",
                alpha=0.35,
                linewidths=0,
                label="one layer, one repeat" if b_index == 0 else None,
            )
    summary_ax.plot(
        table["used_policy_areas"],
        table["median_layer_cosine_to_heldout"],
        marker="o",
        color=PALETTE[0],
        label="median over layers x repeats",
    )
    summary_ax.plot(
        table["used_policy_areas"],
        table["p10_layer_cosine_to_heldout"],
        marker="s",
        linestyle="--",
        color=PALETTE[1],
        label="10th percentile",
    )
    summary_ax.set_xticks(table["used_policy_areas"].tolist())
    summary_ax.set_xlabel("policy areas used to fit the direction")
    summary_ax.set_ylabel("cosine to the held-out-area direction")
    summary_ax.set_title("Direction stability across policy areas")
    summary_ax.grid(alpha=0.3)
    summary_ax.legend(loc="lower right", fontsize=8, framealpha=0.9)

    if layer_cosines is not None:
        layer_ax = axes[0, 1]
        layers = np.arange(layer_cosines.shape[2])
        colors = sns.color_palette("colorblind", len(budgets))
        for b_index, budget in enumerate(budgets):
            per_layer = layer_cosines[b_index]
            layer_ax.fill_between(
                layers, per_layer.min(axis=0), per_layer.max(axis=0), color=colors[b_index], alpha=0.15
            )
            layer_ax.plot(
                layers,
                np.median(per_layer, axis=0),
                color=colors[b_index],
                marker=".",
                label=f"{budget} areas",
            )
        layer_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        layer_ax.set_xlabel("decoder layer")
        layer_ax.set_ylabel("cosine to the held-out-area direction")
        layer_ax.set_title("Per layer (line: median over repeats; band: range)")
        layer_ax.grid(alpha=0.3)
        layer_ax.legend(title="used areas", fontsize=8, title_fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, [png, Path(png).with_suffix(".svg")])
    log.info("wrote %s", png)


def activation_projection_table(
    activations_npz: str | os.PathLike,
    split_csv: str | os.PathLike,
    directions_npz: str | os.PathLike,
) -> pd.DataFrame:
    """Long table of each stored prompt activation's signed projection on each layer's direction.

    Read from the activations file (no model runs); columns: id, label, category, split,
    layer, projection. (``verify.layer_projections`` differs: it runs a model and takes |x . d|.)
    """
    split = read_split(split_csv)
    directions = load_directions(directions_npz)["directions"].astype(np.float64)
    states = load_activations(activations_npz, split["id"])
    if states.shape[1:] != directions.shape:
        raise InputError(
            f"{activations_npz}: activations have [layers, hidden] = {list(states.shape[1:])}, "
            f"but {directions_npz} has directions of shape {list(directions.shape)}"
        )
    projections = np.einsum("nlh,lh->nl", states.astype(np.float64), directions)
    n_prompts, n_layers = projections.shape
    return pd.DataFrame(
        {
            "id": np.repeat(split["id"].to_numpy(), n_layers),
            "label": np.repeat(split["label"].to_numpy(), n_layers),
            "category": np.repeat(split["category"].to_numpy(), n_layers),
            "split": np.repeat(split["split"].to_numpy(), n_layers),
            "layer": np.tile(np.arange(n_layers), n_prompts),
            "projection": projections.ravel(),
        }
    )


def plot_layer_separation(
    activations_npz: str | os.PathLike,
    split_csv: str | os.PathLike,
    directions_npz: str | os.PathLike,
    png: str | os.PathLike,
) -> None:
    """Projections of unsafe vs safe prompts on each layer's direction.

    Top: the construction prompts the directions were fit on. Bottom (when the split has
    test areas): the held-out test areas, which the directions never saw.
    """
    projections = activation_projection_table(activations_npz, split_csv, directions_npz)
    groups = [(CONSTRUCTION, "construction areas, where the directions were fit")]
    if (projections["split"] == TEST).any():
        groups.append((TEST, "held-out test areas, never used for fitting"))
    n_layers = int(projections["layer"].max()) + 1
    width = max(8.0, 0.35 * n_layers + 3)
    fig, axes = plt.subplots(len(groups), 1, figsize=(width, 4 * len(groups)), squeeze=False, sharex=True)
    layers = np.arange(n_layers)
    offsets = {"unsafe": -0.2, "safe": 0.2}
    for ax, (split_name, title) in zip(axes[:, 0], groups):
        subset = projections[projections["split"] == split_name]
        counts = []
        for label, offset in offsets.items():
            rows = subset[subset["label"] == label]
            by_layer = [rows.loc[rows["layer"] == layer, "projection"].to_numpy() for layer in layers]
            ax.boxplot(
                by_layer,
                positions=layers + offset,
                widths=0.35,
                patch_artist=True,
                manage_ticks=False,
                showfliers=True,
                boxprops={"facecolor": LABEL_COLORS[label], "edgecolor": "0.2", "linewidth": 0.7},
                medianprops={"color": "0.1", "linewidth": 1.0},
                whiskerprops={"color": "0.3", "linewidth": 0.7},
                capprops={"color": "0.3", "linewidth": 0.7},
                flierprops={
                    "marker": "o",
                    "markersize": 2,
                    "markerfacecolor": LABEL_COLORS[label],
                    "markeredgecolor": "none",
                },
            )
            counts.append(f"{rows['id'].nunique()} {label}")
        ax.axhline(0, color="0.4", linewidth=0.6)
        ax.set_title(f"Projection on each layer's refusal direction: {title} ({', '.join(counts)} prompts)")
        ax.set_ylabel("projection (activation units)")
        ax.grid(axis="y", alpha=0.3)
    step = 1 if n_layers <= 24 else 2
    axes[-1, 0].set_xticks(layers[::step])
    axes[-1, 0].set_xlim(-0.7, n_layers - 0.3)
    axes[-1, 0].set_xlabel("decoder layer")
    handles = [Patch(facecolor=LABEL_COLORS[label], edgecolor="0.2", label=label) for label in offsets]
    axes[0, 0].legend(
        handles=handles,
        title="prompt label",
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
        title_fontsize=8,
    )
    fig.tight_layout()
    save_figure(fig, [png, Path(png).with_suffix(".svg")])
    log.info("wrote %s", png)


def run_direction_figures(
    generalization_csv: str | os.PathLike,
    directions_npz: str | os.PathLike,
    activations_npz: str | os.PathLike,
    split_csv: str | os.PathLike,
    stability_png: str | os.PathLike,
    separation_png: str | os.PathLike,
) -> None:
    plot_direction_stability(generalization_csv, stability_png, directions_npz=directions_npz)
    plot_layer_separation(activations_npz, split_csv, directions_npz, separation_png)


def plot_direction_selection(selection_csv: str | os.PathLike, out_png: str | os.PathLike, kl_threshold: float) -> None:
    """Refusal score and harmless KL per candidate layer of the arditi selection, the choice marked."""
    frame = pd.read_csv(selection_csv)
    missing = {"layer", "refusal_score", "baseline_refusal_score", "kl_harmless", "passes_depth", "selected"} - set(
        frame
    )
    if missing:
        raise InputError(f"{selection_csv}: missing column(s) {sorted(missing)}")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    scored = frame[frame["passes_depth"].astype(bool)]
    chosen = frame[frame["selected"].astype(bool)]
    top.plot(scored["layer"], scored["refusal_score"], marker="o", ms=3, color=PALETTE[3], label="direction ablated")
    top.axhline(frame["baseline_refusal_score"].iloc[0], color="grey", ls="--", label="no ablation")
    top.scatter(
        chosen["layer"], chosen["refusal_score"], s=110, facecolors="none", edgecolors="black", label="selected"
    )
    top.set_ylabel("refusal score, held-out\nunsafe prompts (log-odds)")
    top.legend(fontsize=8)
    bottom.semilogy(scored["layer"], scored["kl_harmless"].clip(lower=1e-8), marker="o", ms=3, color=PALETTE[0])
    bottom.axhline(kl_threshold, color="grey", ls="--", label=f"KL filter {kl_threshold:g}")
    bottom.scatter(
        chosen["layer"], chosen["kl_harmless"].clip(lower=1e-8), s=110, facecolors="none", edgecolors="black"
    )
    bottom.set_ylabel("first-token KL, held-out\nsafe prompts")
    bottom.set_xlabel("layer of the candidate direction (last layers excluded by the depth filter)")
    bottom.legend(fontsize=8)
    fig.suptitle("Single-direction (arditi) selection")
    save_figure(fig, [out_png, Path(out_png).with_suffix(".svg")])
